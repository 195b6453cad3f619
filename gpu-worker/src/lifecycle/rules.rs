//! The rules of entries coming and going here, as pure functions of what
//! this worker has of each entry and the table it works by (no I/O, no
//! clock), unit-tested in `tests.rs`:
//! - an entry the table makes READY or LOADING, and that has nothing here,
//!   loads (in the background);
//! - an entry loaded here that the table no longer holds (UNLOADED, another
//!   version at its index, or beyond the table) retires: it takes what
//!   still comes for it, and is unloaded once the inbox was drained after
//!   the change (what was sent before it has arrived), nothing of it is
//!   queued and no batch of it computes. Its index loads its new entry
//!   only then;
//! - an UNLOADING entry loaded here stays (requests in flight finish on
//!   it), but one not loaded here is not loaded for that;
//! - a load whose entry the table dropped meanwhile is thrown away when it
//!   completes; a failed load is not retried while the table holds its
//!   entry.

use model_repo::{Model, ModelState, Repository};

/// Where an entry this worker has stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its instances load and warm up, in the background.
    Loading,
    /// Its instances run its batches.
    Serving,
    /// The table no longer holds it; `drained`: the inbox was emptied since,
    /// so nothing sent for it before the change can still arrive.
    Retiring { drained: bool },
    /// Its load failed.
    Failed,
}

/// What to do at an index, for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Start loading the table's entry.
    Load,
    /// The entry here retires (see the module's rules).
    Retire,
    /// Forget a failed load: the table moved on.
    Forget,
}

/// Whether two entries are the same loaded version (as the supervisor
/// compares them): name, version and config.
pub fn same(a: &Model, b: &Model) -> bool {
    a.name == b.name && a.versions == b.versions && a.config == b.config
}

/// Whether the table still holds `model` at `slot` (READY, LOADING or
/// UNLOADING): what is here of it stays.
pub fn holds(table: &Repository, slot: usize, model: &Model) -> bool {
    table.models.get(slot).is_some_and(|e| {
        matches!(e.state, ModelState::Ready | ModelState::Loading | ModelState::Unloading) && same(e, model)
    })
}

/// Whether the table wants `slot` loaded where nothing is here: a READY or
/// LOADING entry with a model file (a pipeline runs in the preproc pool).
fn wants(table: &Repository, slot: usize) -> bool {
    table
        .models
        .get(slot)
        .is_some_and(|e| matches!(e.state, ModelState::Ready | ModelState::Loading) && !e.is_pipeline())
}

/// The changes that bring what is here (`here[i]`: the entry at index `i`
/// and its phase) towards `table`, by index. Applying them and asking
/// again gives the next ones (a freed index loads), until none.
pub fn plan(here: &[Option<(&Model, Phase)>], table: &Repository) -> Vec<(usize, Change)> {
    let mut out = Vec::new();
    for slot in 0..here.len().max(table.models.len()) {
        let change = match here.get(slot).copied().flatten() {
            None if wants(table, slot) => Some(Change::Load),
            None => None,
            Some((m, Phase::Serving)) if !holds(table, slot, m) => Some(Change::Retire),
            Some((m, Phase::Failed)) if !holds(table, slot, m) => Some(Change::Forget),
            // A load completes before it is judged (`holds`); a retiring
            // entry goes once drained and idle (`may_unload`).
            Some(_) => None,
        };
        out.extend(change.map(|c| (slot, c)));
    }
    out
}

/// Whether a retiring entry may be unloaded now: the inbox was drained
/// since the table changed, nothing of it is queued (`queued`) and no batch
/// of it computes (`busy`).
pub fn may_unload(phase: Phase, queued: usize, busy: usize) -> bool {
    phase == Phase::Retiring { drained: true } && queued == 0 && busy == 0
}
