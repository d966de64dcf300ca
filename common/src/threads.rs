//! Thread priority for work that must yield to request handling (migration copies on shard
//! nodes, the embedder's forward passes on routers).

/// Lowers the calling thread's priority to nice `nice` (0: leave it). Threads it starts
/// afterwards inherit the value.
pub fn lower_priority(nice: i32) {
    if nice != 0 {
        // On Linux a thread id names one thread, so this lowers this thread only.
        let me = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
            tracing::warn!(error = %e, nice, "cannot lower the thread's priority");
        }
    }
}
