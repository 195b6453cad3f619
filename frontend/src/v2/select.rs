//! Which outputs a response carries, and in what form: the part of a
//! response both protocols share (HTTP renders it as JSON and binary
//! sections, gRPC as `outputs` and `raw_output_contents`).

use std::borrow::Cow;

use model_repo::DType;
use shm::tensor::bytes_elements;

use super::classify::classify;
use super::{InferRequest, InferResponse, OutputTensor, ShmRef, V2Error, element_count, shape_str};

/// An output as it will be sent: classification already applied.
pub struct Selected<'a> {
    pub name: &'a str,
    pub datatype: DType,
    pub shape: Vec<i64>,
    pub data: Cow<'a, [u8]>,
    /// Sent as binary data rather than inline JSON (HTTP only; gRPC sends
    /// every output's bytes raw).
    pub binary: bool,
    /// The client's region the core wrote this output into: the response
    /// carries its name and size instead of its bytes.
    pub region: Option<&'a ShmRef>,
}

/// The requested outputs in request order (all outputs when the request
/// names none), each binary or JSON as the output's `binary_data` or else
/// the request's `binary_data_output` says (JSON when neither does).
pub fn select_outputs<'a>(resp: &InferResponse<'a>, req: &'a InferRequest) -> Result<Vec<Selected<'a>>, V2Error> {
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
            selected.push(plain(out, req.binary_data_output, None)?);
        }
    } else {
        for r in &req.outputs {
            let out = find(&r.name)?;
            let binary = r.binary_data.unwrap_or(req.binary_data_output);
            selected.push(match r.classification {
                None => plain(out, binary, r.region.as_ref())?,
                Some(k) => {
                    let (shape, data) = classify(out, k, batched, labels(out.name))?;
                    Selected {
                        name: out.name,
                        datatype: DType::Bytes,
                        shape,
                        data: Cow::Owned(data),
                        binary,
                        region: None,
                    }
                }
            });
        }
    }
    Ok(selected)
}

/// An output passed through as the model produced it, after checking that its
/// data matches its shape (tritonclient reshapes by the shape we send) and,
/// for JSON BYTES, that every element is text.
fn plain<'a>(out: &'a OutputTensor<'a>, binary: bool, region: Option<&'a ShmRef>) -> Result<Selected<'a>, V2Error> {
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
            let json = !binary && region.is_none();
            if json && let Some(i) = elements.iter().position(|e| std::str::from_utf8(e).is_err()) {
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
        region,
    })
}
