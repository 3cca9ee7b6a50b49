//! The unary call futures of one server connection, polled by its task: like
//! `FuturesUnordered`, but each call has a slot (reused, with its waker: no
//! allocation per call once warm), a call is dropped by its key (a reset
//! stream's future goes at once, no abort handle), and a wake that comes
//! while the connection's task is running does not schedule the task again
//! (the task's rounds take it; a leaf answer read in the same round is
//! answered in that round).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use slab::Slab;

/// The slots woken since they were last polled, and the task to wake.
#[derive(Default)]
struct Ready {
    list: Mutex<Vec<usize>>,
    task: AtomicWaker,
    /// The task is running (between [`CallSet::enter`] and [`CallSet::leave`]).
    running: AtomicBool,
}

impl Ready {
    fn push(&self, slot: usize) {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }

    fn take(&self, into: &mut Vec<usize>) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *list, into);
    }

    fn is_empty(&self) -> bool {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// The waker of one slot.
struct SlotWaker {
    slot: usize,
    ready: Arc<Ready>,
    /// In the ready list already.
    queued: AtomicBool,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.ready.push(self.slot);
        // A running task looks at the list before it sleeps (see `leave`).
        if !self.ready.running.load(Ordering::SeqCst) {
            self.ready.task.wake();
        }
    }
}

/// A slot's waker, made once and kept while the slot is reused.
struct SlotWakers {
    flag: Arc<SlotWaker>,
    waker: Waker,
}

/// A call's place in its [`CallSet`]: its slot and its tag (a slot is
/// reused; the tag tells its calls apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    slot: usize,
    tag: u32,
}

/// The calls of one connection; `F` resolves to a call's outcome.
pub(crate) struct CallSet<F> {
    /// The calls and their tags (stream ids), by slot.
    calls: Slab<(u32, F)>,
    /// Slot `i`'s waker at `wakers[i]`.
    wakers: Vec<SlotWakers>,
    ready: Arc<Ready>,
    /// The slots being polled (the ready list swapped out).
    batch: Vec<usize>,
}

impl<F: Future + Unpin> CallSet<F> {
    pub(crate) fn new() -> Self {
        CallSet {
            calls: Slab::new(),
            wakers: Vec::new(),
            ready: Arc::new(Ready::default()),
            batch: Vec::new(),
        }
    }

    /// Adds `fut`, tagged `tag`; it is polled at the next [`CallSet::poll`].
    /// Returns its key.
    pub(crate) fn push(&mut self, tag: u32, fut: F) -> Key {
        let slot = self.calls.insert((tag, fut));
        while self.wakers.len() <= slot {
            let flag = Arc::new(SlotWaker {
                slot: self.wakers.len(),
                ready: self.ready.clone(),
                queued: AtomicBool::new(false),
            });
            let waker = Waker::from(flag.clone());
            self.wakers.push(SlotWakers { flag, waker });
        }
        self.wakers[slot].waker.wake_by_ref();
        Key { slot, tag }
    }

    /// Drops the call of `key`, if it is still there.
    pub(crate) fn remove(&mut self, key: Key) {
        if self.calls.get(key.slot).is_some_and(|(t, _)| *t == key.tag) {
            self.calls.remove(key.slot);
        }
    }

    /// Marks the connection's task running in `cx`: wakes from now on are
    /// left to its rounds.
    pub(crate) fn enter(&self, cx: &Context<'_>) {
        self.ready.task.register(cx.waker());
        self.ready.running.store(true, Ordering::SeqCst);
    }

    /// The task is about to sleep: a wake that came since its last round
    /// schedules it again.
    pub(crate) fn leave(&self, cx: &Context<'_>) {
        self.ready.running.store(false, Ordering::SeqCst);
        if !self.ready.is_empty() {
            cx.waker().wake_by_ref();
        }
    }

    /// Polls the woken calls; each finished one's tag and outcome go to
    /// `done`. Whether any was polled.
    pub(crate) fn poll(&mut self, done: &mut Vec<(u32, F::Output)>) -> bool {
        let mut batch = std::mem::take(&mut self.batch);
        self.ready.take(&mut batch);
        let polled = !batch.is_empty();
        for &slot in &batch {
            let w = &self.wakers[slot];
            w.flag.queued.store(false, Ordering::Release);
            // A wake of a call that is gone (or of the slot's earlier call).
            let Some((tag, fut)) = self.calls.get_mut(slot) else {
                continue;
            };
            let mut cx = Context::from_waker(&w.waker);
            if let Poll::Ready(out) = std::pin::Pin::new(fut).poll(&mut cx) {
                let tag = *tag;
                self.calls.remove(slot);
                done.push((tag, out));
            }
        }
        batch.clear();
        self.batch = batch;
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;

    type Fut = Pin<Box<dyn Future<Output = u32> + Send>>;

    /// Counts the wakes of the connection's task.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The connection's task, as a waker that counts its wakes.
    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn calls_finish_when_woken_and_removed_ones_never() {
        let (task, waker) = task();
        let cx = Context::from_waker(&waker);
        let mut set: CallSet<Fut> = CallSet::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        set.push(1, Box::pin(async { 10 }));
        set.push(2, Box::pin(async move { rx.await.unwrap() }));
        let forever = set.push(3, Box::pin(std::future::pending()));
        let mut done = Vec::new();

        set.enter(&cx);
        assert!(set.poll(&mut done));
        assert_eq!(done, [(1, 10)]);
        set.leave(&cx);
        // Nothing woken: polling does nothing.
        done.clear();
        assert!(!set.poll(&mut done) && done.is_empty());

        // Woken while the task sleeps: the task is woken.
        let before = task.0.load(Ordering::SeqCst);
        tx.send(20).unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), before + 1);
        set.enter(&cx);
        assert!(set.poll(&mut done));
        assert_eq!(done, [(2, 20)]);
        set.leave(&cx);

        // A removed call goes; its slot serves the next call, which a stale
        // removal by the old key does not touch.
        set.remove(forever);
        done.clear();
        let again = set.push(4, Box::pin(async { 40 }));
        assert_eq!(again.slot, forever.slot);
        set.remove(forever);
        set.enter(&cx);
        assert!(set.poll(&mut done));
        assert_eq!(done, [(4, 40)]);
        set.leave(&cx);
    }

    #[test]
    fn a_wake_while_the_task_runs_is_left_to_its_rounds() {
        let (task, waker) = task();
        let cx = Context::from_waker(&waker);
        let mut set: CallSet<Fut> = CallSet::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        set.push(1, Box::pin(async move { rx.await.unwrap() }));
        let mut done = Vec::new();
        set.enter(&cx);
        set.poll(&mut done);
        let before = task.0.load(Ordering::SeqCst);
        // Answered within the task's round: no wake of the task...
        tx.send(7).unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), before);
        // ...and the next round takes it.
        assert!(set.poll(&mut done));
        assert_eq!(done, [(1, 7)]);
        set.leave(&cx);
        assert_eq!(task.0.load(Ordering::SeqCst), before);

        // Woken after the last round but before the task sleeps: leaving
        // wakes it, so the answer is not stranded.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        set.enter(&cx);
        set.push(2, Box::pin(async move { rx.await.unwrap() }));
        set.poll(&mut done);
        tx.send(8).unwrap();
        set.leave(&cx);
        assert_eq!(task.0.load(Ordering::SeqCst), before + 1);
    }
}
