//! The hedge budget: caps hedged calls at a share of all leaf calls.
//!
//! A token bucket as in Finagle's retry budget: every leaf call deposits
//! `pct / 100` of a token, every hedge withdraws one, and the balance is capped
//! so a quiet period cannot save up an unbounded burst. It starts full, so the
//! first slow calls can be hedged before any traffic has been seen.

use std::sync::atomic::{AtomicI64, Ordering};

/// One token, in the milli-tokens the bucket counts.
const TOKEN: i64 = 1000;
/// Most hedges the bucket holds (and starts with).
const BURST: i64 = 10;

/// A lock-free token bucket of hedges.
#[derive(Debug)]
pub struct Budget {
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl Budget {
    /// A budget of `pct` percent extra calls (0 disables hedging entirely).
    pub fn new(pct: f64) -> Self {
        let deposit = (pct * TOKEN as f64 / 100.0).round() as i64;
        let cap = if deposit == 0 { 0 } else { BURST * TOKEN };
        Budget {
            balance: AtomicI64::new(cap),
            deposit,
            cap,
        }
    }

    /// Credits one leaf call.
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        let prev = self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        if prev + self.deposit > self.cap {
            // Clamp; a race here only loses a fraction of a token.
            self.balance.fetch_min(self.cap, Ordering::Relaxed);
        }
    }

    /// Takes one hedge from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= TOKEN).then_some(b - TOKEN)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_hedges() {
        let b = Budget::new(5.0);
        // The initial burst.
        for _ in 0..BURST {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        // 1000 calls earn 50 hedges, capped at the burst size.
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.try_withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 50);
    }

    #[test]
    fn zero_budget_never_hedges() {
        let b = Budget::new(0.0);
        b.deposit();
        assert!(!b.try_withdraw());
    }
}
