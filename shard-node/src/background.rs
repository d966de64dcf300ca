//! Low-priority threads for work that must not slow the node's own traffic: the export, import
//! and log reads of a migration. A migration moves a whole partition (a full scan on the source,
//! an index build on the target), while the searches of every other partition on both nodes must
//! keep their latency; on a busy machine the scheduler should give the CPU to those searches
//! first. The threads run at a raised nice value (Linux: per thread), so they use what the
//! foreground leaves and still finish when the machine is busy (a nice of 10 gets ~10% of a
//! core against one busy foreground thread).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use memring_common::ApiError;
use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of low-priority threads.
pub struct Background {
    jobs: Mutex<Sender<Job>>,
}

impl Background {
    /// Starts `threads` threads at nice `nice` (0: normal priority, up to 19: lowest).
    pub fn start(threads: usize, nice: i32) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("background-{n}"))
                .spawn(move || work(&rx, nice))?;
        }
        Ok(Self { jobs: Mutex::new(tx) })
    }

    /// Runs `work` on a background thread and waits for it.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            let _ = tx.send(span.in_scope(work));
        });
        self.jobs
            .lock()
            .send(job)
            .map_err(|_| ApiError::unavailable("background threads stopped", 1))?;
        rx.await.map_err(|_| ApiError::internal("background task failed"))?
    }
}

pub use memring_common::threads::lower_priority;

fn work(jobs: &Mutex<Receiver<Job>>, nice: i32) {
    lower_priority(nice);
    loop {
        // Hold the lock only to take one job, so the threads share the queue.
        let job = jobs.lock().recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_at_the_asked_priority_and_returns_its_result() {
        let pool = Background::start(2, 7).expect("start");
        let nice = pool
            .run(|| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                    .map_err(|e| ApiError::internal(e.to_string()))
            })
            .await
            .expect("run");
        // Raising one's own nice value needs no privilege, so this holds for any user.
        assert_eq!(nice, 7);
        let err = pool.run(|| Err::<(), _>(ApiError::invalid("bad"))).await.expect_err("error");
        assert_eq!(err.code(), memring_common::ErrorCode::InvalidRequest);
    }
}
