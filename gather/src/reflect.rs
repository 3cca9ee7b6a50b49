//! Server reflection (v1 and v1alpha) for the gather port: what mp-gather
//! itself serves (`mp.v1`, health, reflection) is answered locally; anything
//! else is asked of a leaf, so grpcurl can list, describe and call the leaves'
//! own services through mp-gather (drop-in mode).
//!
//! v1 and v1alpha have the same messages under two package names, so one
//! implementation answers both: v1alpha messages are re-encoded as v1.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};
use tonic_reflection::pb::{v1, v1alpha};
use tracing::debug;

/// How long one question to the leaf may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The reflection services of the gather port. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reflection {
    local: Arc<Local>,
    upstream: Option<Channel>,
    /// When set, questions go to the leaf its current topology names
    /// instead of `upstream`.
    follow: Option<Arc<crate::gather::Gather>>,
}

#[derive(Debug, Default)]
struct Local {
    services: Vec<String>,
    /// File name to the encoded `FileDescriptorProto`.
    files: HashMap<String, Vec<u8>>,
    /// Fully-qualified symbol to the name of the file defining it.
    symbols: HashMap<String, String>,
}

impl Reflection {
    /// Reflection over the encoded descriptor sets `sets`, listing `services`
    /// as served here, asking `upstream` (a leaf) about anything else.
    pub fn new(
        sets: &[&[u8]],
        services: &[&str],
        upstream: Option<Channel>,
    ) -> Result<Self, prost::DecodeError> {
        let mut local = Local {
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Local::default()
        };
        for set in sets {
            for file in FileDescriptorSet::decode(*set)?.file {
                let name = file.name().to_string();
                if local.files.contains_key(&name) {
                    continue;
                }
                let package = file.package().to_string();
                for m in &file.message_type {
                    add_message(&mut local.symbols, &package, m, &name);
                }
                for e in &file.enum_type {
                    local
                        .symbols
                        .insert(qualify(&package, e.name()), name.clone());
                }
                for s in &file.service {
                    let service = qualify(&package, s.name());
                    for m in &s.method {
                        local
                            .symbols
                            .insert(qualify(&service, m.name()), name.clone());
                    }
                    local.symbols.insert(service, name.clone());
                }
                local.files.insert(name, file.encode_to_vec());
            }
        }
        Ok(Reflection {
            local: Arc::new(local),
            upstream,
            follow: None,
        })
    }

    /// Asks the leaf of `gather`'s current topology (shard 0's first
    /// replica) instead of a fixed one: it follows a changed shards file.
    pub fn following(mut self, gather: Arc<crate::gather::Gather>) -> Self {
        self.follow = Some(gather);
        self
    }

    /// The `grpc.reflection.v1` service.
    pub fn v1(&self) -> v1::server_reflection_server::ServerReflectionServer<V1> {
        v1::server_reflection_server::ServerReflectionServer::new(V1(self.clone()))
    }

    /// The `grpc.reflection.v1alpha` service (what grpcurl 1.8 speaks).
    pub fn v1alpha(&self) -> v1alpha::server_reflection_server::ServerReflectionServer<V1Alpha> {
        v1alpha::server_reflection_server::ServerReflectionServer::new(V1Alpha(self.clone()))
    }

    /// Answers every request of one reflection stream, in order.
    fn run<Q, A>(&self, mut incoming: Streaming<Q>) -> ReceiverStream<Result<A, Status>>
    where
        Q: Message + Default + 'static,
        A: Message + Default + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            // One reflection stream asks one leaf, the one named when it began.
            let channel = match &this.follow {
                Some(g) => g.topology.load().reflection.clone(),
                None => this.upstream.clone(),
            };
            let mut upstream = Upstream::new(channel);
            // Ends when the client closes its side or goes away.
            while let Some(Ok(q)) = incoming.next().await {
                let answer = this.answer(recode(&q), &mut upstream).await;
                if tx.send(Ok(recode(&answer))).await.is_err() {
                    break;
                }
            }
        });
        ReceiverStream::new(rx)
    }

    async fn answer(
        &self,
        req: ServerReflectionRequest,
        upstream: &mut Upstream,
    ) -> ServerReflectionResponse {
        let local = &self.local;
        let response = match req.message_request.clone() {
            None => error(Code::InvalidArgument, "empty reflection request".into()),
            Some(MessageRequest::ListServices(_)) => {
                let mut names = local.services.clone();
                if let Ok(ServerReflectionResponse {
                    message_response: Some(MessageResponse::ListServicesResponse(list)),
                    ..
                }) = upstream.ask(&req).await
                {
                    for s in list.service {
                        if !names.contains(&s.name) {
                            names.push(s.name);
                        }
                    }
                }
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: names
                        .into_iter()
                        .map(|name| ServiceResponse { name })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => match local.files.get(&name) {
                Some(file) => file_response(file),
                None => return upstream.forward(req, &format!("file {name:?}")).await,
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                match local.symbols.get(&symbol).and_then(|f| local.files.get(f)) {
                    Some(file) => file_response(file),
                    None => return upstream.forward(req, &format!("symbol {symbol:?}")).await,
                }
            }
            Some(MessageRequest::FileContainingExtension(ext)) => {
                if local.symbols.contains_key(&ext.containing_type) {
                    error(
                        Code::NotFound,
                        format!("{} has no extensions", ext.containing_type),
                    )
                } else {
                    return upstream
                        .forward(req, &format!("extension of {}", ext.containing_type))
                        .await;
                }
            }
            Some(MessageRequest::AllExtensionNumbersOfType(ty)) => {
                // grpcurl expects this to succeed; no extensions is an answer.
                let known = local.symbols.contains_key(&ty);
                let empty = MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: ty,
                    extension_number: Vec::new(),
                });
                if known {
                    empty
                } else {
                    match upstream.ask(&req).await {
                        Ok(r) => return r,
                        Err(_) => empty,
                    }
                }
            }
        };
        ServerReflectionResponse {
            valid_host: req.host.clone(),
            original_request: Some(req),
            message_response: Some(response),
        }
    }
}

fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn add_message(
    symbols: &mut HashMap<String, String>,
    prefix: &str,
    m: &DescriptorProto,
    file: &str,
) {
    let name = qualify(prefix, m.name());
    for nested in &m.nested_type {
        add_message(symbols, &name, nested, file);
    }
    for e in &m.enum_type {
        symbols.insert(qualify(&name, e.name()), file.to_string());
    }
    symbols.insert(name, file.to_string());
}

fn file_response(file: &[u8]) -> MessageResponse {
    MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
        file_descriptor_proto: vec![file.to_vec()],
    })
}

fn error(code: Code, message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(ErrorResponse {
        error_code: code as i32,
        error_message: message,
    })
}

/// Re-encodes a message as another with the same wire layout (v1alpha <-> v1).
fn recode<A: Message, B: Message + Default>(a: &A) -> B {
    B::decode(a.encode_to_vec().as_slice()).unwrap_or_default()
}

/// One reflection stream to a leaf, opened on first use and kept for the
/// rest of the client's stream.
struct Upstream {
    channel: Option<Channel>,
    session: Option<Session>,
}

enum Session {
    V1 {
        tx: mpsc::Sender<ServerReflectionRequest>,
        rx: Streaming<ServerReflectionResponse>,
    },
    V1Alpha {
        tx: mpsc::Sender<v1alpha::ServerReflectionRequest>,
        rx: Streaming<v1alpha::ServerReflectionResponse>,
    },
}

impl Upstream {
    fn new(channel: Option<Channel>) -> Self {
        Upstream {
            channel,
            session: None,
        }
    }

    /// Asks the leaf; answers NOT_FOUND (naming `what`) when it cannot.
    async fn forward(
        &mut self,
        req: ServerReflectionRequest,
        what: &str,
    ) -> ServerReflectionResponse {
        match self.ask(&req).await {
            Ok(r) => r,
            Err(s) => ServerReflectionResponse {
                valid_host: req.host.clone(),
                original_request: Some(req),
                message_response: Some(error(
                    Code::NotFound,
                    format!(
                        "{what} not found here, and the leaf could not be asked: {}",
                        s.message()
                    ),
                )),
            },
        }
    }

    async fn ask(
        &mut self,
        req: &ServerReflectionRequest,
    ) -> Result<ServerReflectionResponse, Status> {
        let result = tokio::time::timeout(UPSTREAM_TIMEOUT, self.ask_inner(req))
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("the leaf did not answer")));
        if let Err(s) = &result {
            debug!(error = %s, "reflection: asking the leaf failed");
            // Start afresh next time.
            self.session = None;
        }
        result
    }

    async fn ask_inner(
        &mut self,
        req: &ServerReflectionRequest,
    ) -> Result<ServerReflectionResponse, Status> {
        let Some(channel) = self.channel.clone() else {
            return Err(Status::unavailable("no leaf to ask"));
        };
        if self.session.is_none() {
            // The first request is queued before the stream opens: some
            // servers send response headers only with the first answer.
            let (tx, rx) = mpsc::channel(4);
            let _ = tx.send(req.clone()).await;
            let mut client =
                v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
            match client.server_reflection_info(ReceiverStream::new(rx)).await {
                Ok(r) => {
                    let mut rx = r.into_inner();
                    let first = next(&mut rx).await?;
                    self.session = Some(Session::V1 { tx, rx });
                    return Ok(first);
                }
                Err(s) if s.code() == Code::Unimplemented => {
                    let (tx, rx) = mpsc::channel(4);
                    let _ = tx.send(recode(req)).await;
                    let mut client =
                        v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
                    let mut rx = client
                        .server_reflection_info(ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    let first = recode(&next(&mut rx).await?);
                    self.session = Some(Session::V1Alpha { tx, rx });
                    return Ok(first);
                }
                Err(s) => return Err(s),
            }
        }
        match self.session.as_mut() {
            Some(Session::V1 { tx, rx }) => {
                tx.send(req.clone())
                    .await
                    .map_err(|_| Status::unavailable("the leaf closed the stream"))?;
                next(rx).await
            }
            Some(Session::V1Alpha { tx, rx }) => {
                tx.send(recode(req))
                    .await
                    .map_err(|_| Status::unavailable("the leaf closed the stream"))?;
                Ok(recode(&next(rx).await?))
            }
            None => Err(Status::internal("no reflection session")),
        }
    }
}

async fn next<T>(rx: &mut Streaming<T>) -> Result<T, Status> {
    rx.message()
        .await?
        .ok_or_else(|| Status::unavailable("the leaf ended the reflection stream"))
}

/// `grpc.reflection.v1.ServerReflection`.
#[derive(Debug, Clone)]
pub struct V1(Reflection);

/// `grpc.reflection.v1alpha.ServerReflection`.
#[derive(Debug, Clone)]
pub struct V1Alpha(Reflection);

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for V1 {
    type ServerReflectionInfoStream = ReceiverStream<Result<ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(self.0.run(request.into_inner())))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for V1Alpha {
    type ServerReflectionInfoStream =
        ReceiverStream<Result<v1alpha::ServerReflectionResponse, Status>>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(self.0.run(request.into_inner())))
    }
}
