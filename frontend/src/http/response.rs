//! The responses every route sends: JSON, empty, metrics text, and errors
//! as JSON `{"error": "..."}` with the status from the one table
//! ([`ApiError::status`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::error::ApiError;
use crate::v2;

pub type Resp = Response<Full<Bytes>>;

fn with_type(body: impl Into<Bytes>, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(body: Vec<u8>) -> Resp {
    with_type(body, "application/json")
}

pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

pub fn metrics(text: String) -> Resp {
    with_type(text, "text/plain; version=0.0.4; charset=utf-8")
}

/// 429 and 503 say when to retry (Retry-After), 401 what it takes
/// (WWW-Authenticate).
pub fn error(e: &ApiError) -> Resp {
    let mut resp = json(v2::error_body(e.message()));
    *resp.status_mut() = e.status();
    if let Some(s) = e.retry_after() {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(c) = e.challenge() {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_retry_after_when_full() {
        let r = error(&ApiError::TooManyRequests("full".into()));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["content-type"], "application/json");
        let r = error(&ApiError::WouldMissDeadline { message: "late".into(), retry_after_s: 3 });
        assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "3"));
        let r = error(&ApiError::BadRequest("bad".into()));
        assert_eq!(r.status(), 400);
        assert!(!r.headers().contains_key("retry-after"));
    }
}
