//! A batch's statistics: how long its requests queued, how its compute time
//! split into gathering, inference and the scatter, and how many of its
//! requests were answered, recorded into the model's shared counters and
//! histograms (read by the frontend's metrics).

use std::time::{Duration, Instant};

use shm::Region;
use shm::stats::{ModelStats, Stage, stage_histogram};

use crate::request::Request;

/// When a batch's compute started, and how long each request had queued.
pub struct Clock {
    start: Instant,
    /// Per request, nanoseconds from its arrival at this worker to `start`.
    queued: Vec<u64>,
    queued_ns: u64,
}

impl Clock {
    pub fn start(batch: &[Request]) -> Clock {
        let start = Instant::now();
        let now_ns = shm::now_ns();
        let queued: Vec<u64> = batch.iter().map(|p| now_ns.saturating_sub(p.arrived_ns)).collect();
        let queued_ns = queued.iter().sum();
        Clock { start, queued, queued_ns }
    }
}

/// What became of a batch.
pub struct Outcome {
    pub rows: u32,
    pub requests: usize,
    /// Requests that were not answered with outputs.
    pub failed: u64,
    pub gathered: Instant,
    /// When the backend handed its outputs over, if it did.
    pub scattered: Option<Instant>,
    pub end: Instant,
}

/// Where a model's statistics go.
pub struct Sink<'r> {
    pub region: &'r Region,
    pub model: u16,
    /// The model's counters on this worker, where the region has them.
    pub stats: Option<&'r ModelStats>,
}

impl Sink<'_> {
    pub fn record(&self, clock: &Clock, o: &Outcome) {
        let (start, end) = (clock.start, o.end);
        if let Some(s) = self.stats {
            let infer_end = o.scattered.unwrap_or(end);
            let ns = |d: Duration| d.as_nanos() as u64;
            let (input_ns, infer_ns, output_ns) =
                (ns(o.gathered - start), ns(infer_end - o.gathered), ns(end - infer_end));
            s.add(&s.execution_count, 1);
            s.add(&s.inference_count, o.rows as u64);
            s.record_batch(o.rows as usize, input_ns, infer_ns, output_ns);
            s.add(&s.compute_input_ns, input_ns);
            s.add(&s.compute_infer_ns, infer_ns);
            s.add(&s.compute_output_ns, output_ns);
            s.add(&s.queue_ns, clock.queued_ns);
            s.add(&s.failure_count, o.failed);
            let succeeded = (o.requests as u64).saturating_sub(o.failed);
            s.add(&s.success_count, succeeded);
            // Triton's success time: arrival at this worker to the batch's end.
            s.add(&s.success_ns, succeeded * ns(end - start) + clock.queued_ns * succeeded / o.requests.max(1) as u64);
            let wall_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            s.last_inference_ms.store(wall_ms as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(h) = stage_histogram(self.region, self.model, Stage::Queue) {
            for &q in &clock.queued {
                h.observe_ns(q);
            }
        }
        if let Some(h) = stage_histogram(self.region, self.model, Stage::Compute) {
            h.observe(end - start);
        }
    }
}
