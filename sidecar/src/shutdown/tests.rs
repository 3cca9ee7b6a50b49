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
