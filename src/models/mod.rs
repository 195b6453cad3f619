//! Model control: the supervisor's copy of the loaded table, the one every
//! change to it goes through (Triton's model control modes and repository
//! extension). A pure state machine like the restart policy: it takes
//! operators' orders, the children's reports, restarts and poll ticks
//! ([`Input`]) and answers with what the supervisor must do ([`Action`]):
//! send the table to some processes, answer an order, zero an entry's
//! statistics. Reading configs is the [`Catalog`]'s.
//!
//! A load runs in three stages, so nothing in flight fails:
//! 1. **Loading**: the new versions get entries (LOADING) and the inference
//!    workers load and warm them up alongside what serves; a failure ends
//!    here, the serving version untouched and the reason kept for the index.
//! 2. **Switching**: the new entries become READY and the versions they
//!    replace UNLOADING, first in the workers' tables (they accept both),
//!    then, once every worker has applied it, in the frontend's: new
//!    requests go to the new version from then on, atomically. The order is
//!    answered here.
//! 3. **Draining**: once the frontend has nothing in flight on a replaced
//!    entry, it becomes UNLOADED and the workers free it.
//!
//! An unload makes the entries UNLOADING everywhere at once (workers still
//! accept them, the frontend routes no more to them), then drains them.
//! Orders run one at a time, in the order they came.

mod catalog;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};

use model_repo::control::{ControlError, ControlOp, Report};
use model_repo::{ModelState, Repository};
use shm::ProcId;

pub use self::catalog::{Catalog, Disk};
use self::plan::Plan;

/// How models come and go (`--model-control-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The models loaded at start-up stay; the repository API only lists.
    None,
    /// `--load-model` at start-up, then the repository API's load and unload.
    Explicit,
    /// The repository directory is scanned every `--repository-poll-secs`:
    /// new models and versions and changed configs load, removed ones unload.
    Poll,
}

/// Who gets the table.
#[derive(Clone, Debug)]
pub struct Procs {
    pub frontend: ProcId,
    pub gpus: Vec<ProcId>,
    pub preprocs: Vec<ProcId>,
}

impl Procs {
    fn workers(&self) -> Vec<ProcId> {
        self.gpus.iter().chain(&self.preprocs).copied().collect()
    }

    fn all(&self) -> Vec<ProcId> {
        let mut all = self.workers();
        all.push(self.frontend);
        all
    }
}

#[derive(Debug, PartialEq)]
pub enum Input {
    /// An operator's order (`id`: the frontend's, to answer), or the model
    /// control's own (`None`: at a poll).
    Order {
        id: Option<u64>,
        op: ControlOp,
    },
    Report {
        from: ProcId,
        report: Report,
    },
    /// A child started again; it has the current table (its spec).
    Restarted {
        proc: ProcId,
    },
    /// Time to scan the repository (poll mode).
    Poll,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send the current table to these processes.
    Table {
        to: Vec<ProcId>,
    },
    Reply {
        id: u64,
        result: Result<(), ControlError>,
    },
    /// Zero the statistics of entry `slot` before it is used again.
    ResetStats {
        slot: u16,
    },
}

#[derive(Debug)]
enum Stage {
    Idle,
    Loading { plan: Plan, waiting: BTreeSet<(ProcId, u16)> },
    Switching { plan: Plan, generation: u64, waiting: BTreeSet<ProcId>, frontend_next: bool },
    Draining { id: Option<u64>, waiting: BTreeSet<u16> },
}

pub struct Manager<C> {
    catalog: C,
    mode: Mode,
    table: Repository,
    capacity: usize,
    /// The largest shared-memory slot: every model's tensors must fit it.
    largest_slot: usize,
    procs: Procs,
    queue: VecDeque<(Option<u64>, ControlOp)>,
    stage: Stage,
    /// Poll mode: what a failed load was read from, not to retry it until
    /// the repository changes.
    failed: std::collections::HashMap<String, model_repo::Model>,
}

impl<C: Catalog> Manager<C> {
    pub fn new(catalog: C, mode: Mode, table: Repository, capacity: usize, largest_slot: usize, procs: Procs) -> Self {
        Manager {
            catalog,
            mode,
            table,
            capacity,
            largest_slot,
            procs,
            queue: VecDeque::new(),
            stage: Stage::Idle,
            failed: Default::default(),
        }
    }

    pub fn table(&self) -> &Repository {
        &self.table
    }

    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Order { id, op } => match (id, self.mode) {
                (Some(id), Mode::None | Mode::Poll) => out.push(Action::Reply {
                    id,
                    result: Err(ControlError::Invalid(format!(
                        "models are not loaded or unloaded on request: --model-control-mode is {}; start the \
                         daemon with --model-control-mode explicit",
                        if self.mode == Mode::None { "none" } else { "poll (the repository decides)" }
                    ))),
                }),
                _ => self.queue.push_back((id, op)),
            },
            Input::Report { from, report } => self.on_report(from, report, &mut out),
            Input::Restarted { proc } => {
                let generation = self.table.generation;
                self.on_report(proc, Report::Applied { generation }, &mut out);
            }
            Input::Poll if self.mode == Mode::Poll && self.queue.is_empty() => self.poll(),
            Input::Poll => {}
        }
        self.advance(&mut out);
        out
    }

    /// Starts the next order while nothing runs.
    fn advance(&mut self, out: &mut Vec<Action>) {
        while matches!(self.stage, Stage::Idle) {
            let Some((id, op)) = self.queue.pop_front() else { return };
            let planned = match &op {
                ControlOp::Load { name, config } => plan::load(self, name, config.as_deref()),
                ControlOp::Unload { name, dependents } => plan::unload(&self.table, name, *dependents),
            };
            match planned {
                Err(e) => {
                    tracing::warn!("model control: {e}");
                    if let ControlOp::Load { name, .. } = &op
                        && self.catalog.names().contains(name)
                    {
                        // The index shows why.
                        self.table.failures.insert(name.clone(), e.to_string());
                        self.bump(out, vec![self.procs.frontend]);
                    }
                    reply(out, id, Err(e));
                }
                Ok(plan) if plan.is_empty() => reply(out, id, Ok(())),
                Ok(plan) => self.start(id, plan, out),
            }
        }
    }

    fn start(&mut self, id: Option<u64>, mut plan: Plan, out: &mut Vec<Action>) {
        plan.id = id;
        if plan.unload {
            for &s in &plan.retire {
                self.table.models[s as usize].state = ModelState::Unloading;
            }
            self.bump(out, self.procs.all());
            self.stage = Stage::Draining { id, waiting: plan.retire.iter().copied().collect() };
            return;
        }
        for model in std::mem::take(&mut plan.adding) {
            let slot = match self.table.models.iter().position(|m| m.state == ModelState::Unloaded) {
                Some(free) => {
                    self.table.models[free] = model;
                    free as u16
                }
                None => {
                    self.table.models.push(model);
                    (self.table.models.len() - 1) as u16
                }
            };
            out.push(Action::ResetStats { slot });
            plan.new.push(slot);
        }
        // Only models with a file load on the inference workers (a pipeline
        // runs in the preproc pool).
        let waiting: BTreeSet<(ProcId, u16)> = plan
            .new
            .iter()
            .filter(|&&s| !self.table.models[s as usize].is_pipeline())
            .flat_map(|&s| self.procs.gpus.iter().map(move |&g| (g, s)))
            .collect();
        self.bump(out, self.procs.gpus.clone());
        tracing::info!("model control: loading {}", plan.describe(&self.table));
        self.stage = Stage::Loading { plan, waiting };
        self.after_loading(out);
    }

    fn on_report(&mut self, from: ProcId, report: Report, out: &mut Vec<Action>) {
        match (&mut self.stage, report) {
            (Stage::Loading { waiting, .. }, Report::Loaded { slot, error: None }) => {
                waiting.remove(&(from, slot));
                self.after_loading(out);
            }
            (Stage::Loading { plan, .. }, Report::Loaded { slot, error: Some(reason) }) if plan.new.contains(&slot) => {
                let Stage::Loading { plan, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
                self.fail_load(plan, &reason, out);
            }
            (Stage::Switching { generation, waiting, .. }, Report::Applied { generation: g }) if g >= *generation => {
                waiting.remove(&from);
                self.after_switching(out);
            }
            (Stage::Draining { waiting, .. }, Report::Drained { slot }) if from == self.procs.frontend => {
                waiting.remove(&slot);
                self.after_draining(out);
            }
            _ => {}
        }
    }

    /// Every inference worker has the new versions: switch to them.
    fn after_loading(&mut self, out: &mut Vec<Action>) {
        let Stage::Loading { waiting, .. } = &self.stage else { return };
        if !waiting.is_empty() {
            return;
        }
        let Stage::Loading { plan, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        for &s in &plan.new {
            self.table.models[s as usize].state = ModelState::Ready;
        }
        for &s in &plan.retire {
            self.table.models[s as usize].state = ModelState::Unloading;
        }
        for name in &plan.names {
            self.table.failures.remove(name);
            self.failed.remove(name);
        }
        self.bump(out, self.procs.workers());
        let generation = self.table.generation;
        let waiting = self.procs.workers().into_iter().collect();
        self.stage = Stage::Switching { plan, generation, waiting, frontend_next: true };
        self.after_switching(out);
    }

    fn after_switching(&mut self, out: &mut Vec<Action>) {
        let Stage::Switching { waiting, frontend_next, .. } = &mut self.stage else { return };
        if !waiting.is_empty() {
            return;
        }
        if *frontend_next {
            *frontend_next = false;
            waiting.insert(self.procs.frontend);
            out.push(Action::Table { to: vec![self.procs.frontend] });
            return;
        }
        let Stage::Switching { plan, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        tracing::info!("model control: serving {}", plan.describe(&self.table));
        reply(out, plan.id, Ok(()));
        if !plan.retire.is_empty() {
            self.stage = Stage::Draining { id: None, waiting: plan.retire.iter().copied().collect() };
        }
    }

    fn after_draining(&mut self, out: &mut Vec<Action>) {
        let Stage::Draining { waiting, .. } = &self.stage else { return };
        if !waiting.is_empty() {
            return;
        }
        let Stage::Draining { id, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        let mut gone = Vec::new();
        for m in self.table.models.iter_mut().filter(|m| m.state == ModelState::Unloading) {
            m.state = ModelState::Unloaded;
            gone.push(format!("{} version {}", m.name, m.latest()));
        }
        tracing::info!("model control: unloaded {}", gone.join(", "));
        self.bump(out, self.procs.all());
        reply(out, id, Ok(()));
    }

    /// The inference workers could not load a new version: it goes, the
    /// serving one stays, and the index says why.
    fn fail_load(&mut self, plan: Plan, reason: &str, out: &mut Vec<Action>) {
        for &s in &plan.new {
            self.table.models[s as usize].state = ModelState::Unloaded;
        }
        let message = format!("loading {} failed: {reason}", plan.names.join(", "));
        tracing::error!("model control: {message}; what served goes on serving");
        for name in &plan.names {
            self.table.failures.insert(name.clone(), message.clone());
            if let Ok(m) = self.catalog.read(name, None) {
                self.failed.insert(name.clone(), m);
            }
        }
        // The inference workers drop what they loaded; the index shows why.
        self.bump(out, self.procs.all());
        reply(out, plan.id, Err(ControlError::LoadFailed(message)));
    }

    /// A new generation of the table, sent to `to`.
    fn bump(&mut self, out: &mut Vec<Action>, to: Vec<ProcId>) {
        self.table.generation += 1;
        out.push(Action::Table { to });
    }

    /// Poll mode: what the repository now holds against what is loaded.
    fn poll(&mut self) {
        let names = self.catalog.names();
        for name in &names {
            let Ok(model) = self.catalog.read(name, None) else { continue };
            if self.failed.get(name) == Some(&model) {
                continue; // failed as it is; retried once it changes
            }
            if plan::differs(&self.table, &model) {
                self.queue.push_back((None, ControlOp::Load { name: name.clone(), config: None }));
            }
        }
        for name in self.table.names() {
            if !names.iter().any(|n| n == name) {
                self.queue.push_back((None, ControlOp::Unload { name: name.to_string(), dependents: true }));
            }
        }
    }
}

fn reply(out: &mut Vec<Action>, id: Option<u64>, result: Result<(), ControlError>) {
    if let Some(id) = id {
        out.push(Action::Reply { id, result });
    }
}
