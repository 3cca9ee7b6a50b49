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
