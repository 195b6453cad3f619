//! Server and model metadata (`GET /v2`, `GET /v2/models/{name}`) and error
//! bodies, shaped as Triton sends them: tritonclient returns these JSON
//! objects to the user as they are.

use model_repo::{DType, Model, TensorConfig, VersionPolicy};
use serde_json::{Value, json};

/// Protocol extensions this server implements, as named in Triton's list.
/// (`cuda_shared_memory` is not listed: its calls answer, with no regions,
/// so that clients that clear both kinds work, but none can be registered.)
const EXTENSIONS: [&str; 6] = [
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "system_shared_memory",
];

/// `GET /v2`.
pub fn server_metadata() -> Vec<u8> {
    let meta = json!({
        "name": "highserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    });
    meta.to_string().into_bytes()
}

/// `GET /v2/models/{name}`: shapes as clients send them, with -1 for the
/// batch dimension and any variable dimension; `versions`: every ready
/// version of the model. The platform is Triton's name for the ONNX Runtime
/// backend, which clients may switch on.
pub fn model_metadata(model: &Model, versions: &[u64]) -> Vec<u8> {
    let tensors = |list: &[TensorConfig]| -> Vec<Value> {
        list.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype.name(), "shape": model.config.full_shape(t)}))
            .collect()
    };
    let versions: Vec<String> = versions.iter().map(u64::to_string).collect();
    let meta = json!({
        "name": model.name,
        "versions": versions,
        "platform": model.config.platform(),
        "inputs": tensors(&model.config.inputs),
        "outputs": tensors(&model.config.outputs),
    });
    meta.to_string().into_bytes()
}

/// `GET /v2/models/{name}/config` (the model configuration extension), in
/// Triton's JSON form so perf_analyzer and tritonclient read it: `dims`
/// without the batch dimension, `data_type` as `TYPE_*`. The repository's own
/// config follows under `highserve`.
pub fn model_config(model: &Model) -> Vec<u8> {
    let c = &model.config;
    let tensors = |list: &[TensorConfig]| -> Vec<Value> {
        list.iter().map(|t| json!({"name": t.name, "data_type": config_type(t.datatype), "dims": t.dims})).collect()
    };
    let mut cfg = json!({
        "name": model.name,
        "platform": c.platform(),
        "backend": c.backend(),
        "version_policy": version_policy(&c.version_policy),
        "max_batch_size": c.max_batch_size,
        "input": tensors(&c.inputs),
        "output": tensors(&c.outputs),
        "instance_group": [{ "name": model.name, "kind": "KIND_CPU", "count": c.instances }],
        "highserve": c,
    });
    if let Some(d) = &c.dynamic_batching {
        cfg["dynamic_batching"] = json!({
            "preferred_batch_size": d.preferred_batch_size,
            "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
        });
    }
    cfg.to_string().into_bytes()
}

/// The model's version policy, as Triton's config writes it.
fn version_policy(p: &VersionPolicy) -> Value {
    match p {
        VersionPolicy::Latest { num_versions } => json!({ "latest": { "num_versions": num_versions } }),
        VersionPolicy::All {} => json!({ "all": {} }),
        VersionPolicy::Specific { versions } => json!({ "specific": { "versions": versions } }),
    }
}

/// Triton's config type of a v2 datatype (`FP32` → `TYPE_FP32`, `BYTES` →
/// `TYPE_STRING`), as its JSON config and its protobuf enum name it.
pub fn config_type(d: DType) -> String {
    match d {
        DType::Bytes => "TYPE_STRING".into(),
        d => format!("TYPE_{}", d.name()),
    }
}

/// The body of any error response; tritonclient raises
/// `InferenceServerException` with `error` as its message.
pub fn error_body(msg: &str) -> Vec<u8> {
    json!({ "error": msg }).to_string().into_bytes()
}
