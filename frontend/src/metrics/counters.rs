//! The frontend's live counters, one set per table entry (a loaded version): outcomes by status, the
//! `receive` and `total` stages, requests in flight. Bumped on the request
//! path (relaxed atomics only) and read by the renderers beside this file.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use shm::stats::{HIST_BUCKETS, Histogram};

/// Triton's failure reasons, in `nv_inference_request_failure{reason}`.
pub(super) const REASONS: [&str; 4] = ["REJECTED", "CANCELED", "BACKEND", "OTHER"];

/// What the frontend counts per entry.
#[derive(Default)]
pub(super) struct ModelCounters {
    /// Answers by HTTP status code (index: code - 100).
    pub(super) codes: Vec<AtomicU64>,
    pub(super) failures: [AtomicU64; 4],
    pub(super) success: AtomicU64,
    /// End-to-end microseconds of successful requests.
    pub(super) success_us: AtomicU64,
    inflight: AtomicI64,
    pub(super) receive: Histogram,
    pub(super) total: Histogram,
    /// Per level, from admission to the answer of successful requests: the
    /// time spent queued and computing. Made on a level's first answer.
    pub(super) levels: Vec<OnceLock<Box<Histogram>>>,
}

impl ModelCounters {
    /// Answers with HTTP status `code`.
    pub(super) fn code(&self, code: usize) -> u64 {
        load(&self.codes[code - 100])
    }

    /// Per level with answers: the histogram's counts and sum (ns).
    pub(super) fn by_level(&self) -> impl Iterator<Item = (u8, ([u64; HIST_BUCKETS], u64))> + '_ {
        self.levels.iter().enumerate().filter_map(|(l, h)| {
            let mut acc = ([0u64; HIST_BUCKETS], 0u64);
            h.get()?.add_to(&mut acc);
            (acc.0.iter().any(|&n| n > 0)).then_some((l as u8, acc))
        })
    }

    /// Requests in flight (never negative in a report).
    pub(super) fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed).max(0)
    }
}

/// The frontend's counters, one set per entry (sized by the capacity).
pub struct Metrics {
    models: Vec<ModelCounters>,
}

impl Metrics {
    pub fn new(models: usize) -> Metrics {
        Metrics {
            models: (0..models)
                .map(|_| ModelCounters {
                    codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
                    levels: (0..=255).map(|_| OnceLock::new()).collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Per level with answers: how many, and their total nanoseconds from
    /// admission.
    pub fn answered_by_level(&self, model: u16) -> Vec<(u8, u64, u64)> {
        self.models[model as usize].by_level().map(|(l, acc)| (l, acc.0.iter().sum(), acc.1)).collect()
    }

    /// Entry `model` now holds another version: its counts start again.
    pub fn reset(&self, model: u16) {
        let c = &self.models[model as usize];
        let zero = |a: &AtomicU64| a.store(0, Ordering::Relaxed);
        c.codes.iter().chain(&c.failures).chain([&c.success, &c.success_us]).for_each(zero);
        // A level's histogram, once made, stays: zeroed, it is left out of
        // reports until it counts again.
        for h in [&c.receive, &c.total].into_iter().chain(c.levels.iter().filter_map(|l| l.get().map(|b| &**b))) {
            h.buckets.iter().chain([&h.sum_ns]).for_each(zero);
        }
    }

    /// A request of `model` at `level` was answered `took` after admission.
    pub fn answered(&self, model: u16, level: u8, took: Duration) {
        self.models[model as usize].levels[level as usize].get_or_init(Box::default).observe(took);
    }

    /// Starts tracking one inference request of `model`.
    pub fn track(&self, model: u16) -> Track<'_> {
        let c = &self.models[model as usize];
        // Relaxed: independent counters read only for reporting.
        c.inflight.fetch_add(1, Ordering::Relaxed);
        Track { counters: c, started: Instant::now(), finished: false }
    }

    pub(super) fn model(&self, model: usize) -> &ModelCounters {
        &self.models[model]
    }
}

/// One request being tracked. Dropped without [`Track::finish`] means the
/// client went away before the answer (counted as CANCELED).
pub struct Track<'a> {
    counters: &'a ModelCounters,
    started: Instant,
    finished: bool,
}

impl Track<'_> {
    /// The request's body has been read.
    pub fn received(&self) {
        self.counters.receive.observe(self.started.elapsed());
    }

    pub fn finish(mut self, status: StatusCode) {
        self.finished = true;
        let c = self.counters;
        let took = self.started.elapsed();
        if let Some(n) = c.codes.get((status.as_u16() as usize).wrapping_sub(100)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if status.is_success() {
            c.success.fetch_add(1, Ordering::Relaxed);
            c.success_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            c.total.observe(took);
        } else {
            c.failures[reason(status)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Track<'_> {
    fn drop(&mut self) {
        let c = self.counters;
        c.inflight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            c.failures[1].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Index into [`REASONS`]: shed (429) and timed-out (504, 408) requests were
/// rejected, worker failures are the backend's, other client errors OTHER.
fn reason(status: StatusCode) -> usize {
    match status.as_u16() {
        429 | 504 | 408 => 0,
        500 | 503 => 2,
        _ => 3,
    }
}

pub(super) fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_reason() {
        let m = Metrics::new(1);
        m.track(0).finish(StatusCode::OK);
        m.track(0).finish(StatusCode::TOO_MANY_REQUESTS);
        m.track(0).finish(StatusCode::BAD_REQUEST);
        m.track(0).finish(StatusCode::INTERNAL_SERVER_ERROR);
        let in_flight = m.track(0);
        assert_eq!(m.model(0).inflight(), 1);
        drop(in_flight); // the client went away
        let c = m.model(0);
        assert_eq!(load(&c.success), 1);
        let failures: Vec<u64> = c.failures.iter().map(load).collect();
        assert_eq!(failures, [1, 1, 1, 1]);
        assert_eq!(load(&c.codes[429 - 100]), 1);
        assert_eq!(m.model(0).inflight(), 0);
        m.answered(0, 3, Duration::from_millis(1));
        assert_eq!(m.answered_by_level(0).len(), 1);
        m.reset(0);
        let c = m.model(0);
        assert_eq!((load(&c.success), load(&c.failures[1]), c.code(429)), (0, 0, 0));
        assert!(m.answered_by_level(0).is_empty(), "a zeroed level is left out");
    }
}
