//! The repository extension as messages (RepositoryIndex,
//! RepositoryModelLoad, RepositoryModelUnload): the same operations, checks
//! and messages as HTTP's `/v2/repository/...` (`crate::control`). Each
//! message becomes the JSON body HTTP would have received, so there is one
//! parser of what an order may say; the admin token comes from the
//! `authorization` metadata (`Bearer <token>`). `repository_name` is
//! ignored: the daemon serves one repository.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tonic::metadata::MetadataMap;

use super::proto::model_repository_parameter::ParameterChoice;
use super::proto::repository_index_response::ModelIndex;
use super::proto::{self, ModelRepositoryParameter};
use crate::control::{self, Order};
use crate::error::ApiError;
use crate::state::State;

pub fn index(state: &State, ready: bool) -> Result<proto::RepositoryIndexResponse, ApiError> {
    let body = if ready { br#"{"ready": true}"#.as_slice() } else { b"" };
    let rendered = control::index::render(&state.table(), state.dispatch.all_ready(), body)?;
    let items: Vec<Value> = serde_json::from_slice(&rendered)
        .map_err(|e| ApiError::Internal(format!("repository index: {e}; this is a bug")))?;
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    let models = items
        .iter()
        .map(|m| ModelIndex {
            name: text(m, "name"),
            version: text(m, "version"),
            state: text(m, "state"),
            reason: text(m, "reason"),
        })
        .collect();
    Ok(proto::RepositoryIndexResponse { models })
}

/// Loads or unloads `name` once the admin token (when one is set) checks
/// out; answered once the supervisor has done it or refused it. A token
/// that is not text does not match (as over HTTP).
pub async fn order(
    state: &State,
    metadata: &MetadataMap,
    name: &str,
    order: Order,
    parameters: &HashMap<String, ModelRepositoryParameter>,
) -> Result<(), ApiError> {
    let authorization = metadata.get("authorization").map(|v| v.to_str().unwrap_or_default());
    state.orders.authorize(authorization)?;
    state.orders.order(order.op(name, &body(parameters))?).await
}

/// `{"parameters": {...}}`, as HTTP's body carries them. A `bytes_param`
/// (tritonclient's `files`) becomes null: `control` refuses `file:` keys
/// whatever their value, with the message HTTP gives.
fn body(parameters: &HashMap<String, ModelRepositoryParameter>) -> Vec<u8> {
    let params: Map<String, Value> = parameters
        .iter()
        .map(|(k, v)| {
            let value = match &v.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => json!(b),
                Some(ParameterChoice::Int64Param(n)) => json!(n),
                Some(ParameterChoice::StringParam(s)) => json!(s),
                Some(ParameterChoice::BytesParam(_)) | None => Value::Null,
            };
            (k.clone(), value)
        })
        .collect();
    json!({ "parameters": params }).to_string().into_bytes()
}
