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
use crate::table::Serving;
use crate::v2;

/// The Triton header that splits a JSON header from binary tensor data.
pub const HEADER_LEN: &str = "inference-header-content-length";

pub async fn infer<B: BodySource>(state: &State, serving: &Serving<'_>, req: Request<B>) -> Resp {
    let (parts, mut body) = req.into_parts();
    let params = query_params(parts.uri.query());
    let request = core::Request { serving, params, payload: payload(&parts.headers) };
    match core::infer(state, request, &mut body, |answer| respond(serving.model(), answer)).await {
        Ok(resp) => resp,
        // Logged by the core, in the request's span.
        Err(e) => response::error(&e),
    }
}

/// `?priority=N&timeout=US`: the request parameters of a plain image or
/// frame POST, which has no JSON to carry them (so `ab` and `wrk` can set
/// them in the URL). A v2 request's own `parameters` take precedence. Other
/// query parameters are ignored.
fn query_params(query: Option<&str>) -> Result<RequestParams, ApiError> {
    let mut params = RequestParams::default();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "priority" => &mut params.priority,
            "timeout" => &mut params.timeout_us,
            _ => continue,
        };
        *slot = Some(value.parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "query parameter {key}={value:?} is not a whole number; accepted: priority=N (1 is the highest), \
                 timeout=MICROSECONDS"
            ))
        })?);
    }
    Ok(params)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_and_timeout_come_from_the_query() {
        let p = query_params(Some("priority=1&timeout=50000&x=y")).unwrap();
        assert_eq!(p, RequestParams { priority: Some(1), timeout_us: Some(50000), budget: None });
        assert_eq!(query_params(None).unwrap(), RequestParams::default());
        assert_eq!(query_params(Some("")).unwrap(), RequestParams::default());
        let e = query_params(Some("priority=high")).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("priority=\"high\"") && e.message().contains("timeout=MICROSECONDS"), "{e:?}");
        assert!(query_params(Some("timeout=-1")).is_err());
    }
}
