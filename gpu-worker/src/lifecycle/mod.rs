//! Models loaded, swapped and unloaded while the worker serves. The
//! supervisor hands over each new table whole; this keeps what the worker
//! has of each entry (its index in the table), applies the [`rules`] to
//! every table in order, and does what they say: a load runs on a thread of
//! its own (the scheduler never waits for it) and its instances are
//! installed in the scheduler when it completes; a retiring entry's
//! instances are removed from the scheduler and stopped (their threads
//! joined off the scheduler thread, so their memory is freed) once it is
//! drained. It reports to the supervisor each table applied and each load
//! done, or why it failed.

mod rules;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use model_repo::control::{Notify, Report, Upstream};
use model_repo::{Model, ModelState, Repository};

use self::rules::{Change, Phase};
use crate::error::WorkerError;
use crate::load::{LoadDone, Loaded, Loader};
use crate::scheduler::Scheduler;

/// An entry this worker has.
struct Resident {
    model: Model,
    phase: Phase,
    /// Its instances' threads, once loaded.
    threads: Vec<JoinHandle<()>>,
}

/// What the worker has of each entry, and the loads under way.
pub struct Lifecycle {
    loader: Loader,
    notify: Notify,
    table: Arc<Repository>,
    /// By entry index.
    here: Vec<Option<Resident>>,
    done_tx: mpsc::Sender<LoadDone>,
    done: mpsc::Receiver<LoadDone>,
}

impl Lifecycle {
    /// Nothing loaded yet, by `table`, with room for `capacity` entries
    /// (more are added as needed).
    pub fn new(loader: Loader, notify: Notify, table: Arc<Repository>, capacity: usize) -> Lifecycle {
        let (done_tx, done) = mpsc::channel();
        let here = std::iter::repeat_with(|| None).take(capacity).collect();
        Lifecycle { loader, notify, table, here, done_tx, done }
    }

    /// At start-up: loads the READY entries on this thread, one after the
    /// other (a failure stops the worker), and starts loading the LOADING
    /// ones in the background (a worker restarted during a load). Returns
    /// how many were loaded.
    pub fn start(&mut self, sched: &mut Scheduler) -> Result<usize, WorkerError> {
        let table = self.table.clone();
        let mut loaded = 0;
        for (slot, m) in table.models.iter().enumerate() {
            // An UNLOADING entry still serves what is in flight for it
            // (and what the frontend sends again after a crash): a worker
            // that starts while it drains loads it too.
            if matches!(m.state, ModelState::Ready | ModelState::Unloading) && !m.is_pipeline() {
                let l = self.loader.load(slot, m)?;
                self.install(slot, m.clone(), l, sched);
                loaded += 1;
            }
        }
        self.settle(sched);
        Ok(loaded)
    }

    /// Works by `table` from now on, and says so to the supervisor.
    pub fn apply(&mut self, table: Arc<Repository>, sched: &mut Scheduler) {
        let generation = table.generation;
        sched.set_table(table.clone());
        self.table = table;
        self.settle(sched);
        (self.notify)(Upstream::Report(Report::Applied { generation }));
    }

    /// Whether an entry waits for the inbox to be drained before it can go.
    pub fn needs_drain(&self) -> bool {
        self.here.iter().flatten().any(|r| r.phase == Phase::Retiring { drained: false })
    }

    /// The inbox was just drained: whatever was sent for the retiring
    /// entries before their table came has arrived.
    pub fn drained(&mut self) {
        for r in self.here.iter_mut().flatten() {
            if r.phase == (Phase::Retiring { drained: false }) {
                r.phase = Phase::Retiring { drained: true };
            }
        }
    }

    /// Takes in the loads done, and unloads the retiring entries that may
    /// go; their indices then load what the table holds there.
    pub fn poll(&mut self, sched: &mut Scheduler) {
        let mut changed = false;
        while let Ok(done) = self.done.try_recv() {
            self.on_load_done(done, sched);
            changed = true;
        }
        for slot in 0..self.here.len() {
            let Some(r) = &self.here[slot] else { continue };
            let (queued, busy) = sched.backlog(slot);
            if rules::may_unload(r.phase, queued, busy) {
                self.unload(slot, sched);
                changed = true;
            }
        }
        if changed {
            self.settle(sched);
        }
    }

    /// Applies the rules' changes until there are none.
    fn settle(&mut self, sched: &mut Scheduler) {
        loop {
            let here: Vec<Option<(&Model, Phase)>> =
                self.here.iter().map(|r| r.as_ref().map(|r| (&r.model, r.phase))).collect();
            let changes = rules::plan(&here, &self.table);
            if changes.is_empty() {
                return;
            }
            for (slot, change) in changes {
                match change {
                    Change::Load => {
                        let model = self.table.models[slot].clone();
                        tracing::info!("loading {} version {} (entry {slot})", model.name, model.latest());
                        self.set(slot, Resident { model: model.clone(), phase: Phase::Loading, threads: Vec::new() });
                        self.loader.clone().spawn(slot, model, self.done_tx.clone());
                    }
                    Change::Retire => {
                        let r = self.here[slot].as_mut().expect("the rules retire what is here; this is a bug");
                        tracing::info!(
                            "{} version {} (entry {slot}) is no longer in the table: it finishes what it has, then \
                             unloads",
                            r.model.name,
                            r.model.latest()
                        );
                        r.phase = Phase::Retiring { drained: false };
                        sched.retire(slot);
                    }
                    Change::Forget => self.here[slot] = None,
                }
            }
        }
    }

    fn set(&mut self, slot: usize, r: Resident) {
        if slot >= self.here.len() {
            self.here.resize_with(slot + 1, || None);
        }
        self.here[slot] = Some(r);
    }

    fn install(&mut self, slot: usize, model: Model, loaded: Loaded, sched: &mut Scheduler) {
        sched.install(slot, model.clone(), loaded.instances, loaded.gpu_decode);
        self.set(slot, Resident { model, phase: Phase::Serving, threads: loaded.threads });
    }

    /// A background load is done: installed if the table still holds its
    /// entry, else thrown away; reported while the table holds it.
    fn on_load_done(&mut self, done: LoadDone, sched: &mut Scheduler) {
        let LoadDone { slot, model, result } = done;
        let held = rules::holds(&self.table, slot, &model);
        let report = |error| (self.notify)(Upstream::Report(Report::Loaded { slot: slot as u16, error }));
        match result {
            Ok(loaded) if held => {
                report(None);
                self.install(slot, model, loaded, sched);
            }
            Ok(loaded) => {
                tracing::info!(
                    "{} version {} (entry {slot}) loaded after the table dropped it; unloading it",
                    model.name,
                    model.latest()
                );
                self.here[slot] = None;
                reap(slot, model, loaded);
            }
            Err(reason) => {
                tracing::error!("cannot load entry {slot}: {reason}");
                if held {
                    report(Some(reason));
                    self.set(slot, Resident { model, phase: Phase::Failed, threads: Vec::new() });
                } else {
                    self.here[slot] = None;
                }
            }
        }
    }

    /// Takes a drained entry out of the scheduler and stops its instances.
    fn unload(&mut self, slot: usize, sched: &mut Scheduler) {
        let Some(r) = self.here[slot].take() else { return };
        let instances = sched.remove(slot);
        reap(slot, r.model, Loaded { instances, threads: r.threads, gpu_decode: false });
    }
}

/// Stops an entry's instances and waits for their threads (a backend frees
/// its memory as it drops, which can take a while on a GPU) on a thread of
/// its own, so the scheduler goes on serving; then logs it.
fn reap(slot: usize, model: Model, loaded: Loaded) {
    let what = format!("{} version {} (entry {slot})", model.name, model.latest());
    let spawned = std::thread::Builder::new().name("unload".into()).spawn(move || {
        loaded.stop();
        tracing::info!("unloaded {what}");
    });
    if let Err(e) = spawned {
        // The closure went with its instances' command lines: they stop on
        // their own, unwaited.
        tracing::warn!("cannot start a thread to unload entry {slot} ({e}); its instances stop unwaited");
    }
}
