//! The KServe v2 / Open Inference Protocol, without I/O: parsing inference
//! requests (JSON, JSON header + binary tensors, raw binary bodies), checking
//! them against a model's config, and rendering responses and metadata so that
//! NVIDIA's `tritonclient` reads them unmodified. The server hands in bodies
//! and header values and sends back what these functions return.

mod classify;
mod data;
mod metadata;
mod parse;
mod raw;
mod render;
mod select;
#[cfg(test)]
mod tests;
mod validate;

use std::ops::Range;

use model_repo::{DType, Model};

pub use metadata::{config_type, error_body, model_config, model_metadata, server_metadata};
pub use parse::{add_output, check_binary, has_inputs, input_header, parse_infer, request_parameters};
pub use raw::parse_raw;
pub use render::render_infer;
pub use select::{Selected, select_outputs};
pub use validate::validate;

/// What was wrong with a request (or, rarely, with the outputs to render).
/// Every message says what was received and what is accepted. `Json` and
/// `Request` are the client's fault (HTTP 400); `Response` is the server's.
#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    /// The JSON header does not parse, or a field has the wrong JSON type.
    #[error("malformed inference request JSON: {0}")]
    Json(String),
    /// Well-formed, but not a request this model (or this server) accepts.
    #[error("{0}")]
    Request(String),
    /// The outputs handed to [`render_infer`] contradict themselves or the
    /// request (data that does not fit the shape, a missing output): a bug.
    #[error("{0}")]
    Response(String),
}

/// A parsed inference request. Input data stays in the request body where it
/// can (see [`InputData`]), so the body must outlive the request's use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    /// `parameters.priority`, as given (Triton: 0 means the model's default).
    pub priority: Option<u64>,
    /// `parameters.timeout`, in microseconds.
    pub timeout_us: Option<u64>,
    /// `parameters.binary_data_output`: the default for outputs that do not
    /// say `binary_data` themselves. tritonclient sets it when it names no
    /// outputs.
    pub binary_data_output: bool,
    /// Request parameters other than the ones above and `sequence_*`.
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub inputs: Vec<InputTensor>,
    /// Requested outputs in request order; empty means all, with defaults.
    pub outputs: Vec<RequestedOutput>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: DType,
    pub shape: Vec<i64>,
    pub data: InputData,
}

/// Where an input's bytes are, in the usual tensor layout: little-endian
/// elements; BYTES as a u32-LE length then the bytes, for each element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputData {
    /// A range of the request body (after the JSON header), not copied.
    Binary(Range<usize>),
    /// Bytes the parser built: converted from the JSON `data` field, or (for
    /// a raw binary body holding one encoded image) the image with the BYTES
    /// length prefix the body cannot hold.
    Json(Vec<u8>),
    /// A buffer of its own, shared, not copied: a gRPC request's
    /// `raw_input_contents` entry as the message was decoded.
    Shared(bytes::Bytes),
    /// In a client's registered shared-memory region (Triton's system
    /// shared-memory extension): read from there straight into the slot.
    Region(ShmRef),
}

impl InputData {
    /// The tensor's bytes, when this process holds them; `body` is the body
    /// the request was parsed from. `None` for [`InputData::Region`].
    pub fn tensor_bytes<'a>(&'a self, body: &'a [u8]) -> Option<&'a [u8]> {
        match self {
            InputData::Binary(r) => Some(&body[r.clone()]),
            InputData::Json(v) => Some(v),
            InputData::Shared(b) => Some(b),
            InputData::Region(_) => None,
        }
    }

    /// Length of the tensor's bytes.
    pub fn len(&self) -> usize {
        match self {
            InputData::Binary(r) => r.len(),
            InputData::Json(v) => v.len(),
            InputData::Shared(b) => b.len(),
            InputData::Region(r) => r.byte_size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes in a client's registered shared-memory region: Triton's
/// `shared_memory_region`, `shared_memory_offset` (from the start of the
/// registered part) and `shared_memory_byte_size` parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmRef {
    pub region: String,
    pub offset: usize,
    pub byte_size: usize,
}

impl ShmRef {
    /// Reads the three parameters of `what` (an input or an output, as the
    /// messages name it); `None` when it names no region.
    pub fn from_parameters(
        what: &str,
        params: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Option<ShmRef>, V2Error> {
        let Some(params) = params else { return Ok(None) };
        let Some(region) = params.get("shared_memory_region") else { return Ok(None) };
        let region = region.as_str().filter(|r| !r.is_empty()).ok_or_else(|| {
            V2Error::Request(format!("{what}: shared_memory_region is {region}; accepted: a registered region's name"))
        })?;
        let size = |key: &str| -> Result<Option<usize>, V2Error> {
            let Some(v) = params.get(key) else { return Ok(None) };
            v.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some).ok_or_else(|| {
                V2Error::Request(format!("{what}: {key} is {v}; accepted: a byte count, an integer ≥ 0"))
            })
        };
        let byte_size = size("shared_memory_byte_size")?.ok_or_else(|| {
            V2Error::Request(format!(
                "{what} names shared_memory_region `{region}` without shared_memory_byte_size; give the tensor's \
                 byte size (and shared_memory_offset when it does not start the region)"
            ))
        })?;
        Ok(Some(ShmRef { region: region.to_string(), offset: size("shared_memory_offset")?.unwrap_or(0), byte_size }))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// `parameters.binary_data`; `None` falls back to the request's
    /// `binary_data_output`.
    pub binary_data: Option<bool>,
    /// `parameters.classification`: return the top-k classes instead.
    pub classification: Option<u32>,
    /// `parameters.shared_memory_region` (and offset, byte size): write the
    /// output there; the response then carries no data for it.
    pub region: Option<ShmRef>,
}

/// One output as the model produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor<'a> {
    pub name: &'a str,
    pub datatype: DType,
    pub shape: Vec<i64>,
    /// Little-endian elements; BYTES as u32-LE length-prefixed elements.
    pub data: &'a [u8],
}

/// Everything a response is made from besides the request. Takes the model
/// rather than loose fields because classification needs its batching (the
/// `[batch, k]` vs `[k]` shape) and the labels of its scores output.
#[derive(Clone, Debug)]
pub struct InferResponse<'a> {
    pub model: &'a Model,
    /// The version that ran.
    pub version: u64,
    /// The request's id, echoed back.
    pub id: Option<&'a str>,
    /// All of the model's outputs (the request picks among them).
    pub outputs: &'a [OutputTensor<'a>],
}

/// A rendered response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub body: Vec<u8>,
    /// `Some(json_len)` when binary output data follows the JSON: send it as
    /// the `Inference-Header-Content-Length` header, with content-type
    /// `application/octet-stream`. `None`: the body is all JSON.
    pub header_len: Option<usize>,
}

/// Product of the dims, or `None` when one is negative or it overflows.
fn element_count(shape: &[i64]) -> Option<usize> {
    shm::tensor::element_count(shape)
}

/// `[1, 3, 48, 192]`, the way the messages show shapes.
fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}
