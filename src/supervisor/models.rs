//! The supervisor's side of model control: the table it starts with, and
//! carrying out what the model control ([`crate::models`]) decides.

use anyhow::bail;
use model_repo::Repository;
use model_repo::control::Upstream;
use shm::ProcId;

use super::Supervisor;
use crate::config::Config;
use crate::control::ToChild;
use crate::models::{Action, Input, Mode};

/// The table the daemon starts with: the mode's models (none: those
/// `models.load` names, else all; explicit: those `--load-model` names, `*`
/// for all, none without it; poll: all).
pub(super) fn initial(cfg: &Config) -> anyhow::Result<Repository> {
    let root = &cfg.models.repository;
    let repository = match (cfg.models.control_mode, cfg.models.load_model.as_slice()) {
        (Mode::Explicit, []) => {
            Repository { root: root.clone(), models: Vec::new(), generation: 0, failures: Default::default() }
        }
        (Mode::Explicit, names) if names.iter().any(|n| n == "*") => Repository::load(root, None)?,
        (Mode::Explicit, names) => Repository::load(root, Some(names))?,
        (Mode::Poll, _) => Repository::load(root, None)?,
        (Mode::None, _) => {
            let load = cfg.models.load.as_slice();
            Repository::load(root, (!load.is_empty()).then_some(load))?
        }
    };
    if repository.models.len() > cfg.models.max_models as usize {
        bail!(
            "{} model versions load at start-up; the limit is {} (config: models.max_models)",
            repository.models.len(),
            cfg.models.max_models
        );
    }
    Ok(repository)
}

/// The repository's models that may be loaded later, besides `loaded`:
/// under model control, every other one whose config reads.
pub(super) fn later(cfg: &Config, loaded: &Repository) -> Vec<model_repo::Model> {
    use crate::models::Catalog;
    if cfg.models.control_mode == Mode::None {
        return Vec::new();
    }
    let disk = crate::models::Disk(cfg.models.repository.clone());
    let is_loaded = |n: &String| loaded.models.iter().any(|m| &m.name == n);
    disk.names().iter().filter(|n| !is_loaded(n)).filter_map(|n| disk.read(n, None).ok()).collect()
}

impl Supervisor {
    /// A message about the model table from child `proc`: a report, or (from
    /// the frontend) an operator's order.
    pub(super) async fn upstream(&mut self, proc: ProcId, message: Upstream) {
        let input = match message {
            Upstream::Report(report) => Input::Report { from: proc, report },
            Upstream::Control { id, op } if proc == ProcId::FRONTEND => Input::Order { id: Some(id), op },
            Upstream::Control { .. } => {
                tracing::warn!("an order about models from {proc:?}, which takes none; ignored");
                return;
            }
        };
        self.model_control(input).await;
    }

    /// Hands `input` to the model control and carries out what it decides.
    pub(super) async fn model_control(&mut self, input: Input) {
        for action in self.models.handle(input) {
            match action {
                Action::Table { to } => {
                    let msg = ToChild::Models { repository: Box::new(self.models.table().clone()) };
                    for proc in to {
                        self.tell(proc, &msg).await;
                    }
                }
                Action::Reply { id, result } => self.tell(ProcId::FRONTEND, &ToChild::ControlDone { id, result }).await,
                Action::ResetStats { slot } => shm::stats::reset_model(&self.region, slot),
            }
        }
    }
}
