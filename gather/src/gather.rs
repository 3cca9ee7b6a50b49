//! The scatter/gather core: one call in, a concurrent call to every shard,
//! the failure policy applied as outcomes arrive, hedging of slow shards, the
//! deadline, then the merge.
//!
//! The fan-out is one future per shard driven by a `FuturesUnordered` inside
//! the caller's task (no task per leaf): when the outcome is decided (a
//! failure under `all`, an impossible quorum, the deadline, the `first`
//! answer) the set is dropped, which drops every outstanding leaf call, and
//! the leaf client resets those HTTP/2 streams (RST_STREAM CANCEL) so the
//! leaves stop working on them. The whole call runs inside the task of the
//! caller's connection ([`mp_sidecar::h2server`]); a caller that resets its
//! stream drops it the same way.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http::uri::PathAndQuery;
use mp_sidecar::h2client::Deadline;
use mp_sidecar::hpack::HeaderList;
use tokio::time::{sleep, sleep_until, Instant};
use tonic::{Code, Status};

use crate::call::{explain, failures, status_text, Call, DeadlineNote, LeafResult};
use crate::config::{HedgeAfter, Policy, ReducerKind};
use crate::hedge::Budget;
use crate::leaf::{self, Outgoing};
use crate::metrics::Metrics;
use crate::own::OwnLeaves;
use crate::shard::Shard;
use crate::topology::Topology;

/// The caller's deadline keeps this share (at most [`MAX_RESERVE`]) for the
/// merge and the answer's way back; leaves get the rest.
const RESERVE_DIVISOR: u32 = 5;
/// Upper bound of the reserve taken from the caller's deadline.
const MAX_RESERVE: Duration = Duration::from_millis(100);
/// Of the caller's deadline, this share (at most [`MAX_ANSWER_RESERVE`]) is
/// kept for the answer's way back: a merger still working then is given up,
/// so the caller hears which part was late before its own timer fires.
const ANSWER_RESERVE_DIVISOR: u32 = 20;
/// Upper bound of the answer's reserve.
const MAX_ANSWER_RESERVE: Duration = Duration::from_millis(25);

/// Everything a gather needs, shared by all calls. The topology may be
/// swapped while calls run ([`Gather::swap`]); the rest is fixed at startup.
#[derive(Debug)]
pub struct Gather {
    /// The shards and the merger. A call loads it once and keeps it.
    pub topology: ArcSwap<Topology>,
    /// The failure policy.
    pub policy: Policy,
    /// When to hedge, if at all.
    pub hedge: Option<HedgeAfter>,
    /// Caps hedges.
    pub budget: Budget,
    /// Upper bound of one shard's answer.
    pub leaf_timeout: Duration,
    /// Metrics.
    pub metrics: Metrics,
}

impl Gather {
    /// Replaces the topology for calls that start from now on (calls in
    /// flight finish on the old one) and returns the new generation (1 is
    /// the topology mp-gather started with).
    pub fn swap(&self, topology: Topology) -> u64 {
        self.topology.store(Arc::new(topology));
        self.metrics.topology_swapped()
    }

    /// Serves one call of method `path` whose caller allows `caller_timeout`
    /// (its `grpc-timeout`) and sent `headers` (its header list, names in
    /// lower case) and the request message in its gRPC frame (`framed`,
    /// checked: one uncompressed frame): scatter, apply the policy, merge.
    /// `own`: the caller connection's own leaf connections, used once it is
    /// busy enough (see [`crate::own`]). Returns the reply message.
    pub async fn handle(
        &self,
        path: &PathAndQuery,
        caller_timeout: Option<Duration>,
        headers: &Arc<HeaderList>,
        framed: Bytes,
        own: &Arc<OwnLeaves>,
    ) -> Result<Bytes, Status> {
        let start = Instant::now();
        let body = framed.slice(5..);
        // A year is "no deadline"; it also keeps the arithmetic below in range.
        let caller_timeout = caller_timeout.map(|t| t.min(Duration::from_secs(365 * 86_400)));
        let mut leaf_budget = self.leaf_timeout;
        let mut deadline_note = DeadlineNote::LeafTimeout(self.leaf_timeout);
        let answer_deadline = caller_timeout
            .map(|t| start + t - (t / ANSWER_RESERVE_DIVISOR).min(MAX_ANSWER_RESERVE));
        if let Some(t) = caller_timeout {
            let budget = t - (t / RESERVE_DIVISOR).min(MAX_RESERVE);
            if budget < leaf_budget {
                leaf_budget = budget;
                deadline_note = DeadlineNote::Caller { budget, total: t };
            }
        }
        // The one atomic load of the call: it keeps this topology to the end.
        let topology = self.topology.load_full();
        let mut out = Outgoing::new(path.clone(), framed, headers);
        out.own = own.take_call(topology.shards.len()).then(|| own.clone());
        let call = Call {
            path,
            out,
            body,
            leaf: Deadline {
                at: start + leaf_budget,
                told: Some(leaf_budget),
            },
            deadline_note,
            answer_deadline,
            start,
        };
        // Every wait below is bounded by the caller's deadline already (the
        // leaf deadline is earlier; the merger call has the caller's), so
        // the call needs no timer of its own.
        let result = if topology.merge.reducer_for(&call) == Some(ReducerKind::First) {
            // Boxed, as a fan-out: rare, and its state is the fan-out's.
            Box::pin(self.first(&topology.shards, &call)).await
        } else {
            match self.scatter(&topology.shards, &call).await {
                Ok(outcomes) => {
                    topology
                        .merge
                        .merge(&call, outcomes, self.leaf_timeout)
                        .await
                }
                Err(s) => Err(s),
            }
        };
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.request(code, start.elapsed().as_secs_f64());
        result
    }

    /// Calls every one of `shards` and applies the policy. On success,
    /// returns one result per shard, in shard order.
    pub async fn scatter(
        &self,
        shards: &[Shard],
        call: &Call<'_>,
    ) -> Result<Vec<LeafResult>, Status> {
        if let [shard] = shards {
            let mut failed = 0;
            // One shard: no set of futures to keep, and no timer of its own:
            // the leaf call is bounded by the leaf deadline (the leaf
            // connection's timer ends it).
            let r = self.call_shard(shard, call).await;
            let mut slot = [None];
            self.admit(&mut slot, &mut failed, r)?;
            return Ok(Vec::from(slot.map(|r| r.expect("admitted"))));
        }
        // Boxed: the set of leaf calls and the fan-out's timer are state only
        // a fan-out to several shards has; a one-shard call's future would
        // carry (and copy) it.
        Box::pin(self.fan_out(shards, call)).await
    }

    /// [`Gather::scatter`] to several shards.
    async fn fan_out(&self, shards: &[Shard], call: &Call<'_>) -> Result<Vec<LeafResult>, Status> {
        let n = shards.len();
        let mut failed = 0;
        let mut slots: Vec<Option<LeafResult>> = (0..n).map(|_| None).collect();
        let mut pending: FuturesUnordered<_> =
            shards.iter().map(|s| self.call_shard(s, call)).collect();
        // Each leaf call is bounded by the leaf deadline already; one timer
        // for the whole fan-out (not one per leaf call) decides the shards
        // still out at the deadline at once.
        let mut deadline = pin!(sleep_until(call.leaf.at));
        loop {
            let r = tokio::select! {
                biased;
                r = pending.next() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = &mut deadline => {
                    // Dropping the calls still running cancels them.
                    drop(pending);
                    let late: Vec<usize> = (0..n).filter(|i| slots[*i].is_none()).collect();
                    for i in late {
                        let r = self.late(&shards[i], call);
                        self.admit(&mut slots, &mut failed, r)?;
                    }
                    break;
                }
            };
            self.admit(&mut slots, &mut failed, r)?;
        }
        // Every shard has its outcome now (an answer, a failure or the
        // deadline). Sized once: collecting a `Flatten` would grow the vector
        // as it goes.
        let mut outcomes = Vec::with_capacity(n);
        outcomes.extend(slots.into_iter().flatten());
        Ok(outcomes)
    }

    /// Stores one shard's outcome; fails the call when the policy says so.
    fn admit(
        &self,
        slots: &mut [Option<LeafResult>],
        failed: &mut usize,
        r: LeafResult,
    ) -> Result<(), Status> {
        let n = slots.len();
        let shard = r.shard;
        if let Err(status) = &r.result {
            *failed += 1;
            let code = status.code();
            match self.policy {
                Policy::All => {
                    return Err(Status::new(
                        code,
                        format!("{} failed: {}", r.who(), status_text(status)),
                    ))
                }
                Policy::Quorum(k) if n - *failed < k => {
                    slots[shard] = Some(r);
                    return Err(Status::new(
                        code,
                        format!(
                            "quorum of {k} of {n} shards not reachable: {}",
                            failures(slots.iter().flatten())
                        ),
                    ));
                }
                _ => {}
            }
        }
        slots[shard] = Some(r);
        Ok(())
    }

    /// The outcome of a shard that did not answer by the leaf deadline.
    fn late(&self, shard: &Shard, call: &Call<'_>) -> LeafResult {
        let elapsed = call.start.elapsed();
        shard.metrics.latency.observe(elapsed.as_secs_f64());
        shard.metrics.outcomes[Code::DeadlineExceeded as usize].inc();
        LeafResult {
            shard: shard.index,
            result: Err(late(call)),
            elapsed,
            endpoint: None,
            hedged: false,
        }
    }

    /// The `first` reducer: the first successful answer wins, the other calls
    /// are cancelled; fails only when every shard fails or none answers by
    /// the deadline.
    async fn first(&self, shards: &[Shard], call: &Call<'_>) -> Result<Bytes, Status> {
        let mut pending: FuturesUnordered<_> =
            shards.iter().map(|s| self.call_shard(s, call)).collect();
        let mut failed = Vec::new();
        let mut deadline = pin!(sleep_until(call.leaf.at));
        loop {
            tokio::select! {
                biased;
                r = pending.next() => match r {
                    Some(LeafResult { result: Ok(bytes), .. }) => return Ok(bytes),
                    Some(r) => failed.push(r),
                    None => break,
                },
                _ = &mut deadline => {
                    return Err(Status::deadline_exceeded(format!(
                        "no shard answered within {}",
                        call.deadline_note
                    )))
                }
            }
        }
        let code = failed
            .first()
            .and_then(|r| r.result.as_ref().err())
            .map_or(Code::Unavailable, Status::code);
        Err(Status::new(
            code,
            format!("no shard answered: {}", failures(failed.iter())),
        ))
    }

    /// One shard's outcome: a call to one replica, maybe a hedge to another;
    /// bounded by the leaf deadline (see [`leaf::call`]).
    async fn call_shard(&self, shard: &Shard, call: &Call<'_>) -> LeafResult {
        let (answer, hedged) = match self.hedge_delay(shard) {
            None => {
                let first = leaf::pick(shard, None);
                let (out, deadline) = (&call.out, call.leaf);
                let answer = leaf::call(shard, out, deadline, call.start, first, None).await;
                (answer, false)
            }
            // Boxed: only a hedged call needs a timer and a second call;
            // every other call's future would carry (and copy) their state.
            Some(delay) => Box::pin(self.hedged(shard, call, delay)).await,
        };
        // The leaf was told the same deadline and may give up first (tonic
        // answers CANCELLED "Timeout expired"): say what happened, not how
        // the leaf put it.
        let result = answer.result.map_err(|s| {
            if answer.at >= call.leaf.at {
                late(call)
            } else {
                explain(s)
            }
        });
        let replica = answer.endpoint;
        let endpoint = replica.map(|ep| ep.addr());
        let elapsed = answer.at.saturating_duration_since(call.start);
        let m = &shard.metrics;
        m.latency.observe(elapsed.as_secs_f64());
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        m.outcomes[(code as usize).min(16)].inc();
        if result.is_ok() {
            if hedged {
                m.hedges_won.inc();
            }
            if matches!(self.hedge, Some(HedgeAfter::Percentile(_))) {
                shard.window.record(elapsed);
            }
        }
        LeafResult {
            shard: shard.index,
            result,
            elapsed,
            endpoint,
            hedged,
        }
    }

    /// A call to one replica of `shard` and, when it has not answered after
    /// `delay`, a second call to another replica (the budget allowing): the
    /// first success wins and the other call is dropped (cancelled:
    /// RST_STREAM); a failure waits for the other call. The answer, and
    /// whether it came from the second call.
    async fn hedged(
        &self,
        shard: &Shard,
        call: &Call<'_>,
        delay: Duration,
    ) -> (leaf::Answer, bool) {
        self.budget.deposit();
        let (out, deadline) = (&call.out, call.leaf);
        let first = leaf::pick(shard, None);
        let mut primary = pin!(leaf::call(
            shard,
            out,
            deadline,
            call.start,
            first.clone(),
            None
        ));
        tokio::select! {
            biased;
            a = &mut primary => return (a, false),
            _ = sleep(delay) => {}
        }
        let other = leaf::pick(shard, first.as_ref());
        let Some(other) = other.filter(|_| self.budget.try_withdraw()) else {
            self.metrics.hedges_denied.inc();
            return (primary.await, false);
        };
        shard.metrics.hedges_sent.inc();
        // Told the time left now, not the call's whole budget.
        let second = leaf::call(
            shard,
            out,
            call.leaf.at.into(),
            Instant::now(),
            Some(other),
            first.as_ref(),
        );
        let mut second = pin!(second);
        tokio::select! {
            a = &mut primary => match a.result {
                Ok(_) => (a, false),
                Err(_) => (second.await, true),
            },
            a = &mut second => match a.result {
                Ok(_) => (a, true),
                Err(_) => (primary.await, false),
            },
        }
    }

    fn hedge_delay(&self, shard: &Shard) -> Option<Duration> {
        let hedge = self.hedge?;
        if shard.pool.available() < 2 {
            return None;
        }
        match hedge {
            HedgeAfter::Fixed(d) => Some(d),
            HedgeAfter::Percentile(_) => shard.window.current(),
        }
    }
}

fn late(call: &Call<'_>) -> Status {
    Status::deadline_exceeded(format!("no answer within {}", call.deadline_note))
}
