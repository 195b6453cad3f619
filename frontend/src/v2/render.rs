//! Inference responses: a JSON header, then the data of binary outputs in
//! output order, which is exactly how tritonclient's `InferResult` splits
//! them (it walks `outputs` and advances by each `binary_data_size`).

use std::borrow::Cow;

use model_repo::DType;
use serde::Serialize;

use super::classify::classify;
use super::data::JsonData;
use super::{InferRequest, InferResponse, OutputTensor, Rendered, V2Error, element_count, shape_str};
use shm::tensor::bytes_elements;

#[derive(Serialize)]
struct Header<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputHeader<'a>>,
}

#[derive(Serialize)]
struct OutputHeader<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// An output as it will be sent: classification already applied.
struct Selected<'a> {
    name: &'a str,
    datatype: DType,
    shape: Vec<i64>,
    data: Cow<'a, [u8]>,
    binary: bool,
}

/// Renders the response to `req`: the requested outputs in request order (all
/// outputs when it names none), each as binary data after the JSON header or
/// inline JSON, as the output's `binary_data` or else the request's
/// `binary_data_output` says (JSON when neither does).
pub fn render_infer(resp: &InferResponse<'_>, req: &InferRequest) -> Result<Rendered, V2Error> {
    let config = &resp.model.config;
    let batched = config.max_batch_size > 0;
    // Postprocess labels name the classes of the scores output only.
    let labels = |name: &str| match (&config.postprocess, config.scores_output()) {
        (Some(p), Some((_, t))) if t.name == name => p.labels.as_slice(),
        _ => &[],
    };
    let find = |name: &str| {
        resp.outputs.iter().find(|o| o.name == name).ok_or_else(|| {
            let names: Vec<&str> = resp.outputs.iter().map(|o| o.name).collect();
            V2Error::Response(format!("the model produced no output `{name}`; it produced: {}", names.join(", ")))
        })
    };
    let mut selected = Vec::with_capacity(req.outputs.len().max(resp.outputs.len()));
    if req.outputs.is_empty() {
        for out in resp.outputs {
            selected.push(plain(out, req.binary_data_output)?);
        }
    } else {
        for r in &req.outputs {
            let out = find(&r.name)?;
            let binary = r.binary_data.unwrap_or(req.binary_data_output);
            selected.push(match r.classification {
                None => plain(out, binary)?,
                Some(k) => {
                    let (shape, data) = classify(out, k, batched, labels(out.name))?;
                    Selected { name: out.name, datatype: DType::Bytes, shape, data: Cow::Owned(data), binary }
                }
            });
        }
    }
    let header = Header {
        model_name: &resp.model.name,
        model_version: resp.version.to_string(),
        id: resp.id,
        outputs: selected
            .iter()
            .map(|s| OutputHeader {
                name: s.name,
                datatype: s.datatype.name(),
                shape: &s.shape,
                parameters: s.binary.then(|| BinaryParameters { binary_data_size: s.data.len() }),
                data: (!s.binary).then(|| JsonData { dtype: s.datatype, data: &s.data }),
            })
            .collect(),
    };
    let mut body = serde_json::to_vec(&header).map_err(|e| V2Error::Response(format!("rendering outputs: {e}")))?;
    let json_len = body.len();
    let binary: Vec<&Selected> = selected.iter().filter(|s| s.binary).collect();
    body.reserve(binary.iter().map(|s| s.data.len()).sum());
    for s in &binary {
        body.extend_from_slice(&s.data);
    }
    Ok(Rendered { body, header_len: (!binary.is_empty()).then_some(json_len) })
}

/// An output passed through as the model produced it, after checking that its
/// data matches its shape (tritonclient reshapes by the shape we send) and,
/// for JSON BYTES, that every element is text.
fn plain<'a>(out: &'a OutputTensor<'a>, binary: bool) -> Result<Selected<'a>, V2Error> {
    let what = || format!("output `{}` ({} {})", out.name, out.datatype, shape_str(&out.shape));
    let count = element_count(&out.shape)
        .ok_or_else(|| V2Error::Response(format!("{} has an invalid shape; this is a bug", what())))?;
    match out.datatype.size() {
        Some(size) => {
            if count.checked_mul(size) != Some(out.data.len()) {
                return Err(V2Error::Response(format!(
                    "{} has {} bytes of data, not {count} elements; this is a bug",
                    what(),
                    out.data.len()
                )));
            }
        }
        None => {
            let elements = bytes_elements(out.data)
                .map_err(|e| V2Error::Response(format!("{} is not valid BYTES data ({e}); this is a bug", what())))?;
            if elements.len() != count {
                return Err(V2Error::Response(format!(
                    "{} has {} elements, not {count}; this is a bug",
                    what(),
                    elements.len()
                )));
            }
            if !binary && let Some(i) = elements.iter().position(|e| std::str::from_utf8(e).is_err()) {
                return Err(V2Error::Request(format!(
                    "{}: element {i} is not UTF-8 text, so it cannot be sent as JSON; request this output with \
                     parameters.binary_data = true",
                    what()
                )));
            }
        }
    }
    Ok(Selected {
        name: out.name,
        datatype: out.datatype,
        shape: out.shape.clone(),
        data: Cow::Borrowed(out.data),
        binary,
    })
}
