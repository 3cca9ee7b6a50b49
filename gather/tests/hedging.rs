//! Percentile hedging (`--hedge-after p95`) and its budget, deterministic:
//! two replicas of one shard (faulty example processes), one of them made slow
//! at run time (`MP_DELAY_FILE`) after fast calls have filled the shard's
//! latency window. Asserted on the answers (who answered, how fast) and on
//! the hedge counters of `/metrics`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A file whose existence makes a faulty replica slow; removed when dropped.
struct SlowSwitch(PathBuf);

impl SlowSwitch {
    fn new(name: &str) -> SlowSwitch {
        let p =
            std::env::temp_dir().join(format!("mp-gather-hedging-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        SlowSwitch(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn on(&self) {
        std::fs::write(&self.0, b"slow").unwrap();
    }
}

impl Drop for SlowSwitch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The value of the sample `series` (name with labels) in a Prometheus
/// text exposition; 0 when absent (a counter never incremented).
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().expect("a number") as u64)
}

/// Requests mp-gather sent to the replica at `addr` (the pool's counter).
fn requests_to(metrics: &str, addr: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("mp_gather_leaf_requests_total{") && l.contains(addr))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse::<f64>().expect("a number") as u64)
}

const SENT: &str = "mp_gather_hedges_sent_total{shard=\"0\"}";
const WON: &str = "mp_gather_hedges_won_total{shard=\"0\"}";
const DENIED: &str = "mp_gather_hedges_denied_total";

/// Replica `a` (slow while `switch` exists, by `delay`) and replica `b`
/// (always fast), each tagging its replies with its name, behind mp-gather
/// with `--hedge-after p95` and `extra` flags; both replicas connected.
fn start(switch: &SlowSwitch, delay: Duration, extra: &[&str]) -> (Process, Process, GatherProc) {
    let ms = delay.as_millis().to_string();
    let a = example(
        "faulty",
        &[
            ("MP_DELAY_MS", &ms),
            ("MP_DELAY_FILE", switch.path()),
            ("MP_TAG", "a"),
        ],
    );
    let b = example("faulty", &[("MP_TAG", "b")]);
    let mut flags = args(&[
        "--shard",
        &format!("{},{}", a.addr(), b.addr()),
        "--hedge-after",
        "p95",
    ]);
    flags.extend(args(extra));
    let g = GatherProc::start_with(&flags, true);
    g.wait_healthy(2);
    (a, b, g)
}

/// `n` sequential calls while both replicas are fast: they fill the shard's
/// latency window (percentile hedging starts after 32 samples).
async fn warm_up(g: &GatherProc, n: usize, limit: Duration) {
    let mut c = g.client().await;
    for i in 0..n {
        let t = Instant::now();
        call(&mut c, json!({"warm": i}))
            .await
            .expect("warm-up call");
        assert!(t.elapsed() < limit, "a warm-up call took {:?}", t.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_slow_replica_is_hedged_to_the_other_and_answers_fast() {
    let delay = Duration::from_secs(3);
    let switch = SlowSwitch::new("wins");
    // A budget of 100%: this test is about winning, not about the cap.
    let (a, _b, g) = start(&switch, delay, &["--hedge-budget", "100"]);
    warm_up(&g, 64, delay / 3).await;
    let before = g.admin_get("/metrics");
    let to_a_before = requests_to(&before, &a.addr());

    // Replica a is slow from now on: every call it gets would take 3 s.
    switch.on();
    let mut c = g.client().await;
    for i in 0..10 {
        let t = Instant::now();
        let reply = call(&mut c, json!({"slow": i})).await.expect("an answer");
        let took = t.elapsed();
        let body = reply.body_json().unwrap();
        assert!(
            took < delay / 3,
            "call {i} took {took:?} (replica a delays {delay:?}): not hedged: {body}"
        );
        // Whichever replica round robin chose, the fast one answered.
        assert_eq!(body[0]["tag"], "b", "call {i}: {body}");
    }

    let after = g.admin_get("/metrics");
    let to_a = requests_to(&after, &a.addr()) - to_a_before;
    let won = sample(&after, WON) - sample(&before, WON);
    let sent = sample(&after, SENT) - sample(&before, SENT);
    // Round robin sent about half of the calls to a first; each of those was
    // hedged to b, and b's answer won. (a may also have been the target of a
    // hedge from a b call slower than the p95: those b wins itself.)
    assert!(
        to_a >= 3,
        "only {to_a} of 10 calls went to replica a:\n{after}"
    );
    assert!(won >= 3 && won <= to_a, "won {won}, calls to a {to_a}");
    assert!(sent >= won, "sent {sent} < won {won}");
    assert_eq!(sample(&after, DENIED), 0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hedge_budget_caps_hedges() {
    let delay = Duration::from_millis(1500);
    let switch = SlowSwitch::new("budget");
    // 0.1%: one hedge earned per 1000 leaf calls; this test makes far fewer,
    // so the initial burst of 10 hedges is all it may spend.
    let (_a, _b, g) = start(&switch, delay, &["--hedge-budget", "0.1"]);
    warm_up(&g, 40, delay / 2).await;

    switch.on();
    // 30 calls at once: round robin gives replica a 15 of them, each of which
    // asks for a hedge, more than the budget holds.
    let c = g.client().await;
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let reply = call(&mut c, json!({"slow": i})).await.expect("an answer");
                let tag = reply.body_json().unwrap()[0]["tag"].clone();
                (t.elapsed(), tag)
            })
        })
        .collect();
    let mut slow = 0;
    for t in calls {
        let (took, tag) = t.await.unwrap();
        if took >= delay {
            // Not hedged (the budget was spent): a answered, late.
            assert_eq!(tag, "a", "took {took:?}");
            slow += 1;
        }
    }

    let m = g.admin_get("/metrics");
    assert_eq!(
        sample(&m, SENT),
        10,
        "the burst of 10 is the whole budget (warm-up hedges included):\n{m}"
    );
    assert!(sample(&m, DENIED) >= 5, "{m}");
    assert!(slow >= 5, "only {slow} calls waited for the slow replica");

    // Spent is spent: a later call that round robin gives to a waits for
    // it, unhedged. (Hedge attempts move round robin on too, so a few calls
    // may go to b first.)
    let mut c = g.client().await;
    let mut reached_a = false;
    for i in 0..6 {
        let t = Instant::now();
        let reply = call(&mut c, json!({"after": i})).await.expect("an answer");
        if reply.body_json().unwrap()[0]["tag"] == "a" {
            assert!(t.elapsed() >= delay, "{:?}", t.elapsed());
            reached_a = true;
            break;
        }
    }
    assert!(reached_a, "round robin sent none of 6 calls to a");
    assert_eq!(sample(&g.admin_get("/metrics"), SENT), 10);
}
