//! `--shards-file`: a gather whose shards and merger come from a file it
//! follows while running; a rewritten file takes effect without a restart and
//! without a failed call, a bad file keeps the last good topology.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn named_leaves(names: &[&'static str]) -> Vec<Running> {
    let mut v = Vec::new();
    for (shard, name) in names.iter().enumerate() {
        v.push(
            leaf(LeafSpec {
                shard,
                name,
                ..LeafSpec::default()
            })
            .await,
        );
    }
    v
}

fn shard_lines(leaves: &[Running]) -> String {
    leaves.iter().map(|l| format!("{}\n", l.addr())).collect()
}

/// The `name` of every shard in a json-array reply.
fn names(reply: &Value) -> Vec<String> {
    reply
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Calls without pause until `stop`, counting answers and failures (with the
/// first failure's text); every call is bounded by a deadline.
struct Stream {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    first_error: tokio::task::JoinHandle<Option<String>>,
}

impl Stream {
    async fn start(g: &GatherProc) -> Stream {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = g.client().await;
        let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop.clone());
        let first_error = tokio::spawn(async move {
            let mut first = None;
            // Bounded in count too, whatever happens to `stop`.
            for _ in 0..200_000 {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let mut req = tonic::Request::new(mp_proto::v1::Request::json(json!({"n": 1})));
                req.set_timeout(Duration::from_secs(5));
                match client.handle(req).await {
                    Ok(_) => {
                        ok2.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(s) => {
                        failed2.fetch_add(1, Ordering::SeqCst);
                        first.get_or_insert_with(|| format!("{s:?}"));
                    }
                }
            }
            first
        });
        Stream {
            ok,
            failed,
            stop,
            first_error,
        }
    }

    /// Stops the stream; (answered, failed, the first failure).
    async fn finish(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let first = tokio::time::timeout(Duration::from_secs(10), self.first_error)
            .await
            .expect("the stream stops")
            .expect("the stream task");
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            first,
        )
    }
}

#[tokio::test]
async fn a_rewritten_shards_file_swaps_leaves_count_and_merger_with_no_failed_call() {
    let dir = std::env::temp_dir().join(format!("mp-gather-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("swap.shards");
    let old = named_leaves(&["a", "a"]).await;
    write_file(&file, &format!("# two shards\n\n{}", shard_lines(&old)));
    let g = GatherProc::start_with(&args(&["--shards-file", file.to_str().unwrap()]), true);
    g.wait_healthy(2);
    assert_eq!(generation(&g), Some(1));
    let mut client = g.client().await;
    let reply = call(&mut client, json!({})).await.expect("first call");
    assert_eq!(names(&reply.body_json().unwrap()), ["a", "a"]);

    let stream = Stream::start(&g).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three new leaves and a merger: a different count and a merge step.
    let new = named_leaves(&["b", "b", "b"]).await;
    let m = merger(MergerMode::Summarize).await;
    write_file(
        &file,
        &format!("{}merge {}  # the merger\n", shard_lines(&new), m.addr()),
    );
    assert!(
        eventually(Duration::from_secs(10), || generation(&g) == Some(2)).await,
        "the gather did not switch to the new file: generation {:?}",
        generation(&g)
    );
    // The old leaves stop only now, as a runner would stop them.
    let old_addrs: Vec<String> = old.iter().map(Running::addr).collect();
    drop(old);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, first) = stream.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} calls failed: {first:?}",
        ok + failed
    );
    assert!(ok > 10, "too few calls in the stream: {ok}");

    let reply = call(&mut client, json!({"q": 1})).await.expect("after");
    let body = reply.body_json().unwrap();
    let leaves = body["leaves"].as_array().expect("the merger's summary");
    assert_eq!(leaves.len(), 3, "{body}");
    for (i, l) in leaves.iter().enumerate() {
        assert_eq!(l["shard"], i);
        assert_eq!(l["ok"]["name"], "b", "{body}");
    }
    for n in &new {
        assert!(n.stats.finished.load(Ordering::SeqCst) > 0);
    }
    // The old topology is gone once its last call is done: its pools (and
    // their metrics) with it.
    assert!(
        eventually(Duration::from_secs(5), || {
            let m = g.admin_get("/metrics");
            !old_addrs.iter().any(|a| m.contains(a.as_str()))
        })
        .await,
        "the old shards' pools are still alive"
    );

    // Back to two shards and the default reducer: no merge line.
    let back = named_leaves(&["c", "c"]).await;
    write_file(&file, &shard_lines(&back));
    assert!(eventually(Duration::from_secs(10), || generation(&g) == Some(3)).await);
    let reply = call(&mut client, json!({})).await.expect("third topology");
    assert_eq!(names(&reply.body_json().unwrap()), ["c", "c"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_shards_file_keeps_the_last_good_topology() {
    let dir = std::env::temp_dir().join(format!("mp-gather-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.shards");
    let good = named_leaves(&["a", "a"]).await;
    write_file(&file, &shard_lines(&good));
    let g = GatherProc::start_with(&args(&["--shards-file", file.to_str().unwrap()]), true);
    g.wait_healthy(2);
    let mut client = g.client().await;

    for bad in [
        "127.0.0.1:1\nnot an address\n".to_string(),
        "# nothing but a comment\n".to_string(),
        format!("{}merge\n", shard_lines(&good)),
    ] {
        write_file(&file, &bad);
        // The watcher looks every 250 ms: give it several looks.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(generation(&g), Some(1), "{bad:?} was applied");
        let reply = call(&mut client, json!({})).await.expect("still answers");
        assert_eq!(names(&reply.body_json().unwrap()), ["a", "a"], "{bad:?}");
    }

    // The watcher is still alive: a good file applies.
    let next = named_leaves(&["b"]).await;
    write_file(&file, &shard_lines(&next));
    assert!(eventually(Duration::from_secs(10), || generation(&g) == Some(2)).await);
    let reply = call(&mut client, json!({})).await.expect("new topology");
    assert_eq!(names(&reply.body_json().unwrap()), ["b"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_bad_shards_file_at_startup_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("mp-gather-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.shards");
    let out = std::process::Command::new(mp_testkit::bin("mp-gather"))
        .args(["--listen", "127.0.0.1:0", "--shards-file"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the shards file"), "{err}");

    let bad = dir.join("bad.shards");
    std::fs::write(&bad, "127.0.0.1:1\n127.0.0.1:2,nope\n").unwrap();
    let out = std::process::Command::new(mp_testkit::bin("mp-gather"))
        .args(["--listen", "127.0.0.1:0", "--shards-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");

    // The file replaces --shard and --merge.
    let out = std::process::Command::new(mp_testkit::bin("mp-gather"))
        .args(["--shard", "127.0.0.1:1", "--shards-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_follows_the_shards_file_to_the_new_shard_0() {
    let dir = std::env::temp_dir().join(format!("mp-gather-reflect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog.shards");
    let old = catalog_leaf(0, &["red apple"]).await;
    write_file(&file, &format!("{}\n", old.addr()));
    let g = GatherProc::start_with(&args(&["--shards-file", file.to_str().unwrap()]), true);
    g.wait_healthy(1);
    let t = g.addr.to_string();
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "demo.catalog.v1.Catalog"]);
    assert!(d.contains("rpc Search"), "{d}");

    let new = catalog_leaf(0, &["blue plum"]).await;
    write_file(&file, &format!("{}\n", new.addr()));
    assert!(eventually(Duration::from_secs(10), || generation(&g) == Some(2)).await);
    // Only the new leaf is left to answer questions about its proto.
    drop(old);
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "demo.catalog.v1.SearchReply"]);
    assert!(d.contains("message SearchReply"), "{d}");
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"query": "plum"}"#,
        &t,
        "demo.catalog.v1.Catalog/Search",
    ]);
    assert!(out.contains("blue plum"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
