//! The SDK's server, in process on a port-0 listener, with real tonic clients:
//! errors become statuses, bad bodies are INVALID_ARGUMENT, panics stay in
//! their call, reflection v1 and v1alpha describe what is served, and shutdown
//! drains in-flight calls within the grace period.

use mp_sdk::proto::v1::{handler_client::HandlerClient, merger_client::MergerClient};
use mp_sdk::{Error, MergeRequest, Payload, Reply, Request, ServeError, Server};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

/// A server running in this process until `stop` is sent.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn start(server: Server) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_on(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap()
    }

    async fn handler(&self) -> HandlerClient<Channel> {
        HandlerClient::new(self.channel().await)
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().expect("shut down once").send(());
    }

    /// Shuts down and waits (at most `limit`) for serve_on to return.
    async fn stopped(mut self, limit: Duration) -> Result<(), ServeError> {
        if self.stop.is_some() {
            self.shutdown();
        }
        tokio::time::timeout(limit, self.task)
            .await
            .expect("serve_on returns within the limit")
            .expect("serve_on does not panic")
    }
}

#[derive(Deserialize)]
struct Sum {
    numbers: Vec<i64>,
}

#[derive(Serialize)]
struct Total {
    total: i64,
}

async fn sum(input: Sum) -> mp_sdk::Result<Total> {
    if input.numbers.is_empty() {
        return Err(Error::invalid_argument("give at least one number"));
    }
    Ok(Total {
        total: input.numbers.iter().sum(),
    })
}

fn raw(bytes: &[u8]) -> Request {
    Request {
        body: Some(Payload::raw(bytes.to_vec())),
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn a_json_handler_takes_and_returns_its_own_types() {
    let s = Running::start(Server::new().handler(mp_sdk::json(sum))).await;
    let reply = s
        .handler()
        .await
        .handle(Request::json(serde_json::json!({"numbers": [1, 2, 39]})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.body_json().unwrap(), serde_json::json!({"total": 42}));
    s.stopped(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_handler_error_becomes_that_status() {
    let s = Running::start(Server::new().handler(mp_sdk::json(sum))).await;
    let status = s
        .handler()
        .await
        .handle(Request::json(serde_json::json!({"numbers": []})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "give at least one number");
}

#[tokio::test]
async fn question_mark_on_any_error_is_internal_with_its_message() {
    async fn read(_: Request) -> mp_sdk::Result<Reply> {
        let text = std::fs::read_to_string("/nonexistent/mp/index.json")?;
        Ok(Reply::json(serde_json::json!(text)))
    }
    let s = Running::start(Server::new().handler(mp_sdk::handler(read))).await;
    let status = s
        .handler()
        .await
        .handle(Request::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("No such file"), "{status:?}");
}

#[tokio::test]
async fn malformed_bodies_are_invalid_argument_and_the_handler_is_not_called() {
    let called = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = called.clone();
    let h = mp_sdk::json(move |input: Sum| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        sum(input)
    });
    let s = Running::start(Server::new().handler(h)).await;
    let mut client = s.handler().await;

    let status = client.handle(raw(b"\xff\x00garbage")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("raw bytes"), "{status:?}");

    let status = client
        .handle(Request::json(serde_json::json!({"numbers": "many"})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("(Sum)") && status.message().contains("expected a sequence"),
        "{status:?}"
    );

    let status = client.handle(Request::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The server is fine afterwards.
    client
        .handle(Request::json(serde_json::json!({"numbers": [1]})))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_panic_fails_only_its_call() {
    let h = mp_sdk::handler(|req: Request| async move {
        if req.body_json().ok() == Some(serde_json::json!("boom")) {
            panic!("boom requested");
        }
        Ok(Reply::json(serde_json::json!("fine")))
    });
    let s = Running::start(Server::new().handler(h)).await;
    let mut client = s.handler().await;
    let status = client
        .handle(Request::json(serde_json::json!("boom")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("boom requested"), "{status:?}");
    // Same connection, next call: still served.
    let ok = client
        .handle(Request::json(serde_json::json!("calm")))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().body_json().unwrap(), "fine");
}

#[tokio::test]
async fn a_merger_is_served_and_a_missing_handler_is_unimplemented() {
    let m =
        mp_sdk::json_merger(
            |merge: mp_sdk::Merge<u64>| async move { Ok(merge.replies().sum::<u64>()) },
        );
    let s = Running::start(Server::new().merger(m)).await;
    let leaves = (0..3)
        .map(|i| mp_sdk::LeafOutcome {
            shard: i,
            outcome: Some(mp_sdk::proto::v1::leaf_outcome::Outcome::Reply(
                Reply::json(serde_json::json!(i + 1)),
            )),
            ..Default::default()
        })
        .collect();
    let reply = MergerClient::new(s.channel().await)
        .merge(MergeRequest {
            request: None,
            leaves,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.body_json().unwrap(), serde_json::json!(6));
    let status = s
        .handler()
        .await
        .handle(Request::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn nothing_to_serve_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Server::new()
        .serve_on(listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::Nothing), "{err}");
}

async fn list_v1(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn file_v1alpha(channel: Channel, symbol: &str) -> Vec<prost_types::FileDescriptorProto> {
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
            .collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_describe_what_is_served() {
    let s = Running::start(Server::new().handler(mp_sdk::json(sum))).await;
    let mut names = list_v1(s.channel().await).await;
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "mp.v1.Handler",
        ]
    );
    let files = file_v1alpha(s.channel().await, "mp.v1.Handler").await;
    let mp = files
        .iter()
        .find(|f| f.name() == "mp/v1/mp.proto")
        .expect("mp.proto is served");
    assert!(mp.service.iter().any(|s| s.name() == "Handler"));
    let health = file_v1alpha(s.channel().await, "grpc.health.v1.Health").await;
    assert!(health.iter().any(|f| f.package() == "grpc.health.v1"));
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls_and_refuses_new_connections() {
    let slow = mp_sdk::handler(|_req: Request| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(Reply::json(serde_json::json!("done")))
    });
    let mut s = Running::start(Server::new().handler(slow).grace(Duration::from_secs(10))).await;
    let mut client = s.handler().await;
    let call = tokio::spawn(async move { client.handle(Request::default()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.shutdown();

    // The listener closes promptly: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(s.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if Instant::now() > deadline => panic!("{} still accepts connections", s.addr),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let reply = call.await.unwrap().expect("the in-flight call completes");
    assert_eq!(reply.into_inner().body_json().unwrap(), "done");
    s.stopped(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn calls_outliving_the_grace_period_are_abandoned() {
    let stuck = mp_sdk::handler(|_req: Request| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Reply::default())
    });
    let mut s = Running::start(
        Server::new()
            .handler(stuck)
            .grace(Duration::from_millis(300)),
    )
    .await;
    let mut client = s.handler().await;
    let _call = tokio::spawn(async move { client.handle(Request::default()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.shutdown();
    s.stopped(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn health_watchers_see_not_serving_and_do_not_hold_the_drain() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let mut s = Running::start(
        Server::new()
            .handler(mp_sdk::json(sum))
            .grace(Duration::from_secs(30)),
    )
    .await;
    let mut health = HealthClient::new(s.channel().await);
    let check = health
        .check(HealthCheckRequest {
            service: "mp.v1.Handler".into(),
        })
        .await
        .unwrap();
    assert_eq!(check.into_inner().status(), ServingStatus::Serving);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let start = Instant::now();
    s.shutdown();
    let bound = Duration::from_secs(5);
    let next = tokio::time::timeout(bound, watch.message())
        .await
        .expect("NOT_SERVING arrives")
        .unwrap()
        .expect("a status update");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let end = tokio::time::timeout(bound, watch.message())
        .await
        .expect("the watch ends instead of holding the connection open");
    assert!(end.unwrap().is_none(), "the watch ends");
    s.stopped(Duration::from_secs(10)).await.unwrap();
    // Far below the 30 s grace: the watch did not hold the drain open.
    assert!(start.elapsed() < Duration::from_secs(10));
}
