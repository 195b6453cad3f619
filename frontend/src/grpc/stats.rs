//! ModelStatistics: the statistics extension as messages, made from the
//! same rendering as HTTP's `/v2/models[/<m>[/versions/<v>]]/stats`
//! (`crate::stats`), so the two never disagree. Only Triton's fields have a
//! place in the message: highserve's additions (`levels`, `cancel_count`,
//! a pipeline's `pipeline_steps`) are HTTP's alone.

use serde_json::Value;

use super::proto::{self, InferBatchStatistics, InferStatistics, StatisticDuration};
use crate::error::ApiError;
use crate::state::State;
use crate::table;

/// Every model's statistics (`name` empty), every loaded version of one
/// (`version` empty), or one version's.
pub fn model_statistics(
    state: &State,
    name: &str,
    version: Option<&str>,
) -> Result<proto::ModelStatisticsResponse, ApiError> {
    let t = state.table();
    let entries = table::stats_entries(&t, (!name.is_empty()).then_some(name), version)?;
    let json: Value = serde_json::from_slice(&crate::stats::render(state, &t, &entries)?)
        .map_err(|e| ApiError::Internal(format!("statistics: {e}; this is a bug")))?;
    let items = json["model_stats"].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(proto::ModelStatisticsResponse { model_stats: items.iter().map(one).collect() })
}

fn duration(v: &Value) -> Option<StatisticDuration> {
    Some(StatisticDuration { count: v["count"].as_u64().unwrap_or(0), ns: v["ns"].as_u64().unwrap_or(0) })
}

fn one(v: &Value) -> proto::ModelStatistics {
    let s = &v["inference_stats"];
    let batches = v["batch_stats"].as_array().map(Vec::as_slice).unwrap_or_default();
    proto::ModelStatistics {
        name: v["name"].as_str().unwrap_or_default().into(),
        version: v["version"].as_str().unwrap_or_default().into(),
        last_inference: v["last_inference"].as_u64().unwrap_or(0),
        inference_count: v["inference_count"].as_u64().unwrap_or(0),
        execution_count: v["execution_count"].as_u64().unwrap_or(0),
        inference_stats: Some(InferStatistics {
            success: duration(&s["success"]),
            fail: duration(&s["fail"]),
            queue: duration(&s["queue"]),
            compute_input: duration(&s["compute_input"]),
            compute_infer: duration(&s["compute_infer"]),
            compute_output: duration(&s["compute_output"]),
            cache_hit: duration(&Value::Null),
            cache_miss: duration(&Value::Null),
        }),
        batch_stats: batches
            .iter()
            .map(|b| InferBatchStatistics {
                batch_size: b["batch_size"].as_u64().unwrap_or(0),
                compute_input: duration(&b["compute_input"]),
                compute_infer: duration(&b["compute_infer"]),
                compute_output: duration(&b["compute_output"]),
            })
            .collect(),
        ..Default::default()
    }
}
