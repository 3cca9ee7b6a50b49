//! Adapters from our [`Handler`]/[`Merger`] traits to the tonic services
//! generated in `mp-proto`: panics caught, errors turned into statuses, each
//! call logged.

use crate::{Handler, Merger, Result};
use futures::FutureExt;
use mp_proto::v1::{handler_server, merger_server, MergeRequest, Reply, Request};
use std::panic::AssertUnwindSafe;
use std::time::Instant;
use tonic::{Code, Status};

/// Serves a [`Handler`] as `mp.v1.Handler`.
pub(crate) struct HandlerService<H>(pub(crate) H);

/// Serves a [`Merger`] as `mp.v1.Merger`.
pub(crate) struct MergerService<M>(pub(crate) M);

#[tonic::async_trait]
impl<H: Handler> handler_server::Handler for HandlerService<H> {
    async fn handle(
        &self,
        request: tonic::Request<Request>,
    ) -> Result<tonic::Response<Reply>, Status> {
        let start = Instant::now();
        let outcome = AssertUnwindSafe(self.0.handle(request.into_inner()))
            .catch_unwind()
            .await;
        finish("Handle", start, outcome)
    }
}

#[tonic::async_trait]
impl<M: Merger> merger_server::Merger for MergerService<M> {
    async fn merge(
        &self,
        request: tonic::Request<MergeRequest>,
    ) -> Result<tonic::Response<Reply>, Status> {
        let start = Instant::now();
        let outcome = AssertUnwindSafe(self.0.merge(request.into_inner()))
            .catch_unwind()
            .await;
        finish("Merge", start, outcome)
    }
}

/// Turns what the user's code produced into the call's response, logging it.
/// A panic must not take the connection (and every call on it) down: it
/// becomes `INTERNAL` for this call only.
fn finish(
    method: &'static str,
    start: Instant,
    outcome: std::thread::Result<Result<Reply>>,
) -> Result<tonic::Response<Reply>, Status> {
    let elapsed = start.elapsed();
    match outcome {
        Ok(Ok(reply)) => {
            tracing::debug!(method, ?elapsed, "ok");
            Ok(tonic::Response::new(reply))
        }
        Ok(Err(err)) => {
            // A bad request is the caller's business; a failing handler is ours.
            match err.code() {
                Code::Internal | Code::Unknown | Code::DataLoss => {
                    tracing::warn!(method, ?elapsed, code = ?err.code(), message = err.message(), "failed")
                }
                _ => {
                    tracing::debug!(method, ?elapsed, code = ?err.code(), message = err.message(), "failed")
                }
            }
            Err(err.into())
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".into());
            tracing::error!(method, ?elapsed, panic = %what, "the handler panicked");
            Err(Status::internal(format!("the handler panicked: {what}")))
        }
    }
}
