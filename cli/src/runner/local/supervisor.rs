//! The supervisor: one detached process per service that keeps the desired
//! instances running.
//!
//! `mp deploy` starts it by re-running its own executable with
//! `MP_SUPERVISE=<name>` (so a program using topology-as-code supervises with
//! the same code). It starts a new session, so closing the terminal does not
//! stop it, then loops: re-read `desired.json` when it changes, start what is
//! missing, restart what crashed (with exponential backoff, counting
//! restarts), stop (SIGTERM, then SIGKILL after a grace period) what is no
//! longer desired, and write `status.json`. On SIGTERM, or when
//! `desired.json` disappears, it stops every part and exits.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use super::proc;
use super::state::{Desired, InstanceState, InstanceStatus, ServiceDir, Status};

/// The environment variable that makes an executable act as the supervisor
/// of the named service (see [`entry`]).
pub const SUPERVISE_ENV: &str = "MP_SUPERVISE";

/// How often the supervisor looks at its children and its desired state.
const TICK: Duration = Duration::from_millis(100);
/// A part that ran this long before exiting is not "crashing at once".
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The first restart delay; doubled per consecutive quick crash.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Consecutive quick crashes that make a crash loop.
const CRASH_LOOP_AFTER: u32 = 3;
/// How long a stopping part may take to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

/// If this process was started as a supervisor (`MP_SUPERVISE` is set), runs
/// the supervisor to the end and returns its exit code; otherwise returns
/// `None` at once. Programs that can deploy with the local runner (the `mp`
/// binary, topology-as-code programs) call this first thing in `main`.
pub fn entry() -> Option<ExitCode> {
    let name = std::env::var(SUPERVISE_ENV)
        .ok()
        .filter(|n| !n.is_empty())?;
    proc::detach();
    let dir = match super::default_state_dir() {
        Ok(d) => ServiceDir::new(&d, &name),
        Err(e) => {
            eprintln!("mp supervisor: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    Some(rt.block_on(run(name, dir)))
}

/// One instance's process and history.
struct Proc {
    child: Option<Child>,
    started: Instant,
    restarts: u32,
    quick_crashes: u32,
    next_start: Option<Instant>,
    last_exit: Option<String>,
    stopping_since: Option<Instant>,
}

impl Proc {
    fn new() -> Proc {
        Proc {
            child: None,
            started: Instant::now(),
            restarts: 0,
            quick_crashes: 0,
            next_start: None,
            last_exit: None,
            stopping_since: None,
        }
    }

    fn state(&self) -> InstanceState {
        if self.stopping_since.is_some() {
            InstanceState::Stopping
        } else if self.quick_crashes >= CRASH_LOOP_AFTER {
            InstanceState::CrashLoop
        } else if self.child.is_some() {
            InstanceState::Running
        } else {
            InstanceState::Restarting
        }
    }
}

fn log(name: &str, msg: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("{} {name}: {msg}", utc(now));
}

/// `2026-11-22T01:02:03.456Z` for a time since the Unix epoch (UTC, the
/// proleptic Gregorian calendar; days to a date as in Howard Hinnant's
/// `civil_from_days`), so the supervisor's log reads like the parts' logs.
fn utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn run(name: String, dir: ServiceDir) -> ExitCode {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    // Started from a terminal's session before setsid took effect, a hangup
    // may still arrive: it must not stop the service.
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    log(
        &name,
        &format!("supervisor started (pid {})", std::process::id()),
    );

    let mut procs: BTreeMap<String, Proc> = BTreeMap::new();
    let mut desired: Option<Desired> = None;
    let mut seen: Stamp = None;
    let mut written: Option<Status> = None;
    loop {
        let now = stamp(&dir.desired());
        if now.is_none() {
            log(&name, "desired state removed: stopping");
            break;
        }
        if now != seen {
            match dir.read_desired() {
                Ok(Some(d)) => {
                    seen = now;
                    desired = Some(d);
                }
                Ok(None) => break,
                // A damaged or half-visible file: keep the last good state and retry.
                Err(e) => log(&name, &format!("{e}")),
            }
        }
        if let Some(d) = &desired {
            reconcile(&name, &dir, d, &mut procs);
            let status = status_of(d.generation, &procs);
            if written.as_ref() != Some(&status) {
                if let Err(e) = dir.write_status(&status) {
                    log(&name, &format!("{e}"));
                }
                written = Some(status);
            }
        }
        tokio::select! {
            _ = term.recv() => { log(&name, "SIGTERM: stopping"); break; }
            _ = int.recv() => { log(&name, "SIGINT: stopping"); break; }
            _ = hup.recv() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    stop_all(&name, &mut procs).await;
    let _ = std::fs::remove_file(dir.status());
    log(&name, "supervisor stopped");
    ExitCode::SUCCESS
}

fn status_of(generation: u64, procs: &BTreeMap<String, Proc>) -> Status {
    Status {
        supervisor: std::process::id(),
        generation,
        instances: procs
            .iter()
            .map(|(id, p)| {
                (
                    id.clone(),
                    InstanceStatus {
                        pid: p.child.as_ref().map(Child::id),
                        state: p.state(),
                        restarts: p.restarts,
                        last_exit: p.last_exit.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn reconcile(name: &str, dir: &ServiceDir, d: &Desired, procs: &mut BTreeMap<String, Proc>) {
    let wanted: BTreeSet<&str> = d.instances.iter().map(|i| i.id.as_str()).collect();
    let now = Instant::now();

    // Reap what exited.
    for (id, p) in procs.iter_mut() {
        let Some(child) = p.child.as_mut() else {
            continue;
        };
        let Ok(Some(status)) = child.try_wait() else {
            if p.child.is_some() && now.duration_since(p.started) >= STABLE_AFTER {
                p.quick_crashes = 0;
            }
            continue;
        };
        p.child = None;
        p.last_exit = Some(describe(status));
        if p.stopping_since.is_some() || !wanted.contains(id.as_str()) {
            log(name, &format!("{id} stopped ({})", describe(status)));
            continue;
        }
        p.quick_crashes = if now.duration_since(p.started) < STABLE_AFTER {
            p.quick_crashes + 1
        } else {
            1
        };
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << (p.quick_crashes - 1).min(10))
            .min(BACKOFF_MAX);
        p.next_start = Some(now + backoff);
        log(
            name,
            &format!(
                "{id} exited ({}); restarting in {backoff:?}{}",
                describe(status),
                if p.quick_crashes >= CRASH_LOOP_AFTER {
                    " (crash loop)"
                } else {
                    ""
                }
            ),
        );
    }

    // Stop what is no longer wanted; forget it once it is gone.
    procs.retain(|id, p| {
        if wanted.contains(id.as_str()) {
            return true;
        }
        match &p.child {
            None => false,
            Some(child) => {
                match p.stopping_since {
                    None => {
                        log(name, &format!("stopping {id} (pid {})", child.id()));
                        proc::signal_group(child.id(), false);
                        p.stopping_since = Some(now);
                    }
                    Some(since) if now.duration_since(since) > GRACE => {
                        log(
                            name,
                            &format!("{id} did not stop within {GRACE:?}: killing it"),
                        );
                        proc::signal_group(child.id(), true);
                    }
                    Some(_) => {}
                }
                true
            }
        }
    });

    // Start what is wanted and not running (after its backoff).
    for inst in &d.instances {
        let p = procs.entry(inst.id.clone()).or_insert_with(Proc::new);
        if p.child.is_some() || p.next_start.is_some_and(|t| t > now) {
            continue;
        }
        let first = p.next_start.is_none() && p.last_exit.is_none();
        p.next_start = None;
        p.started = now;
        if !first {
            p.restarts += 1;
        }
        match spawn(dir, d, inst) {
            Ok(child) => {
                log(name, &format!("started {} (pid {})", inst.id, child.id()));
                p.child = Some(child);
            }
            Err(e) => {
                // Counted like a crash: retried with backoff, shown by `mp ps`.
                p.quick_crashes += 1;
                p.last_exit = Some(format!("cannot start: {e}"));
                let backoff = BACKOFF_FIRST
                    .saturating_mul(1 << p.quick_crashes.min(10))
                    .min(BACKOFF_MAX);
                p.next_start = Some(now + backoff);
                log(name, &format!("cannot start {}: {e}", inst.id));
            }
        }
    }
}

fn spawn(dir: &ServiceDir, d: &Desired, inst: &super::state::Instance) -> std::io::Result<Child> {
    std::fs::create_dir_all(dir.logs())?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log(&inst.part.name))?;
    let err = out.try_clone()?;
    Command::new(&inst.program)
        .args(&inst.args)
        .current_dir(&d.cwd)
        .env_remove(SUPERVISE_ENV)
        .envs(&inst.part.env)
        // Unbuffered Python output, so `mp logs` shows lines as they happen.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a stop reaches whatever the part started.
        .process_group(0)
        .spawn()
}

async fn stop_all(name: &str, procs: &mut BTreeMap<String, Proc>) {
    for (id, p) in procs.iter() {
        if let Some(c) = &p.child {
            log(name, &format!("stopping {id} (pid {})", c.id()));
            proc::signal_group(c.id(), false);
        }
    }
    let deadline = Instant::now() + GRACE;
    loop {
        let mut running = 0;
        for p in procs.values_mut() {
            if let Some(c) = p.child.as_mut() {
                match c.try_wait() {
                    Ok(None) => running += 1,
                    _ => p.child = None,
                }
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            for (id, p) in procs.iter_mut() {
                if let Some(c) = p.child.as_mut() {
                    log(
                        name,
                        &format!("{id} did not stop within {GRACE:?}: killing it"),
                    );
                    proc::signal_group(c.id(), true);
                    let _ = c.wait();
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::utc;
    use std::time::Duration;

    #[test]
    fn utc_times_read_like_rfc_3339() {
        assert_eq!(utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc(Duration::from_millis(951_782_400_250)),
            "2000-02-29T00:00:00.250Z"
        );
        assert_eq!(
            utc(Duration::from_secs(1_795_306_670)),
            "2026-11-22T00:17:50.000Z"
        );
        assert_eq!(
            utc(Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
