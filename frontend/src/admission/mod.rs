//! Admission: requests beyond the configured limits are refused at once with
//! 429 instead of queueing without bound. Limits: requests in flight (all
//! models, and per model when its config sets `max_inflight`) and request
//! body bytes in flight. Memory therefore stays bounded however hard clients
//! push: shared memory is fixed, and per-request buffers are bounded by these.
//!
//! Once a request's level is known ([`Admission::enter`]), two more rules:
//! each level may fill only its share of those limits ([`shares`]), and a
//! request whose deadline its model cannot meet at the current load is
//! refused at once ([`forecast`]): 429 with a Retry-After, or 504 when its
//! deadline has already passed. Every refusal is counted by level and
//! reason.

mod forecast;
mod shares;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model_repo::{Model, Repository};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::forecast::Forecast;
use self::shares::Shares;
use crate::error::ApiError;

/// Byte permits are counted in KiB so that large limits fit a semaphore.
const UNIT: usize = 1024;

/// Why a request was refused (the `reason` label of `highserve_shed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shed {
    /// `server.max_inflight` requests are in flight.
    MaxInflight,
    /// The model's `max_inflight` requests are in flight.
    ModelMaxInflight,
    /// `server.max_inflight_bytes` of request bodies are in flight.
    MaxInflightBytes,
    /// The request's level has filled its share of a limit.
    LevelShare,
    /// Its deadline cannot be met at the current load.
    Deadline,
    /// Its deadline had passed when it was admitted.
    Expired,
}

impl Shed {
    pub fn name(self) -> &'static str {
        match self {
            Shed::MaxInflight => "max_inflight",
            Shed::ModelMaxInflight => "model_max_inflight",
            Shed::MaxInflightBytes => "max_inflight_bytes",
            Shed::LevelShare => "level_share",
            Shed::Deadline => "deadline",
            Shed::Expired => "expired",
        }
    }
}

/// Requests in flight per entry and level (index: the level).
type LevelCounts = Vec<[AtomicU32; 256]>;

/// Per entry: requests shed, by level and reason.
type ShedCounts = Vec<Mutex<BTreeMap<(u8, Shed), u64>>>;

pub struct Admission {
    requests: Arc<Semaphore>,
    max_requests: usize,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    /// Per entry, its config's `max_inflight` (0: none) and that many
    /// permits; both change only when an entry is given to another version
    /// (nothing of it in flight then), so admission reads them lock-free.
    per_model: Vec<(Arc<Semaphore>, AtomicU32)>,
    shares: Shares,
    inflight: Arc<LevelCounts>,
    /// Per entry. A lock per answer and per admission, never contended for
    /// long: both only read or update four numbers.
    forecasts: Vec<Mutex<Forecast>>,
    shed: ShedCounts,
}

/// Held for a request's life; dropping it readmits.
pub struct Permit {
    _request: OwnedSemaphorePermit,
    _model: Option<OwnedSemaphorePermit>,
    bytes: Option<OwnedSemaphorePermit>,
    model: u16,
    /// The level it was admitted at, as far as known: refusals are counted
    /// at it. [`Admission::enter`] sets the request's own.
    level: u8,
    entered: Option<Arc<LevelCounts>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(counts) = &self.entered {
            counts[self.model as usize][self.level as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn units(len: usize) -> usize {
    len.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS)
}

impl Admission {
    /// `headroom`: `server.priority_headroom` (see [`shares`]); `capacity`:
    /// how many entries a model table may have (what is counted per entry
    /// is sized by it).
    pub fn new(max_requests: usize, max_bytes: usize, headroom: f64, capacity: usize, repo: &Repository) -> Admission {
        let n = capacity.max(repo.models.len());
        let admission = Admission {
            requests: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            bytes: Arc::new(Semaphore::new(units(max_bytes))),
            max_bytes,
            per_model: (0..n).map(|_| (Arc::new(Semaphore::new(0)), AtomicU32::new(0))).collect(),
            shares: Shares::new(repo, headroom),
            inflight: Arc::new((0..n).map(|_| std::array::from_fn(|_| AtomicU32::new(0))).collect()),
            forecasts: (0..n).map(|_| Mutex::default()).collect(),
            shed: (0..n).map(|_| Mutex::default()).collect(),
        };
        for (i, m) in repo.models.iter().enumerate() {
            admission.reset(i as u16, m);
        }
        admission
    }

    /// Entry `index` now holds `model` (another version than before, with
    /// nothing of the old one in flight): its limit is the new config's,
    /// and what was learned and counted for the old one is forgotten.
    pub fn reset(&self, index: u16, model: &Model) {
        let (sem, limit) = &self.per_model[index as usize];
        let new = model.config.max_inflight.unwrap_or(0);
        let old = limit.swap(new, Ordering::Relaxed);
        sem.forget_permits(old as usize);
        sem.add_permits(new as usize);
        *self.forecasts[index as usize].lock().unwrap_or_else(|e| e.into_inner()) = Forecast::default();
        self.shed[index as usize].lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The levels the models of `repo` declare (see [`shares`]).
    pub fn set_levels(&self, repo: &Repository) {
        self.shares.set(repo);
    }

    fn refuse(&self, model: u16, level: u8, why: Shed, e: ApiError) -> ApiError {
        let mut shed = self.shed[model as usize].lock().unwrap_or_else(|e| e.into_inner());
        *shed.entry((level, why)).or_default() += 1;
        e
    }

    /// Admits one request for model `index`, whose level is `level` as far
    /// as known yet, or says which limit is full.
    pub fn admit(&self, index: u16, name: &str, level: u8) -> Result<Permit, ApiError> {
        let request = self.requests.clone().try_acquire_owned().map_err(|_| {
            self.refuse(
                index,
                level,
                Shed::MaxInflight,
                ApiError::TooManyRequests(format!(
                    "{} requests are in flight, the limit (server.max_inflight); retry later",
                    self.max_requests
                )),
            )
        })?;
        let (sem, limit) = &self.per_model[index as usize];
        let model = match limit.load(Ordering::Relaxed) {
            0 => None,
            n => Some(sem.clone().try_acquire_owned().map_err(|_| {
                self.refuse(
                    index,
                    level,
                    Shed::ModelMaxInflight,
                    ApiError::TooManyRequests(format!(
                        "{n} requests for model `{name}` are in flight, its limit (max_inflight in its config); \
                         retry later"
                    )),
                )
            })?),
        };
        Ok(Permit { _request: request, _model: model, bytes: None, model: index, level, entered: None })
    }

    /// Request body bytes in flight (to the KiB).
    pub fn inflight_bytes(&self) -> u64 {
        (units(self.max_bytes).saturating_sub(self.bytes.available_permits()) * UNIT) as u64
    }

    /// Reserves `len` bytes of request data for `permit`'s request.
    pub fn reserve(&self, permit: &mut Permit, len: usize) -> Result<(), ApiError> {
        let reserved = self.bytes.clone().try_acquire_many_owned(units(len) as u32).map_err(|_| {
            self.refuse(
                permit.model,
                permit.level,
                Shed::MaxInflightBytes,
                ApiError::TooManyRequests(format!(
                    "requests in flight hold {} bytes, the limit (server.max_inflight_bytes); retry later",
                    self.max_bytes
                )),
            )
        })?;
        permit.bytes = Some(reserved);
        Ok(())
    }

    /// The request of `permit` has its level and deadline (`timeout` from
    /// now): it fits its level's share of the limits and its deadline can
    /// be met, or it is refused. Returns how many requests of its model at
    /// its level or above were in flight before it, for [`Admission::learn`].
    pub fn enter(&self, permit: &mut Permit, level: u8, timeout: Duration) -> Result<u32, ApiError> {
        debug_assert!(permit.entered.is_none(), "a request enters once; this is a bug");
        permit.level = level;
        let model = permit.model;
        let used = self.max_requests - self.requests.available_permits();
        let cap = self.shares.cap(self.max_requests, level);
        if used > cap {
            return Err(self.refuse(
                model,
                level,
                Shed::LevelShare,
                ApiError::TooManyRequests(format!(
                    "{used} requests are in flight; level {level} may fill {cap} of the {} (server.max_inflight; \
                     server.priority_headroom keeps the rest for higher levels); retry later",
                    self.max_requests
                )),
            ));
        }
        let used_bytes = self.inflight_bytes() as usize;
        let cap_bytes = self.shares.cap(units(self.max_bytes), level) * UNIT;
        if permit.bytes.is_some() && used_bytes > cap_bytes {
            return Err(self.refuse(
                model,
                level,
                Shed::LevelShare,
                ApiError::TooManyRequests(format!(
                    "requests in flight hold {used_bytes} bytes; level {level} may fill {cap_bytes} of the {} \
                     (server.max_inflight_bytes; server.priority_headroom keeps the rest for higher levels); retry \
                     later",
                    self.max_bytes
                )),
            ));
        }
        if timeout.is_zero() {
            return Err(self.refuse(
                model,
                level,
                Shed::Expired,
                ApiError::Timeout("the request's deadline (parameter `timeout`) had passed when it arrived".into()),
            ));
        }
        let counts = &self.inflight[model as usize];
        let ahead: u32 = counts[..=level as usize].iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let forecast = self.forecasts[model as usize].lock().unwrap_or_else(|e| e.into_inner()).predict(ahead);
        if let Some(ns) = forecast.filter(|&ns| ns > timeout.as_nanos() as f64) {
            let expected = Duration::from_nanos(ns as u64);
            return Err(self.refuse(
                model,
                level,
                Shed::Deadline,
                ApiError::WouldMissDeadline {
                    message: format!(
                        "the request would take about {expected:.0?} with {ahead} ahead of it at its level or \
                         above, past its deadline of {timeout:?} (parameter `timeout` in microseconds, the \
                         model's default_timeout_microseconds or server.request_timeout_ms); retry later or \
                         allow more time"
                    ),
                    retry_after_s: (expected - timeout).as_secs().max(1),
                },
            ));
        }
        counts[level as usize].fetch_add(1, Ordering::Relaxed);
        permit.entered = Some(self.inflight.clone());
        Ok(ahead)
    }

    /// A request of `model` admitted with `ahead` before it was answered
    /// `took` after admission.
    pub fn learn(&self, model: u16, ahead: u32, took: Duration) {
        self.forecasts[model as usize].lock().unwrap_or_else(|e| e.into_inner()).learn(ahead, took.as_nanos() as f64);
    }

    /// Requests of `model` in flight, by level, for the levels that have any.
    pub fn inflight_by_level(&self, model: u16) -> Vec<(u8, u32)> {
        let counts = &self.inflight[model as usize];
        (0..=255u8)
            .filter_map(|l| Some((l, counts[l as usize].load(Ordering::Relaxed))).filter(|(_, n)| *n > 0))
            .collect()
    }

    /// Requests of `model` shed so far, by level and reason.
    pub fn shed(&self, model: u16) -> Vec<((u8, Shed), u64)> {
        self.shed[model as usize].lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, n)| (*k, *n)).collect()
    }
}
