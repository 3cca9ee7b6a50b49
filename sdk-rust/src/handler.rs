//! Handlers: what answers `mp.v1.Handler/Handle`, written as a trait impl, a
//! plain async function over [`Request`]/[`Reply`], or an async function over
//! the handler's own serde types.

use crate::{Error, Result};
use mp_proto::v1::{Reply, Request};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::marker::PhantomData;

/// Answers one request at a time; called concurrently from many tasks.
///
/// Most handlers do not implement this by hand: [`handler`] wraps an async
/// function over [`Request`] and [`Reply`], and [`json`] one over the
/// handler's own serde types. Implement it directly when the handler keeps
/// state (an index it loaded at start, a connection pool):
///
/// ```
/// use mp_sdk::{Handler, Reply, Request, Result};
///
/// struct Counter(std::sync::atomic::AtomicU64);
///
/// impl Handler for Counter {
///     async fn handle(&self, _request: Request) -> Result<Reply> {
///         let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         Ok(Reply::json(serde_json::json!({ "calls": n + 1 })))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Answers `request`. An `Err` reaches the caller as that gRPC status.
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply>> + Send;
}

/// A [`Handler`] made of an async function from [`Request`] to
/// `Result<Reply>`; see [`handler`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Makes a [`Handler`] of an async function (or a closure returning a future)
/// from [`Request`] to [`Result<Reply>`](crate::Result).
///
/// ```
/// use mp_sdk::{Reply, Request, Result};
///
/// async fn echo(request: Request) -> Result<Reply> {
///     Ok(Reply { body: request.body, metadata: request.metadata })
/// }
/// let handler = mp_sdk::handler(echo);
/// ```
pub fn handler<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply>> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply>> + Send,
{
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply>> + Send {
        (self.0)(request)
    }
}

/// A [`Handler`] made of an async function over the handler's own serde
/// types; see [`json`].
pub struct JsonHandler<F, In> {
    f: F,
    _in: PhantomData<fn(In)>,
}

impl<F: Clone, In> Clone for JsonHandler<F, In> {
    fn clone(&self) -> Self {
        JsonHandler {
            f: self.f.clone(),
            _in: PhantomData,
        }
    }
}

impl<F, In> std::fmt::Debug for JsonHandler<F, In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonHandler")
            .field("input", &std::any::type_name::<In>())
            .finish_non_exhaustive()
    }
}

/// Makes a [`Handler`] of an async function that takes the request body as
/// its own type `In` and answers its own type `Out`.
///
/// The body is read as JSON into `In`; a request without a body reads as JSON
/// `null` (so `Option<T>`, `()` or `serde_json::Value` accept an empty call).
/// A body that is raw bytes, or JSON that does not fit `In`, is answered with
/// `INVALID_ARGUMENT` and a message saying what was expected; the function is
/// not called. `Out` is sent back as the reply's JSON body.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Greet { name: String }
///
/// #[derive(Serialize)]
/// struct Greeting { text: String }
///
/// async fn greet(input: Greet) -> mp_sdk::Result<Greeting> {
///     Ok(Greeting { text: format!("hello, {}", input.name) })
/// }
/// let handler = mp_sdk::json(greet);
/// ```
pub fn json<F, In, Out, Fut>(f: F) -> JsonHandler<F, In>
where
    F: Fn(In) -> Fut + Send + Sync + 'static,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize,
    Fut: Future<Output = Result<Out>> + Send,
{
    JsonHandler {
        f,
        _in: PhantomData,
    }
}

impl<F, In, Out, Fut> Handler for JsonHandler<F, In>
where
    F: Fn(In) -> Fut + Send + Sync + 'static,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize,
    Fut: Future<Output = Result<Out>> + Send,
{
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply>> + Send {
        let input = request_json::<In>(&request);
        let call = input.map(|input| (self.f)(input));
        async move {
            let out = call?.await?;
            reply_json(&out)
        }
    }
}

/// The request body read as `T` (a missing body reads as JSON `null`);
/// `INVALID_ARGUMENT` with what was expected when it does not fit.
pub fn request_json<T: DeserializeOwned>(request: &Request) -> Result<T> {
    let value = match &request.body {
        None => serde_json::Value::Null,
        Some(body) => body.to_json()?,
    };
    serde_json::from_value(value).map_err(|e| {
        Error::invalid_argument(format!(
            "the request body is not the JSON this handler expects ({}): {e}",
            short_type_name::<T>()
        ))
    })
}

/// `out` as a reply with a JSON body; `INTERNAL` if it cannot be serialized
/// (e.g. a map with non-string keys).
pub fn reply_json<T: Serialize + ?Sized>(out: &T) -> Result<Reply> {
    let value = serde_json::to_value(out)
        .map_err(|e| Error::internal(format!("cannot encode the reply as JSON: {e}")))?;
    Ok(Reply::json(value))
}

/// The type's name without module paths: `alloc::vec::Vec<f64>` reads
/// better as `Vec<f64>` in an error message.
pub(crate) fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut ident = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            // What came before `::` was a module path segment: drop it.
            chars.next();
            ident.clear();
        } else if c.is_alphanumeric() || c == '_' {
            ident.push(c);
        } else {
            out.push_str(&ident);
            ident.clear();
            out.push(c);
        }
    }
    out.push_str(&ident);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_proto::v1::Payload;
    use serde::Deserialize;
    use tonic::Code;

    #[derive(Debug, Deserialize, PartialEq)]
    struct In {
        n: u32,
    }

    fn body(req: &Request) -> Result<In> {
        request_json::<In>(req)
    }

    #[test]
    fn reads_typed_json() {
        let req = Request::json(serde_json::json!({"n": 3}));
        assert_eq!(body(&req).unwrap(), In { n: 3 });
    }

    #[test]
    fn raw_bytes_are_invalid_argument() {
        let req = Request {
            body: Some(Payload::raw(b"\x00\x01".to_vec())),
            metadata: Default::default(),
        };
        let err = body(&req).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("raw bytes"), "{err}");
    }

    #[test]
    fn wrong_shape_says_what_was_expected() {
        let err = body(&Request::json(serde_json::json!("x"))).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("(In)"), "{err}");
        assert!(err.message().contains("expected struct In"), "{err}");
    }

    #[test]
    fn missing_body_is_null() {
        let req = Request::default();
        assert_eq!(
            request_json::<serde_json::Value>(&req).unwrap(),
            serde_json::Value::Null
        );
        assert_eq!(request_json::<Option<In>>(&req).unwrap(), None);
        assert_eq!(body(&req).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn short_names() {
        assert_eq!(short_type_name::<Vec<f64>>(), "Vec<f64>");
        assert_eq!(
            short_type_name::<std::collections::HashMap<String, Vec<u8>>>(),
            "HashMap<String, Vec<u8>>"
        );
        assert_eq!(short_type_name::<serde_json::Value>(), "Value");
    }

    #[tokio::test]
    async fn json_handler_round_trip() {
        let h = json(|input: In| async move { Ok(input.n * 2) });
        let reply = h
            .handle(Request::json(serde_json::json!({"n": 21})))
            .await
            .unwrap();
        assert_eq!(reply.body_json().unwrap(), serde_json::json!(42));
        let err = h.handle(Request::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
