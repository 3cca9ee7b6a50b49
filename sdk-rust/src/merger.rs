//! Mergers: what answers `mp.v1.Merger/Merge`, combining every leaf's outcome
//! of a scatter into one reply; raw over [`MergeRequest`], or typed over the
//! leaves' own serde types with [`json_merger`].

use crate::handler::{reply_json, short_type_name};
use crate::{Error, Result};
use mp_proto::v1::{leaf_outcome::Outcome, LeafOutcome, MergeRequest, Reply};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;
use tonic::Code;

/// Combines the outcomes of every leaf into one reply; called concurrently.
///
/// [`merger`] wraps an async function over [`MergeRequest`], [`json_merger`]
/// one over [`Merge<T>`] (each leaf's reply already read as `T`).
pub trait Merger: Send + Sync + 'static {
    /// Merges `request`. An `Err` reaches the caller as that gRPC status.
    fn merge(&self, request: MergeRequest) -> impl Future<Output = Result<Reply>> + Send;
}

/// A [`Merger`] made of an async function; see [`merger`].
#[derive(Debug, Clone)]
pub struct FnMerger<F>(F);

/// Makes a [`Merger`] of an async function from [`MergeRequest`] to
/// [`Result<Reply>`](crate::Result). [`leaf_json`] reads one leaf's reply.
pub fn merger<F, Fut>(f: F) -> FnMerger<F>
where
    F: Fn(MergeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply>> + Send,
{
    FnMerger(f)
}

impl<F, Fut> Merger for FnMerger<F>
where
    F: Fn(MergeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply>> + Send,
{
    fn merge(&self, request: MergeRequest) -> impl Future<Output = Result<Reply>> + Send {
        (self.0)(request)
    }
}

/// What a [`json_merger`] function receives: the caller's request body and
/// each leaf's reply read as `T`, in shard order.
#[derive(Debug, Clone)]
pub struct Merge<T> {
    /// The body the caller sent (JSON `null` when it had none or sent raw bytes).
    pub request: serde_json::Value,
    /// One entry per shard, in shard order, failed ones included.
    pub leaves: Vec<Leaf<T>>,
}

/// One shard's outcome in a [`Merge`].
#[derive(Debug, Clone)]
pub struct Leaf<T> {
    /// Which shard (its `MP_SHARD`).
    pub shard: u32,
    /// The leaf's reply read as `T`; or its gRPC error; or `INTERNAL` when its
    /// reply was not the JSON `T` expects.
    pub result: Result<T>,
    /// How long the shard took.
    pub elapsed: Duration,
    /// Which replica answered (`host:port`); empty when none did.
    pub endpoint: String,
}

impl<T> Merge<T> {
    /// The replies of the leaves that answered, in shard order.
    pub fn replies(&self) -> impl Iterator<Item = &T> {
        self.leaves.iter().filter_map(|l| l.result.as_ref().ok())
    }

    /// The leaves that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Leaf<T>> {
        self.leaves.iter().filter(|l| l.result.is_err())
    }

    /// Every leaf's reply, in shard order, or the first failure (its code, and
    /// its message prefixed with the shard) when any leaf failed. For mergers
    /// that cannot give a partial answer.
    pub fn all(self) -> Result<Vec<T>> {
        self.leaves
            .into_iter()
            .map(|l| {
                l.result.map_err(|e| {
                    Error::new(e.code(), format!("shard {}: {}", l.shard, e.message()))
                })
            })
            .collect()
    }
}

impl<T: DeserializeOwned> Merge<T> {
    /// Reads a [`MergeRequest`]: each leaf's reply as `T`.
    pub fn from_request(request: &MergeRequest) -> Merge<T> {
        let body = request.request.as_ref().and_then(|r| r.body.as_ref());
        Merge {
            request: body
                .and_then(|b| b.to_json().ok())
                .unwrap_or(serde_json::Value::Null),
            leaves: request
                .leaves
                .iter()
                .map(|outcome| Leaf {
                    shard: outcome.shard,
                    result: leaf_json(outcome),
                    elapsed: outcome
                        .elapsed
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or_default(),
                    endpoint: outcome.endpoint.clone(),
                })
                .collect(),
        }
    }
}

/// One leaf's reply read as `T`. A leaf that failed gives its own gRPC code
/// and message; a reply that is not the JSON `T` expects gives `INTERNAL`
/// naming the shard.
pub fn leaf_json<T: DeserializeOwned>(outcome: &LeafOutcome) -> Result<T> {
    let shard = outcome.shard;
    let reply = match &outcome.outcome {
        Some(Outcome::Reply(reply)) => reply,
        Some(Outcome::Error(e)) => {
            return Err(Error::new(Code::from_i32(e.code), e.message.clone()));
        }
        None => return Err(Error::unknown_outcome(shard)),
    };
    let value = match &reply.body {
        None => serde_json::Value::Null,
        Some(body) => body
            .to_json()
            .map_err(|e| Error::internal(format!("shard {shard} replied: {e}")))?,
    };
    serde_json::from_value(value).map_err(|e| {
        Error::internal(format!(
            "shard {shard} replied with JSON that is not {}: {e}",
            short_type_name::<T>()
        ))
    })
}

impl Error {
    fn unknown_outcome(shard: u32) -> Error {
        Error::new(
            Code::Unknown,
            format!("shard {shard} has neither a reply nor an error"),
        )
    }
}

/// A [`Merger`] over the leaves' own serde types; see [`json_merger`].
pub struct JsonMerger<F, T> {
    f: F,
    _leaf: PhantomData<fn(T)>,
}

impl<F, T> std::fmt::Debug for JsonMerger<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonMerger")
            .field("leaf", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// Makes a [`Merger`] of an async function that receives each leaf's reply
/// read as `T` ([`Merge<T>`]) and answers its own type `Out` as JSON.
///
/// ```
/// // Sum every leaf's number; the leaves that failed are left out.
/// let sum = mp_sdk::json_merger(|merge: mp_sdk::Merge<f64>| async move {
///     Ok(merge.replies().sum::<f64>())
/// });
/// ```
pub fn json_merger<F, T, Out, Fut>(f: F) -> JsonMerger<F, T>
where
    F: Fn(Merge<T>) -> Fut + Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
    Out: Serialize,
    Fut: Future<Output = Result<Out>> + Send,
{
    JsonMerger {
        f,
        _leaf: PhantomData,
    }
}

impl<F, T, Out, Fut> Merger for JsonMerger<F, T>
where
    F: Fn(Merge<T>) -> Fut + Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
    Out: Serialize,
    Fut: Future<Output = Result<Out>> + Send,
{
    fn merge(&self, request: MergeRequest) -> impl Future<Output = Result<Reply>> + Send {
        let call = (self.f)(Merge::from_request(&request));
        async move { reply_json(&call.await?) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_proto::v1::{LeafError, Payload, Request};

    fn ok(shard: u32, body: serde_json::Value) -> LeafOutcome {
        LeafOutcome {
            shard,
            outcome: Some(Outcome::Reply(Reply::json(body))),
            elapsed: Some(prost_types::Duration {
                seconds: 0,
                nanos: 5_000_000,
            }),
            endpoint: format!("127.0.0.1:{}", 7000 + shard),
            hedged: false,
        }
    }

    fn failed(shard: u32, code: Code, message: &str) -> LeafOutcome {
        LeafOutcome {
            shard,
            outcome: Some(Outcome::Error(LeafError {
                code: code as i32,
                message: message.into(),
            })),
            ..Default::default()
        }
    }

    fn request(leaves: Vec<LeafOutcome>) -> MergeRequest {
        MergeRequest {
            request: Some(Request::json(serde_json::json!({"q": 1}))),
            leaves,
        }
    }

    #[test]
    fn reads_each_leaf() {
        let req = request(vec![
            ok(0, serde_json::json!([1.0, 2.0])),
            failed(1, Code::Unavailable, "connection refused"),
            ok(2, serde_json::json!("not a list")),
            LeafOutcome {
                shard: 3,
                outcome: Some(Outcome::Reply(Reply {
                    body: Some(Payload::raw(b"x".to_vec())),
                    ..Default::default()
                })),
                ..Default::default()
            },
        ]);
        let merge = Merge::<Vec<f64>>::from_request(&req);
        assert_eq!(merge.request, serde_json::json!({"q": 1}));
        assert_eq!(merge.leaves[0].result.as_ref().unwrap(), &vec![1.0, 2.0]);
        assert_eq!(merge.leaves[0].elapsed, Duration::from_millis(5));
        assert_eq!(merge.leaves[0].endpoint, "127.0.0.1:7000");
        let e1 = merge.leaves[1].result.as_ref().unwrap_err();
        assert_eq!(
            (e1.code(), e1.message()),
            (Code::Unavailable, "connection refused")
        );
        let e2 = merge.leaves[2].result.as_ref().unwrap_err();
        assert_eq!(e2.code(), Code::Internal);
        assert!(
            e2.message().contains("shard 2") && e2.message().contains("Vec<f64>"),
            "{e2}"
        );
        let e3 = merge.leaves[3].result.as_ref().unwrap_err();
        assert!(e3.message().contains("raw bytes"), "{e3}");
        assert_eq!(merge.replies().count(), 1);
        assert_eq!(merge.failures().count(), 3);
        let all = merge.all().unwrap_err();
        assert_eq!(all.code(), Code::Unavailable);
        assert_eq!(all.message(), "shard 1: connection refused");
    }

    #[tokio::test]
    async fn json_merger_answers_json() {
        let m = json_merger(|merge: Merge<f64>| async move { Ok(merge.replies().sum::<f64>()) });
        let reply = m
            .merge(request(vec![
                ok(0, serde_json::json!(1.5)),
                ok(1, serde_json::json!(2.5)),
                failed(2, Code::DeadlineExceeded, "slow"),
            ]))
            .await
            .unwrap();
        assert_eq!(reply.body_json().unwrap(), serde_json::json!(4));
    }
}
