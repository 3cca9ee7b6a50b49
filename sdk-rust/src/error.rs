//! The error a handler or merger returns, and how it becomes a gRPC status.

use std::fmt;
use tonic::{Code, Status};

/// What a handler or merger returns when it cannot answer: a gRPC status code
/// and a message, which the caller receives as-is.
///
/// Build one with the constructor named after the code
/// (`Error::invalid_argument("shard must be < 10")`), or let `?` convert any
/// standard error: a [`tonic::Status`] keeps its code, a
/// [`JsonError`](mp_proto::JsonError) becomes `INVALID_ARGUMENT`, anything
/// else becomes `INTERNAL` with the error's message (and its sources, joined by
/// `": "`).
///
/// Like `anyhow::Error`, this type does not implement `std::error::Error`
/// itself, which is what lets `?` convert every error that does.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    code: Code,
    message: String,
}

/// `Result<T, mp_sdk::Error>`, what handlers and mergers return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with any gRPC `code`. `Code::Ok` is not an error: it is turned
    /// into `UNKNOWN` so the caller never sees a failed call reported as OK.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let code = if code == Code::Ok {
            Code::Unknown
        } else {
            code
        };
        Error {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_ARGUMENT`: the request is wrong and retrying it will not help.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `NOT_FOUND`: what the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `FAILED_PRECONDITION`: the system is not in a state to answer this request.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// `UNAVAILABLE`: try again later (or another replica).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `DEADLINE_EXCEEDED`: the answer did not come in time.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DeadlineExceeded, message)
    }

    /// `RESOURCE_EXHAUSTED`: a limit was hit.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// `UNIMPLEMENTED`: this handler does not do that.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// `INTERNAL`: the handler failed; the request may have been fine.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The gRPC status code the caller will see.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message the caller will see.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("code", &self.code)
            .field("message", &self.message)
            .finish()
    }
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        // A status or a JSON error already says which code it means.
        let boxed = match boxed.downcast::<Status>() {
            Ok(status) => return Error::new(status.code(), status.message()),
            Err(other) => other,
        };
        if let Some(json) = boxed.downcast_ref::<mp_proto::JsonError>() {
            return Error::invalid_argument(json.to_string());
        }
        let mut message = boxed.to_string();
        let mut source = boxed.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::internal(message)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(err.code, err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the index")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn status_keeps_its_code() {
        let e: Error = Status::not_found("no such key").into();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "no such key");
    }

    #[test]
    fn json_error_is_invalid_argument() {
        let e: Error = mp_proto::JsonError::NotJson.into();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("expected a JSON value"), "{e}");
    }

    #[test]
    fn other_errors_are_internal_with_their_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "index.bin missing");
        let e: Error = Outer(io).into();
        assert_eq!(e.code(), Code::Internal);
        assert_eq!(e.message(), "cannot load the index: index.bin missing");
    }

    #[test]
    fn ok_is_never_an_error() {
        assert_eq!(Error::new(Code::Ok, "x").code(), Code::Unknown);
    }

    #[test]
    fn becomes_a_status() {
        let s: Status = Error::invalid_argument("bad").into();
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "bad"));
    }
}
