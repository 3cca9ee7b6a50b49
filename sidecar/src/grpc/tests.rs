use super::*;

#[test]
fn parses_timeouts() {
    let p = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
    assert_eq!(p("100m"), Some(Duration::from_millis(100)));
    assert_eq!(p("3S"), Some(Duration::from_secs(3)));
    assert_eq!(p("2M"), Some(Duration::from_secs(120)));
    assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(p("7u"), Some(Duration::from_micros(7)));
    assert_eq!(p("9n"), Some(Duration::from_nanos(9)));
    assert_eq!(p("m"), None);
    assert_eq!(p("123456789S"), None);
    assert_eq!(p("10x"), None);
    assert_eq!(p("-1S"), None);
    assert_eq!(p(""), None);
}

#[test]
fn encodes_timeouts_round_trip_never_shorter() {
    for d in [
        Duration::from_nanos(1),
        Duration::from_millis(250),
        Duration::from_secs(5),
        Duration::from_secs(86_400 * 400),
    ] {
        let back = parse_timeout(&encode_timeout(d)).unwrap();
        assert!(back >= d, "{d:?} -> {back:?}");
    }
}

#[test]
fn status_and_messages() {
    let mut h = HeaderMap::new();
    assert_eq!(status(&h), None);
    set_status(&mut h, code::UNAVAILABLE, "no backend: 100% down\n");
    assert_eq!(status(&h), Some(14));
    let m = h.get(GRPC_MESSAGE).unwrap();
    assert_eq!(m, "no backend: 100%25 down%0A");
    assert_eq!(decode_message(m), "no backend: 100% down\n");
    h.insert(GRPC_STATUS, HeaderValue::from_static("x"));
    assert_eq!(status(&h), None);
    assert_eq!(code::name(14), "UNAVAILABLE");
    assert_eq!(code::name(99), "UNKNOWN_CODE");
}

#[test]
fn error_response_is_trailers_only() {
    let r: Response<String> = error_response(code::DEADLINE_EXCEEDED, "too slow");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert_eq!(r.headers()["grpc-status"], "4");
    assert_eq!(r.headers()["grpc-message"], "too slow");
    assert!(r.body().is_empty());
}
