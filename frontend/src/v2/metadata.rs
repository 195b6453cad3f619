//! Server and model metadata (`GET /v2`, `GET /v2/models/{name}`) and error
//! bodies, shaped as Triton sends them: tritonclient returns these JSON
//! objects to the user as they are.

use model_repo::{Model, TensorConfig};
use serde_json::{Value, json};

/// Protocol extensions this server implements, as named in Triton's list.
const EXTENSIONS: [&str; 4] = ["classification", "binary_tensor_data", "model_configuration", "statistics"];

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
/// batch dimension and any variable dimension. The platform is Triton's name
/// for the ONNX Runtime backend, which clients may switch on.
pub fn model_metadata(model: &Model) -> Vec<u8> {
    let tensors = |list: &[TensorConfig]| -> Vec<Value> {
        list.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype.name(), "shape": model.config.full_shape(t)}))
            .collect()
    };
    let versions: Vec<String> = model.versions.iter().map(u64::to_string).collect();
    let meta = json!({
        "name": model.name,
        "versions": versions,
        "platform": model.config.platform(),
        "inputs": tensors(&model.config.inputs),
        "outputs": tensors(&model.config.outputs),
    });
    meta.to_string().into_bytes()
}

/// The body of any error response; tritonclient raises
/// `InferenceServerException` with `error` as its message.
pub fn error_body(msg: &str) -> Vec<u8> {
    json!({ "error": msg }).to_string().into_bytes()
}
