//! Admission: requests beyond the configured limits are refused at once with
//! 429 instead of queueing without bound. Limits: requests in flight (all
//! models, and per model when its config sets `max_inflight`) and request
//! body bytes in flight. Memory therefore stays bounded however hard clients
//! push: shared memory is fixed, and per-request buffers are bounded by these.

use std::sync::Arc;

use model_repo::Repository;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Byte permits are counted in KiB so that large limits fit a semaphore.
const UNIT: usize = 1024;

pub struct Admission {
    requests: Arc<Semaphore>,
    max_requests: usize,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    per_model: Vec<Option<(Arc<Semaphore>, u32)>>,
}

/// Held for a request's life; dropping it readmits.
pub struct Permit {
    _request: OwnedSemaphorePermit,
    _model: Option<OwnedSemaphorePermit>,
    bytes: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(max_requests: usize, max_bytes: usize, repo: &Repository) -> Admission {
        let units = max_bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            requests: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            bytes: Arc::new(Semaphore::new(units)),
            max_bytes,
            per_model: repo
                .models
                .iter()
                .map(|m| m.config.max_inflight.map(|n| (Arc::new(Semaphore::new(n as usize)), n)))
                .collect(),
        }
    }

    /// Admits one request for model `index`, or says which limit is full.
    pub fn admit(&self, index: u16, name: &str) -> Result<Permit, ApiError> {
        let request = self.requests.clone().try_acquire_owned().map_err(|_| {
            ApiError::TooManyRequests(format!(
                "{} requests are in flight, the limit (server.max_inflight); retry later",
                self.max_requests
            ))
        })?;
        let model = match self.per_model.get(index as usize).and_then(Option::as_ref) {
            Some((sem, n)) => Some(sem.clone().try_acquire_owned().map_err(|_| {
                ApiError::TooManyRequests(format!(
                    "{n} requests for model `{name}` are in flight, its limit (max_inflight in its config); retry later"
                ))
            })?),
            None => None,
        };
        Ok(Permit { _request: request, _model: model, bytes: None })
    }

    /// Request body bytes in flight (to the KiB).
    pub fn inflight_bytes(&self) -> u64 {
        let units = self.max_bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        (units.saturating_sub(self.bytes.available_permits()) * UNIT) as u64
    }

    /// Reserves `len` bytes of request data for `permit`'s request.
    pub fn reserve(&self, permit: &mut Permit, len: usize) -> Result<(), ApiError> {
        let units = len.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS) as u32;
        let reserved = self.bytes.clone().try_acquire_many_owned(units).map_err(|_| {
            ApiError::TooManyRequests(format!(
                "requests in flight hold {} bytes, the limit (server.max_inflight_bytes); retry later",
                self.max_bytes
            ))
        })?;
        permit.bytes = Some(reserved);
        Ok(())
    }
}
