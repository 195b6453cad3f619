//! What every connection shares, whatever protocol it speaks: the dispatch to
//! the workers, the model table as it changes, the operators' orders,
//! admission, the live counters and the limits from the config. Built once by
//! `run` (and by the tests).

use std::sync::Arc;
use std::time::Duration;

use model_repo::Repository;
use model_repo::control::{Notify, Secret};

use crate::admission::Admission;
use crate::client_shm::Regions;
use crate::control::Orders;
use crate::dispatch::Dispatch;
use crate::metrics::{Metrics, Scrape};
use crate::table::Tables;

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

/// What the operator allows clients to change: models, shared memory.
pub struct Control {
    /// Reports and operators' orders to the supervisor.
    pub notify: Notify,
    /// When set, load and unload need `Authorization: Bearer <token>`.
    pub admin_token: Option<Secret>,
    /// `server.allow_client_shm`.
    pub allow_client_shm: bool,
}

/// Shared by every connection.
pub struct State {
    pub dispatch: Arc<Dispatch>,
    /// The model table, as it changes.
    pub tables: Tables,
    pub orders: Orders,
    pub admission: Admission,
    pub metrics: Metrics,
    pub limits: Limits,
    /// Clients' registered shared-memory regions.
    pub client_shm: Regions,
}

impl State {
    /// Everything counted per model is sized by the entries the
    /// shared-memory statistics have room for (`models.max_models`), which
    /// later tables may fill.
    pub fn new(dispatch: Arc<Dispatch>, repository: Arc<Repository>, limits: Limits, control: Control) -> State {
        let capacity = (dispatch.region().layout().params.models as usize).max(repository.models.len());
        State {
            admission: Admission::new(
                limits.max_inflight,
                limits.max_inflight_bytes,
                limits.priority_headroom,
                capacity,
                &repository,
            ),
            metrics: Metrics::new(capacity),
            tables: Tables::new(repository, capacity, control.notify.clone()),
            orders: Orders::new(control.notify, control.admin_token),
            client_shm: Regions::new(control.allow_client_shm),
            dispatch,
            limits,
        }
    }

    /// The table now: a request takes it once and goes by it throughout.
    pub fn table(&self) -> Arc<Repository> {
        self.tables.get()
    }

    /// The supervisor's new table: entries given to another version start
    /// their counts again, then requests route by it.
    pub fn apply(&self, table: Arc<Repository>) {
        if table.models.len() > self.tables.capacity() {
            tracing::error!(
                "a model table of {} entries does not fit the {} the statistics have room for (models.max_models); \
                 ignored; this is a bug",
                table.models.len(),
                self.tables.capacity()
            );
            return;
        }
        let old = self.tables.get();
        for (i, m) in table.models.iter().enumerate() {
            if crate::table::reused(old.models.get(i), m) {
                self.admission.reset(i as u16, m);
                self.metrics.reset(i as u16);
            }
        }
        self.admission.set_levels(&table);
        tracing::info!("model table {}: {} entries", table.generation, table.models.len());
        self.tables.apply(table);
    }

    /// What a `/metrics` scrape reads.
    pub fn scrape(&self) -> Scrape<'_> {
        Scrape {
            repository: self.table(),
            counters: &self.metrics,
            region: self.dispatch.region(),
            admission: &self.admission,
            ready: self.dispatch.all_ready(),
        }
    }
}
