//! Discovery: where the endpoints are, as a watch of address sets.
//!
//! Sources: static `HOST:PORT`s, a file of them (re-read when it changes), and
//! DNS names whose every A/AAAA record is an endpoint (re-resolved
//! periodically, as Docker's and Kubernetes' headless-service DNS want). Names
//! in static and file sources are re-resolved on the same period.
//!
//! [`spawn`] merges the sources into one [`Endpoints`] set, published on a
//! `tokio::sync::watch` channel. A pool follows one such watch; `mp-gather`
//! runs one per shard.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::addr::{HostPort, ResolveError, Resolver};

/// A set of endpoint addresses (sorted, without duplicates).
pub type Endpoints = Arc<BTreeSet<SocketAddr>>;

/// Where endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One `HOST:PORT` (a name is resolved to all its addresses).
    Static(HostPort),
    /// A file with one `HOST:PORT` per line (`#` starts a comment); re-read on change.
    File(PathBuf),
    /// All A/AAAA records of a name, at a port; re-resolved periodically.
    Dns(HostPort),
}

/// How often sources are looked at again.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// How often names are resolved again.
    pub dns_interval: Duration,
    /// How often a backends file is checked for changes.
    pub file_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            dns_interval: Duration::from_secs(5),
            file_interval: Duration::from_secs(1),
        }
    }
}

/// Starts watching `sources` and returns the merged endpoint set. The first
/// value is published once every source has been looked at once (names
/// resolved, file read), so a caller can wait for it with `changed()`.
///
/// The background tasks stop when every receiver is dropped.
pub fn spawn(
    sources: Vec<Source>,
    resolver: Resolver,
    cfg: DiscoveryConfig,
) -> watch::Receiver<Endpoints> {
    let (tx, rx) = watch::channel(Endpoints::default());
    let (up_tx, mut up_rx) = mpsc::channel::<(usize, BTreeSet<SocketAddr>)>(16);
    let n = sources.len();
    for (i, source) in sources.into_iter().enumerate() {
        let up = up_tx.clone();
        let resolver = resolver.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let publish = |set| {
                let up = up.clone();
                async move { up.send((i, set)).await.is_ok() }
            };
            match source {
                Source::Static(hp) => watch_static(hp, resolver, cfg, publish).await,
                Source::Dns(hp) => watch_dns(hp, resolver, cfg, publish).await,
                Source::File(path) => watch_file(path, resolver, cfg, publish).await,
            }
        });
    }
    drop(up_tx);
    tokio::spawn(async move {
        let mut per_source: Vec<Option<BTreeSet<SocketAddr>>> = vec![None; n];
        let mut published = false;
        if n == 0 {
            // Nothing to wait for: publish the (empty) set so waiters wake.
            tx.send_replace(Endpoints::default());
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                up = up_rx.recv() => {
                    let Some((i, set)) = up else { return };
                    per_source[i] = Some(set);
                    if per_source.iter().any(Option::is_none) {
                        continue; // Wait until every source has spoken once.
                    }
                    let merged: BTreeSet<SocketAddr> =
                        per_source.iter().flatten().flatten().copied().collect();
                    // The first set is always published (even when empty) so
                    // that a caller waiting for discovery wakes up.
                    if published && **tx.borrow() == merged {
                        continue;
                    }
                    published = true;
                    info!(endpoints = ?merged, "endpoints");
                    tx.send_replace(Arc::new(merged));
                }
            }
        }
    });
    rx
}

/// Resolves `hp`; `Ok(empty)` when the name does not exist (a service scaled
/// to zero), `Err` when the lookup itself failed (keep the previous set).
async fn lookup(resolver: &Resolver, hp: &HostPort) -> Result<BTreeSet<SocketAddr>, ResolveError> {
    match resolver.resolve(hp).await {
        Ok(v) => Ok(v.into_iter().collect()),
        Err(ResolveError::NotFound { .. }) => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

async fn watch_static<F, Fut>(hp: HostPort, resolver: Resolver, cfg: DiscoveryConfig, publish: F)
where
    F: Fn(BTreeSet<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Some(sa) = hp.socket_addr() {
        publish(BTreeSet::from([sa])).await;
        return;
    }
    watch_dns(hp, resolver, cfg, publish).await
}

async fn watch_dns<F, Fut>(hp: HostPort, resolver: Resolver, cfg: DiscoveryConfig, publish: F)
where
    F: Fn(BTreeSet<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut last: Option<BTreeSet<SocketAddr>> = None;
    loop {
        match lookup(&resolver, &hp).await {
            Ok(set) => {
                if set.is_empty() && last.as_ref().is_none_or(|l| !l.is_empty()) {
                    warn!(name = %hp, "name has no addresses (yet)");
                }
                if last.as_ref() != Some(&set) {
                    debug!(name = %hp, addrs = ?set, "resolved");
                    if !publish(set.clone()).await {
                        return;
                    }
                    last = Some(set);
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot resolve; keeping the last known addresses");
                if last.is_none() {
                    // Unblock the first publication with an empty set.
                    if !publish(BTreeSet::new()).await {
                        return;
                    }
                    last = Some(BTreeSet::new());
                }
            }
        }
        tokio::time::sleep(cfg.dns_interval).await;
    }
}

/// One line of a backends file: `HOST:PORT`, blank, or a `#` comment; several
/// addresses on one line may be separated by spaces or commas.
pub fn parse_backends(text: &str) -> (Vec<HostPort>, Vec<String>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for word in line.split(|c: char| c.is_whitespace() || c == ',') {
            if word.is_empty() {
                continue;
            }
            match word.parse::<HostPort>() {
                Ok(hp) => ok.push(hp),
                Err(e) => errors.push(format!("line {}: {e}", n + 1)),
            }
        }
    }
    (ok, errors)
}

/// What identifies a version of a file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn watch_file<F, Fut>(path: PathBuf, resolver: Resolver, cfg: DiscoveryConfig, publish: F)
where
    F: Fn(BTreeSet<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut last_stamp = None;
    let mut last_text: Option<String> = None;
    let mut last_set: Option<BTreeSet<SocketAddr>> = None;
    let mut last_resolve = tokio::time::Instant::now();
    loop {
        let st = stamp(&path);
        let due = last_resolve.elapsed() >= cfg.dns_interval;
        if st != last_stamp || due || last_set.is_none() {
            last_stamp = st;
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => {
                    if last_text.as_deref() != Some(text.as_str()) || due {
                        let (hps, errors) = parse_backends(&text);
                        for e in &errors {
                            warn!(file = %path.display(), "skipping {e}");
                        }
                        let mut set = BTreeSet::new();
                        for hp in &hps {
                            match lookup(&resolver, hp).await {
                                Ok(s) => set.extend(s),
                                Err(e) => {
                                    warn!(file = %path.display(), error = %e, "cannot resolve")
                                }
                            }
                        }
                        last_resolve = tokio::time::Instant::now();
                        last_text = Some(text);
                        if last_set.as_ref() != Some(&set) {
                            info!(file = %path.display(), endpoints = set.len(), "backends file read");
                            if !publish(set.clone()).await {
                                return;
                            }
                            last_set = Some(set);
                        }
                    }
                }
                Err(e) => {
                    // A file being replaced may vanish for a moment: keep the
                    // last set rather than dropping every endpoint.
                    if last_set.is_none() {
                        warn!(file = %path.display(), error = %e, "cannot read the backends file; no endpoints from it until it can be read");
                        if !publish(BTreeSet::new()).await {
                            return;
                        }
                        last_set = Some(BTreeSet::new());
                    } else {
                        debug!(file = %path.display(), error = %e, "cannot read the backends file; keeping the last set");
                    }
                }
            }
        }
        tokio::time::sleep(cfg.file_interval).await;
    }
}

#[cfg(test)]
mod tests;
