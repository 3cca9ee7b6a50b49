use super::*;

#[tokio::test(start_paused = true)]
async fn drain_waits_for_watches_then_returns() {
    let drain = Drain::new();
    let w = drain.watch();
    let task = tokio::spawn(async move {
        w.signaled().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(w);
    });
    let start = tokio::time::Instant::now();
    drain.drain(Duration::from_secs(5)).await.expect("drained");
    assert!(start.elapsed() >= Duration::from_secs(1));
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn drain_gives_up_after_grace() {
    let drain = Drain::new();
    let w = drain.watch();
    let err = drain.drain(Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(err.remaining, 1);
    assert!(w.is_draining());
}

#[tokio::test(start_paused = true)]
async fn drain_without_watches_is_immediate() {
    Drain::new().drain(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn watch_calls_on_drain_once_and_finishes_the_future() {
    let drain = Drain::new();
    let w = drain.watch();
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let called = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = called.clone();
    let task = tokio::spawn(w.watch(async move { rx.await.unwrap() }, move |_| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let d = tokio::spawn(drain.drain(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 1);
    tx.send(7).unwrap();
    assert_eq!(task.await.unwrap(), 7);
    d.await.unwrap().unwrap();
}

/// A waker that counts its wakes.
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_drain_signal_is_seen_once_and_wakes_its_task() {
    let wakes = std::sync::Arc::new(Wakes(Default::default()));
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let drain = Drain::new();
    let mut signal = DrainSignal::new(drain.watch());
    // Polled often before the drain: nothing, and no wake.
    for _ in 0..10 {
        assert!(!signal.poll(&mut cx));
    }
    assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    let draining = tokio::spawn(drain.drain(Duration::from_secs(5)));
    // The task registered at the first poll is woken; the next poll says so,
    // once.
    for _ in 0..100 {
        if wakes.0.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        wakes.0.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "not woken"
    );
    assert!(signal.poll(&mut cx));
    assert!(!signal.poll(&mut cx));
    // The drain waits for the signal's watch.
    assert!(!draining.is_finished());
    drop(signal);
    draining.await.unwrap().expect("drained");
}

#[tokio::test]
async fn a_drain_signal_made_after_the_drain_began_is_seen_at_once() {
    let drain = Drain::new();
    let early = drain.watch();
    let draining = tokio::spawn(drain.drain(Duration::from_secs(5)));
    early.signaled().await;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut late = DrainSignal::new(early.clone());
    assert!(late.poll(&mut cx));
    drop((early, late));
    draining.await.unwrap().expect("drained");
}
