//! The threads the built-in model runs on: a fixed number, below normal priority, fed by one
//! bounded queue, each forward pass taking every request waiting (up to a batch) at once.
//!
//! Why this shape: a forward pass costs milliseconds of CPU, so it must not run on the async
//! runtime's threads (forwarding would stall behind it); concurrent requests of one text each
//! are far cheaper as one pass over many texts (the matrix multiplies get wide enough to use the
//! cores' vector units); and a burst larger than the machine can embed must be refused early
//! (`503` + `Retry-After`) rather than queued without bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use memring_common::ApiError;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::builtin::{BertEmbedder, Embedding};

/// What one caller waits for.
type Reply = oneshot::Sender<Result<Vec<Embedding>, String>>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
    queued_at: Instant,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Texts in `jobs`.
    texts: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Most texts waiting at once; past it, new requests are refused.
    capacity: usize,
    /// Most texts one pass takes from the queue (a single larger request is taken alone).
    max_batch: usize,
}

/// Handle to the pool; dropping the last one stops its threads once the queue is empty.
pub struct EmbedPool {
    shared: Arc<Shared>,
}

impl EmbedPool {
    /// Starts `threads` threads (each with its own use of the one loaded model) at nice `nice`.
    pub fn start(
        model: BertEmbedder,
        threads: usize,
        nice: i32,
        capacity: usize,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), texts: 0, closed: false }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
            max_batch: max_batch.max(1),
        });
        let model = Arc::new(model);
        for n in 0..threads.max(1) {
            let (shared, model) = (shared.clone(), model.clone());
            std::thread::Builder::new()
                .name(format!("embed-{n}"))
                .spawn(move || work(&shared, &model, nice))?;
        }
        Ok(Self { shared })
    }

    /// Embeds `texts` (in order), waiting behind the requests queued before it. `503` with
    /// `Retry-After` when the queue is full; a request larger than the whole queue is still
    /// taken when nothing else waits, so a full batch is never refused forever.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, ApiError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let n = texts.len();
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.shared.queue.lock();
            if queue.texts > 0 && queue.texts + n > self.shared.capacity {
                metrics::counter!("memring_embed_rejected_total").increment(1);
                return Err(ApiError::unavailable(
                    format!(
                        "the embedder is busy ({} texts waiting, room for {}); retry shortly",
                        queue.texts, self.shared.capacity
                    ),
                    1,
                ));
            }
            queue.texts += n;
            queue.jobs.push_back(Job { texts, reply, queued_at: Instant::now() });
            metrics::gauge!("memring_embed_queue_texts").set(queue.texts as f64);
        }
        self.shared.wake.notify_one();
        match answer.await {
            Ok(Ok(vectors)) if vectors.len() == n => Ok(vectors),
            Ok(Ok(vectors)) => Err(ApiError::internal(format!(
                "the embedder answered {} vectors for {n} texts",
                vectors.len()
            ))),
            Ok(Err(e)) => Err(ApiError::internal(format!("the embedder failed: {e}"))),
            Err(_) => Err(ApiError::unavailable("the embedder stopped; retry shortly", 1)),
        }
    }
}

impl Drop for EmbedPool {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

/// One pool thread: take what waits (whole requests, up to `max_batch` texts), embed it in one
/// call, hand each request its vectors.
fn work(shared: &Shared, model: &BertEmbedder, nice: i32) {
    memring_common::threads::lower_priority(nice);
    loop {
        let mut batch: Vec<Job> = Vec::new();
        {
            let mut queue = shared.queue.lock();
            while queue.jobs.is_empty() {
                if queue.closed {
                    return;
                }
                shared.wake.wait(&mut queue);
            }
            let mut texts = 0;
            while let Some(job) = queue.jobs.front() {
                if !batch.is_empty() && texts + job.texts.len() > shared.max_batch {
                    break;
                }
                texts += job.texts.len();
                if let Some(job) = queue.jobs.pop_front() {
                    batch.push(job);
                }
            }
            queue.texts -= texts;
            metrics::gauge!("memring_embed_queue_texts").set(queue.texts as f64);
        }
        // Callers that gave up (their request timed out or the client left) cost nothing more.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        for job in &batch {
            metrics::histogram!("memring_embed_queue_wait_seconds")
                .record(started.duration_since(job.queued_at).as_secs_f64());
        }
        let texts: Vec<&str> =
            batch.iter().flat_map(|job| job.texts.iter().map(String::as_str)).collect();
        let result = model.embed(&texts).map_err(|e| format!("{e:#}"));
        metrics::histogram!("memring_embed_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("memring_embed_texts_total").increment(texts.len() as u64);
        metrics::counter!("memring_embed_batches_total").increment(1);
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in batch {
                    let mine: Vec<Embedding> = vectors.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedding failed");
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
