//! `POST /v2/repository/index`, as Triton answers it: every model in the
//! repository directory, each loaded version with its state (READY,
//! LOADING, UNLOADING), and as UNAVAILABLE with the reason each model whose
//! last load failed (beside what still serves it) or that is not loaded
//! (`unloaded`). The directory is read on
//! each call: it is small, and a cache would miss what an operator just
//! copied there.

use std::collections::BTreeMap;

use model_repo::{ModelState, Repository};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::table;

/// The reason given for a READY version while some worker is not ready:
/// the index follows the server's readiness, as it always has.
const NOT_READY: &str = "not every worker is ready (see /v2/health/ready)";

/// What the request's optional body asks: `{"ready": true}` lists only the
/// ready versions.
fn ready_only(body: &[u8]) -> Result<bool, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let bad = |e: String| ApiError::BadRequest(format!("malformed repository index request JSON: {e}"));
    match serde_json::from_slice::<Value>(body).map_err(|e| bad(e.to_string()))? {
        Value::Object(o) => match o.get("ready") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad("`ready` must be true or false".into())),
        },
        _ => Err(bad("expected an object".into())),
    }
}

/// The index of `table` and its repository directory; `workers_ready`:
/// whether every worker is ready.
pub fn render(table: &Repository, workers_ready: bool, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let ready_only = ready_only(body)?;
    let mut by_name: BTreeMap<&str, Vec<(u64, Value)>> = BTreeMap::new();
    for (_, m) in table::present(table) {
        let (state, reason) = match m.state {
            ModelState::Ready if workers_ready => ("READY", None),
            ModelState::Ready => ("UNAVAILABLE", Some(NOT_READY)),
            ModelState::Loading => ("LOADING", None),
            ModelState::Unloading | ModelState::Unloaded => ("UNLOADING", None),
        };
        let mut item = json!({ "name": m.name, "version": m.latest().to_string(), "state": state });
        if let Some(r) = reason {
            item["reason"] = json!(r);
        }
        by_name.entry(&m.name).or_default().push((m.latest(), item));
    }
    // A failed load, after the versions that go on serving (Triton lists
    // the version that failed; the table keeps only why).
    for (name, reason) in &table.failures {
        let item = json!({ "name": name, "state": "UNAVAILABLE", "reason": reason });
        by_name.entry(name).or_default().push((u64::MAX, item));
    }
    // Those neither loaded nor failed; none when the directory cannot be
    // read (the loaded ones are listed all the same).
    let disk = model_repo::catalog(&table.root);
    for name in &disk {
        by_name
            .entry(name)
            .or_insert_with(|| vec![(0, json!({ "name": name, "state": "UNAVAILABLE", "reason": "unloaded" }))]);
    }
    let models: Vec<Value> = by_name
        .into_values()
        .flat_map(|mut versions| {
            versions.sort_by_key(|(v, _)| *v);
            versions.into_iter().map(|(_, item)| item)
        })
        .filter(|item| !ready_only || item["state"] == "READY")
        .collect();
    serde_json::to_vec(&models).map_err(|e| ApiError::Internal(e.to_string()))
}
