//! The one table from [`ApiError`] to gRPC status codes: the HTTP status
//! table's counterpart (`crate::error`), with the same messages. 429 and
//! 503 carry `retry-after` (seconds) in the metadata as HTTP's header does,
//! 401 its `www-authenticate` challenge.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::ApiError;

/// The gRPC code of each error (docs/api.md, "gRPC", has the table).
pub fn code(e: &ApiError) -> Code {
    match e {
        ApiError::BadRequest(_) => Code::InvalidArgument,
        ApiError::Unauthorized(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) => Code::PermissionDenied,
        ApiError::NotFound(_) => Code::NotFound,
        // No gRPC method has a wrong verb; kept total for the table's sake.
        ApiError::MethodNotAllowed(_) => Code::Unimplemented,
        ApiError::SlowClient(_) | ApiError::Timeout(_) => Code::DeadlineExceeded,
        // Too large for this server whenever it is retried: OUT_OF_RANGE,
        // what tonic itself answers for a message over the size limit, so
        // one code means "too large" whichever layer finds it (a client's
        // retry policy that retries RESOURCE_EXHAUSTED would only resend it).
        ApiError::TooLarge(_) => Code::OutOfRange,
        ApiError::UnsupportedMediaType(_) => Code::InvalidArgument,
        ApiError::TooManyRequests(_) | ApiError::WouldMissDeadline { .. } => Code::ResourceExhausted,
        ApiError::Internal(_) => Code::Internal,
        ApiError::Unavailable(_) => Code::Unavailable,
    }
}

/// `e` as the status an RPC fails with.
pub fn status(e: &ApiError) -> Status {
    let mut status = Status::new(code(e), e.message());
    let metadata = status.metadata_mut();
    if let Some(s) = e.retry_after() {
        metadata.insert("retry-after", MetadataValue::from(s));
    }
    if let Some(c) = e.challenge() {
        metadata.insert("www-authenticate", MetadataValue::from_static(c));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes_with_their_messages() {
        let s = status(&ApiError::BadRequest("input `x` has shape [1]".into()));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "input `x` has shape [1]"));
        let s = status(&ApiError::TooManyRequests("full".into()));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after").unwrap(), "1");
        let s = status(&ApiError::WouldMissDeadline { message: "late".into(), retry_after_s: 3 });
        assert_eq!(
            (s.code(), s.metadata().get("retry-after").unwrap().to_str().unwrap()),
            (Code::ResourceExhausted, "3")
        );
        let s = status(&ApiError::Unauthorized("token".into()));
        assert_eq!(
            (s.code(), s.metadata().get("www-authenticate").unwrap().to_str().unwrap()),
            (Code::Unauthenticated, "Bearer")
        );
        assert_eq!(code(&ApiError::NotFound(String::new())), Code::NotFound);
        assert_eq!(code(&ApiError::Forbidden(String::new())), Code::PermissionDenied);
        assert_eq!(code(&ApiError::Timeout(String::new())), Code::DeadlineExceeded);
        assert_eq!(code(&ApiError::TooLarge(String::new())), Code::OutOfRange);
        assert_eq!(code(&ApiError::Internal(String::new())), Code::Internal);
        assert_eq!(code(&ApiError::Unavailable(String::new())), Code::Unavailable);
        assert!(status(&ApiError::BadRequest(String::new())).metadata().get("retry-after").is_none());
    }
}
