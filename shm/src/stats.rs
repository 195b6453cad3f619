//! Per-model counters and latency histograms in shared memory. Workers add
//! to them with relaxed atomic adds; the frontend reads them for `/metrics`
//! and the statistics endpoints without asking anyone, so scraping never
//! slows inference.

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
    /// How long loading the model took on this worker (last load).
    pub load_duration_ns: AtomicU64,
    /// Per batch size (indexed like `batch_sizes`): time gathering inputs,
    /// running the backend and scattering outputs.
    pub batch_input_ns: [AtomicU64; BATCH_BUCKETS],
    pub batch_infer_ns: [AtomicU64; BATCH_BUCKETS],
    pub batch_output_ns: [AtomicU64; BATCH_BUCKETS],
    _pad: [u64; 6],
}

pub const MODEL_STATS_LEN: usize = std::mem::size_of::<ModelStats>();
const _: () = assert!(MODEL_STATS_LEN.is_multiple_of(64));

impl ModelStats {
    pub fn add(&self, counter: &AtomicU64, v: u64) {
        // Relaxed: counters are independent and only read for reporting.
        let _ = self;
        counter.fetch_add(v, Ordering::Relaxed);
    }

    /// Counts a batch of `rows` and its three phases.
    pub fn record_batch(&self, rows: usize, input_ns: u64, infer_ns: u64, output_ns: u64) {
        // Relaxed: independent counters read only for reporting.
        let b = rows.min(BATCH_BUCKETS - 1);
        self.batch_sizes[b].fetch_add(1, Ordering::Relaxed);
        self.batch_input_ns[b].fetch_add(input_ns, Ordering::Relaxed);
        self.batch_infer_ns[b].fetch_add(infer_ns, Ordering::Relaxed);
        self.batch_output_ns[b].fetch_add(output_ns, Ordering::Relaxed);
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

/// Zeroes every counter and histogram of `model`, before its index is given
/// to another loaded version (the supervisor does it, while nothing can
/// count under that index).
pub fn reset_model(region: &Region, model: u16) {
    let layout = region.layout();
    let p = &layout.params;
    if model as u32 >= p.models {
        return;
    }
    let mut ranges = vec![
        (layout.step_stats_offset + model as usize * STEP_STATS_LEN, STEP_STATS_LEN),
        (layout.hist_offset + model as usize * STAGE_HIST_LEN, STAGE_HIST_LEN),
    ];
    ranges.extend((0..p.gpus as u16).map(|g| (layout.stats_offset_of(g, model), MODEL_STATS_LEN)));
    for (offset, len) in ranges {
        let ptr = region.ptr_at(offset, len);
        // SAFETY: in bounds (checked by ptr_at) and 8-byte aligned by the
        // layout; these ranges hold only atomic u64 counters (and padding that
        // nothing reads), which every process accesses atomically.
        let words = unsafe { std::slice::from_raw_parts(ptr as *const AtomicU64, len / 8) };
        for w in words {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// Sums a counter of `model` over every inference worker.
pub fn sum(region: &Region, model: u16, f: impl Fn(&ModelStats) -> u64) -> u64 {
    let gpus = region.layout().topology().gpus;
    (0..gpus).filter_map(|g| model_stats(region, g, model)).map(f).sum()
}

/// Upper bounds of the latency histogram buckets, in microseconds; a last
/// bucket (+Inf) takes everything slower. 50 µs to 10 s, 1-2.5-5 steps.
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
pub const HIST_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// A latency histogram: counts per bucket (not cumulative) and the sum. Lives
/// in shared memory (stage histograms written by workers) or on the heap.
#[repr(C)]
#[derive(Default)]
pub struct Histogram {
    pub buckets: [AtomicU64; HIST_BUCKETS],
    pub sum_ns: AtomicU64,
    _pad: u64,
}

pub const HISTOGRAM_LEN: usize = std::mem::size_of::<Histogram>();
const _: () = assert!(HISTOGRAM_LEN.is_multiple_of(16));

impl Histogram {
    pub fn observe_ns(&self, ns: u64) {
        let us = ns.div_ceil(1000);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        // Relaxed: independent counters read only for reporting.
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn observe(&self, d: std::time::Duration) {
        self.observe_ns(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Adds this histogram's counts to `into` (buckets, sum in ns).
    pub fn add_to(&self, into: &mut ([u64; HIST_BUCKETS], u64)) {
        for (acc, b) in into.0.iter_mut().zip(&self.buckets) {
            *acc += b.load(Ordering::Relaxed);
        }
        into.1 += self.sum_ns.load(Ordering::Relaxed);
    }
}

/// The stages of a request that workers time, each a histogram per model in
/// shared memory (the frontend keeps `receive` and `total` itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// Image decode in a preproc worker.
    Decode = 0,
    /// Resize, normalize and layout into the model's input tensor.
    Preprocess = 1,
    /// Waiting in the batcher, from arrival at the inference worker to its
    /// batch starting.
    Queue = 2,
    /// One batch's compute (gather, backend run, scatter); observed per batch.
    Compute = 3,
    /// Turning outputs into the answer (classification JSON, pipeline steps
    /// after the model).
    Postprocess = 4,
}

pub const STAGES: usize = 5;

impl Stage {
    pub const ALL: [Stage; STAGES] =
        [Stage::Decode, Stage::Preprocess, Stage::Queue, Stage::Compute, Stage::Postprocess];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Queue => "queue",
            Stage::Compute => "compute",
            Stage::Postprocess => "postprocess",
        }
    }
}

pub const STAGE_HIST_LEN: usize = HISTOGRAM_LEN * STAGES;

/// The histogram of `stage` for `model`, shared by every worker.
pub fn stage_histogram(region: &Region, model: u16, stage: Stage) -> Option<&Histogram> {
    if model as u32 >= region.layout().params.models {
        return None;
    }
    let off = region.layout().hist_offset + model as usize * STAGE_HIST_LEN + stage as usize * HISTOGRAM_LEN;
    let ptr = region.ptr_at(off, HISTOGRAM_LEN);
    // SAFETY: in bounds (checked by ptr_at), 8-byte aligned by the layout, made
    // only of atomics (valid when zeroed), and borrowed no longer than `region`.
    Some(unsafe { &*(ptr as *const Histogram) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = Histogram::default();
        h.observe_ns(50_000); // exactly 50 µs: the first bucket
        h.observe_ns(50_001); // just over: the second
        h.observe_ns(3_000_000); // 3 ms: le 5 ms
        h.observe_ns(60_000_000_000); // a minute: +Inf
        let mut acc = ([0u64; HIST_BUCKETS], 0);
        h.add_to(&mut acc);
        assert_eq!(acc.0[0], 1);
        assert_eq!(acc.0[1], 1);
        assert_eq!(acc.0[LATENCY_BOUNDS_US.iter().position(|&b| b == 5_000).unwrap()], 1);
        assert_eq!(acc.0[HIST_BUCKETS - 1], 1);
        assert_eq!(acc.1, 50_000 + 50_001 + 3_000_000 + 60_000_000_000);
    }
}
