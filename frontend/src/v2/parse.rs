//! `POST /v2/models/{name}/infer` bodies: a JSON header, optionally followed
//! by binary tensor data (Triton's binary tensor extension), into an
//! [`InferRequest`]. Everything that can be checked without the model is
//! checked here; [`super::validate`] does the rest.

use model_repo::DType;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::data::{flatten, from_json};
use super::{InferRequest, InputData, InputTensor, RequestedOutput, ShmRef, V2Error, element_count, shape_str};
use shm::tensor::bytes_elements;

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Parses an inference request. `header_len` is the
/// `Inference-Header-Content-Length` value: the JSON is `body[..header_len]`
/// and binary input data follows it, in input order. `None`: all JSON.
/// (A value of 0 means a raw binary body; see [`super::parse_raw`].)
pub fn parse_infer(body: &[u8], header_len: Option<usize>) -> Result<InferRequest, V2Error> {
    let header_len = header_len.unwrap_or(body.len());
    if header_len > body.len() {
        return Err(V2Error::Request(format!(
            "Inference-Header-Content-Length is {header_len} but the body has only {} bytes; \
             it must be the length of the JSON header that starts the body",
            body.len()
        )));
    }
    let raw: RawRequest = serde_json::from_slice(&body[..header_len]).map_err(|e| V2Error::Json(e.to_string()))?;
    let mut req = InferRequest {
        id: raw.id,
        priority: None,
        timeout_us: None,
        binary_data_output: false,
        parameters: Map::new(),
        inputs: Vec::with_capacity(raw.inputs.len()),
        outputs: Vec::new(),
    };
    request_parameters(&mut req, raw.parameters.unwrap_or_default())?;
    has_inputs(raw.inputs.len())?;
    let sizes = binary_sizes(&raw.inputs)?;
    check_binary_total(&raw.inputs, &sizes, body.len(), header_len)?;
    let mut at = header_len;
    for (input, size) in raw.inputs.into_iter().zip(sizes) {
        let range = size.map(|n| {
            at += n;
            at - n..at
        });
        req.inputs.push(input_tensor(input, range, body)?);
    }
    for out in raw.outputs.unwrap_or_default() {
        add_output(&mut req, out.name, out.parameters.as_ref())?;
    }
    Ok(req)
}

/// Applies a request's `parameters` (HTTP's JSON object; gRPC's map, as JSON
/// values) to `req`.
pub fn request_parameters(req: &mut InferRequest, params: Map<String, Value>) -> Result<(), V2Error> {
    let bad = |key: &str, v: &Value, accepted: &str| {
        V2Error::Request(format!("request parameter `{key}` is {v}; accepted: {accepted}"))
    };
    for (key, v) in params {
        match key.as_str() {
            "priority" => req.priority = Some(v.as_u64().ok_or_else(|| bad(&key, &v, "an integer ≥ 0"))?),
            "timeout" => {
                req.timeout_us = Some(v.as_u64().ok_or_else(|| bad(&key, &v, "microseconds, an integer ≥ 0"))?)
            }
            "binary_data_output" => {
                req.binary_data_output = v.as_bool().ok_or_else(|| bad(&key, &v, "true or false"))?
            }
            // tritonclient sends sequence_id 0 or "" for "no sequence", and
            // sequence_start/end alongside any sequence_id.
            "sequence_id" => {
                let none = v.as_u64() == Some(0) || v.as_str() == Some("") || v.is_null();
                if !none {
                    return Err(V2Error::Request(format!(
                        "sequence_id {v}: sequence batching is not supported; send requests without sequence_id"
                    )));
                }
            }
            "sequence_start" | "sequence_end" => {}
            _ => {
                req.parameters.insert(key, v);
            }
        }
    }
    Ok(())
}

/// Each input's `parameters.binary_data_size`, if it has one.
fn binary_sizes(inputs: &[RawInput]) -> Result<Vec<Option<usize>>, V2Error> {
    inputs
        .iter()
        .map(|input| {
            let Some(v) = input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) else { return Ok(None) };
            match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(V2Error::Request(format!(
                    "input `{}` has binary_data_size {v}; accepted: a byte count, an integer ≥ 0",
                    input.name
                ))),
            }
        })
        .collect()
}

/// The declared binary sizes must account for every byte after the header,
/// no more and no less: a mismatch means the client and server disagree on
/// where each tensor starts.
fn check_binary_total(
    inputs: &[RawInput],
    sizes: &[Option<usize>],
    body_len: usize,
    header_len: usize,
) -> Result<(), V2Error> {
    let found = body_len - header_len;
    let expected = sizes.iter().flatten().try_fold(0usize, |acc, &n| acc.checked_add(n));
    if expected == Some(found) {
        return Ok(());
    }
    let each: Vec<String> =
        inputs.iter().zip(sizes).filter_map(|(i, s)| s.map(|n| format!("`{}`: {n}", i.name))).collect();
    let declared = match expected {
        Some(n) if each.is_empty() => format!("no input declares binary data (expected {n} bytes)"),
        Some(n) => format!("the inputs declare {n} bytes of binary data ({})", each.join(", ")),
        None => format!("the inputs declare more binary data than fits in memory ({})", each.join(", ")),
    };
    let hint = if body_len == header_len && expected.is_some_and(|n| n > 0) {
        "; binary data needs the Inference-Header-Content-Length header set to the JSON header's length"
    } else {
        ""
    };
    Err(V2Error::Request(format!("{declared} but {found} bytes follow the {header_len}-byte JSON header{hint}")))
}

/// Refuses a request with no inputs (over either protocol).
pub fn has_inputs(n: usize) -> Result<(), V2Error> {
    if n == 0 {
        return Err(V2Error::Request("the request has no inputs; `inputs` must list at least one tensor".into()));
    }
    Ok(())
}

/// Input `name`'s datatype and element count, from its header.
pub fn input_header(name: &str, datatype: &str, shape: &[i64]) -> Result<(DType, usize), V2Error> {
    let dtype = DType::parse(datatype).ok_or_else(|| {
        let all: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        V2Error::Request(format!("input `{name}` has datatype `{datatype}`; accepted: {}", all.join(", ")))
    })?;
    let count = element_count(shape).ok_or_else(|| {
        V2Error::Request(format!("input `{name}` has shape {}; dimensions must be integers ≥ 0", shape_str(shape)))
    })?;
    Ok((dtype, count))
}

fn input_tensor(input: RawInput, range: Option<std::ops::Range<usize>>, body: &[u8]) -> Result<InputTensor, V2Error> {
    let name = input.name;
    let shape = input.shape;
    let (datatype, count) = input_header(&name, &input.datatype, &shape)?;
    let what = format!("input `{name}`");
    let region = ShmRef::from_parameters(&what, input.parameters.as_ref())?;
    let data = match (input.data, range, region) {
        (None, None, Some(region)) => {
            // Its BYTES elements are only read once copied, by the worker.
            if let Some(size) = datatype.size() {
                let what = format!("input `{name}` ({datatype} {})", shape_str(&shape));
                check_len(&what, count, size, region.byte_size, "shared_memory_byte_size")?;
            }
            InputData::Region(region)
        }
        (_, _, Some(_)) => {
            return Err(V2Error::Request(format!(
                "{what} names shared_memory_region and also has `data` or binary_data_size; send one of them"
            )));
        }
        (Some(_), Some(_), None) => {
            return Err(V2Error::Request(format!(
                "input `{name}` has both `data` and parameters.binary_data_size; send one of them"
            )));
        }
        (None, None, None) => {
            return Err(V2Error::Request(format!(
                "input `{name}` has no data: give `data` (JSON), parameters.binary_data_size (binary after the \
                 header) or parameters.shared_memory_region (a registered region)"
            )));
        }
        (Some(json), None, None) => {
            let values = flatten(&json);
            if values.len() != count {
                return Err(V2Error::Request(format!(
                    "input `{name}` has {} data elements but its shape {} needs {count}",
                    values.len(),
                    shape_str(&shape)
                )));
            }
            InputData::Json(from_json(&name, datatype, &values)?)
        }
        (None, Some(range), None) => {
            check_binary(&name, datatype, &shape, count, &body[range.clone()], "binary data")?;
            InputData::Binary(range)
        }
    };
    Ok(InputTensor { name, datatype, shape, data })
}

/// A tensor's byte count against the one the client declared (`key`);
/// `size` is its elements' size.
fn check_len(what: &str, count: usize, size: usize, given: usize, key: &str) -> Result<(), V2Error> {
    let want = count.checked_mul(size);
    if want != Some(given) {
        let want = want.map_or("more than fits in memory".to_string(), |n| format!("{n} bytes"));
        return Err(V2Error::Request(format!("{what} is {want} but its {key} is {given}")));
    }
    Ok(())
}

/// Checks that `data`, the bytes given for tensor `name` (HTTP's binary
/// data, a gRPC `raw_input_contents` entry: `source` names which for the
/// messages), holds `count` elements of `dtype`: their size, or for BYTES
/// each element's 4-byte length then its bytes.
pub fn check_binary(
    name: &str,
    dtype: DType,
    shape: &[i64],
    count: usize,
    data: &[u8],
    source: &str,
) -> Result<(), V2Error> {
    let what = format!("input `{name}` ({dtype} {})", shape_str(shape));
    match dtype.size() {
        Some(size) => check_len(&what, count, size, data.len(), "binary_data_size")?,
        None => {
            let elements = bytes_elements(data).map_err(|e| {
                V2Error::Request(format!(
                    "{what}: BYTES data must be a 4-byte little-endian length then the bytes, for each element; {e}"
                ))
            })?;
            if elements.len() != count {
                return Err(V2Error::Request(format!(
                    "{what} needs {count} elements but its {source} holds {}",
                    elements.len()
                )));
            }
        }
    }
    Ok(())
}

/// Adds output `name`, requested with `parameters`, to `req`; a name
/// given twice is refused.
pub fn add_output(
    req: &mut InferRequest,
    name: String,
    parameters: Option<&Map<String, Value>>,
) -> Result<(), V2Error> {
    if req.outputs.iter().any(|o| o.name == name) {
        return Err(V2Error::Request(format!("output `{name}` is requested twice; name each output once")));
    }
    req.outputs.push(requested_output(name, parameters)?);
    Ok(())
}

/// Output `name` as requested with `parameters`.
fn requested_output(name: String, parameters: Option<&Map<String, Value>>) -> Result<RequestedOutput, V2Error> {
    let what = format!("output `{name}`");
    let region = ShmRef::from_parameters(&what, parameters)?;
    let mut req = RequestedOutput { name, binary_data: None, classification: None, region: None };
    let bad = |key: &str, v: &Value, accepted: &str| {
        V2Error::Request(format!("output `{}`: parameter `{key}` is {v}; accepted: {accepted}", req.name))
    };
    let mut binary_data = None;
    let mut classification = None;
    for (key, v) in parameters.into_iter().flatten() {
        match key.as_str() {
            "binary_data" => binary_data = Some(v.as_bool().ok_or_else(|| bad(key, v, "true or false"))?),
            "classification" => {
                let k = v.as_u64().and_then(|k| u32::try_from(k).ok()).filter(|&k| k > 0);
                classification = Some(k.ok_or_else(|| bad(key, v, "a class count, an integer ≥ 1"))?);
            }
            _ => {}
        }
    }
    if classification.is_some() && region.is_some() {
        return Err(V2Error::Request(format!(
            "{what} asks for classification into shared_memory_region; classification results come in the \
             response only: ask for one or the other"
        )));
    }
    req.binary_data = binary_data;
    req.classification = classification;
    req.region = region;
    Ok(req)
}
