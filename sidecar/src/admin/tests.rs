use super::*;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_metrics_ready_live_and_404() {
    let mut registry = Registry::default();
    let c = Counter::<u64>::default();
    registry.register("test_things", "Things counted", c.clone());
    c.inc_by(3);
    let state = AdminState::new(registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));

    let (st, body) = get(addr, "GET", "/metrics").await;
    assert_eq!(st, 200);
    assert!(body.contains("test_things_total 3"), "{body}");

    assert_eq!(get(addr, "GET", "/ready").await.0, 503);
    state.set_ready(true);
    assert_eq!(get(addr, "GET", "/ready").await.0, 200);
    assert_eq!(get(addr, "GET", "/live").await.0, 200);
    assert_eq!(get(addr, "GET", "/nope").await.0, 404);
    assert_eq!(get(addr, "POST", "/live").await.0, 405);

    // Metrics registered after the server started show up too.
    state
        .registry()
        .register("late", "Registered late", Counter::<u64>::default());
    assert!(get(addr, "GET", "/metrics")
        .await
        .1
        .contains("late_total 0"));

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("admin server stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
