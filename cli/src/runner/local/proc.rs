//! Processes: finding programs, signalling process groups, telling whether a
//! process id still is the process we started.

use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal};

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return false;
    };
    // A zombie still answers kill(0); /proc tells it apart (state `Z`). A
    // supervisor whose parent (`mp deploy`) is gone is reaped by init, but
    // init in a container does not always reap.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        return !matches!(state, Some("Z") | Some("X"));
    }
    rustix::process::test_kill_process(p).is_ok()
}

/// Whether `pid`'s environment holds `key=value`: a check that a recorded
/// process id was not reused by an unrelated process. True where /proc is
/// not available.
pub fn has_env(pid: u32, key: &str, value: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => {
            let want = format!("{key}={value}");
            env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

/// Sends SIGTERM (`kill == false`) or SIGKILL to the process group led by
/// `pid` (every part runs in its own group, so helpers it started stop too).
pub fn signal_group(pid: u32, kill: bool) {
    let sig = if kill { Signal::KILL } else { Signal::TERM };
    if let Some(p) = Pid::from_raw(pid as i32) {
        if rustix::process::kill_process_group(p, sig).is_err() {
            let _ = rustix::process::kill_process(p, sig);
        }
    }
}

/// Sends SIGTERM to one process.
pub fn terminate(pid: u32) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, Signal::TERM);
    }
}

/// Starts a new session for this process, so the terminal closing (SIGHUP to
/// its session) does not stop the supervisor.
pub fn detach() {
    let _ = rustix::process::setsid();
}

/// Resolves a command's program as a shell would: a name without `/` is
/// looked up on `PATH`; a path is taken relative to `cwd`. Returns a message
/// saying what is wrong when it is not an executable file.
pub fn resolve_program(program: &str, cwd: &Path) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = cwd.join(program);
        return match executable(&path) {
            Ok(()) => Ok(path),
            Err(why) => Err(format!("`{program}` {why}")),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| cwd.join(d).join(program))
        .find(|p| executable(p).is_ok())
        .ok_or_else(|| {
            format!("`{program}` not found on PATH: give a path to an executable or install it")
        })
}

fn executable(path: &Path) -> Result<(), &'static str> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(_) => Err("does not exist: check the path (is it built?)"),
        Ok(m) if !m.is_file() => Err("is not a file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("is not executable"),
        Ok(_) => Ok(()),
    }
}

/// Finds one of mp's own programs (`mp-lb`): `$MP_BIN_DIR`, then next to the
/// running executable, then in its parent directory (an example binary in
/// `target/release/examples/` finds `target/release/mp-lb`), then on `PATH`.
/// The error names the directory searched first.
pub fn find_data_plane(name: &str) -> Result<PathBuf, String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("MP_BIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = &exe_dir {
        dirs.push(d.clone());
        if let Some(p) = d.parent() {
            dirs.push(p.to_path_buf());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| executable(p).is_ok())
        .ok_or_else(|| {
            exe_dir
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "mp".into())
        })
}
