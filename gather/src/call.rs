//! One call as the scatter/gather core sees it: what every leaf call shares
//! ([`Call`]), what each shard produced ([`LeafResult`]), and how failures
//! read in the statuses the caller gets.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use mp_sidecar::h2client::Deadline;
use tokio::time::Instant;
use tonic::Status;

use crate::grpc::code_name;
use crate::leaf::Outgoing;

/// One incoming call, as every leaf receives it.
#[derive(Debug)]
pub struct Call<'a> {
    /// The method path, e.g. `/mp.v1.Handler/Handle`.
    pub path: &'a PathAndQuery,
    /// The serialized request message.
    pub body: Bytes,
    /// What every leaf call shares (the framed message, the headers).
    pub out: Outgoing,
    /// When leaves must have answered (`at`), and the `grpc-timeout` they
    /// are told: that time from `start`, known without a clock read per
    /// leaf call.
    pub leaf: Deadline,
    /// Why the leaf deadline is what it is (for error messages).
    pub deadline_note: DeadlineNote,
    /// When the answer must leave, if the caller sent a deadline: that
    /// deadline less a small reserve for the way back (the merger's
    /// deadline).
    pub answer_deadline: Option<Instant>,
    /// When the call arrived: the fan-out's start, from which every shard's
    /// elapsed time counts.
    pub start: Instant,
}

impl Call<'_> {
    /// True for `mp.v1.Handler/Handle`, whose messages mp-gather understands.
    pub fn is_handle(&self) -> bool {
        self.path.path() == mp_proto::names::HANDLE_PATH
    }
}

/// Why a call's leaf deadline is what it is; shown in its errors.
#[derive(Clone, Copy, Debug)]
pub enum DeadlineNote {
    /// `--leaf-timeout`.
    LeafTimeout(Duration),
    /// The caller's deadline (`total`) less the reserve for merging.
    Caller {
        /// What leaves get.
        budget: Duration,
        /// The caller's `grpc-timeout`.
        total: Duration,
    },
}

impl std::fmt::Display for DeadlineNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadlineNote::LeafTimeout(d) => write!(f, "--leaf-timeout {d:?}"),
            DeadlineNote::Caller { budget, total } => {
                write!(f, "{budget:?} of the caller's {total:?} deadline")
            }
        }
    }
}

/// What one shard produced.
#[derive(Debug)]
pub struct LeafResult {
    /// Shard index.
    pub shard: usize,
    /// The reply message bytes, or why there is none.
    pub result: Result<Bytes, Status>,
    /// From fan-out to this outcome.
    pub elapsed: Duration,
    /// The replica whose answer was used (none when the deadline hit first
    /// or no replica was available).
    pub endpoint: Option<SocketAddr>,
    /// True when the answer came from the hedged call.
    pub hedged: bool,
}

impl LeafResult {
    /// `shard 2 (host:port)`.
    pub fn who(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("shard {} ({e})", self.shard),
            None => format!("shard {}", self.shard),
        }
    }
}

/// Adds the error chain to a transport-level status ("transport error" alone
/// does not say that the connection was refused), without repeating a part.
pub fn explain(status: Status) -> Status {
    use std::error::Error as _;
    let Some(first) = status.source() else {
        return status;
    };
    let mut text = String::new();
    let mut source = Some(first);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = e.source();
    }
    if !text.contains(status.message()) {
        text = format!("{}: {text}", status.message());
    }
    Status::new(status.code(), text)
}

/// `shard 1 (addr): UNAVAILABLE: ...; shard 3: ...` for the failed results.
pub fn failures<'a>(results: impl Iterator<Item = &'a LeafResult>) -> String {
    let mut out = String::new();
    for r in results {
        if let Err(s) = &r.result {
            if !out.is_empty() {
                out.push_str("; ");
            }
            let _ = write!(out, "{}: {}", r.who(), status_text(s));
        }
    }
    out
}

/// `CODE: message`, or just `CODE` when there is no message.
pub fn status_text(s: &Status) -> String {
    if s.message().is_empty() {
        code_name(s.code()).to_string()
    } else {
        format!("{}: {}", code_name(s.code()), s.message())
    }
}
