//! ModelInferRequest → the v2 request the core runs, and its answer →
//! ModelInferResponse. Tensor data is taken as the message holds it:
//! `raw_input_contents` entries are handed on as they were decoded (no
//! copy); typed `contents` are laid out as binary tensors (little-endian;
//! BYTES as a u32 length then the bytes, per element). Parameters become
//! the JSON values HTTP's requests carry, so `crate::v2` reads both
//! protocols' parameters with one set of rules and messages.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use model_repo::{DType, Model};
use serde_json::{Map, Value};

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::core::Answer;
use crate::error::ApiError;
use crate::v2::{self, InferRequest, InputData, InputTensor, Selected, ShmRef, V2Error};

/// The v2 request `msg` stands for. Data checks that need the model
/// (datatypes, shapes, byte counts) are `v2::validate`'s, in the core. The
/// request's `id` is not read: the adapter keeps it to echo it in the
/// response, whatever form the answer takes.
pub fn infer_request(msg: ModelInferRequest) -> Result<InferRequest, V2Error> {
    let ModelInferRequest { parameters, inputs, outputs, raw_input_contents, .. } = msg;
    let mut req = InferRequest::default();
    v2::request_parameters(&mut req, json_parameters(parameters))?;
    v2::has_inputs(inputs.len())?;
    let raw_count = raw_input_contents.len();
    let mut raw = raw_input_contents.into_iter();
    req.inputs.reserve(inputs.len());
    for input in inputs {
        req.inputs.push(input_tensor(input, &mut raw, raw_count > 0)?);
    }
    if raw.len() > 0 {
        return Err(V2Error::Request(format!(
            "the request has {raw_count} raw_input_contents entries but {} of its inputs take their data from there; \
             send one entry per input without contents or shared_memory_region, in input order",
            raw_count - raw.len()
        )));
    }
    for out in outputs {
        v2::add_output(&mut req, out.name, Some(&json_parameters(out.parameters)))?;
    }
    Ok(req)
}

/// Bytes of tensor data the message holds (what admission counts as the
/// request's size; data in a client's region is not held here).
pub fn held_bytes(msg: &ModelInferRequest) -> usize {
    let typed: usize = msg.inputs.iter().filter_map(|i| i.contents.as_ref()).map(typed_len).sum();
    msg.raw_input_contents.iter().map(Bytes::len).sum::<usize>() + typed
}

fn input_tensor(
    input: InferInputTensor,
    raw: &mut impl Iterator<Item = Bytes>,
    has_raw: bool,
) -> Result<InputTensor, V2Error> {
    let InferInputTensor { name, datatype, shape, parameters, contents } = input;
    let (dtype, count) = v2::input_header(&name, &datatype, &shape)?;
    let what = format!("input `{name}`");
    let region = ShmRef::from_parameters(&what, Some(&json_parameters(parameters)))?;
    // tritonclient sends no `contents` with raw data; an empty one is none.
    let contents = contents.filter(|c| typed_len(c) > 0);
    let data = match (region, contents) {
        (Some(_), Some(_)) => {
            return Err(V2Error::Request(format!(
                "{what} names shared_memory_region and also has contents; send one of them"
            )));
        }
        (Some(region), None) => InputData::Region(region),
        // As Triton: one request sends its data one way or the other,
        // since raw entries are matched to inputs by position.
        (None, Some(_)) if has_raw => {
            return Err(V2Error::Request(format!(
                "{what} has contents but the request also has raw_input_contents; send every input's data in \
                 raw_input_contents or every input's in contents"
            )));
        }
        (None, Some(c)) => InputData::Json(typed(&name, dtype, count, &c)?),
        (None, None) => {
            let bytes = raw.next().ok_or_else(|| {
                V2Error::Request(format!(
                    "{what} has no data: give contents, a raw_input_contents entry (one per input, in input \
                     order) or parameters.shared_memory_region (a registered region)"
                ))
            })?;
            if dtype == DType::Bytes {
                v2::check_binary(&name, dtype, &shape, count, &bytes, "raw_input_contents entry")?;
            }
            InputData::Shared(bytes)
        }
    };
    Ok(InputTensor { name, datatype: dtype, shape, data })
}

/// Bytes the typed numeric and bool contents hold (BYTES elements: their
/// lengths).
fn typed_len(c: &InferTensorContents) -> usize {
    c.bool_contents.len()
        + 4 * (c.int_contents.len() + c.uint_contents.len() + c.fp32_contents.len())
        + 8 * (c.int64_contents.len() + c.uint64_contents.len() + c.fp64_contents.len())
        + c.bytes_contents.iter().map(|b| 4 + b.len()).sum::<usize>()
}

/// Typed contents in the binary layout of `dtype`: the field of its type
/// (INT8/INT16 in int_contents, UINT8/UINT16 in uint_contents, range-checked
/// rather than truncated), `count` elements.
fn typed(name: &str, dtype: DType, count: usize, c: &InferTensorContents) -> Result<Vec<u8>, V2Error> {
    let fields: [(&str, usize); 8] = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let given: Vec<&str> = fields.iter().filter(|(_, n)| *n > 0).map(|(f, _)| *f).collect();
    let field = match dtype {
        DType::Bool => "bool_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::U8 | DType::U16 | DType::U32 => "uint_contents",
        DType::U64 => "uint64_contents",
        DType::F32 => "fp32_contents",
        DType::F64 => "fp64_contents",
        DType::Bytes => "bytes_contents",
        DType::F16 | DType::BF16 => {
            return Err(V2Error::Request(format!(
                "input `{name}` is {dtype}, which typed contents have no field for; send its bytes in \
                 raw_input_contents"
            )));
        }
    };
    if given != [field] {
        return Err(V2Error::Request(format!(
            "input `{name}` is {dtype}, whose elements go in {field}; its contents are in {}",
            given.join(", ")
        )));
    }
    let n = fields.iter().find(|(f, _)| *f == field).map_or(0, |(_, n)| *n);
    if n != count {
        return Err(V2Error::Request(format!(
            "input `{name}` has {n} elements in {field} but its shape needs {count}"
        )));
    }
    let bad = |i: usize, v: &dyn std::fmt::Display| {
        V2Error::Request(format!("input `{name}`: element {i} is {v}, which is not {dtype}"))
    };
    macro_rules! narrow {
        ($src:expr, $t:ty) => {{
            let mut out = Vec::with_capacity(n * size_of::<$t>());
            for (i, &v) in $src.iter().enumerate() {
                out.extend_from_slice(&<$t>::try_from(v).map_err(|_| bad(i, &v))?.to_le_bytes());
            }
            out
        }};
    }
    macro_rules! le {
        ($src:expr) => {
            $src.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
    }
    Ok(match dtype {
        DType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DType::I8 => narrow!(c.int_contents, i8),
        DType::I16 => narrow!(c.int_contents, i16),
        DType::I32 => le!(c.int_contents),
        DType::I64 => le!(c.int64_contents),
        DType::U8 => narrow!(c.uint_contents, u8),
        DType::U16 => narrow!(c.uint_contents, u16),
        DType::U32 => le!(c.uint_contents),
        DType::U64 => le!(c.uint64_contents),
        DType::F32 => le!(c.fp32_contents),
        DType::F64 => le!(c.fp64_contents),
        DType::Bytes => {
            let mut out = Vec::with_capacity(typed_len(c));
            for (i, b) in c.bytes_contents.iter().enumerate() {
                let len = u32::try_from(b.len()).map_err(|_| bad(i, &"over 4 GiB"))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(b);
            }
            out
        }
        DType::F16 | DType::BF16 => unreachable!("refused above"),
    })
}

/// Parameters as the JSON values of an HTTP request's `parameters`.
fn json_parameters(params: HashMap<String, InferParameter>) -> Map<String, Value> {
    params
        .into_iter()
        .map(|(k, p)| {
            let v = match p.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                Some(ParameterChoice::Int64Param(n)) => n.into(),
                Some(ParameterChoice::Uint64Param(n)) => n.into(),
                Some(ParameterChoice::DoubleParam(x)) => {
                    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
                Some(ParameterChoice::StringParam(s)) => Value::String(s),
                None => Value::Null,
            };
            (k, v)
        })
        .collect()
}

/// The response to a request the core answered, `id` the request's, as
/// Triton sends it: each output's data in `raw_output_contents` at its index
/// in `outputs` (empty for an output written to a client's region). An
/// answer post-processed into JSON becomes one BYTES output `json` of shape
/// [1] holding the text.
pub fn infer_response(model: &Model, answer: Answer, id: String) -> Result<ModelInferResponse, ApiError> {
    let outputs = match answer {
        Answer::Json(text) => {
            let mut data = Vec::with_capacity(4 + text.len());
            data.extend_from_slice(&(text.len() as u32).to_le_bytes());
            data.extend_from_slice(&text);
            let json = Selected {
                name: "json",
                datatype: DType::Bytes,
                shape: vec![1],
                data: Cow::Owned(data),
                binary: true,
                region: None,
            };
            return Ok(response(&model.name, model.latest(), id, vec![json]));
        }
        Answer::Tensors(outputs) => outputs,
    };
    let tensors = outputs.tensors(model)?;
    let req = &outputs.request;
    let resp = v2::InferResponse { model, version: model.latest(), id: None, outputs: &tensors };
    Ok(response(&model.name, model.latest(), id, v2::select_outputs(&resp, req)?))
}

/// The message carrying `selected`, in their order: version `version` of
/// model `name` answering request `id`.
pub(super) fn response(name: &str, version: u64, id: String, selected: Vec<Selected<'_>>) -> ModelInferResponse {
    let mut out = ModelInferResponse {
        model_name: name.to_string(),
        model_version: version.to_string(),
        id,
        outputs: Vec::with_capacity(selected.len()),
        raw_output_contents: Vec::with_capacity(selected.len()),
        ..Default::default()
    };
    for s in selected {
        out.outputs.push(InferOutputTensor {
            name: s.name.to_string(),
            datatype: s.datatype.name().into(),
            shape: s.shape,
            ..Default::default()
        });
        // An entry for every output, so that indexes match `outputs` (as
        // Triton, and tritonclient's `as_numpy` relies on it). The copy out
        // of the slot, which is freed when the response is made; an owned
        // buffer (classification, JSON) is moved, not copied.
        out.raw_output_contents.push(match (s.region, s.data) {
            (Some(_), _) => Bytes::new(),
            (None, Cow::Borrowed(data)) => Bytes::copy_from_slice(data),
            (None, Cow::Owned(data)) => Bytes::from(data),
        });
    }
    out
}
