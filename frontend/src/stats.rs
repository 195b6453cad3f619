//! The statistics extension (`/v2/models[/<m>[/versions/<v>]]/stats`,
//! Triton's format: an item per loaded version), read from the counters the
//! inference workers keep in shared memory: scraping never asks a worker
//! anything.

use std::collections::BTreeMap;

use model_repo::Repository;
use serde_json::{Value, json};
use shm::Region;
use shm::stats::{BATCH_BUCKETS, ModelStats, sum};

use crate::error::ApiError;
use crate::state::State;

/// A pipeline's time per step (CPU time for CPU steps; send-to-answer time,
/// queueing included, for model steps), summed over the preproc workers.
fn pipeline_steps(region: &Region, index: u16, p: &model_repo::Pipeline) -> Vec<Value> {
    let Some(stats) = shm::stats::step_stats(region, index) else { return vec![] };
    let get = |i: usize| (ModelStats::get(&stats[i].count), ModelStats::get(&stats[i].ns));
    let mut out: Vec<Value> = p
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (count, ns) = get(i);
            let kind = if matches!(s, model_repo::Step::Model { .. }) { "model" } else { "cpu" };
            json!({ "step": s.name(), "kind": kind, "count": count, "ns": ns })
        })
        .collect();
    // The image decode is counted in the last slot.
    let (count, ns) = get(shm::stats::MAX_STEPS - 1);
    out.insert(0, json!({ "step": "decode", "kind": "cpu", "count": count, "ns": ns }));
    out
}

/// Not in Triton's format: per priority level, requests in flight, answers
/// (count and time from admission, queued and computing) and requests shed
/// by reason.
fn levels(state: &State, index: u16) -> Vec<Value> {
    fn at(by_level: &mut BTreeMap<u8, Value>, level: u8) -> &mut Value {
        by_level
            .entry(level)
            .or_insert_with(|| json!({ "level": level, "inflight": 0, "success": { "count": 0, "ns": 0 }, "shed": {} }))
    }
    let mut by_level = BTreeMap::new();
    for (level, n) in state.admission.inflight_by_level(index) {
        at(&mut by_level, level)["inflight"] = json!(n);
    }
    for (level, count, ns) in state.metrics.answered_by_level(index) {
        at(&mut by_level, level)["success"] = json!({ "count": count, "ns": ns });
    }
    for ((level, why), n) in state.admission.shed(index) {
        at(&mut by_level, level)["shed"][why.name()] = json!(n);
    }
    by_level.into_values().collect()
}

fn one(state: &State, repo: &Repository, index: u16) -> Value {
    let region = &**state.dispatch.region();
    let m = &repo.models[index as usize];
    if let Some(p) = &m.config.pipeline {
        return json!({
            "name": m.name,
            "version": m.latest().to_string(),
            "pipeline_steps": pipeline_steps(region, index, p),
            "levels": levels(state, index),
        });
    }
    let get = |f: fn(&ModelStats) -> &std::sync::atomic::AtomicU64| sum(region, index, |s| ModelStats::get(f(s)));
    let success = get(|s| &s.success_count);
    let execs = get(|s| &s.execution_count);
    let batch_stats: Vec<Value> = (1..BATCH_BUCKETS)
        .filter_map(|b| {
            let n = sum(region, index, |s| ModelStats::get(&s.batch_sizes[b]));
            let ns = |f: fn(&ModelStats) -> &[std::sync::atomic::AtomicU64; BATCH_BUCKETS]| {
                sum(region, index, |s| ModelStats::get(&f(s)[b]))
            };
            // The last size counts batches of that size or more.
            (n > 0).then(|| {
                json!({
                    "batch_size": b,
                    "compute_input": { "count": n, "ns": ns(|s| &s.batch_input_ns) },
                    "compute_infer": { "count": n, "ns": ns(|s| &s.batch_infer_ns) },
                    "compute_output": { "count": n, "ns": ns(|s| &s.batch_output_ns) },
                })
            })
        })
        .collect();
    json!({
        "name": m.name,
        "version": m.latest().to_string(),
        "last_inference": get(|s| &s.last_inference_ms),
        "inference_count": get(|s| &s.inference_count),
        "execution_count": execs,
        "inference_stats": {
            "success": { "count": success, "ns": get(|s| &s.success_ns) },
            "fail": { "count": get(|s| &s.failure_count), "ns": get(|s| &s.failure_ns) },
            "queue": { "count": success, "ns": get(|s| &s.queue_ns) },
            "compute_input": { "count": execs, "ns": get(|s| &s.compute_input_ns) },
            "compute_infer": { "count": execs, "ns": get(|s| &s.compute_infer_ns) },
            "compute_output": { "count": execs, "ns": get(|s| &s.compute_output_ns) },
        },
        "batch_stats": batch_stats,
        // Not in Triton's format: requests skipped because the client left.
        "cancel_count": get(|s| &s.cancel_count),
        "levels": levels(state, index),
    })
}

/// The statistics of `entries` of `table` (every entry for
/// `/v2/models/stats`, a model's for `/v2/models/<m>/stats`).
pub fn render(state: &State, table: &Repository, entries: &[u16]) -> Result<Vec<u8>, ApiError> {
    let stats: Vec<Value> = entries.iter().map(|&i| one(state, table, i)).collect();
    serde_json::to_vec(&json!({ "model_stats": stats })).map_err(|e| ApiError::Internal(e.to_string()))
}
