//! `POST /v2/models/<m>[/versions/<v>]/infer` over HTTP: the headers become
//! a [`Payload`], the request core runs it, and the answer becomes the
//! response (JSON, or a v2 response with binary outputs after its JSON).

use http::{HeaderMap, HeaderValue, Request, header};
use model_repo::Model;

use super::response::{self, Resp};
use crate::body::BodySource;
use crate::core::{self, Answer, Headers, Payload, RequestParams};
use crate::error::ApiError;
use crate::state::State;
use crate::v2;

/// The Triton header that splits a JSON header from binary tensor data.
pub const HEADER_LEN: &str = "inference-header-content-length";

pub async fn infer<B: BodySource>(state: &State, index: u16, model: &Model, req: Request<B>) -> Resp {
    let (parts, mut body) = req.into_parts();
    let request = core::Request { model: index, params: RequestParams::default(), payload: payload(&parts.headers) };
    match core::infer(state, request, &mut body, |answer| respond(model, answer)).await {
        Ok(resp) => resp,
        // Logged by the core, in the request's span.
        Err(e) => response::error(&e),
    }
}

fn payload(headers: &HeaderMap) -> Result<Payload, ApiError> {
    // A value that is not text is present but unreadable (an error where the
    // header must be a number); an unreadable Content-Encoding is ignored.
    let value = |name| headers.get(name).map(|v: &HeaderValue| v.to_str().unwrap_or_default());
    Payload::parse(&Headers {
        content_type: value(header::CONTENT_TYPE.as_str()),
        content_length: value(header::CONTENT_LENGTH.as_str()),
        content_encoding: headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()),
        inference_header_len: value(HEADER_LEN),
    })
}

fn respond(model: &Model, answer: Answer) -> Result<Resp, ApiError> {
    let outputs = match answer {
        Answer::Json(body) => return Ok(response::json(body)),
        Answer::Tensors(outputs) => outputs,
    };
    let tensors = outputs.tensors(model)?;
    let req = &outputs.request;
    let rendered = v2::render_infer(
        &v2::InferResponse { model, version: model.latest(), id: req.id.as_deref(), outputs: &tensors },
        req,
    )?;
    let mut resp = response::json(rendered.body);
    if let Some(n) = rendered.header_len {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(HEADER_LEN, HeaderValue::from(n));
    }
    Ok(resp)
}
