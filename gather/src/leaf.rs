//! One gRPC call to a leaf: the replica is picked from the shard's sidecar
//! pool (discovery, health, round robin), and the call goes out on the
//! shard's lean HTTP/2 client of that replica ([`mp_sidecar::h2client`]).
//! The request message is framed once per fan-out and the same bytes, and
//! the same header list, are shared by every leaf call (no copy per leaf);
//! the reply comes back whole, within a size limit, its status taken from
//! the trailers (or a trailers-only response).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::uri::PathAndQuery;
use http::{HeaderValue, StatusCode};
use mp_sidecar::grpc;
use mp_sidecar::h2client::{CallError, Deadline, Reply, RequestHead};
use mp_sidecar::hpack::HeaderList;
use mp_sidecar::pool::Endpoint;
use tokio::time::{timeout_at, Instant};
use tonic::{Code, Status};

use crate::own::OwnLeaves;
use crate::shard::Shard;

/// Largest reply message accepted from a leaf (tonic's default too).
pub const MAX_REPLY: usize = 4 << 20;
/// How long a call waits for a shard whose replicas are all still connecting.
const STARTING_WAIT: Duration = Duration::from_secs(1);
/// Replicas tried for one call whose request never left (connection closing).
const MAX_ATTEMPTS: usize = 8;

/// What every leaf call of one fan-out shares.
#[derive(Debug)]
pub struct Outgoing {
    /// The method path.
    pub path: PathAndQuery,
    /// The request message in its gRPC frame.
    pub framed: Bytes,
    /// `:path`, content-type, te and the caller's forwarded metadata, encoded
    /// by each connection (`grpc-timeout` is added per call).
    pub head: Arc<RequestHead>,
    /// The caller connection's own leaf connections, when its calls use them
    /// (see [`crate::own`]); otherwise the shards' shared ones.
    pub own: Option<Arc<OwnLeaves>>,
}

/// The fields of [`Outgoing::head`] before the caller's metadata.
const OWN_FIELDS: usize = 2;

/// The request head the last call on a thread built, and the caller's header
/// list it was built from (held: a list no one holds may be filled again
/// with other fields, see [`mp_sidecar::hpack::Decoder::decode_shared`]).
#[derive(Default)]
struct LastHead {
    caller: Option<Arc<HeaderList>>,
    head: Option<Arc<RequestHead>>,
}

thread_local! {
    /// Per thread, so taking it needs no lock.
    static LAST_HEAD: RefCell<LastHead> = RefCell::new(LastHead::default());
}

/// The head mp-gather sends its leaves for a call of `path` with the
/// caller's `headers`: mp-gather's own fields, then the forwardable ones.
fn build_head(path: &PathAndQuery, headers: &HeaderList) -> RequestHead {
    let mut list = HeaderList::with_capacity(headers.len() + OWN_FIELDS, headers.bytes() + 40);
    list.push(b"content-type", grpc::CONTENT_TYPE_GRPC.as_bytes());
    list.push(b"te", b"trailers");
    for (name, value) in forwardable(headers) {
        list.push(name, value);
    }
    RequestHead {
        path: path.as_str().as_bytes().to_vec(),
        headers: list,
    }
}

/// True when [`build_head`] would build `head` again.
fn head_is_for(head: &RequestHead, path: &PathAndQuery, headers: &HeaderList) -> bool {
    if head.path != path.as_str().as_bytes() {
        return false;
    }
    let mut mine = head.headers.iter().skip(OWN_FIELDS);
    forwardable(headers).all(|field| mine.next() == Some(field)) && mine.next().is_none()
}

/// The caller's headers that travel on to the leaves.
fn forwardable(headers: &HeaderList) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .iter()
        .filter(|(n, _)| crate::grpc::is_forwardable(n))
}

impl Outgoing {
    /// The shared parts of calling `path` with the request message in its
    /// gRPC frame (`framed`, as the caller sent it) and the caller's headers
    /// (`headers`: the forwardable ones travel on, see
    /// [`crate::grpc::is_forwardable`]).
    pub fn new(path: PathAndQuery, framed: Bytes, headers: &Arc<HeaderList>) -> Self {
        // A caller's calls mostly repeat the path and the metadata of the one
        // before: the head built for that one serves again (and the leaf
        // connection, seeing the same head, reuses its encoded bytes too).
        let head = LAST_HEAD.with(|last| {
            let last = &mut *last.borrow_mut();
            let same_list = match &last.caller {
                Some(c) if Arc::ptr_eq(c, headers) => true,
                // Equal fields in another list (e.g. the first of a
                // connection's requests, decoded before its block repeated):
                // that list is the one to meet again.
                Some(c) if **c == **headers => {
                    last.caller = Some(headers.clone());
                    true
                }
                _ => false,
            };
            match &last.head {
                // The very same list: mostly the very same `Arc` (the
                // server's decoder shares the list of a repeated block).
                Some(h) if same_list && h.path == path.as_str().as_bytes() => h.clone(),
                // The same forwardable fields among others that changed
                // (e.g. grpc-timeout).
                Some(h) if head_is_for(h, &path, headers) => {
                    last.caller = Some(headers.clone());
                    h.clone()
                }
                _ => {
                    let h = Arc::new(build_head(&path, headers));
                    last.caller = Some(headers.clone());
                    last.head = Some(h.clone());
                    h
                }
            }
        });
        Outgoing {
            path,
            framed,
            head,
            own: None,
        }
    }

    /// The caller's metadata that travels on (for the merger call): the
    /// head's fields after mp-gather's own.
    pub fn metadata(&self) -> HeaderList {
        let mut list = HeaderList::new();
        for (name, value) in self.head.headers.iter().skip(OWN_FIELDS) {
            list.push(name, value);
        }
        list
    }
}

/// The next available replica of `shard` (round robin), other than `avoid`.
pub fn pick(shard: &Shard, avoid: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
    let Some(avoid) = avoid else {
        return shard.pool.pick();
    };
    // Round robin moves on at every pick: a few tries find another replica
    // whenever one is available.
    (0..4)
        .filter_map(|_| shard.pool.pick())
        .find(|e| !Arc::ptr_eq(e, avoid))
}

/// How one leaf call ended.
#[derive(Debug)]
pub struct Answer {
    /// The reply message, or why there is none.
    pub result: Result<Bytes, Status>,
    /// The replica that answered (none when no replica took the call).
    pub endpoint: Option<Arc<Endpoint>>,
    /// When the call ended: one clock read serves the replica's metrics and
    /// the shard's.
    pub at: Instant,
}

/// Calls one replica of `shard` (`first` if given, else the next one; never
/// `avoid`), started at `start`, and reads its reply. Bounded by `deadline`:
/// the leaf client ends the call when it passes (one timer per leaf
/// connection, not one per call), and so does every wait before it.
/// Dropping the future cancels the call (RST_STREAM CANCEL).
pub async fn call(
    shard: &Shard,
    out: &Outgoing,
    deadline: Deadline,
    start: Instant,
    first: Option<Arc<Endpoint>>,
    avoid: Option<&Arc<Endpoint>>,
) -> Answer {
    let sent = send(shard, out, deadline, first, avoid).await;
    let at = Instant::now();
    match sent {
        Err(s) => Answer {
            result: Err(s),
            endpoint: None,
            at,
        },
        Ok((ep, reply)) => {
            let code = reply.as_ref().map_or_else(|s| s.code() as u16, |_| 0);
            // Metrics and passive health (UNAVAILABLE streaks eject).
            ep.record(code, at.saturating_duration_since(start));
            Answer {
                result: reply,
                endpoint: Some(ep),
                at,
            }
        }
    }
}

/// Sends the call to replicas in turn until one takes it (a replica that
/// refuses it unprocessed passes it on); the replica and its outcome.
async fn send(
    shard: &Shard,
    out: &Outgoing,
    deadline: Deadline,
    mut next: Option<Arc<Endpoint>>,
    avoid: Option<&Arc<Endpoint>>,
) -> Result<(Arc<Endpoint>, Result<Bytes, Status>), Status> {
    let mut waited = false;
    for _ in 0..MAX_ATTEMPTS {
        let ep = match next.take().or_else(|| pick(shard, avoid)) {
            Some(ep) => ep,
            // Just started: the connections may be a moment away.
            None if !waited && avoid.is_none() => {
                waited = true;
                // Boxed, as the lookup below: rare waits whose state every
                // call's future would otherwise carry and copy.
                let wait = shard.pool.wait_available(STARTING_WAIT);
                if Box::pin(timeout_at(deadline.at, wait)).await.is_err() {
                    return Err(Status::deadline_exceeded("no replica was ready in time"));
                }
                continue;
            }
            None => break,
        };
        let client = match &out.own {
            Some(own) => own.client(shard, &ep),
            None => shard.client(ep.addr()),
        };
        ep.metrics().request();
        // The leaf learns its deadline (grpc-timeout), so it can give up too.
        let call = client.call(
            out.head.clone(),
            out.framed.clone(),
            Some(deadline),
            MAX_REPLY + 5,
        );
        match call.await {
            Ok(reply) => return Ok((ep, read_reply(reply))),
            // Refused unprocessed (REFUSED_STREAM, beyond a GOAWAY: a replica
            // shutting down; or never written): the same call goes to another
            // replica, as the pool does.
            Err(CallError::Unprocessed(_)) => continue,
            Err(CallError::TooLarge(_)) => {
                let s = Status::resource_exhausted(format!(
                    "the reply is larger than {MAX_REPLY} bytes"
                ));
                return Ok((ep, Err(s)));
            }
            Err(CallError::Failed(why)) => return Ok((ep, Err(Status::unavailable(why)))),
            Err(CallError::DeadlineExceeded) => {
                // The caller names the deadline (it knows where it came from).
                return Ok((ep, Err(Status::deadline_exceeded("no answer in time"))));
            }
        }
    }
    // A name that does not resolve leaves the pool empty: say so, naming it.
    let mut why = shard.pool.describe();
    if shard.pool.endpoints().is_empty() {
        if let Ok(Some(note)) = Box::pin(timeout_at(deadline.at, shard.unresolved())).await {
            why = format!("{why}; {note}");
        }
    }
    Err(Status::unavailable(why))
}

/// The reply message of a leaf's whole reply, or its status.
pub fn read_reply(reply: Reply) -> Result<Bytes, Status> {
    let http = reply.status();
    if http != 200 {
        return Err(from_http(
            StatusCode::from_u16(http).unwrap_or(StatusCode::BAD_GATEWAY),
        ));
    }
    // Trailers-only: the status is in the headers and there is no message.
    if let Some(code) = reply.head.get(b"grpc-status").and_then(grpc::parse_status) {
        return Err(status(code, &reply.head, "a status without a reply"));
    }
    let code = reply
        .trailers
        .as_ref()
        .and_then(|t| t.get(b"grpc-status"))
        .and_then(grpc::parse_status);
    match code {
        Some(0) => {}
        Some(code) => {
            let trailers = reply.trailers.as_ref().expect("a status in the trailers");
            return Err(status(code, trailers, ""));
        }
        None => return Err(Status::internal("the reply ended without a grpc-status")),
    }
    let mut buf = reply.body;
    if buf.len() < 5 {
        return Err(Status::internal("the reply has no message"));
    }
    let compressed = buf.get_u8();
    let len = buf.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "the reply is compressed, though no compression was offered",
        ));
    }
    if buf.len() != len {
        return Err(Status::internal(format!(
            "malformed reply: a frame of {len} bytes with {} bytes of data",
            buf.len()
        )));
    }
    Ok(buf)
}

fn status(code: u16, headers: &HeaderList, fallback: &str) -> Status {
    let message = headers
        .get(b"grpc-message")
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .map(|v| grpc::decode_message(&v))
        .unwrap_or_else(|| fallback.to_string());
    Status::new(Code::from_i32(i32::from(code)), message)
}

/// The gRPC status of a non-200 HTTP response (gRPC's HTTP-to-status map).
fn from_http(s: StatusCode) -> Status {
    let code = match s.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the leaf answered HTTP {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(tenant: &str, timeout: &str) -> HeaderList {
        let mut h = HeaderList::new();
        h.push(b":path", b"/a.B/C");
        h.push(b"content-type", b"application/grpc");
        h.push(b"grpc-timeout", timeout.as_bytes());
        h.push(b"x-tenant", tenant.as_bytes());
        h
    }

    fn out(path: &'static str, headers: &HeaderList) -> Outgoing {
        let headers = Arc::new(headers.clone());
        Outgoing::new(PathAndQuery::from_static(path), Bytes::new(), &headers)
    }

    #[test]
    fn the_leaves_head_is_reused_while_what_travels_on_is_the_same() {
        let a = out("/a.B/C", &caller("a", "1S")).head;
        // The same list: the same head.
        assert!(Arc::ptr_eq(&a, &out("/a.B/C", &caller("a", "1S")).head));
        // Only what does not travel on changed: the same head.
        assert!(Arc::ptr_eq(&a, &out("/a.B/C", &caller("a", "2S")).head));
        // Other metadata, another path: heads of their own, saying so.
        let b = out("/a.B/C", &caller("b", "2S")).head;
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.headers.get(b"x-tenant"), Some(&b"b"[..]));
        let d = out("/a.B/D", &caller("b", "2S")).head;
        assert!(!Arc::ptr_eq(&b, &d));
        assert_eq!(d.path, b"/a.B/D");
        // Back to the first caller's list: its fields again.
        let again = out("/a.B/C", &caller("a", "1S")).head;
        assert_eq!(again.headers, a.headers);
        assert_eq!(again.path, a.path);
    }

    #[test]
    fn the_latest_of_equal_caller_lists_is_the_one_remembered() {
        // The server shares one list among a connection's repeated request
        // heads, after a first request decoded into a list of its own: the
        // shared one is kept (held) for the pointer comparison.
        let first = Arc::new(caller("a", "1S"));
        let shared = Arc::new(caller("a", "1S"));
        let path = PathAndQuery::from_static("/a.B/C");
        let h1 = Outgoing::new(path.clone(), Bytes::new(), &first).head;
        let h2 = Outgoing::new(path.clone(), Bytes::new(), &shared).head;
        assert!(Arc::ptr_eq(&h1, &h2));
        assert_eq!(
            Arc::strong_count(&shared),
            2,
            "held by the thread's last head"
        );
        assert_eq!(Arc::strong_count(&first), 1, "let go");
    }
}
