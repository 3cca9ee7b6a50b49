//! A backend that stops answering without closing its connections (a frozen
//! process, a host gone from the network): the relay's keepalive PING finds
//! out and the calls in flight end UNAVAILABLE instead of hanging.

use std::process::Command;
use std::time::{Duration, Instant};

use mp_testkit::{example, free_port, run_grpcurl, wait_for_port, ChildGuard};

#[test]
fn a_frozen_backend_is_found_by_ping_and_its_calls_end() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let backend = ChildGuard::spawn(
        Command::new(example("faulty"))
            .env("MP_PORT", port.to_string())
            .env("MP_HOST", "127.0.0.1")
            .env("MP_DELAY_MS", "2000"),
    );
    assert!(wait_for_port(
        addr.parse().unwrap(),
        Duration::from_secs(10)
    ));
    let lb_port = free_port();
    let lb_addr = format!("127.0.0.1:{lb_port}");
    let _lb = ChildGuard::spawn(Command::new(mp_testkit::bin("mp-lb")).args([
        "--listen",
        &lb_addr,
        "--backend",
        &addr,
        "--keepalive",
        "300ms",
    ]));
    assert!(wait_for_port(
        lb_addr.parse().unwrap(),
        Duration::from_secs(10)
    ));

    // A call is in flight (the backend takes 2 s), then the backend freezes.
    let freezer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        backend.signal("STOP");
        backend
    });
    let t = Instant::now();
    let out = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"body":{"json":"x"}}"#,
        &lb_addr,
        "mp.v1.Handler/Handle",
    ]);
    let took = t.elapsed();
    let backend = freezer.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    backend.signal("CONT");
    assert!(!out.status.success(), "the call cannot succeed: {text}");
    assert!(text.contains("Unavailable"), "{text}");
    assert!(text.contains("PING"), "the message says why: {text}");
    // Found within a few keepalive periods, well before any 15 s limit.
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
}
