use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn next(rx: &mut watch::Receiver<Endpoints>) -> Endpoints {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("discovery published within 5 s")
        .expect("discovery alive");
    rx.borrow_and_update().clone()
}

#[test]
fn parses_backends_files() {
    let (ok, errors) = parse_backends("# backends\n127.0.0.1:1\n\n a:2, b:3 # two\nbad\n[::1]:4\n");
    let names: Vec<String> = ok.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["127.0.0.1:1", "a:2", "b:3", "[::1]:4"]);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("line 5:"), "{errors:?}");
}

#[tokio::test]
async fn merges_static_sources() {
    let sources = vec![
        Source::Static("127.0.0.1:7001".parse().unwrap()),
        Source::Static("localhost:7002".parse().unwrap()),
        Source::Static("127.0.0.1:7001".parse().unwrap()),
    ];
    let mut rx = spawn(sources, Resolver::system(), DiscoveryConfig::default());
    let set = next(&mut rx).await;
    assert_eq!(
        *set,
        BTreeSet::from([sa("127.0.0.1:7001"), sa("127.0.0.1:7002")])
    );
}

#[tokio::test]
async fn no_sources_publishes_an_empty_set() {
    let mut rx = spawn(vec![], Resolver::system(), DiscoveryConfig::default());
    assert!(next(&mut rx).await.is_empty());
}

#[tokio::test]
async fn follows_a_backends_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backends");
    std::fs::write(&path, "127.0.0.1:7001\n127.0.0.1:7002\n").unwrap();
    let cfg = DiscoveryConfig {
        dns_interval: Duration::from_secs(60),
        file_interval: Duration::from_millis(20),
    };
    let mut rx = spawn(vec![Source::File(path.clone())], Resolver::system(), cfg);
    assert_eq!(next(&mut rx).await.len(), 2);

    // Write a new version (a different length, so the change shows even on
    // file systems with coarse modification times).
    std::fs::write(&path, "127.0.0.1:7003 # only this one now\n").unwrap();
    assert_eq!(*next(&mut rx).await, BTreeSet::from([sa("127.0.0.1:7003")]));

    // A vanished file keeps the last set; a new one is picked up again.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!rx.has_changed().unwrap());
    std::fs::write(&path, "127.0.0.1:7004\n127.0.0.1:7005\n").unwrap();
    assert_eq!(next(&mut rx).await.len(), 2);
}

#[tokio::test]
async fn a_missing_file_starts_empty() {
    let cfg = DiscoveryConfig {
        dns_interval: Duration::from_secs(60),
        file_interval: Duration::from_millis(20),
    };
    let mut rx = spawn(
        vec![
            Source::File("/nonexistent/backends".into()),
            Source::Static("127.0.0.1:9".parse().unwrap()),
        ],
        Resolver::system(),
        cfg,
    );
    assert_eq!(*next(&mut rx).await, BTreeSet::from([sa("127.0.0.1:9")]));
}
