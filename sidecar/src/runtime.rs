//! The tokio runtime of a data-plane process, sized by a `--threads` flag.

/// The runtime for `threads` worker threads (`None`: the CPUs this process
/// may run on, at most 2), and the count chosen. One thread is a
/// current-thread runtime: no wakeups across threads at all, the least CPU
/// per call.
pub fn build(threads: Option<u16>) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let threads = threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().min(2))
            .unwrap_or(1)
    });
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok((rt, threads))
}
