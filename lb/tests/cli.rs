//! The `mp-lb` binary: its flags, its errors, and SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mp_testkit::{output_within, ChildGuard};
use support::pb::EchoRequest;
use support::Backend;

fn mp_lb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mp-lb"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = output_within(mp_lb().args(args), Duration::from_secs(10));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_reads_well() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--backend",
        "--backends-file",
        "--dns",
        "--admin",
        "--pool-size",
        "--health-interval",
        "--grace",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
    assert!(out.contains("round-robin"), "{out}");
}

#[test]
fn bad_flags_give_one_clear_line_and_fail() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--listen", "nowhere", "--backend", "127.0.0.1:1"],
            "--listen",
        ),
        (
            &["--listen", "127.0.0.1:0", "--backend", "no-port"],
            "HOST:PORT",
        ),
        (&["--listen", "127.0.0.1:0"], "no backends"),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                "127.0.0.1:1",
                "--grace",
                "soon",
            ],
            "duration",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                "127.0.0.1:1",
                "--frobnicate",
            ],
            "--frobnicate",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.contains(needle),
            "{args:?}: first line {first:?} lacks {needle:?}"
        );
    }
}

#[test]
fn an_address_in_use_fails_with_a_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["--listen", &addr, "--backend", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("mp-lb:"))
        .unwrap_or_default();
    assert!(line.contains(&format!("cannot listen on {addr}")), "{err}");
    let (code, _, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &addr,
        "--backend",
        "127.0.0.1:1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--admin"), "{err}");
}

#[test]
fn sigterm_drains_calls_in_flight_and_exits_0() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = Backend::start("drain");
    let port = mp_testkit::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut lb = ChildGuard::spawn(
        mp_lb()
            .args([
                "--listen",
                &addr.to_string(),
                "--backend",
                &b.addr.to_string(),
                "--grace",
                "5s",
            ])
            .stdout(Stdio::null()),
    );
    assert!(
        mp_testkit::wait_for_port(addr, Duration::from_secs(10)),
        "mp-lb did not listen"
    );
    rt.block_on(async {
        let mut c = support::client(addr).await;
        // A call that takes 1 s, in flight when SIGTERM arrives.
        let slow = tokio::spawn(async move {
            let req = EchoRequest {
                count: 5,
                delay_ms: 200,
                ..Default::default()
            };
            let mut s = c.expand(req).await?.into_inner();
            let mut n = 0;
            while s.message().await?.is_some() {
                n += 1;
            }
            Ok::<_, tonic::Status>(n)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        lb.signal("TERM");
        let t = Instant::now();
        let n = slow.await.unwrap().expect("the call in flight finished");
        assert_eq!(n, 5);
        let status = lb
            .wait_timeout(Duration::from_secs(8))
            .expect("mp-lb exited");
        assert!(status.success(), "exit status {status:?}");
        assert!(t.elapsed() < Duration::from_secs(6));
    });
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}
