//! Reading request bodies with a size limit: straight into a shared-memory
//! slot when the length is known (image posts: the only copy of the bytes on
//! this side), or into a buffer otherwise.

use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ApiError;

fn too_large(limit: usize) -> ApiError {
    ApiError::TooLarge(format!("the body is over the {limit}-byte limit (config: server.max_body_bytes)"))
}

fn read_error(e: hyper::Error) -> ApiError {
    ApiError::BadRequest(format!("could not read the request body: {e}"))
}

/// Reads exactly `dst.len()` bytes (the declared Content-Length) into `dst`.
pub async fn read_exact(body: &mut Incoming, dst: &mut [u8]) -> Result<(), ApiError> {
    let mut at = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(read_error)?;
        if let Ok(data) = frame.into_data() {
            let end = at + data.len();
            if end > dst.len() {
                return Err(ApiError::BadRequest(format!(
                    "the body has more than the {} bytes its headers declare",
                    dst.len()
                )));
            }
            dst[at..end].copy_from_slice(&data);
            at = end;
        }
    }
    if at != dst.len() {
        return Err(ApiError::BadRequest(format!("the body ended after {at} of {} bytes", dst.len())));
    }
    Ok(())
}

/// Reads the whole body into a buffer, refusing more than `limit` bytes.
pub async fn read_all(body: &mut Incoming, limit: usize, hint: Option<usize>) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(hint.unwrap_or(0).min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(read_error)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The declared Content-Length, refusing one over `limit` before reading.
pub fn content_length(headers: &http::HeaderMap, limit: usize) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get(http::header::CONTENT_LENGTH) else { return Ok(None) };
    let n: usize = v
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))?;
    if n > limit {
        return Err(too_large(limit));
    }
    Ok(Some(n))
}

/// Undoes `Content-Encoding: gzip | deflate` (tritonclient can compress
/// requests), with the same size limit on the result.
pub fn decode(encoding: Option<&str>, body: Vec<u8>, limit: usize) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    let mut out = Vec::new();
    let reader: Box<dyn Read> = match encoding.map(str::trim) {
        None | Some("identity") => return Ok(body),
        Some("gzip") => Box::new(flate2::read::GzDecoder::new(&body[..])),
        Some("deflate") => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Encoding `{other}` is not supported; accepted: gzip, deflate, identity"
            )));
        }
    };
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("could not decompress the body: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}
