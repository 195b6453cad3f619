//! The one place where failures become HTTP statuses (Triton's mapping where
//! it has one). Every message says what was wrong and what is accepted; the
//! HTTP adapter sends it as JSON `{"error": "..."}`.

use http::StatusCode;
use model_repo::control::ControlError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed or does not fit the model: 400.
    BadRequest(String),
    /// Model control without the admin token: 401, with a Bearer challenge.
    Unauthorized(String),
    /// Refused by the daemon's configuration (client shared memory off): 403.
    Forbidden(String),
    /// Unknown model, version or route: 404.
    NotFound(String),
    /// Known route, wrong method: 405.
    MethodNotAllowed(String),
    /// The body came too slowly: 408.
    SlowClient(String),
    /// Body over the configured limit: 413.
    TooLarge(String),
    /// A Content-Type the endpoint does not take: 415.
    UnsupportedMediaType(String),
    /// Admission is full: 429 with Retry-After.
    TooManyRequests(String),
    /// The request's deadline cannot be met at the current load: 429, with
    /// the seconds after which it could be.
    WouldMissDeadline { message: String, retry_after_s: u64 },
    /// A worker failed: 500.
    Internal(String),
    /// Not ready, a worker died, or no room in shared memory: 503.
    Unavailable(String),
    /// The request's deadline passed: 504.
    Timeout(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::SlowClient(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) | ApiError::WouldMissDeadline { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::MethodNotAllowed(m)
            | ApiError::SlowClient(m)
            | ApiError::TooLarge(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::TooManyRequests(m)
            | ApiError::Internal(m)
            | ApiError::Unavailable(m)
            | ApiError::Timeout(m)
            | ApiError::WouldMissDeadline { message: m, .. } => m,
        }
    }

    /// When to retry, in seconds, for the answers that have one (429, 503).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::WouldMissDeadline { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::TooManyRequests(_) | ApiError::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            ApiError::Unauthorized(_) => Some("Bearer"),
            _ => None,
        }
    }

    /// Logs the error under `what` (a route, an RPC): a warning when the
    /// server failed, debug when the request was at fault.
    pub fn log(&self, what: impl std::fmt::Display) {
        if self.status().is_server_error() {
            tracing::warn!("{what}: {}", self.message());
        } else {
            tracing::debug!("{what}: {}", self.message());
        }
    }

    /// A failure reported by a worker, by its status class.
    pub fn from_worker(status: shm::Status, message: String) -> ApiError {
        match status {
            shm::Status::InvalidInput => ApiError::BadRequest(message),
            shm::Status::Timeout => ApiError::Timeout(message),
            shm::Status::Unavailable => ApiError::Unavailable(message),
            shm::Status::PoolFull => ApiError::TooManyRequests(message),
            shm::Status::Ok | shm::Status::Backend | shm::Status::Internal => ApiError::Internal(message),
        }
    }

    /// A body over `server.max_body_bytes`, declared or found while reading.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::TooLarge(format!("the body is over the {limit}-byte limit (config: server.max_body_bytes)"))
    }
}

impl From<crate::v2::V2Error> for ApiError {
    fn from(e: crate::v2::V2Error) -> ApiError {
        match e {
            // Outputs that do not match their shapes are the server's fault.
            crate::v2::V2Error::Response(_) => ApiError::Internal(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// An order the supervisor refused (the repository extension).
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::NotFound(m) => ApiError::NotFound(m),
            // A load that failed leaves the serving version untouched: the
            // request was wrong for this daemon, as Triton answers it.
            ControlError::Invalid(m) | ControlError::LoadFailed(m) => ApiError::BadRequest(m),
            ControlError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

/// By the status a worker answers the same error with
/// ([`shm::ShmError::status`]), so both sides agree.
impl From<shm::ShmError> for ApiError {
    fn from(e: shm::ShmError) -> ApiError {
        let message = match e {
            shm::ShmError::NoSlot { .. } | shm::ShmError::Full { .. } => {
                format!("the server is out of shared-memory capacity: {e}")
            }
            shm::ShmError::PeerGone(_) => format!("a worker is down: {e}"),
            _ => e.to_string(),
        };
        ApiError::from_worker(e.status(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(ApiError::from_worker(shm::Status::InvalidInput, "x".into()).status(), 400);
        assert_eq!(ApiError::from_worker(shm::Status::Timeout, "x".into()).status(), 504);
        assert_eq!(ApiError::from_worker(shm::Status::Backend, "x".into()).status(), 500);
        let order = |e: ControlError| {
            let e = ApiError::from(e);
            (e.status().as_u16(), e.message().to_string())
        };
        assert_eq!(order(ControlError::NotFound("no m".into())), (404, "no m".into()));
        assert_eq!(order(ControlError::Invalid("bad".into())), (400, "bad".into()));
        assert_eq!(order(ControlError::LoadFailed("onnx".into())), (400, "onnx".into()));
        assert_eq!(order(ControlError::Unavailable("stopping".into())), (503, "stopping".into()));
        assert_eq!(ApiError::Unauthorized("t".into()).status(), 401);
        assert_eq!(ApiError::Unauthorized("t".into()).challenge(), Some("Bearer"));
    }
}
