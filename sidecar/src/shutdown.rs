//! Graceful shutdown: the signals that start it, and a bounded drain of the
//! connections that are still serving when it starts.
//!
//! A server owns one [`Drain`] and hands a [`Watch`] to every connection task.
//! On shutdown it stops accepting, then [`Drain::drain`] tells every watch and
//! waits, at most a grace period, until every watch has been dropped.
//!
//! ```no_run
//! # async fn example(listener: tokio::net::TcpListener) {
//! use std::time::Duration;
//! use mp_sidecar::shutdown::{self, Drain};
//!
//! let drain = Drain::new();
//! let accept = async {
//!     loop {
//!         let Ok((stream, _)) = listener.accept().await else { continue };
//!         let watch = drain.watch();
//!         tokio::spawn(async move {
//!             // Serve `stream`; when `watch.signaled()` resolves, finish the
//!             // in-flight work, then drop `watch`.
//!             let _ = (stream, watch);
//!         });
//!     }
//! };
//! tokio::select! {
//!     _ = accept => {}
//!     _ = shutdown::signal() => {}
//! }
//! let _ = drain.drain(Duration::from_secs(10)).await;
//! # }
//! ```

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Context;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// Resolves when the process is asked to stop: SIGTERM (what Kubernetes,
/// Docker and `mp delete` send to start a graceful shutdown) or SIGINT (Ctrl-C
/// in a terminal).
///
/// If a signal handler cannot be installed, that is logged and only the other
/// signal is waited for.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};

    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let (mut term, mut int) = match (term, int) {
        (Ok(t), Ok(i)) => (Some(t), Some(i)),
        (t, i) => {
            warn!("cannot install a SIGTERM/SIGINT handler; graceful shutdown may not work");
            (t.ok(), i.ok())
        }
    };
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    let int = async {
        match int.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => info!("received SIGTERM, shutting down"),
        _ = int => info!("received SIGINT, shutting down"),
    }
}

/// The owner's side of a drain: hands out [`Watch`]es and, on shutdown, tells
/// them all and waits for them to finish.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// A connection's (or any task's) view of a [`Drain`]. Dropping it tells the
/// drain that this task is done.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

/// The grace period of [`Drain::drain`] ran out while watches were still held.
#[derive(Debug, thiserror::Error)]
#[error("{remaining} task(s) still running after the {grace:?} grace period")]
pub struct GraceExpired {
    /// How many watches were still alive.
    pub remaining: usize,
    /// The grace period that ran out.
    pub grace: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain with no watches yet.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Drain { tx }
    }

    /// A new watch for a task that must be drained.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }

    /// Signals every watch and waits until all of them are dropped, or `grace`
    /// has passed. Watches created after this call see the signal at once.
    pub async fn drain(self, grace: Duration) -> Result<(), GraceExpired> {
        // `send_replace` stores the value even when no receiver exists yet.
        self.tx.send_replace(true);
        let n = self.tx.receiver_count();
        if n > 0 {
            info!(tasks = n, ?grace, "draining");
        }
        match tokio::time::timeout(grace, self.tx.closed()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(GraceExpired {
                remaining: self.tx.receiver_count(),
                grace,
            }),
        }
    }
}

/// A connection task's view of the drain signal, asked at every round of
/// the task: the watch's future is polled once (its waker registered), then
/// again only once the watch has moved (one atomic load), not at every round
/// (a poll takes the watch's lock: hundreds of instructions). Holds its
/// [`Watch`]: dropping it tells the drain that the task is done.
pub struct DrainSignal {
    watch: Watch,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    polled: bool,
}

impl std::fmt::Debug for DrainSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainSignal")
            .field("signaled", &self.wait.is_none())
            .finish()
    }
}

impl DrainSignal {
    /// The signal of `watch`'s drain.
    pub fn new(watch: Watch) -> DrainSignal {
        let w = watch.clone();
        DrainSignal {
            watch,
            wait: Some(Box::pin(async move { w.signaled().await })),
            polled: false,
        }
    }

    /// True once: at the first call after draining started (registering
    /// `cx` to be woken for it until then).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(wait) = &mut self.wait else {
            return false;
        };
        // Once registered, the waker stays with the watch: a poll is only
        // due when it moved (or its drain is gone).
        if self.polled && !self.watch.rx.has_changed().unwrap_or(true) {
            return false;
        }
        self.polled = true;
        if wait.as_mut().poll(cx).is_ready() {
            self.wait = None;
            return true;
        }
        false
    }
}

impl Watch {
    /// Resolves once draining has started (at once if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the Drain was dropped without draining: treat it as a
        // signal too, so no task waits forever on an owner that is gone.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Drives `fut` (e.g. a hyper connection) to completion; when draining
    /// starts, calls `on_drain` once on it (e.g. `graceful_shutdown`) and keeps
    /// driving it until it finishes. The watch is held until then.
    pub async fn watch<F, D>(self, fut: F, on_drain: D) -> F::Output
    where
        F: Future,
        D: FnOnce(std::pin::Pin<&mut F>),
    {
        let mut fut = pin!(fut);
        tokio::select! {
            out = fut.as_mut() => return out,
            _ = self.signaled() => on_drain(fut.as_mut()),
        }
        let out = fut.await;
        drop(self);
        out
    }
}

#[cfg(test)]
mod tests;
