//! The parts' output, from the engine's log API, one line at a time and
//! tagged with the part that printed it.
//!
//! The engine ends a follow stream when its container stops, so a followed
//! part that restarts is reopened from the last line seen (lines carry the
//! engine's timestamps, which also drop the repeats of that second).
//!
//! A container on its way out is skipped, not an error: the engine refuses
//! the output of a container being removed (409, "dead or marked for
//! removal") as it does that of one already gone (404), and a rolling update
//! removes containers while their output is followed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use bollard::Docker;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::error::{status_of, DockerError};
use super::{label, labels};
use crate::plan::Role;
use crate::runner::{LogLine, LogStream, RunnerError};

/// The `(part name, container id)` of every container of `service` (only
/// those of `role`, if given), sorted by part.
pub async fn parts(
    docker: &Docker,
    service: &str,
    role: Option<Role>,
) -> Result<Vec<(String, String)>, DockerError> {
    let filters: HashMap<&str, Vec<String>> = [("label", labels::filter(Some(service)))]
        .into_iter()
        .collect();
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| DockerError::api("listing containers", e))?;
    let mut parts: Vec<(String, String)> = containers
        .iter()
        .filter(|c| role.is_none_or(|r| label(c, labels::ROLE) == Some(r.as_str())))
        .filter_map(|c| {
            let id = c.id.clone()?;
            let part = label(c, labels::PART).unwrap_or("?").to_string();
            Some((part, id))
        })
        .collect();
    parts.sort();
    Ok(parts)
}

/// The output of `parts` of `service`: one part after the other, or, when
/// following, interleaved as it comes, including the parts that appear later
/// (replacements during an update, a larger spread). A followed stream ends
/// when the service is deleted.
pub fn stream(
    docker: Docker,
    service: String,
    role: Option<Role>,
    parts: Vec<(String, String)>,
    follow: bool,
) -> LogStream {
    if !follow {
        let streams = parts.into_iter().map(move |(part, id)| {
            let (tx, rx) = mpsc::channel(256);
            tokio::spawn(pump(docker.clone(), part, id, false, tx));
            rx
        });
        return futures::stream::iter(streams).flatten().boxed();
    }
    let (tx, rx) = mpsc::channel(256);
    let mut followed: HashSet<String> = HashSet::new();
    for (part, id) in parts {
        followed.insert(id.clone());
        tokio::spawn(pump(docker.clone(), part, id, true, tx.clone()));
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            if tx.is_closed() {
                return;
            }
            match self::parts(&docker, &service, role).await {
                Ok(now) if now.is_empty() => return, // deleted
                Ok(now) => {
                    for (part, id) in now {
                        if followed.insert(id.clone()) {
                            tokio::spawn(pump(docker.clone(), part, id, true, tx.clone()));
                        }
                    }
                }
                Err(_) => {} // the engine may be busy; look again later
            }
        }
    });
    rx.boxed()
}

/// How often a follow looks for new containers of the service.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Sends the lines of one container to `tx` until the receiver is dropped,
/// the container is gone, or (not following) its output so far is sent.
async fn pump(
    docker: Docker,
    part: String,
    id: String,
    follow: bool,
    mut tx: mpsc::Sender<Result<LogLine, RunnerError>>,
) {
    let mut last: Option<Stamp> = None;
    loop {
        let since = last.map_or(0, |s| s.secs.clamp(0, i32::MAX as i64) as i32);
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(follow)
            .since(since)
            .build();
        let mut logs = docker.logs(&id, Some(options));
        let mut pending = String::new();
        while let Some(chunk) = logs.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if leaving(&e) => return,
                Err(e) => {
                    let e = DockerError::api(format!("reading the output of {part}"), e);
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(nl) = pending.find('\n') {
                let raw: String = pending.drain(..=nl).collect();
                let (stamp, line) = split_stamp(raw.trim_end_matches(['\n', '\r']));
                if let (Some(s), Some(l)) = (stamp, last) {
                    if s <= l {
                        continue; // seen before the stream was reopened
                    }
                }
                last = stamp.or(last);
                let line = LogLine {
                    part: part.clone(),
                    line: line.to_string(),
                };
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        // The container stopped (or the engine closed the stream): wait
        // for a restart unless the container is gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tx.is_closed() {
            return;
        }
        match docker.inspect_container(&id, None).await {
            Err(e) if leaving(&e) => return,
            Ok(c)
                if c.state.as_ref().and_then(|s| s.status).is_some_and(|s| {
                    matches!(
                        s,
                        ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD
                    )
                }) =>
            {
                return
            }
            _ => {}
        }
    }
}

/// Whether the engine refused because the container is gone (404) or on its
/// way out (409: being removed, or dead), so its output is over.
fn leaving(e: &bollard::errors::Error) -> bool {
    matches!(status_of(e), Some(404 | 409))
}

/// A log timestamp as seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    secs: i64,
    nanos: u32,
}

/// Splits `2026-11-22T00:09:39.123456789Z rest` into its stamp and `rest`.
fn split_stamp(line: &str) -> (Option<Stamp>, &str) {
    match line.split_once(' ') {
        Some((ts, rest)) => match parse_stamp(ts) {
            Some(s) => (Some(s), rest),
            None => (None, line),
        },
        None => match parse_stamp(line) {
            Some(s) => (Some(s), ""),
            None => (None, line),
        },
    }
}

/// Parses the engine's RFC 3339 UTC timestamps (`...T...Z`, fraction optional).
fn parse_stamp(ts: &str) -> Option<Stamp> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    if !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse::<u32>().ok()?;
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + s;
    Some(Stamp { secs, nanos })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_parse_and_order() {
        let a = parse_stamp("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(
            a,
            Stamp {
                secs: 86_401,
                nanos: 500_000_000
            }
        );
        let b = parse_stamp("2026-11-22T00:09:39.123456789Z").unwrap();
        let c = parse_stamp("2026-11-22T00:09:39.12345Z").unwrap();
        assert!(c < b, "fractions of different lengths compare by value");
        assert_eq!(b.secs, 1_795_306_179);
        assert!(parse_stamp("yesterday").is_none());
    }

    #[test]
    fn gone_and_being_removed_end_a_part_other_refusals_do_not() {
        let refused = |status_code| bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "refused".into(),
        };
        assert!(leaving(&refused(404)));
        assert!(leaving(&refused(409)));
        assert!(!leaving(&refused(500)));
        assert!(!leaving(&bollard::errors::Error::RequestTimeoutError));
    }

    #[test]
    fn lines_lose_their_stamp() {
        let (s, l) = split_stamp("2026-11-22T00:09:39.1Z listening on 0.0.0.0:8080");
        assert!(s.is_some());
        assert_eq!(l, "listening on 0.0.0.0:8080");
        let (s, l) = split_stamp("no stamp here");
        assert!(s.is_none());
        assert_eq!(l, "no stamp here");
    }
}
