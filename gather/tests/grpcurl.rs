//! grpcurl against the gather port: reflection (v1 and v1alpha), health, and
//! calls, for the mp.v1 contract and, in drop-in mode, for another proto whose
//! descriptors mp-gather fetches from a leaf.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_mp_v1() {
    let ls = leaves(3).await;
    let g = GatherProc::start(&shard_args(&ls));
    let t = g.addr.to_string();
    let list = grpcurl_ok(&["-plaintext", &t, "list"]);
    for s in [
        "mp.v1.Handler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.lines().any(|l| l == s), "{s} missing from:\n{list}");
    }
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.Handler"]);
    assert!(
        d.contains("rpc Handle ( .mp.v1.Request ) returns ( .mp.v1.Reply )"),
        "{d}"
    );
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "mp.v1.LeafOutcome"]);
    assert!(d.contains("hedged"), "{d}");

    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"body":{"json":{"q":"x"}}}"#,
        &t,
        "mp.v1.Handler/Handle",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let arr = v["body"]["json"].as_array().expect("json-array body");
    assert_eq!(arr.len(), 3, "{out}");
    assert_eq!(arr[2]["shard"], 2.0);
    assert_eq!(arr[0]["echo"]["q"], "x");

    let h = grpcurl_ok(&["-plaintext", &t, "grpc.health.v1.Health/Check"]);
    assert!(h.contains("SERVING"), "{h}");
    let h = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"service":"mp.v1.Handler"}"#,
        &t,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(h.contains("SERVING"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_works_in_drop_in_mode_for_another_proto() {
    let ls = vec![
        catalog_leaf(0, &["red apple"]).await,
        catalog_leaf(1, &["red cherry", "blue plum"]).await,
    ];
    let g = GatherProc::start(&shard_args(&ls));
    let t = g.addr.to_string();
    let list = grpcurl_ok(&["-plaintext", &t, "list"]);
    assert!(
        list.lines().any(|l| l == "demo.catalog.v1.Catalog"),
        "the leaf's service is not listed:\n{list}"
    );
    assert!(list.lines().any(|l| l == "mp.v1.Handler"), "{list}");
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "demo.catalog.v1.Catalog"]);
    assert!(d.contains("rpc Search"), "{d}");
    let d = grpcurl_ok(&["-plaintext", &t, "describe", "demo.catalog.v1.SearchReply"]);
    assert!(d.contains("repeated string items"), "{d}");
    let out = grpcurl_ok(&[
        "-plaintext",
        "-d",
        r#"{"query":"red"}"#,
        &t,
        "demo.catalog.v1.Catalog/Search",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        v["items"],
        serde_json::json!(["red apple", "red cherry"]),
        "{out}"
    );
    assert_eq!(v["source"], "shard-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_unknown_symbol_is_a_clear_error() {
    let ls = leaves(1).await;
    let g = GatherProc::start(&shard_args(&ls));
    let t = g.addr.to_string();
    let out = mp_testkit::run_grpcurl(&["-plaintext", &t, "describe", "no.such.Service"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no.such.Service"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_lists_and_forwards_to_a_v1_leaf() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    // The catalog leaf serves reflection v1 only: mp-gather answers v1alpha
    // questions by asking it in v1.
    let ls = vec![catalog_leaf(0, &["x"]).await];
    let g = GatherProc::start(&shard_args(&ls));
    let channel = tonic::transport::Channel::from_shared(g.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "demo.catalog.v1.Catalog".into(),
        )),
        ask(MessageRequest::FileContainingSymbol("mp.v1.Merger".into())),
        ask(MessageRequest::FileByFilename("nope.proto".into())),
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection stream")
        .into_inner();
    async fn next(
        answers: &mut tonic::Streaming<tonic_reflection::pb::v1alpha::ServerReflectionResponse>,
    ) -> MessageResponse {
        tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
            .await
            .expect("answer in time")
            .expect("no error")
            .expect("an answer")
            .message_response
            .expect("a response")
    }
    match next(&mut answers).await {
        MessageResponse::ListServicesResponse(l) => {
            let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
            assert!(names.contains(&"demo.catalog.v1.Catalog"), "{names:?}");
            assert!(
                names.contains(&"grpc.reflection.v1alpha.ServerReflection"),
                "{names:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    for want in ["catalog.proto", "mp/v1/mp.proto"] {
        match next(&mut answers).await {
            MessageResponse::FileDescriptorResponse(f) => {
                let fd = <prost_types::FileDescriptorProto as prost::Message>::decode(
                    f.file_descriptor_proto[0].as_slice(),
                )
                .unwrap();
                assert_eq!(fd.name(), want);
            }
            other => panic!("{other:?}"),
        }
    }
    match next(&mut answers).await {
        MessageResponse::ErrorResponse(e) => {
            assert_eq!(e.error_code, tonic::Code::NotFound as i32);
            assert!(e.error_message.contains("nope.proto"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}
