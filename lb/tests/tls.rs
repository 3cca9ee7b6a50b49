//! TLS on both sides: mp-lb serving HTTP/2 over TLS, and mp-lb dialling its
//! backends over TLS (here: one mp-lb in front of another).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{say, Backend, Lb};

/// A self-signed certificate for `localhost` and its key, as PEM files.
fn cert(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_in_front_and_to_the_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert(dir.path());
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let b = Backend::start("behind-tls");
    let front = Lb::start(&[&b], &["--tls-cert", &cert_s, "--tls-key", &key_s]).await;
    front.wait_ready().await;

    // grpcurl over TLS, verifying the certificate.
    let addr = front.addr.to_string();
    let (c, s) = (cert_s.clone(), addr.clone());
    let out = tokio::task::spawn_blocking(move || {
        mp_testkit::run_grpcurl(&["-cacert", &c, "-servername", "localhost", &s, "list"])
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("lbtest.echo.v1.Echo"), "{text}");

    // A second mp-lb reaching the first over TLS.
    let back = Lb::start_args(vec![
        "mp-lb".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--backend".into(),
        addr.clone(),
        "--backend-tls-ca".into(),
        cert_s.clone(),
        "--backend-tls-name".into(),
        "localhost".into(),
    ])
    .await;
    back.wait_ready().await;
    let mut c = back.client().await;
    let r = c
        .say(say(b"through two proxies"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.server, "behind-tls");
    assert_eq!(r.payload, b"through two proxies");

    // A plaintext client on the TLS port gets nowhere; the port still serves TLS.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut pc = support::pb::echo_client::EchoClient::new(ch);
        assert!(pc.say(say(b"x")).await.is_err());
    }
    assert_eq!(
        c.say(say(b"again")).await.unwrap().into_inner().payload,
        b"again"
    );
}

#[test]
fn unusable_tls_files_fail_with_a_clear_line() {
    let out = mp_testkit::output_within(
        Command::new(env!("CARGO_BIN_EXE_mp-lb")).args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:1",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ]),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("mp-lb:"))
        .unwrap_or_default();
    assert!(
        line.contains("TLS") && line.contains("/nonexistent/cert.pem"),
        "{err}"
    );

    let out = mp_testkit::output_within(
        Command::new(env!("CARGO_BIN_EXE_mp-lb")).args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:1",
            "--tls-cert",
            "cert.pem",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
