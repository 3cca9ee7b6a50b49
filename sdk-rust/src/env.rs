//! Where this process stands in a topology, as the runner told it through
//! `MP_*` environment variables (see DESIGN.md, Patterns).

use std::sync::OnceLock;
use std::time::Duration;

/// A process's place in its topology, read from the environment.
///
/// | field | variable | when unset |
/// |---|---|---|
/// | `service` | `MP_SERVICE` | the executable's file name |
/// | `role` | `MP_ROLE` | `"handler"` |
/// | `shard` | `MP_SHARD` | `0` |
/// | `shards` | `MP_SHARDS` | `1` |
/// | `replica` | `MP_REPLICA` | `None` (which replica, when a runner runs several) |
/// | `port` | `MP_PORT` | `None` ([`serve`](crate::serve) then refuses to start) |
/// | `host` | `MP_HOST` | `"0.0.0.0"` (every interface, as containers need) |
/// | `grace` | `MP_GRACE` | 10 s |
/// | `hostname` | (the machine's) | `"localhost"` if it cannot be read |
///
/// New variables may become new fields: the struct is `non_exhaustive`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Env {
    /// The service this process belongs to.
    pub service: String,
    /// What this process is in its service, e.g. `handler`, `leaf`, `merge`.
    pub role: String,
    /// Which shard this process serves, `0..shards`.
    pub shard: u32,
    /// How many shards the service has (at least 1).
    pub shards: u32,
    /// Which replica this process is (of a spread, or of its shard), 0-based.
    pub replica: Option<u32>,
    /// The port to listen on.
    pub port: Option<u16>,
    /// The address to listen on.
    pub host: String,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    pub grace: Duration,
    /// This machine's host name (a container's is its id).
    pub hostname: String,
}

/// Why the `MP_*` environment cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: {expected}")]
pub struct EnvError {
    /// The variable at fault.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What it should look like.
    pub expected: &'static str,
}

/// The default grace period for in-flight calls at shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

impl Default for Env {
    fn default() -> Self {
        Env {
            service: default_service(),
            role: "handler".into(),
            shard: 0,
            shards: 1,
            replica: None,
            port: None,
            host: "0.0.0.0".into(),
            grace: DEFAULT_GRACE,
            hostname: hostname(),
        }
    }
}

impl Env {
    /// Reads the environment, failing on a value that is set but invalid
    /// (a port that is not a number, a shard outside `0..shards`, ...).
    pub fn from_env() -> Result<Env, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Env::from_env`], with the variables read from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Env, EnvError> {
        let mut env = Env::default();
        let get = |name| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("MP_SERVICE") {
            env.service = v;
        }
        if let Some(v) = get("MP_ROLE") {
            env.role = v;
        }
        if let Some(v) = get("MP_HOST") {
            env.host = v;
        }
        if let Some(v) = get("MP_PORT") {
            let port = v.trim().parse::<u16>().ok().filter(|p| *p != 0);
            env.port = Some(port.ok_or(EnvError {
                var: "MP_PORT",
                value: v,
                expected: "a TCP port number, 1 to 65535",
            })?);
        }
        if let Some(v) = get("MP_SHARDS") {
            let n = v.trim().parse::<u32>().ok().filter(|n| *n >= 1);
            env.shards = n.ok_or(EnvError {
                var: "MP_SHARDS",
                value: v,
                expected: "a whole number, at least 1",
            })?;
        }
        if let Some(v) = get("MP_SHARD") {
            let shards = env.shards;
            let n = v.trim().parse::<u32>().ok().filter(|n| *n < shards);
            env.shard = n.ok_or(EnvError {
                var: "MP_SHARD",
                value: v,
                expected: "a whole number below MP_SHARDS (shards count from 0)",
            })?;
        }
        if let Some(v) = get("MP_REPLICA") {
            env.replica = Some(v.trim().parse::<u32>().ok().ok_or(EnvError {
                var: "MP_REPLICA",
                value: v,
                expected: "a whole number (replicas count from 0)",
            })?);
        }
        if let Some(v) = get("MP_GRACE") {
            env.grace = parse_duration(&v).ok_or(EnvError {
                var: "MP_GRACE",
                value: v,
                expected: "a duration such as 10s, 500ms or 2.5 (seconds)",
            })?;
        }
        Ok(env)
    }
}

/// This process's environment, read once. A variable that is set but invalid
/// is logged and its default used instead; [`serve`](crate::serve) checks the
/// environment strictly before it starts, so a served handler never sees that.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        Env::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the MP_* environment");
            Env::default()
        })
    })
}

/// Parses `10s`, `500ms`, `1m` or a bare number of seconds (`2.5`).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.trim().parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn default_service() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "mp".into())
}

/// The kernel's host name (no libc call needed on Linux), else `$HOSTNAME`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> Result<Env, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_when_unset() {
        let e = env_of(&[]).unwrap();
        assert_eq!((e.shard, e.shards, e.port, e.replica), (0, 1, None, None));
        assert_eq!(e.role, "handler");
        assert_eq!(e.grace, DEFAULT_GRACE);
        assert!(!e.service.is_empty() && !e.hostname.is_empty());
    }

    #[test]
    fn reads_every_variable() {
        let e = env_of(&[
            ("MP_SERVICE", "histogram"),
            ("MP_ROLE", "leaf"),
            ("MP_SHARD", "3"),
            ("MP_SHARDS", "10"),
            ("MP_REPLICA", "2"),
            ("MP_PORT", "7001"),
            ("MP_HOST", "127.0.0.1"),
            ("MP_GRACE", "250ms"),
        ])
        .unwrap();
        assert_eq!(e.service, "histogram");
        assert_eq!(e.role, "leaf");
        assert_eq!((e.shard, e.shards, e.port), (3, 10, Some(7001)));
        assert_eq!(e.replica, Some(2));
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.grace, Duration::from_millis(250));
    }

    #[test]
    fn rejects_bad_values_naming_the_variable() {
        for (var, value) in [
            ("MP_PORT", "http"),
            ("MP_PORT", "0"),
            ("MP_PORT", "70000"),
            ("MP_SHARDS", "0"),
            ("MP_SHARD", "-1"),
            ("MP_REPLICA", "first"),
            ("MP_GRACE", "soon"),
        ] {
            let err = env_of(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
        let err = env_of(&[("MP_SHARD", "10"), ("MP_SHARDS", "10")]).unwrap_err();
        assert_eq!(err.var, "MP_SHARD");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("5h"), None);
    }
}
