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

/// A tiny DNS server for tests: answers every A question with `answers`
/// (TTL 0), every other question with no records.
async fn dns_server(answers: Arc<std::sync::Mutex<Vec<std::net::Ipv4Addr>>>) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let q = &buf[..n];
            // Header (12 bytes), then one question: labels, 0, qtype, qclass.
            let mut i = 12;
            while i < q.len() && q[i] != 0 {
                i += 1 + q[i] as usize;
            }
            let qend = i + 5;
            if qend > q.len() {
                continue;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let ips = if qtype == 1 {
                answers.lock().unwrap().clone()
            } else {
                vec![]
            };
            let mut r = Vec::with_capacity(512);
            r.extend_from_slice(&q[0..2]); // id
            r.extend_from_slice(&[0x81, 0x80]); // response, recursion desired+available, NOERROR
            r.extend_from_slice(&[0, 1]); // one question
            r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
            r.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
            r.extend_from_slice(&q[12..qend]);
            for ip in ips {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                r.extend_from_slice(&ip.octets());
            }
            let _ = sock.send_to(&r, peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn follows_a_dns_name_through_a_real_dns_exchange() {
    let answers = Arc::new(std::sync::Mutex::new(vec!["127.0.0.1".parse().unwrap()]));
    let server = dns_server(answers.clone()).await;
    let cfg = DiscoveryConfig {
        dns_interval: Duration::from_millis(50),
        file_interval: Duration::from_secs(1),
    };
    let mut rx = spawn(
        vec![Source::Dns("replicas.svc.test:7000".parse().unwrap())],
        Resolver::with_nameserver(server),
        cfg,
    );
    assert_eq!(*next(&mut rx).await, BTreeSet::from([sa("127.0.0.1:7000")]));

    // Scaled up: every record is an endpoint.
    *answers.lock().unwrap() = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
    assert_eq!(
        *next(&mut rx).await,
        BTreeSet::from([sa("127.0.0.1:7000"), sa("127.0.0.2:7000")])
    );

    // Scaled to zero: no records, no endpoints.
    answers.lock().unwrap().clear();
    assert!(next(&mut rx).await.is_empty());
}
