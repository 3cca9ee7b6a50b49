//! Reaching the Docker engine: `DOCKER_HOST` or the default socket, the API
//! version agreed with the engine, and one clear line when nothing answers.

use std::io::ErrorKind;
use std::time::Duration;

use bollard::Docker;

use super::error::DockerError;

/// Where the engine is looked for when `DOCKER_HOST` is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long the first contact may take before we say nothing answers.
const CONTACT_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests after the first contact (a large image build is the slowest).
const REQUEST_TIMEOUT_SECS: u64 = 300;

/// Connects to the engine at `DOCKER_HOST` (else the default socket), checks
/// that it answers and settles on an API version both sides speak, so an
/// older engine works too.
pub async fn connect() -> Result<Docker, DockerError> {
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_string());
    let docker = Docker::connect_with_host(&host).map_err(|e| unreachable(&host, &e))?;
    let docker = docker.with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS));
    match tokio::time::timeout(CONTACT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(&host, &e)),
        Err(_) => Err(DockerError::Unreachable {
            host,
            reason: format!("no answer within {}s", CONTACT_TIMEOUT.as_secs()),
            hint: "check that the Docker daemon is running and healthy, or set DOCKER_HOST",
        }),
    }
}

/// Says why the engine at `host` cannot be reached, and what to do.
fn unreachable(host: &str, e: &bollard::errors::Error) -> DockerError {
    let (reason, hint) = match (e, io_kind(e)) {
        (bollard::errors::Error::SocketNotFoundError(path), _) => (
            format!("no socket at {path}"),
            "start Docker (e.g. `sudo systemctl start docker`) or set DOCKER_HOST to a running \
             engine",
        ),
        (_, Some(ErrorKind::PermissionDenied)) => (
            "permission denied".to_string(),
            "add your user to the docker group (`sudo usermod -aG docker $USER`, then log in \
             again), run mp as a user that may use Docker, or set DOCKER_HOST",
        ),
        (_, Some(ErrorKind::ConnectionRefused)) => (
            "connection refused".to_string(),
            "start Docker (e.g. `sudo systemctl start docker`) or set DOCKER_HOST to a running \
             engine",
        ),
        (bollard::errors::Error::UnsupportedURISchemeError { uri }, _) => (
            format!("DOCKER_HOST={uri} is not a unix:// or tcp:// address mp can use"),
            "set DOCKER_HOST to unix:///path/to/docker.sock or tcp://HOST:PORT",
        ),
        _ => (
            first_line(e),
            "start Docker or set DOCKER_HOST to a running engine",
        ),
    };
    DockerError::Unreachable {
        host: host.to_string(),
        reason,
        hint,
    }
}

/// The kind of the I/O error at the root of `e`, if there is one.
fn io_kind(e: &bollard::errors::Error) -> Option<ErrorKind> {
    // A transparent wrapper's `source()` skips the I/O error it wraps.
    if let bollard::errors::Error::IOError { err } = e {
        return Some(err.kind());
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

fn first_line(e: &bollard::errors::Error) -> String {
    // The root cause says more than the wrappers around it.
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_says_what_to_do() {
        let e = bollard::errors::Error::SocketNotFoundError("/nope/docker.sock".into());
        let msg = unreachable("unix:///nope/docker.sock", &e).to_string();
        assert!(
            msg.starts_with("cannot reach the Docker engine at unix:///nope/docker.sock"),
            "{msg}"
        );
        assert!(msg.contains("DOCKER_HOST"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn permission_denied_is_recognised() {
        let e = bollard::errors::Error::IOError {
            err: std::io::Error::from(ErrorKind::PermissionDenied),
        };
        let msg = unreachable(DEFAULT_HOST, &e).to_string();
        assert!(msg.contains("permission denied"), "{msg}");
        assert!(msg.contains("docker group"), "{msg}");
    }
}
