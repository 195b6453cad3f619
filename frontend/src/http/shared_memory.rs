//! Triton's shared-memory extensions over HTTP, as tritonclient.http and
//! perf_analyzer call them: `/v2/systemsharedmemory/...` on
//! [`crate::client_shm`], and `/v2/cudasharedmemory/...`, which has no
//! regions here: its status is empty, unregister succeeds (perf_analyzer
//! clears both kinds before it starts), register is refused.

use http::Request;
use serde::Deserialize;

use super::response::{self, Resp};
use crate::body::BodySource;
use crate::error::ApiError;
use crate::state::State;

/// `GET /v2/systemsharedmemory[/region/<name>]/status`: Triton's list of
/// `{name, key, offset, byte_size}`.
pub fn status(state: &State, name: Option<&str>) -> Result<Resp, ApiError> {
    let regions = state.client_shm.status(name)?;
    let body = serde_json::to_vec(&regions).map_err(|e| ApiError::Internal(format!("rendering regions: {e}")))?;
    Ok(response::json(body))
}

/// What a register call sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    key: String,
    #[serde(default)]
    offset: usize,
    byte_size: usize,
}

/// `POST /v2/systemsharedmemory/region/<name>/register`.
pub async fn register<B: BodySource>(state: &State, name: &str, req: Request<B>) -> Result<Resp, ApiError> {
    let body = super::small_body(state, &mut req.into_body()).await?;
    let r: Register = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "registering region `{name}`: the body is not what register takes ({e}); accepted: \
             {{\"key\": \"/name\", \"offset\": bytes, \"byte_size\": bytes}}"
        ))
    })?;
    state.client_shm.register(name, &r.key, r.offset, r.byte_size)?;
    Ok(response::json(b"{}".to_vec()))
}

/// `POST /v2/systemsharedmemory[/region/<name>]/unregister`.
pub fn unregister(state: &State, name: Option<&str>) -> Resp {
    state.client_shm.unregister(name);
    response::json(b"{}".to_vec())
}
