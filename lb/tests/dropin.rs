//! mp-lb as a drop-in proxy for a gRPC service it knows nothing about:
//! grpcurl lists, describes and calls it through mp-lb via the backend's own
//! server reflection; the standard health check passes through too.

mod support;

use std::time::Duration;

use support::{Backend, Lb};

async fn grpcurl(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mp_testkit::run_grpcurl(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_mp_lb() {
    let bs = [Backend::start("g0"), Backend::start("g1")];
    let lb = Lb::start(&[&bs[0], &bs[1]], &[]).await;
    lb.wait_ready().await;
    let target = lb.addr.to_string();
    let g = |extra: &[&str]| {
        let mut v = vec!["-plaintext".to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let (ok, out) = grpcurl(g(&[&target, "list"])).await;
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l == "lbtest.echo.v1.Echo"), "{out}");

    let (ok, out) = grpcurl(g(&[&target, "describe", "lbtest.echo.v1.Echo"])).await;
    assert!(ok, "{out}");
    assert!(out.contains("rpc Expand"), "{out}");

    let (ok, out) = grpcurl(g(&[
        "-d",
        r#"{"payload":"aGk="}"#,
        &target,
        "lbtest.echo.v1.Echo/Say",
    ]))
    .await;
    assert!(ok, "{out}");
    assert!(out.contains(r#""payload": "aGk=""#), "{out}");

    let (ok, out) = grpcurl(g(&[
        "-d",
        r#"{"count":3}"#,
        &target,
        "lbtest.echo.v1.Echo/Expand",
    ]))
    .await;
    assert!(ok, "{out}");
    assert_eq!(out.matches("\"server\"").count(), 3, "{out}");

    // Errors come back with their status and message.
    let (ok, out) = grpcurl(g(&[
        "-d",
        r#"{"fail_code":7,"fail_message":"no entry"}"#,
        &target,
        "lbtest.echo.v1.Echo/Say",
    ]))
    .await;
    assert!(!ok);
    assert!(
        out.contains("PermissionDenied") && out.contains("no entry"),
        "{out}"
    );

    // The health check on the front port is proxied to a backend.
    let (ok, out) = grpcurl(g(&[&target, "grpc.health.v1.Health/Check"])).await;
    assert!(ok, "{out}");
    assert!(out.contains("SERVING"), "{out}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
