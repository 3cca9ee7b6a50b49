//! grpcurl against the gather port: reflection (v1 and v1alpha), health, and
//! calls, for the mp.v1 contract and, in drop-in mode, for another proto whose
//! descriptors mp-gather fetches from a leaf.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_mp_v1() {
    let ls = leaves(3).await;
    let g = GatherProc::start(&shard_args(&ls));
    let t = g.addr.to_string();
    let list = grpcurl_ok(&["-plaintext", &t, "list"]);
    for s in [
        "mp.v1.Handler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.lines().any(|l| l == s), "{s} missing from:\n{list}");
    }
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.Handler"]);
    assert!(
        d.contains("rpc Handle ( .mp.v1.Request ) returns ( .mp.v1.Reply )"),
        "{d}"
    );
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.LeafOutcome"]);
    assert!(d.contains("hedged"), "{d}");

    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"body":{"json":{"q":"x"}}}"#,
        &t,
        "mp.v1.Handler/Handle",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let arr = v["body"]["json"].as_array().expect("json-array body");
    assert_eq!(arr.len(), 3, "{out}");
    assert_eq!(arr[2]["shard"], 2.0);
    assert_eq!(arr[0]["echo"]["q"], "x");

    let h = grpcurl_ok(&["-plaintext", &t, "grpc.health.v1.Health/Check"]);
    assert!(h.contains("SERVING"), "{h}");
    let h = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"service":"mp.v1.Handler"}"#,
        &t,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(h.contains("SERVING"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_works_in_drop_in_mode_for_another_proto() {
    let ls = vec![
        catalog_leaf(0, &["red apple"]).await,
        catalog_leaf(1, &["red cherry", "blue plum"]).await,
    ];
    let g = GatherProc::start(&shard_args(&ls));
    let t = g.addr.to_string();
    let list = grpcurl_ok(&["-plaintext", &t, "list"]);
    assert!(
        list.lines().any(|l| l == "demo.catalog.v1.Catalog"),
        "the leaf's service is not listed:\n{list}"
    );
    assert!(list.lines().any(|l| l == "mp.v1.Handler"), "{list}");
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "demo.catalog.v1.Catalog"]);
    assert!(d.contains("rpc Search"), "{d}");
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "demo.catalog.v1.SearchReply"]);
    assert!(d.contains("repeated string items"), "{d}");
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"query":"red"}"#,
        &t,
        "demo.catalog.v1.Catalog/Search",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        v["items"],
        serde_json::json!(["red apple", "red cherry"]),
        "{out}"
    );
    assert_eq!(v["source"], "shard-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_unknown_symbol_is_a_clear_error() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let t = g.addr.to_string();
    let out = mp_testkit::run_grpcurl(&["-plaintext", &t, "describe", "no.such.Service"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no.such.Service"), "{err}");
}
