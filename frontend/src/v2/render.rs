//! Inference responses: a JSON header, then the data of binary outputs in
//! output order, which is exactly how tritonclient's `InferResult` splits
//! them (it walks `outputs` and advances by each `binary_data_size`).

use serde::Serialize;

use super::data::JsonData;
use super::select::{Selected, select_outputs};
use super::{InferRequest, InferResponse, Rendered, V2Error};

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

/// Renders the response to `req`: the selected outputs ([`select_outputs`])
/// as binary data after the JSON header or as inline JSON; an output written
/// into a client's region by its name, datatype and shape only.
pub fn render_infer(resp: &InferResponse<'_>, req: &InferRequest) -> Result<Rendered, V2Error> {
    let selected = select_outputs(resp, req)?;
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
                // An output written into a region has neither, as in
                // Triton (whose clients read `parameters` as binary data).
                parameters: (s.binary && s.region.is_none())
                    .then(|| BinaryParameters { binary_data_size: s.data.len() }),
                data: (!s.binary && s.region.is_none()).then(|| JsonData { dtype: s.datatype, data: &s.data }),
            })
            .collect(),
    };
    let mut body = serde_json::to_vec(&header).map_err(|e| V2Error::Response(format!("rendering outputs: {e}")))?;
    let json_len = body.len();
    let binary: Vec<&Selected> = selected.iter().filter(|s| s.binary && s.region.is_none()).collect();
    body.reserve(binary.iter().map(|s| s.data.len()).sum());
    for s in &binary {
        body.extend_from_slice(&s.data);
    }
    Ok(Rendered { body, header_len: (!binary.is_empty()).then_some(json_len) })
}
