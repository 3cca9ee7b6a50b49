//! Shards named by DNS (`--shard-dns NAME:PORT --shards N`), end to end: a
//! real DNS exchange with the test's own DNS server (`--dns-server`), real
//! leaf processes on distinct loopback addresses sharing one port (as the pods
//! of a Kubernetes StatefulSet do), the real mp-gather.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use mp_testkit::{free_port_on, wait_for_port, ChildGuard, DnsServer};
use serde_json::json;
use support::*;
use tonic::Code;

/// The faulty example (a hello that can carry a tag) as shard `shard` of
/// `shards`, listening on `ip:port`, its replies tagged `tag`.
fn leaf_on(ip: Ipv4Addr, port: u16, (shard, shards): (usize, usize), tag: &str) -> ChildGuard {
    let mut cmd = Command::new(mp_testkit::example("faulty"));
    cmd.env("MP_HOST", ip.to_string())
        .env("MP_PORT", port.to_string())
        .env("MP_SHARD", shard.to_string())
        .env("MP_SHARDS", shards.to_string())
        .env("MP_TAG", tag)
        .env("RUST_LOG", "warn");
    let child = ChildGuard::spawn(&mut cmd);
    let addr = SocketAddr::from((ip, port));
    assert!(
        wait_for_port(addr, Duration::from_secs(30)),
        "the leaf did not listen on {addr}"
    );
    child
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// `--shard-dns 'leaf-{i}.leaves:PORT' --shards N --dns-server DNS`.
fn dns_args(port: u16, shards: usize, dns: &DnsServer) -> Vec<String> {
    args(&[
        "--shard-dns",
        &format!("leaf-{{i}}.leaves:{port}"),
        "--shards",
        &shards.to_string(),
        "--dns-server",
        &dns.addr().to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_named_by_dns_answer_in_shard_order() {
    // Shard 0 and 1 on one address each; shard 2's name has two A records:
    // two replicas.
    let addrs: [&[Ipv4Addr]; 3] = [&[ip(2)], &[ip(3)], &[ip(4), ip(5)]];
    let all: Vec<Ipv4Addr> = addrs.iter().flat_map(|a| a.iter().copied()).collect();
    let port = free_port_on(&all);
    let dns = DnsServer::start();
    let mut procs = Vec::new();
    for (shard, ips) in addrs.iter().enumerate() {
        for ip in *ips {
            procs.push(leaf_on(*ip, port, (shard, 3), &format!("{shard}@{ip}")));
        }
        dns.set(&format!("leaf-{shard}.leaves"), ips);
    }

    let g = GatherProc::start_with(&dns_args(port, 3, &dns), true);
    // Four replicas: the two A records of shard 2's name are two replicas.
    g.wait_healthy(4);
    assert!(
        dns.queries() > 0,
        "mp-gather did not ask the test's DNS server"
    );
    let m = g.admin_get("/metrics");
    for a in &all {
        assert!(
            m.contains(&format!("{a}:{port}")),
            "{a}:{port} is not a replica:\n{m}"
        );
    }

    let mut c = g.client().await;
    let mut shard2 = BTreeSet::new();
    for n in 0..4 {
        let reply = call(&mut c, json!({"n": n})).await.expect("merged reply");
        let body = reply.body_json().unwrap();
        let arr = body.as_array().expect("a JSON array");
        assert_eq!(arr.len(), 3, "{body}");
        // Each shard's answer in shard order, each the request it was sent.
        assert_eq!(arr[0]["tag"], format!("0@{}", ip(2)), "{body}");
        assert_eq!(arr[1]["tag"], format!("1@{}", ip(3)), "{body}");
        assert_eq!(arr[0]["request"], json!({"n": n}), "{body}");
        let t = arr[2]["tag"].as_str().expect("shard 2 tag").to_string();
        assert!(t.starts_with("2@"), "{body}");
        shard2.insert(t);
    }
    // Round robin over shard 2's two replicas.
    assert_eq!(
        shard2,
        BTreeSet::from([format!("2@{}", ip(4)), format!("2@{}", ip(5))])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_name_that_does_not_resolve_fails_naming_the_shard() {
    let port = free_port_on(&[ip(6), ip(7)]);
    let dns = DnsServer::start();
    let _leaf0 = leaf_on(ip(6), port, (0, 2), "0");
    let _leaf1 = leaf_on(ip(7), port, (1, 2), "1");
    dns.set("leaf-0.leaves", &[ip(6)]);
    // leaf-1.leaves is unknown to the DNS server: NXDOMAIN.

    let g = GatherProc::start_with(&dns_args(port, 2, &dns), true);
    g.wait_healthy(1);
    let mut c = g.client().await;
    let err = call(&mut c, json!(1))
        .await
        .expect_err("shard 1 has no address");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let msg = err.message();
    for want in [
        "shard 1 failed",
        &format!("leaf-1.leaves:{port} does not resolve"),
        "no such host",
    ] {
        assert!(msg.contains(want), "{want:?} missing from {msg:?}");
    }
    assert!(!msg.contains("shard 0"), "{msg:?}");

    // Once the name resolves, mp-gather finds the shard (names are
    // re-resolved every few seconds) and the calls succeed.
    dns.set("leaf-1.leaves", &[ip(7)]);
    g.wait_healthy(2);
    let reply = call(&mut c, json!(2)).await.expect("both shards answer");
    let body = reply.body_json().unwrap();
    assert_eq!(body[0]["tag"], "0", "{body}");
    assert_eq!(body[1]["tag"], "1", "{body}");
}

/// A replica whose address leaves the shard's DNS answer while it keeps
/// running: mp-gather's connections to it close (the pool's and the leaf
/// calls' shared one), and the calls go on to the replica that stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_replica_that_left_dns_close() {
    let (stays, leaves) = (ip(8), ip(9));
    let port = free_port_on(&[stays, leaves]);
    let dns = DnsServer::start();
    let _a = leaf_on(stays, port, (0, 1), "stays");
    let _b = leaf_on(leaves, port, (0, 1), "leaves");
    dns.set("leaf-0.leaves", &[stays, leaves]);
    let g = GatherProc::start_with(&dns_args(port, 1, &dns), true);
    g.wait_healthy(2);
    let mut c = g.client().await;
    let mut tags = BTreeSet::new();
    for n in 0..4 {
        let reply = call(&mut c, json!(n)).await.expect("answered");
        tags.insert(reply.body_json().unwrap()[0]["tag"].to_string());
    }
    assert_eq!(tags.len(), 2, "both replicas answer: {tags:?}");
    let before = connections_at(Some(leaves), port);
    assert!(before >= 2, "{before} connections to the replica");

    dns.set("leaf-0.leaves", &[stays]);
    // Names are resolved again every few seconds.
    let m = |g: &GatherProc| g.admin_get("/metrics");
    let gone = format!("{leaves}:{port}");
    assert!(
        eventually(Duration::from_secs(15), || !m(&g).contains(&gone)).await,
        "{gone} is still a replica"
    );
    let open = call_until_closed(&mut c, ("tag", "stays"), || {
        connections_at(Some(leaves), port)
    })
    .await;
    assert_eq!(
        open, 0,
        "connections to the replica that left (of {before})"
    );
    assert!(connections_at(Some(stays), port) >= 2);
}

/// `--dns-interval` sets how often the replicas' names are asked again: with
/// 200ms, a replica added to a shard's answer is taking calls well within the
/// default interval (5 s), and the name is asked several times a second. The
/// docker runner's rolling updates rely on it to move on quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_interval_sets_how_soon_a_new_replica_is_followed() {
    let (first, joins) = (ip(10), ip(11));
    let port = free_port_on(&[first, joins]);
    let dns = DnsServer::start();
    let _a = leaf_on(first, port, (0, 1), "first");
    let _b = leaf_on(joins, port, (0, 1), "joins");
    dns.set("leaf-0.leaves", &[first]);
    let mut flags = dns_args(port, 1, &dns);
    flags.extend(args(&["--dns-interval", "200ms"]));
    let g = GatherProc::start_with(&flags, true);
    g.wait_healthy(1);

    let asked = dns.queries();
    dns.set("leaf-0.leaves", &[first, joins]);
    let joined = format!("mp_gather_leaf_endpoint_healthy{{endpoint=\"{joins}:{port}\"}} 1");
    assert!(
        eventually(Duration::from_secs(3), || g
            .admin_get("/metrics")
            .contains(&joined))
        .await,
        "{joins}:{port} is not a healthy replica 3 s after it joined the answer"
    );
    let mut c = g.client().await;
    let mut tags = BTreeSet::new();
    for n in 0..4 {
        let reply = call(&mut c, json!(n)).await.expect("answered");
        tags.insert(reply.body_json().unwrap()[0]["tag"].to_string());
    }
    assert_eq!(tags.len(), 2, "both replicas answer: {tags:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = dns.queries() - asked;
    assert!(
        more >= 4,
        "the name was asked {more} times in over a second"
    );
}

/// A wrong `--dns-interval` is one clear line.
#[test]
fn a_bad_dns_interval_is_refused() {
    let out = Command::new(mp_testkit::bin("mp-gather"))
        .args(["--shard", "127.0.0.1:1", "--dns-interval", "soon"])
        .output()
        .expect("run mp-gather");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dns-interval"), "{err}");
}
