//! The model table as this frontend holds it while the supervisor changes
//! it: the current table ([`Live`]), which entry a request goes to, which
//! entries have requests in flight here, and the reports the supervisor
//! waits for (`Applied` when a table is in use, `Drained` when an entry it
//! unloads has nothing left in flight here).
//!
//! A request takes the table once and routes, reads the config and renders
//! by that snapshot; an inference request is counted on its entry
//! ([`Serving`]) for its whole life, from routing to its response, so an
//! entry is reported drained only when no request here can still send it
//! anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use model_repo::control::{Live, Notify, Report, Upstream};
use model_repo::{Model, ModelState, Repository};

use crate::error::ApiError;

/// How often a request routes again when tables change under it before it
/// gives up: each try is a table applied during the few instructions
/// between its reading the table and counting itself in flight.
const ROUTE_TRIES: usize = 8;

/// Per entry: its requests in flight here, and whether its drain is awaited.
#[derive(Default)]
struct Entry {
    inflight: AtomicU32,
    /// The last table applied marks it UNLOADING and its `Drained` report
    /// is not sent yet.
    draining: AtomicBool,
}

pub struct Tables {
    live: Live,
    /// Tables applied so far: a request that saw it change while it routed
    /// routes again (see [`Tables::serve`]).
    applied: AtomicU64,
    /// Sized by the capacity of the shared-memory statistics, indexed by
    /// entry.
    entries: Vec<Entry>,
    notify: Notify,
}

/// The entry that serves one inference request, from one table; counted in
/// flight until dropped.
pub struct Serving<'s> {
    tables: &'s Tables,
    table: Arc<Repository>,
    index: u16,
}

impl Serving<'_> {
    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn model(&self) -> &Model {
        &self.table.models[self.index as usize]
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.tables.leave(self.index);
    }
}

impl Tables {
    /// `capacity`: how many entries a table may have.
    pub fn new(repository: Arc<Repository>, capacity: usize, notify: Notify) -> Tables {
        Tables {
            live: Live::new(repository),
            applied: AtomicU64::new(0),
            entries: (0..capacity).map(|_| Entry::default()).collect(),
            notify,
        }
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The table now.
    pub fn get(&self) -> Arc<Repository> {
        self.live.get()
    }

    /// Routes by `table` from now on, reports it applied, and reports each
    /// entry it marks UNLOADING drained once no request of it is in flight
    /// here (now, or when the last one ends).
    pub fn apply(&self, table: Arc<Repository>) {
        let generation = table.generation;
        self.live.set(table.clone());
        // SeqCst, with the loads and increments of `serve` and `leave`: a
        // request that counted itself after this sees the change and routes
        // again; one that counted itself before is seen in flight below.
        self.applied.fetch_add(1, Ordering::SeqCst);
        (self.notify)(Upstream::Report(Report::Applied { generation }));
        for (i, m) in table.models.iter().enumerate() {
            if m.state != ModelState::Unloading {
                self.entries[i].draining.store(false, Ordering::SeqCst);
                continue;
            }
            let e = &self.entries[i];
            e.draining.store(true, Ordering::SeqCst);
            if e.inflight.load(Ordering::SeqCst) == 0 {
                self.drained(i as u16);
            }
        }
    }

    /// Reports entry `i` drained, once for the table that armed it: here
    /// and in `leave` alike, whoever takes the flag reports.
    fn drained(&self, i: u16) {
        if self.entries[i as usize].draining.swap(false, Ordering::SeqCst) {
            (self.notify)(Upstream::Report(Report::Drained { slot: i }));
        }
    }

    fn leave(&self, i: u16) {
        if self.entries[i as usize].inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained(i);
        }
    }

    /// The entry that serves an inference request for `name` (its latest
    /// ready version, or `version`), counted in flight.
    pub fn serve(&self, name: &str, version: Option<&str>) -> Result<Serving<'_>, ApiError> {
        for _ in 0..ROUTE_TRIES {
            let seen = self.applied.load(Ordering::SeqCst);
            let table = self.get();
            let (index, _) = find(&table, name, version)?;
            self.entries[index as usize].inflight.fetch_add(1, Ordering::SeqCst);
            let serving = Serving { tables: self, table, index };
            if self.applied.load(Ordering::SeqCst) == seen {
                return Ok(serving);
            }
            // A table came meanwhile, which may unload the entry and have
            // found it idle: route by the new one (dropping counts out).
        }
        Err(ApiError::Unavailable(format!(
            "the model table changed {ROUTE_TRIES} times while this request was routed; retry"
        )))
    }
}

/// The entry serving `name` in `table`: its latest ready version, or
/// `version`, which must be ready.
pub fn find<'t>(table: &'t Repository, name: &str, version: Option<&str>) -> Result<(u16, &'t Model), ApiError> {
    let latest = table.get(name).ok_or_else(|| {
        ApiError::NotFound(format!("unknown model `{name}`; available models: {}", table.names().join(", ")))
    })?;
    let Some(v) = version else { return Ok(latest) };
    v.parse::<u64>().ok().and_then(|v| table.get_version(name, v)).ok_or_else(|| {
        let ready: Vec<String> = table.versions_of(name).iter().map(u64::to_string).collect();
        ApiError::NotFound(format!(
            "model `{name}` has no ready version `{v}`; ready: {} (the latest loaded version is {}, which requests \
             without a version go to)",
            ready.join(", "),
            latest.1.latest()
        ))
    })
}

/// Whether entry `new` is another model or version than `old` held at the
/// same index (the index was given again): what is counted per entry starts
/// again from zero.
pub fn reused(old: Option<&Model>, new: &Model) -> bool {
    new.state != ModelState::Unloaded
        && old.is_none_or(|o| {
            o.state == ModelState::Unloaded
                || o.name != new.name
                || o.versions != new.versions
                || o.config != new.config
        })
}

/// The entries a table still has (all but UNLOADED), with their indices.
pub fn present(table: &Repository) -> impl Iterator<Item = (u16, &Model)> {
    table.models.iter().enumerate().filter(|(_, m)| m.state != ModelState::Unloaded).map(|(i, m)| (i as u16, m))
}

/// The entries a statistics request covers: every entry still present
/// (`name` None), every version of `name` still present, or the one
/// `version` names.
pub fn stats_entries(table: &Repository, name: Option<&str>, version: Option<&str>) -> Result<Vec<u16>, ApiError> {
    let Some(name) = name else { return Ok(present(table).map(|(i, _)| i).collect()) };
    let (index, _) = find(table, name, version)?;
    Ok(match version {
        Some(_) => vec![index],
        None => present(table).filter(|(_, m)| m.name == name).map(|(i, _)| i).collect(),
    })
}
