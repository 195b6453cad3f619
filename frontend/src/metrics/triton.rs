//! Triton's families (`nv_*`), with Triton's names and meaning, so that
//! dashboards made for Triton work unchanged.

use std::sync::atomic::AtomicU64;

use shm::Region;
use shm::stats::ModelStats;

use super::counters::{REASONS, load};
use super::{Labelled, Out};
use shm::stats::sum;

pub(super) fn render(out: &mut Out, models: &[Labelled<'_>], region: &Region) {
    out.family("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes");
    for m in models {
        out.sample("nv_inference_request_success", &m.labels, load(&m.counters.success));
    }
    out.family(
        "nv_inference_request_failure",
        "counter",
        "Number of failed inference requests, all batch sizes, by reason (REJECTED: shed with 429 or timed out; \
         CANCELED: the client went away; BACKEND: a worker failed; OTHER: invalid requests)",
    );
    for m in models {
        for (r, n) in REASONS.iter().zip(&m.counters.failures) {
            out.sample("nv_inference_request_failure", &format!("{},reason=\"{r}\"", m.labels), load(n));
        }
    }
    let per_model = |out: &mut Out, name: &str, kind: &str, help: &str, f: &dyn Fn(&ModelStats) -> u64| {
        out.family(name, kind, help);
        for m in models {
            out.sample(name, &m.labels, sum(region, m.index, f));
        }
    };
    per_model(out, "nv_inference_count", "counter", "Number of inferences performed (rows of batches)", &|s| {
        load(&s.inference_count)
    });
    per_model(out, "nv_inference_exec_count", "counter", "Number of model executions (batches)", &|s| {
        load(&s.execution_count)
    });
    out.family(
        "nv_inference_pending_request_count",
        "gauge",
        "Inference requests accepted and not yet answered (the frontend's view: queued or computing)",
    );
    for m in models {
        out.sample("nv_inference_pending_request_count", &m.labels, m.counters.inflight());
    }
    out.family(
        "nv_inference_request_duration_us",
        "counter",
        "Cumulative end-to-end duration of successful inference requests, in microseconds",
    );
    for m in models {
        out.sample("nv_inference_request_duration_us", &m.labels, load(&m.counters.success_us));
    }
    let us = |f: fn(&ModelStats) -> &AtomicU64| move |s: &ModelStats| load(f(s)) / 1000;
    per_model(
        out,
        "nv_inference_queue_duration_us",
        "counter",
        "Cumulative time requests waited in the batcher, in microseconds",
        &us(|s| &s.queue_ns),
    );
    per_model(
        out,
        "nv_inference_compute_input_duration_us",
        "counter",
        "Cumulative time gathering batch inputs, in microseconds",
        &us(|s| &s.compute_input_ns),
    );
    per_model(
        out,
        "nv_inference_compute_infer_duration_us",
        "counter",
        "Cumulative time running the model, in microseconds",
        &us(|s| &s.compute_infer_ns),
    );
    per_model(
        out,
        "nv_inference_compute_output_duration_us",
        "counter",
        "Cumulative time scattering outputs, in microseconds",
        &us(|s| &s.compute_output_ns),
    );
    out.family("nv_model_load_duration_secs", "gauge", "How long loading the model took (slowest inference worker)");
    let gpus = region.layout().topology().gpus;
    for m in models {
        let ns = (0..gpus)
            .filter_map(|g| shm::stats::model_stats(region, g, m.index))
            .map(|s| load(&s.load_duration_ns))
            .max()
            .unwrap_or(0);
        out.sample("nv_model_load_duration_secs", &m.labels, ns as f64 / 1e9);
    }
}
