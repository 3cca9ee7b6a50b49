//! Turning the shards' outcomes into one answer: the user's
//! `mp.v1.Merger/Merge`, or a built-in reducer.
//!
//! | reducer | for | answer |
//! |---|---|---|
//! | `json-array` | `mp.v1.Handler/Handle` | an `mp.v1.Reply` whose JSON body is the array of the shards' JSON bodies, in shard order; `null` for a shard that did not answer (then the reply's metadata `mp-missing-shards` lists them) |
//! | `concat` | any method | the shards' reply messages concatenated in shard order. Protobuf decodes concatenated messages as one merged message: repeated fields append, maps merge (later shard wins per key), scalars and oneofs take the last shard's value, sub-messages merge recursively |
//! | `first` | any method | the first successful reply to arrive |
//!
//! With no `--merge` and no `--reducer`, `mp.v1.Handler/Handle` is merged by
//! `json-array` (the seed's scatter merged JSON) and every other method by
//! `concat`, the only reducer that is meaningful for a proto mp-gather does not
//! know.
//!
//! A merger receives the original request and one `LeafOutcome` per shard.
//! For a method other than `mp.v1.Handler/Handle` the request and each reply
//! travel as raw payload bytes (the request's metadata `mp-method` names the
//! method), and the merger must answer with a raw body: the bytes of the
//! method's reply message.
//!
//! Neither the merger's request nor the `json-array` reply is decoded and
//! re-encoded: both are spliced from the leaves' reply bytes, checked as
//! prost would decode them (see [`crate::pb`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mp_proto::v1::{leaf_outcome, payload::Kind, LeafError, LeafOutcome, Reply};
use mp_sidecar::addr::{HostPort, Resolver};
use mp_sidecar::grpc;
use mp_sidecar::h2client::{CallError, Client, ClientConfig, Deadline, RequestHead};
use mp_sidecar::hpack::HeaderList;
use prost::Message;
use std::sync::Mutex;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::call::{failures, Call, LeafResult};
use crate::config::ReducerKind;
use crate::leaf;
use crate::pb::{self, Spliced};

/// Metadata key of a merged reply that lists the shards that did not answer.
pub const MISSING_SHARDS: &str = "mp-missing-shards";
/// Metadata key of a merge request that names the method of a non-mp.v1 call.
pub const METHOD_KEY: &str = "mp-method";

/// Largest reply message accepted from a merger.
const MAX_MERGED: usize = 64 << 20;

/// The user's merger: one HTTP/2 connection on the lean client
/// ([`mp_sidecar::h2client`], driven by its own task), opened at the first
/// merge and again once it closed; a host name is resolved at every connect,
/// so a merger that comes up later, or moves, is found.
#[derive(Debug)]
pub struct MergerLink {
    target: HostPort,
    resolver: Resolver,
    client: Mutex<Option<Client>>,
    /// Held while connecting: calls that find no connection wait for the
    /// one being made instead of each making their own.
    connecting: tokio::sync::Mutex<()>,
}

impl MergerLink {
    /// The merger at `target`; connects at the first merge.
    pub fn new(target: HostPort, resolver: Resolver) -> Self {
        MergerLink {
            target,
            resolver,
            client: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn open(&self) -> Option<Client> {
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        client.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// The open connection, or a new one to the first of the merger's
    /// addresses that answers; why not, for the error's text.
    async fn client(&self) -> Result<Client, String> {
        if let Some(c) = self.open() {
            return Ok(c);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.open() {
            return Ok(c);
        }
        let addrs = self
            .resolver
            .resolve(&self.target)
            .await
            .map_err(|e| e.to_string())?;
        let authority = self.target.to_string();
        let mut last = format!("{} has no address", self.target);
        for addr in addrs {
            match Client::connect(addr, &authority, &ClientConfig::default()).await {
                Ok(c) => {
                    *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }
}

/// How outcomes are merged.
#[derive(Debug)]
pub enum Merge {
    /// The user's merger.
    Merger {
        /// Its connection.
        link: MergerLink,
        /// Its address, for error messages.
        endpoint: Arc<str>,
    },
    /// A built-in reducer; `None` picks by method (see the module docs).
    Reducer(Option<ReducerKind>),
}

impl Merge {
    /// The reducer that applies to `call`, `None` for a merger.
    pub fn reducer_for(&self, call: &Call<'_>) -> Option<ReducerKind> {
        match self {
            Merge::Merger { .. } => None,
            Merge::Reducer(Some(r)) => Some(*r),
            Merge::Reducer(None) if call.is_handle() => Some(ReducerKind::JsonArray),
            Merge::Reducer(None) => Some(ReducerKind::Concat),
        }
    }

    /// Merges the outcomes (one per shard, in shard order) of `call`. The
    /// merger's deadline is the call's answer deadline (the caller's, less a
    /// small reserve), else `fallback` from now.
    pub async fn merge(
        &self,
        call: &Call<'_>,
        outcomes: Vec<LeafResult>,
        fallback: Duration,
    ) -> Result<Bytes, Status> {
        match self {
            Merge::Merger { link, endpoint } => {
                // Boxed: rare state (a connect, a call), which every call's
                // future would carry (and copy) for the reducers too.
                Box::pin(merge_with(link, endpoint, call, outcomes, fallback)).await
            }
            _ => match self.reducer_for(call) {
                Some(ReducerKind::JsonArray) => json_array(call, outcomes),
                Some(ReducerKind::Concat) => concat(outcomes),
                // `first` never scatters to completion; the gather handles it.
                Some(ReducerKind::First) | None => Err(Status::internal(
                    "mp-gather bug: first is not a merge of complete outcomes",
                )),
            },
        }
    }
}

/// Fails when no shard answered, naming every shard's failure.
fn any_answer(outcomes: &[LeafResult]) -> Result<(), Status> {
    if outcomes.iter().any(|o| o.result.is_ok()) {
        return Ok(());
    }
    let code = outcomes
        .first()
        .and_then(|o| o.result.as_ref().err())
        .map_or(Code::Unavailable, Status::code);
    Err(Status::new(
        code,
        format!("no shard answered: {}", failures(outcomes.iter())),
    ))
}

fn json_array(call: &Call<'_>, outcomes: Vec<LeafResult>) -> Result<Bytes, Status> {
    if !call.is_handle() {
        return Err(Status::unimplemented(format!(
            "the json-array reducer merges only {} replies, not {}: start mp-gather with \
             --reducer concat or --merge ADDR",
            mp_proto::names::HANDLE_PATH,
            call.path.path()
        )));
    }
    any_answer(&outcomes)?;
    // Each shard's JSON value as it came, in shard order (None: null).
    let mut values: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(outcomes.len());
    let mut missing = String::new();
    for o in &outcomes {
        match &o.result {
            Ok(bytes) => values.push(json_value(o, bytes)?),
            Err(_) => {
                if !missing.is_empty() {
                    missing.push(',');
                }
                missing.push_str(&o.shard.to_string());
                values.push(None);
            }
        }
    }
    Ok(pb::json_array_reply(&values, MISSING_SHARDS, &missing))
}

/// The JSON body of shard `o`'s reply `bytes`, encoded (None: null), as it
/// came when it can be found on the wire.
fn json_value<'a>(o: &LeafResult, bytes: &'a Bytes) -> Result<Option<Cow<'a, [u8]>>, Status> {
    pb::check_envelope(bytes).map_err(|e| not_a_reply(o, e))?;
    Ok(match pb::body(bytes) {
        pb::Body::Json(v) => Some(Cow::Borrowed(v)),
        pb::Body::Missing => None,
        pb::Body::Raw => return Err(raw_body(o)),
        // Fields that protobuf merges (no encoder writes them): decoding
        // says what they merge to.
        pb::Body::Repeated => {
            let reply = Reply::decode(bytes.clone()).map_err(|e| not_a_reply(o, e))?;
            match reply.body.and_then(|b| b.kind) {
                Some(Kind::Json(v)) => Some(Cow::Owned(v.encode_to_vec())),
                Some(Kind::Raw(_)) => return Err(raw_body(o)),
                None => None,
            }
        }
    })
}

fn not_a_reply(o: &LeafResult, e: impl std::fmt::Display) -> Status {
    Status::internal(format!(
        "{} replied with bytes that are not an mp.v1.Reply: {e}",
        o.who()
    ))
}

fn raw_body(o: &LeafResult) -> Status {
    Status::failed_precondition(format!(
        "{} replied with a raw body, and the json-array reducer needs JSON bodies: use \
         --merge ADDR or --reducer concat",
        o.who()
    ))
}

fn concat(outcomes: Vec<LeafResult>) -> Result<Bytes, Status> {
    any_answer(&outcomes)?;
    let len = outcomes
        .iter()
        .map(|o| o.result.as_ref().map_or(0, Bytes::len))
        .sum();
    let mut answers = outcomes.into_iter().filter_map(|o| o.result.ok());
    let first = answers.next().unwrap_or_default();
    // The other answers are empty (or there are none, as with one shard):
    // the first is the whole concatenation, passed on, not copied.
    if first.len() == len {
        return Ok(first);
    }
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(&first);
    for b in answers {
        out.extend_from_slice(&b);
    }
    Ok(out.freeze())
}

async fn merge_with(
    link: &MergerLink,
    endpoint: &str,
    call: &Call<'_>,
    outcomes: Vec<LeafResult>,
    fallback: Duration,
) -> Result<Bytes, Status> {
    let handle = call.is_handle();
    let request = if handle {
        pb::check_envelope(&call.body).map_err(|e| {
            Status::invalid_argument(format!("the request is not an mp.v1.Request: {e}"))
        })?;
        call.body.clone()
    } else {
        pb::raw_request(&call.body, METHOD_KEY, call.path.path())
    };
    let room = outcomes
        .iter()
        .map(|o| o.result.as_ref().map_or(0, Bytes::len) + 64)
        .sum();
    let mut merge_request = pb::MergeRequestWriter::new(&request, room);
    for o in &outcomes {
        let mut fields = LeafOutcome {
            shard: o.shard as u32,
            outcome: None,
            elapsed: prost_types::Duration::try_from(o.elapsed).ok(),
            endpoint: o.endpoint.map(|a| a.to_string()).unwrap_or_default(),
            hedged: o.hedged,
        };
        let error = |code: Code, message: String| {
            Some(leaf_outcome::Outcome::Error(LeafError {
                code: code as i32,
                message,
            }))
        };
        let reply = match &o.result {
            Ok(bytes) if !handle => Some(Spliced::Raw(bytes)),
            Ok(bytes) => match pb::check_envelope(bytes) {
                Ok(()) => Some(Spliced::Reply(bytes)),
                Err(e) => {
                    let message = format!("the reply is not an mp.v1.Reply: {e}");
                    fields.outcome = error(Code::Internal, message);
                    None
                }
            },
            Err(s) => {
                fields.outcome = error(s.code(), s.message().to_string());
                None
            }
        };
        merge_request.leaf(&fields, reply);
    }
    let deadline = call
        .answer_deadline
        .unwrap_or_else(|| Instant::now() + fallback);
    let framed = merge_request.finish();
    let mut headers = HeaderList::new();
    headers.push(b"content-type", grpc::CONTENT_TYPE_GRPC.as_bytes());
    headers.push(b"te", b"trailers");
    for (name, value) in call.out.metadata().iter() {
        headers.push(name, value);
    }
    let head = Arc::new(RequestHead {
        path: mp_proto::names::MERGE_PATH.as_bytes().to_vec(),
        headers,
    });
    let late =
        || Status::deadline_exceeded(format!("the merger at {endpoint} did not answer in time"));
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::unavailable(format!("the merger at {endpoint} is not reachable: {e}"))
    };
    let answer = async {
        // A merge the merger certainly did not take (its connection went
        // away first: GOAWAY, REFUSED_STREAM, closed before the request
        // left) goes once more, on a new connection when that one closed:
        // a merger restarting or shedding load costs the caller nothing.
        let mut again = true;
        loop {
            let client = link.client().await.map_err(|e| unreachable(&e))?;
            // The merger is told the time left (grpc-timeout).
            let told = Deadline::from(deadline);
            let merged = client
                .call(head.clone(), framed.clone(), Some(told), MAX_MERGED + 5)
                .await;
            match merged {
                Err(CallError::Unprocessed(_)) if again => again = false,
                merged => return Ok::<_, Status>(merged),
            }
        }
    };
    let reply = match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Ok(reply))) => leaf::read_reply(reply).map_err(|s| merger_failed(endpoint, s))?,
        Ok(Ok(Err(CallError::DeadlineExceeded))) | Err(_) => return Err(late()),
        Ok(Ok(Err(CallError::TooLarge(_)))) => {
            return Err(Status::resource_exhausted(format!(
                "the merger at {endpoint} answered more than {MAX_MERGED} bytes"
            )))
        }
        Ok(Ok(Err(e))) => return Err(unreachable(&e)),
        Ok(Err(s)) => return Err(s),
    };
    let not_a_reply = |e: &dyn std::fmt::Display| {
        Status::internal(format!(
            "the merger at {endpoint} answered with bytes that are not an mp.v1.Reply: {e}"
        ))
    };
    if handle {
        // The merger's reply is the caller's, as it came.
        pb::check_envelope(&reply).map_err(|e| not_a_reply(&e))?;
        return Ok(reply);
    }
    let reply = Reply::decode(reply).map_err(|e| not_a_reply(&e))?;
    match reply.body.and_then(|b| b.kind) {
        Some(Kind::Raw(bytes)) => Ok(bytes.into()),
        None => Ok(Bytes::new()),
        Some(Kind::Json(_)) => Err(Status::internal(format!(
            "the merger at {endpoint} answered {} with a JSON body; for a method other than {} \
             it must answer with a raw body holding the reply message",
            call.path.path(),
            mp_proto::names::HANDLE_PATH
        ))),
    }
}

fn merger_failed(endpoint: &str, s: Status) -> Status {
    use std::error::Error as _;
    if s.source().is_some() {
        // A transport error: the merger is down or unreachable.
        let s = crate::call::explain(s);
        return Status::unavailable(format!(
            "the merger at {endpoint} is not reachable: {}",
            s.message()
        ));
    }
    Status::new(
        s.code(),
        format!(
            "the merger at {endpoint} failed: {}",
            crate::call::status_text(&s)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_proto::v1::Payload;
    use prost_types::value::Kind as ValueKind;
    use prost_types::{ListValue, Value};

    fn leaf(bytes: &[u8]) -> LeafResult {
        LeafResult {
            shard: 3,
            result: Ok(Bytes::copy_from_slice(bytes)),
            elapsed: Duration::ZERO,
            endpoint: None,
            hedged: false,
        }
    }

    fn json(v: Value) -> Vec<u8> {
        Reply {
            body: Some(Payload {
                kind: Some(Kind::Json(v)),
            }),
            metadata: Default::default(),
        }
        .encode_to_vec()
    }

    fn list(n: f64) -> Value {
        Value {
            kind: Some(ValueKind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(ValueKind::NumberValue(n)),
                }],
            })),
        }
    }

    fn value_of(bytes: &[u8]) -> Result<Option<Value>, Status> {
        let o = leaf(bytes);
        let Ok(b) = &o.result else { unreachable!() };
        Ok(json_value(&o, b)?.map(|v| Value::decode(&*v).expect("a Value")))
    }

    #[test]
    fn a_json_body_is_taken_as_it_came_and_merged_fields_as_they_merge() {
        assert_eq!(value_of(&json(list(1.0))).unwrap(), Some(list(1.0)));
        assert_eq!(value_of(&Reply::default().encode_to_vec()).unwrap(), None);
        // Two bodies, each a list: protobuf merges them into one list of both.
        let mut twice = json(list(1.0));
        twice.extend(json(list(2.0)));
        let merged = Reply::decode(&twice[..]).unwrap().body.unwrap().kind;
        let Some(Kind::Json(expected)) = merged else {
            panic!("{merged:?}")
        };
        assert_eq!(value_of(&twice).unwrap(), Some(expected));
        // Not a reply; a raw body: errors naming the shard.
        let err = value_of(&[0x0a, 0x05]).unwrap_err();
        assert!(err
            .message()
            .contains("shard 3 replied with bytes that are not an mp.v1.Reply"));
        let raw = Reply {
            body: Some(Payload {
                kind: Some(Kind::Raw(b"x".to_vec())),
            }),
            metadata: Default::default(),
        };
        let mut raw_twice = raw.encode_to_vec();
        raw_twice.extend(raw.encode_to_vec());
        for bytes in [raw.encode_to_vec(), raw_twice] {
            let err = value_of(&bytes).unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        }
    }
}
