use super::*;

#[test]
fn parses_host_ports() {
    let hp: HostPort = "127.0.0.1:50051".parse().unwrap();
    assert_eq!(hp.socket_addr(), Some("127.0.0.1:50051".parse().unwrap()));
    let hp: HostPort = "[::1]:80".parse().unwrap();
    assert_eq!(hp.host, "::1");
    assert_eq!(hp.to_string(), "[::1]:80");
    let hp: HostPort = "leaf-3.histogram.svc:7000".parse().unwrap();
    assert_eq!(hp.socket_addr(), None);
    assert_eq!(hp.to_string(), "leaf-3.histogram.svc:7000");
    for bad in [
        "",
        "host",
        ":80",
        "host:",
        "host:x",
        "host:70000",
        "::1:80",
        "a b:1",
        "h:0",
    ] {
        assert!(bad.parse::<HostPort>().is_err(), "{bad:?} parsed");
    }
    let e = "nope".parse::<HostPort>().unwrap_err().to_string();
    assert!(e.contains("HOST:PORT"), "{e}");
}

#[tokio::test]
async fn resolves_literals_and_localhost_without_dns() {
    let r = Resolver::system();
    let v = r.resolve(&"10.1.2.3:9".parse().unwrap()).await.unwrap();
    assert_eq!(v, vec!["10.1.2.3:9".parse().unwrap()]);
    let v = r.resolve(&"localhost:9".parse().unwrap()).await.unwrap();
    assert_eq!(v, vec!["127.0.0.1:9".parse().unwrap()]);
}
