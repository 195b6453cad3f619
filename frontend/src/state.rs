//! What every connection shares, whatever protocol it speaks: the dispatch to
//! the workers, the model repository, admission, the live counters and the
//! limits from the config. Built once by `run` (and by the tests).

use std::sync::Arc;
use std::time::Duration;

use model_repo::{Model, Repository};

use crate::admission::Admission;
use crate::dispatch::Dispatch;
use crate::error::ApiError;
use crate::metrics::{Metrics, Scrape};

/// The server's limits (config: `server.*`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_inflight: usize,
    pub max_inflight_bytes: usize,
    /// Each priority level keeps this share of the two limits above from
    /// every level below it (`server.priority_headroom`).
    pub priority_headroom: f64,
    /// A request's deadline when neither it nor its model names one.
    pub request_timeout: Duration,
    /// Bounds a client that sends its body slowly.
    pub body_timeout: Duration,
}

/// Shared by every connection.
pub struct State {
    pub dispatch: Arc<Dispatch>,
    pub repository: Arc<Repository>,
    pub admission: Admission,
    pub metrics: Metrics,
    pub limits: Limits,
}

impl State {
    pub fn new(dispatch: Arc<Dispatch>, repository: Arc<Repository>, limits: Limits) -> State {
        State {
            admission: Admission::new(
                limits.max_inflight,
                limits.max_inflight_bytes,
                limits.priority_headroom,
                &repository,
            ),
            metrics: Metrics::new(repository.models.len()),
            dispatch,
            repository,
            limits,
        }
    }

    /// What a `/metrics` scrape reads.
    pub fn scrape(&self) -> Scrape<'_> {
        Scrape {
            repository: &self.repository,
            counters: &self.metrics,
            region: self.dispatch.region(),
            admission: &self.admission,
            ready: self.dispatch.all_ready(),
        }
    }

    /// Finds a model (and checks the version) or says which exist.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<(u16, &Model), ApiError> {
        let repo = &self.repository;
        let (i, m) = repo.get(name).ok_or_else(|| {
            ApiError::NotFound(format!("unknown model `{name}`; available models: {}", repo.names().join(", ")))
        })?;
        if let Some(v) = version
            && v.parse::<u64>().ok() != Some(m.latest())
        {
            return Err(ApiError::NotFound(format!(
                "model `{name}` has no loaded version `{v}`; the loaded version is {}",
                m.latest()
            )));
        }
        Ok((i, m))
    }
}
