//! `GET /metrics`: Prometheus text format. Triton's metric names (so existing
//! dashboards work) plus what Triton lacks: a latency histogram per request
//! stage and model, batch sizes, ring and slot occupancy, admission, worker
//! restarts and each process's CPU and memory.
//!
//! Sources, none of which asks a worker anything (scraping never slows
//! inference):
//! - the frontend's own counters ([`Metrics`], in `counters`): outcomes by
//!   status, the `receive` and `total` stages, requests in flight;
//! - the counters and stage histograms workers keep in shared memory
//!   (`shm::stats`), summed over inference workers;
//! - the region's process table (pids, restarts) and `/proc/<pid>`.
//!
//! One file per family group, rendered in this order: `triton` (`nv_*`),
//! `stages` (stage, batch and pipeline-step histograms), `serving`
//! (outcomes, in flight, ready), `levels` (by priority level: in flight,
//! time to answer, requests shed by reason), `rings` (shared memory),
//! `process`.

mod counters;
mod levels;
mod process;
mod procfs;
mod rings;
mod serving;
mod stages;
mod triton;

use std::fmt::Write as _;
use std::sync::Arc;

use model_repo::Repository;
use shm::Region;

use crate::admission::Admission;
use shm::stats::{HIST_BUCKETS, LATENCY_BOUNDS_US};

use counters::ModelCounters;
pub use counters::{Metrics, Track};

/// What a scrape reads.
pub struct Scrape<'a> {
    /// The table when the scrape began.
    pub repository: Arc<Repository>,
    pub counters: &'a Metrics,
    pub region: &'a Arc<Region>,
    pub admission: &'a Admission,
    pub ready: bool,
}

/// One model as every family labels it.
struct Labelled<'a> {
    index: u16,
    labels: String,
    counters: &'a ModelCounters,
}

/// Renders every metric.
pub fn render(scrape: &Scrape<'_>) -> String {
    let mut out = Out { text: String::with_capacity(64 << 10) };
    // Every entry of the table but those unloaded, each labelled with its
    // model and version.
    let models: Vec<Labelled<'_>> = crate::table::present(&scrape.repository)
        .map(|(i, model)| Labelled {
            index: i,
            labels: format!("model=\"{}\",version=\"{}\"", model.name, model.latest()),
            counters: scrape.counters.model(i as usize),
        })
        .collect();
    triton::render(&mut out, &models, scrape.region);
    stages::render(&mut out, &models, &scrape.repository, scrape.region);
    serving::render(&mut out, &models, scrape);
    levels::render(&mut out, &models, scrape.admission);
    rings::render(&mut out, scrape.region);
    process::render(&mut out, scrape.region);
    out.text
}

/// Prometheus text exposition, written family by family.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }

    /// A histogram in seconds from per-bucket counts and a sum in ns.
    fn histogram(&mut self, name: &str, labels: &str, (buckets, sum_ns): &([u64; HIST_BUCKETS], u64)) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = match LATENCY_BOUNDS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".into(),
            };
            self.sample(&format!("{name}_bucket"), &format!("{labels}{sep}le=\"{le}\""), cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, *sum_ns as f64 / 1e9);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_inf() {
        let mut out = Out { text: String::new() };
        let mut acc = ([0u64; HIST_BUCKETS], 2_000_000u64);
        acc.0[0] = 1;
        acc.0[HIST_BUCKETS - 1] = 2;
        out.histogram("h", "model=\"m\"", &acc);
        assert!(out.text.contains("h_bucket{model=\"m\",le=\"0.00005\"} 1\n"), "{}", out.text);
        assert!(out.text.contains("h_bucket{model=\"m\",le=\"10\"} 1\n"), "{}", out.text);
        assert!(out.text.contains("h_bucket{model=\"m\",le=\"+Inf\"} 3\n"), "{}", out.text);
        assert!(out.text.contains("h_sum{model=\"m\"} 0.002\n"));
        assert!(out.text.contains("h_count{model=\"m\"} 3\n"));
    }
}
