//! Per-model counters in shared memory. Inference workers add to them; the
//! frontend reads them for the statistics endpoints without asking anyone, so
//! scraping never slows inference.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Region;

/// Batch sizes counted individually; larger batches share the last bucket.
pub const BATCH_BUCKETS: usize = 65;

/// Counters of one model on one inference worker (Triton's statistics names).
#[repr(C)]
pub struct ModelStats {
    /// Requests (or request rows) that completed inference.
    pub inference_count: AtomicU64,
    /// Batches executed.
    pub execution_count: AtomicU64,
    pub success_count: AtomicU64,
    pub success_ns: AtomicU64,
    pub failure_count: AtomicU64,
    pub failure_ns: AtomicU64,
    /// Time requests waited in the batcher.
    pub queue_ns: AtomicU64,
    /// Gathering inputs into the batch buffer.
    pub compute_input_ns: AtomicU64,
    /// The backend's run.
    pub compute_infer_ns: AtomicU64,
    /// Scattering outputs into slots.
    pub compute_output_ns: AtomicU64,
    /// Requests dropped because their deadline passed before compute.
    pub timeout_count: AtomicU64,
    /// Wall-clock milliseconds of the last inference.
    pub last_inference_ms: AtomicU64,
    /// `batch_sizes[n]`: batches of `n` rows (the last bucket: `n` or more).
    pub batch_sizes: [AtomicU64; BATCH_BUCKETS],
    /// Requests the batcher skipped because their client went away.
    pub cancel_count: AtomicU64,
    _pad: [u64; 2],
}

pub const MODEL_STATS_LEN: usize = std::mem::size_of::<ModelStats>();
const _: () = assert!(MODEL_STATS_LEN.is_multiple_of(64));

impl ModelStats {
    pub fn add(&self, counter: &AtomicU64, v: u64) {
        // Relaxed: counters are independent and only read for reporting.
        let _ = self;
        counter.fetch_add(v, Ordering::Relaxed);
    }

    pub fn record_batch(&self, rows: usize) {
        self.batch_sizes[rows.min(BATCH_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Most pipeline steps whose time is counted per model.
pub const MAX_STEPS: usize = 16;

/// Time spent in one pipeline step, summed over every preproc worker: CPU
/// time for CPU steps, wall time from sending to the last output arriving
/// for model steps (queueing included).
#[repr(C)]
pub struct StepStats {
    pub count: AtomicU64,
    pub ns: AtomicU64,
}

pub const STEP_STATS_LEN: usize = std::mem::size_of::<StepStats>() * MAX_STEPS;

impl StepStats {
    pub fn record(&self, ns: u64) {
        // Relaxed: independent counters read only for reporting.
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The step counters of pipeline `model` (one per step index).
pub fn step_stats(region: &Region, model: u16) -> Option<&[StepStats]> {
    if model as u32 >= region.layout().params.models {
        return None;
    }
    let ptr = region.ptr_at(region.layout().step_stats_offset + model as usize * STEP_STATS_LEN, STEP_STATS_LEN);
    // SAFETY: in bounds (checked by ptr_at), 8-byte aligned by the layout, made
    // only of atomics (valid when zeroed), and borrowed no longer than `region`.
    Some(unsafe { std::slice::from_raw_parts(ptr as *const StepStats, MAX_STEPS) })
}

/// The counters of `model` on inference worker `gpu`.
pub fn model_stats(region: &Region, gpu: u16, model: u16) -> Option<&ModelStats> {
    let p = &region.layout().params;
    if gpu as u32 >= p.gpus || model as u32 >= p.models {
        return None;
    }
    let ptr = region.ptr_at(region.layout().stats_offset_of(gpu, model), MODEL_STATS_LEN);
    // SAFETY: in bounds (checked by ptr_at), 64-byte aligned by the layout, made
    // only of atomics (valid when zeroed), and borrowed no longer than `region`.
    Some(unsafe { &*(ptr as *const ModelStats) })
}
