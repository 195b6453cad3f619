//! `GET /metrics`: Prometheus text format. Triton's metric names (so existing
//! dashboards work) plus what Triton lacks: a latency histogram per request
//! stage and model, batch sizes, ring and slot occupancy, admission, worker
//! restarts and each process's CPU and memory.
//!
//! Sources, none of which asks a worker anything (scraping never slows
//! inference):
//! - the frontend's own counters ([`Metrics`]): outcomes by status, the
//!   `receive` and `total` stages, requests in flight;
//! - the counters and stage histograms workers keep in shared memory
//!   (`shm::stats`), summed over inference workers;
//! - the region's process table (pids, restarts) and `/proc/<pid>`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use http::StatusCode;
use shm::stats::{BATCH_BUCKETS, HIST_BUCKETS, Histogram, LATENCY_BOUNDS_US, ModelStats, Stage};
use shm::{ProcId, SlotPool};

use crate::server::State;

/// Triton's failure reasons, in `nv_inference_request_failure{reason}`.
const REASONS: [&str; 4] = ["REJECTED", "CANCELED", "BACKEND", "OTHER"];

/// What the frontend counts per model.
#[derive(Default)]
struct ModelCounters {
    /// Answers by HTTP status code (index: code - 100).
    codes: Vec<AtomicU64>,
    failures: [AtomicU64; 4],
    success: AtomicU64,
    /// End-to-end microseconds of successful requests.
    success_us: AtomicU64,
    inflight: AtomicI64,
    receive: Histogram,
    total: Histogram,
}

/// The frontend's counters, one set per model.
pub struct Metrics {
    models: Vec<ModelCounters>,
}

impl Metrics {
    pub fn new(models: usize) -> Metrics {
        Metrics {
            models: (0..models)
                .map(|_| ModelCounters { codes: (100..600).map(|_| AtomicU64::new(0)).collect(), ..Default::default() })
                .collect(),
        }
    }

    /// Starts tracking one inference request of `model`.
    pub fn track(&self, model: u16) -> Track<'_> {
        let c = &self.models[model as usize];
        // Relaxed: independent counters read only for reporting.
        c.inflight.fetch_add(1, Ordering::Relaxed);
        Track { counters: c, started: Instant::now(), finished: false }
    }

    fn inflight(&self, model: usize) -> i64 {
        self.models[model].inflight.load(Ordering::Relaxed)
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

fn model_labels(name: &str, version: u64) -> String {
    format!("model=\"{name}\",version=\"{version}\"")
}

use crate::stats::sum as sum_stats;

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric.
pub fn render(state: &State) -> String {
    let mut out = Out { text: String::with_capacity(64 << 10) };
    let repo = &state.repository;
    let m = &state.metrics;
    let models: Vec<(u16, String, &ModelCounters)> = repo
        .models
        .iter()
        .enumerate()
        .map(|(i, model)| (i as u16, model_labels(&model.name, model.latest()), &m.models[i]))
        .collect();

    // Triton's names and meaning.
    out.family("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes");
    for (_, l, c) in &models {
        out.sample("nv_inference_request_success", l, load(&c.success));
    }
    out.family(
        "nv_inference_request_failure",
        "counter",
        "Number of failed inference requests, all batch sizes, by reason (REJECTED: shed with 429 or timed out; \
         CANCELED: the client went away; BACKEND: a worker failed; OTHER: invalid requests)",
    );
    for (_, l, c) in &models {
        for (r, n) in REASONS.iter().zip(&c.failures) {
            out.sample("nv_inference_request_failure", &format!("{l},reason=\"{r}\""), load(n));
        }
    }
    let per_model = |out: &mut Out, name: &str, kind: &str, help: &str, f: &dyn Fn(&ModelStats) -> u64| {
        out.family(name, kind, help);
        for (i, l, _) in &models {
            out.sample(name, l, sum_stats(state, *i, f));
        }
    };
    per_model(&mut out, "nv_inference_count", "counter", "Number of inferences performed (rows of batches)", &|s| {
        load(&s.inference_count)
    });
    per_model(&mut out, "nv_inference_exec_count", "counter", "Number of model executions (batches)", &|s| {
        load(&s.execution_count)
    });
    out.family(
        "nv_inference_pending_request_count",
        "gauge",
        "Inference requests accepted and not yet answered (the frontend's view: queued or computing)",
    );
    for (i, l, _) in &models {
        out.sample("nv_inference_pending_request_count", l, m.inflight(*i as usize).max(0));
    }
    out.family(
        "nv_inference_request_duration_us",
        "counter",
        "Cumulative end-to-end duration of successful inference requests, in microseconds",
    );
    for (_, l, c) in &models {
        out.sample("nv_inference_request_duration_us", l, load(&c.success_us));
    }
    let us = |f: fn(&ModelStats) -> &AtomicU64| move |s: &ModelStats| load(f(s)) / 1000;
    per_model(
        &mut out,
        "nv_inference_queue_duration_us",
        "counter",
        "Cumulative time requests waited in the batcher, in microseconds",
        &us(|s| &s.queue_ns),
    );
    per_model(
        &mut out,
        "nv_inference_compute_input_duration_us",
        "counter",
        "Cumulative time gathering batch inputs, in microseconds",
        &us(|s| &s.compute_input_ns),
    );
    per_model(
        &mut out,
        "nv_inference_compute_infer_duration_us",
        "counter",
        "Cumulative time running the model, in microseconds",
        &us(|s| &s.compute_infer_ns),
    );
    per_model(
        &mut out,
        "nv_inference_compute_output_duration_us",
        "counter",
        "Cumulative time scattering outputs, in microseconds",
        &us(|s| &s.compute_output_ns),
    );
    out.family("nv_model_load_duration_secs", "gauge", "How long loading the model took (slowest inference worker)");
    let region = state.dispatch.region();
    let gpus = region.layout().topology().gpus;
    for (i, l, _) in &models {
        let ns = (0..gpus)
            .filter_map(|g| shm::stats::model_stats(region, g, *i))
            .map(|s| load(&s.load_duration_ns))
            .max()
            .unwrap_or(0);
        out.sample("nv_model_load_duration_secs", l, ns as f64 / 1e9);
    }

    // Beyond Triton: a histogram per stage, aggregatable across replicas.
    out.family(
        "highserve_stage_duration_seconds",
        "histogram",
        "Time in each stage of a request: receive (reading the body), decode, preprocess, queue (in the batcher), \
         compute (per batch), postprocess, total (end to end, successful requests)",
    );
    for (i, l, c) in &models {
        let mut acc = ([0u64; HIST_BUCKETS], 0u64);
        c.receive.add_to(&mut acc);
        out.histogram("highserve_stage_duration_seconds", &format!("{l},stage=\"receive\""), &acc);
        for stage in Stage::ALL {
            let mut acc = ([0u64; HIST_BUCKETS], 0u64);
            if let Some(h) = shm::stats::stage_histogram(region, *i, stage) {
                h.add_to(&mut acc);
            }
            out.histogram("highserve_stage_duration_seconds", &format!("{l},stage=\"{}\"", stage.name()), &acc);
        }
        let mut acc = ([0u64; HIST_BUCKETS], 0u64);
        c.total.add_to(&mut acc);
        out.histogram("highserve_stage_duration_seconds", &format!("{l},stage=\"total\""), &acc);
    }
    out.family("highserve_batch_size", "histogram", "Rows per executed batch");
    for (i, l, _) in &models {
        let counts: Vec<u64> = (0..BATCH_BUCKETS).map(|b| sum_stats(state, *i, |s| load(&s.batch_sizes[b]))).collect();
        let mut cumulative = 0;
        let mut sum = 0;
        let mut next = 1;
        for (b, n) in counts.iter().enumerate() {
            cumulative += n;
            sum += b as u64 * n;
            if b == next && b < BATCH_BUCKETS - 1 {
                out.sample("highserve_batch_size_bucket", &format!("{l},le=\"{b}\""), cumulative);
                next *= 2;
            }
        }
        out.sample("highserve_batch_size_bucket", &format!("{l},le=\"+Inf\""), cumulative);
        out.sample("highserve_batch_size_sum", l, sum);
        out.sample("highserve_batch_size_count", l, cumulative);
    }
    out.family("highserve_pipeline_step_seconds_total", "counter", "Time in each pipeline step (CPU steps: CPU time)");
    out.family("highserve_pipeline_step_total", "counter", "Executions of each pipeline step");
    for (i, l, _) in &models {
        let (Some(p), Some(stats)) =
            (repo.models[*i as usize].config.pipeline.as_ref(), shm::stats::step_stats(region, *i))
        else {
            continue;
        };
        let steps = std::iter::once(("decode".to_string(), shm::stats::MAX_STEPS - 1))
            .chain(p.steps.iter().enumerate().map(|(k, s)| (s.name().to_string(), k)));
        for (name, k) in steps {
            let ls = format!("{l},step=\"{name}\"");
            out.sample("highserve_pipeline_step_seconds_total", &ls, load(&stats[k].ns) as f64 / 1e9);
            out.sample("highserve_pipeline_step_total", &ls, load(&stats[k].count));
        }
    }
    out.family("highserve_requests_total", "counter", "Inference requests answered, by HTTP status code");
    for (_, l, c) in &models {
        for (k, n) in c.codes.iter().enumerate() {
            let n = load(n);
            if n > 0 {
                out.sample("highserve_requests_total", &format!("{l},code=\"{}\"", k + 100), n);
            }
        }
    }
    let code = |c: &ModelCounters, code: usize| load(&c.codes[code - 100]);
    out.family("highserve_rejected_total", "counter", "Requests shed with 429 (admission limits full)");
    for (_, l, c) in &models {
        out.sample("highserve_rejected_total", l, code(c, 429));
    }
    out.family("highserve_timeouts_total", "counter", "Requests that timed out (504)");
    for (_, l, c) in &models {
        out.sample("highserve_timeouts_total", l, code(c, 504));
    }
    out.family(
        "highserve_cancelled_total",
        "counter",
        "Requests whose client went away before compute, skipped by the batcher",
    );
    for (i, l, _) in &models {
        out.sample("highserve_cancelled_total", l, sum_stats(state, *i, |s| load(&s.cancel_count)));
    }
    out.family("highserve_inflight_requests", "gauge", "Inference requests in flight");
    for (i, l, _) in &models {
        out.sample("highserve_inflight_requests", l, m.inflight(*i as usize).max(0));
    }
    out.family("highserve_inflight_bytes", "gauge", "Request body bytes in flight (admission)");
    out.sample("highserve_inflight_bytes", "", state.admission.inflight_bytes());
    out.family("highserve_ready", "gauge", "1 when every process is ready to serve");
    out.sample("highserve_ready", "", u8::from(state.dispatch.all_ready()));

    // Shared memory: rings and slots.
    let topo = region.layout().topology();
    out.family("highserve_ring_occupancy", "gauge", "Descriptors waiting in each process-to-process ring");
    for (from, to) in topo.lane_pairs() {
        if let Some(lane) = region.layout().lane(from, to) {
            let ring = format!("ring=\"{}->{}\"", proc_name(topo, from), proc_name(topo, to));
            out.sample("highserve_ring_occupancy", &ring, shm::lane::occupancy(region, lane));
        }
    }
    out.family("highserve_shm_slots_in_use", "gauge", "Shared-memory data slots in use, by slot size in bytes");
    out.family("highserve_shm_slots", "gauge", "Shared-memory data slots, by slot size in bytes");
    for (size, used, count) in SlotPool::new(region.clone()).occupancy() {
        out.sample("highserve_shm_slots_in_use", &format!("size=\"{size}\""), used);
        out.sample("highserve_shm_slots", &format!("size=\"{size}\""), count);
    }

    // Processes.
    out.family("highserve_worker_restarts_total", "counter", "Worker processes restarted after a crash, by role");
    for role in ["inference", "preproc"] {
        let n: u64 = (0..topo.procs() as u16)
            .map(ProcId)
            .filter(|&p| role_name(topo, p) == role)
            .filter_map(|p| region.proc(p))
            .map(|e| e.restarts.load(Ordering::Relaxed) as u64)
            .sum();
        out.sample("highserve_worker_restarts_total", &format!("role=\"{role}\""), n);
    }
    let mut procs: Vec<(&str, String, u32)> =
        vec![("supervisor", "supervisor".into(), std::os::unix::process::parent_id())];
    for p in (0..topo.procs() as u16).map(ProcId) {
        let pid = region.proc(p).map_or(0, |e| e.pid.load(Ordering::Relaxed));
        procs.push((role_name(topo, p), proc_name(topo, p), pid));
    }
    out.family("highserve_process_cpu_seconds_total", "counter", "CPU time (user + system) of each process");
    out.family("highserve_process_resident_memory_bytes", "gauge", "Resident memory of each process");
    for (role, name, pid) in procs {
        let Some((cpu, rss)) = proc_usage(pid) else { continue };
        let ls = format!("role=\"{role}\",process=\"{name}\"");
        out.sample("highserve_process_cpu_seconds_total", &ls, cpu);
        out.sample("highserve_process_resident_memory_bytes", &ls, rss);
    }
    out.text
}

fn role_name(topo: shm::Topology, p: ProcId) -> &'static str {
    topo.role(p).map_or("unknown", |r| r.kind())
}

fn proc_name(topo: shm::Topology, p: ProcId) -> String {
    topo.role(p).map_or_else(|| format!("proc{}", p.0), |r| r.name())
}

/// CPU seconds and resident bytes of `pid`, from `/proc` (Linux reports CPU
/// in USER_HZ = 100 ticks per second).
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((ticks as f64 / 100.0, rss_kb * 1024))
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
        assert_eq!(m.inflight(0), 1);
        drop(in_flight); // the client went away
        let c = &m.models[0];
        assert_eq!(load(&c.success), 1);
        let failures: Vec<u64> = c.failures.iter().map(load).collect();
        assert_eq!(failures, [1, 1, 1, 1]);
        assert_eq!(load(&c.codes[429 - 100]), 1);
        assert_eq!(m.inflight(0), 0);
    }

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
