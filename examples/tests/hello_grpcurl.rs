//! The real grpcurl against the real `hello` process: what a newcomer does
//! first, through server reflection (grpcurl 1.8 speaks v1alpha).

mod common;
use common::*;

#[test]
fn list_shows_the_handler_health_and_reflection() {
    let hello = start_example("hello", &[]);
    let out = grpcurl_ok(&["-plaintext", &hello.target(), "list"]);
    let services: Vec<&str> = out.lines().collect();
    for want in [
        "mp.v1.Handler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&want), "{want} missing from {services:?}");
    }
    // A handler process serves no merger, and reflection must not claim one.
    assert!(!services.contains(&"mp.v1.Merger"), "{services:?}");
}

#[test]
fn describe_works_for_the_contract_and_health() {
    let hello = start_example("hello", &[]);
    let t = hello.target();
    let handler = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.Handler"]);
    assert!(
        handler.contains("rpc Handle ( .mp.v1.Request ) returns ( .mp.v1.Reply )"),
        "{handler}"
    );
    let request = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.Request"]);
    assert!(request.contains(".mp.v1.Payload body = 1"), "{request}");
    let payload = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.Payload"]);
    assert!(
        payload.contains(".google.protobuf.Value json = 1"),
        "{payload}"
    );
    let health = grpcurl_ok(&["-plaintext", &t, "describe", "grpc.health.v1.Health"]);
    assert!(health.contains("rpc Check"), "{health}");
}

#[test]
fn handle_echoes_the_request_and_names_the_server() {
    let hello = start_example("hello", &[]);
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"body":{"json":{"foo":"bar"}}}"#,
        &hello.target(),
        "mp.v1.Handler/Handle",
    ]);
    let reply = json(&out);
    let body = &reply["body"]["json"];
    assert_eq!(body["request"], serde_json::json!({"foo": "bar"}), "{out}");
    let server = body["server"].as_str().expect("server is a string");
    assert!(
        server.ends_with(&format!(":{}", hello.addr.port())),
        "server {server:?} should end with the port"
    );
    assert!(
        server.len() > 1 + hello.addr.port().to_string().len(),
        "{server}"
    );
}

#[test]
fn health_says_serving() {
    let hello = start_example("hello", &[]);
    let t = hello.target();
    for service in ["", "mp.v1.Handler"] {
        let d = format!(r#"{{"service":"{service}"}}"#);
        let out = grpcurl_ok(&["-plaintext", "-d", &d, &t, "grpc.health.v1.Health/Check"]);
        assert_eq!(json(&out)["status"], "SERVING", "{service:?}: {out}");
    }
}

#[test]
fn a_raw_body_is_invalid_argument_with_a_message() {
    let hello = start_example("hello", &[]);
    let err = grpcurl_err(&[
        "-plaintext",
        "-d",
        r#"{"body":{"raw":"3q2+7w=="}}"#,
        &hello.target(),
        "mp.v1.Handler/Handle",
    ]);
    assert!(err.contains("Code: InvalidArgument"), "{err}");
    assert!(err.contains("expected a JSON value"), "{err}");
    // And the process is still serving.
    grpcurl_ok(&["-plaintext", &hello.target(), "grpc.health.v1.Health/Check"]);
}

/// grpcurl 1.8 speaks only reflection v1alpha; newer tools use v1. Ask v1
/// with tonic's reflection client, as such a tool would.
#[tokio::test]
async fn reflection_v1_lists_the_same_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let hello = start_example("hello", &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", hello.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ask = |request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("mp.v1.Handler".into())),
        ]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"mp.v1.Handler"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
