//! The inference worker's scheduler: it receives requests, keeps one
//! `BatchState` per model, and hands a batch to a backend instance the
//! moment one is free (so batches are cut as late as possible and grow
//! while the model is busy). Which model's queue gets a free instance is
//! the pure [`turns`]'s decision; this module does the I/O around it:
//! accept a descriptor, cancel, hand batches over, answer what expired.
//! Its queues are indexed by the table's entries, up to the table's
//! capacity; an entry's queue exists while its instances are installed
//! (the worker's `lifecycle` installs and removes them).
//! Backends run on their own threads ([`crate::instance`]); this thread never
//! blocks on them or on I/O other than its inbox.

mod checks;
mod turns;

use std::sync::Arc;
use std::sync::mpsc;

use model_repo::{Model, Repository};
use shm::cancel::Recent;
use shm::tensor;
use shm::{Descriptor, Kind, Peers, ProcId, Status};

use self::checks::{Here, check_images, check_inputs, check_loaded};
use self::turns::{Head, Turns};
use crate::batcher::{BatchState, Limits, Next, Pending};
use crate::instance::{InstanceCommand, InstanceEvent};
use crate::request::Item;

/// How often the ids of cancelled requests are pruned.
const PRUNE_EVERY_NS: u64 = 10_000_000_000;

/// A loaded entry's queue and its instances. (A pipeline has none: it runs
/// in the preproc pool, and its model steps come here as requests for the
/// models they name.)
struct ModelQueue {
    /// The entry its instances run.
    model: Model,
    state: BatchState<Item>,
    /// Images of this model are decoded and preprocessed here, on the GPU.
    gpu_decode: bool,
    limits: Limits,
    instances: Vec<mpsc::Sender<InstanceCommand>>,
    /// The table no longer wants it: it takes whatever still comes for it,
    /// until it is removed.
    retiring: bool,
}

/// The scheduler thread's state: a queue per loaded entry, whose turn it
/// is, and what the clients cancelled.
pub struct Scheduler {
    repo: Arc<Repository>,
    peers: Arc<Peers>,
    /// This inference worker's index (its statistics' row).
    gpu: u16,
    models: Vec<Option<ModelQueue>>,
    turns: Turns,
    cancelled: Recent,
    next_prune: u64,
}

impl Scheduler {
    /// Queues for `capacity` entries (more are added as needed), none
    /// installed; at most `budget` batches compute at once.
    pub fn new(repo: Arc<Repository>, peers: Arc<Peers>, gpu: u16, capacity: usize, budget: usize) -> Scheduler {
        let turns = Turns::new(budget, std::iter::repeat_n(0, capacity), &[]);
        let mut s = Scheduler {
            repo: repo.clone(),
            peers,
            gpu,
            models: std::iter::repeat_with(|| None).take(capacity).collect(),
            turns,
            cancelled: Recent::default(),
            next_prune: 0,
        };
        s.set_table(repo);
        s
    }

    /// Works by `repo` from now on: what it makes ready is accepted where
    /// installed, and its models' weights apply.
    pub fn set_table(&mut self, repo: Arc<Repository>) {
        for (tenant, m) in repo.models.iter().enumerate() {
            self.turns.set_weight(tenant, m.config.weight);
        }
        self.repo = repo;
    }

    /// At most `budget` batches compute at once from now on.
    pub fn set_budget(&mut self, budget: usize) {
        self.turns.set_budget(budget);
    }

    /// The instances installed, over every entry.
    pub fn instances(&self) -> usize {
        self.models.iter().flatten().map(|m| m.instances.len()).sum()
    }

    /// Entry `slot` (`model`) is loaded: its `instances` take its batches
    /// from now on.
    pub fn install(
        &mut self,
        slot: usize,
        model: Model,
        instances: Vec<mpsc::Sender<InstanceCommand>>,
        gpu_decode: bool,
    ) {
        if slot >= self.models.len() {
            self.models.resize_with(slot + 1, || None);
        }
        self.turns.add(slot, instances.len());
        let limits = Limits::from_config(&model.config);
        self.models[slot] =
            Some(ModelQueue { model, state: BatchState::new(), gpu_decode, limits, instances, retiring: false });
    }

    /// Entry `slot` is going: it still takes what comes for it (sent before
    /// the table changed) until [`Scheduler::remove`].
    pub fn retire(&mut self, slot: usize) {
        if let Some(m) = self.models.get_mut(slot).and_then(Option::as_mut) {
            m.retiring = true;
        }
    }

    /// Entry `slot`'s requests queued and batches computing.
    pub fn backlog(&self, slot: usize) -> (usize, usize) {
        let queued = self.models.get(slot).and_then(Option::as_ref).map_or(0, |m| m.state.len());
        (queued, self.turns.busy(slot))
    }

    /// Takes entry `slot` out (nothing of it queued or computing); returns
    /// its instances' command lines, whose dropping stops them.
    pub fn remove(&mut self, slot: usize) -> Vec<mpsc::Sender<InstanceCommand>> {
        self.turns.remove(slot);
        self.models.get_mut(slot).and_then(Option::take).map(|m| m.instances).unwrap_or_default()
    }

    /// Validates an incoming descriptor and queues it for its model.
    pub fn accept(&mut self, from: ProcId, d: Descriptor) {
        let span = tracing::debug_span!("request", request_id = d.request_id);
        let _entered = span.enter();
        let peers = &self.peers;
        let queue = self.models.get(d.model as usize).and_then(Option::as_ref);
        let gpu_decode = queue.is_some_and(|m| m.gpu_decode);
        match d.kind() {
            Some(Kind::Tensors) => {}
            // Images for an entry not loaded here fail below, saying so.
            Some(Kind::Images) if gpu_decode || queue.is_none() => {}
            Some(Kind::Cancel) => return self.cancel(d.request_id),
            other => {
                tracing::warn!("unexpected {other:?} descriptor from {from:?}; dropped");
                if d.has_slot() {
                    drop(peers.pool().take(from, peers.me(), &d));
                }
                return;
            }
        }
        let slot = match peers.pool().take(from, peers.me(), &d) {
            Ok(s) => s,
            Err(e) => return peers.fail(&d, None, Status::Internal, &e.to_string()),
        };
        if self.cancelled.contains(d.request_id) {
            // Its client left while it was upstream: skip it (the slot is freed).
            self.count_cancel(d.model, 1);
            return;
        }
        let i = d.model as usize;
        let here = match self.models.get(i).and_then(Option::as_ref) {
            None => Here::Absent,
            Some(m) if m.retiring => Here::Retiring,
            Some(_) => Here::Serving,
        };
        if let Err((status, message)) = check_loaded(i, &self.repo, here) {
            return peers.fail(&d, slot.owned(), status, &message);
        }
        let queue = self.models[i].as_mut().expect("check_loaded found it installed; this is a bug");
        let model = &queue.model;
        let encoded = d.kind() == Some(Kind::Images);
        let checked = if encoded {
            check_images(model, &slot, &d).map(|(rows, key)| (Vec::new(), rows, key))
        } else {
            tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize)
                .map_err(|e| e.to_string())
                .and_then(|metas| check_inputs(model, &metas).map(|(rows, key)| (metas, rows, key)))
        };
        match checked {
            Ok((inputs, rows, shape_key)) => {
                let now = shm::now_ns();
                let p = Pending {
                    item: Item { desc: d, slot, inputs, encoded, staged: None, span: span.clone() },
                    rows,
                    shape_key,
                    arrived_ns: now,
                    deadline_ns: d.deadline_ns,
                    priority: d.priority,
                };
                let level = Head::of(&p, 0).level;
                queue.state.push(p);
                self.turns.arrived(i, level, d.tenant as usize, now);
            }
            Err(message) => peers.fail(&d, slot.owned(), Status::InvalidInput, &message),
        }
    }

    /// Drops every queued (not yet computing) request of `id`, and remembers
    /// the id for work of it that has not arrived yet.
    fn cancel(&mut self, id: u64) {
        self.cancelled.insert(id, shm::now_ns());
        for m in 0..self.models.len() {
            let Some(queue) = self.models[m].as_mut() else { continue };
            let gone = queue.state.remove(|item| item.desc.request_id == id);
            if !gone.is_empty() {
                tracing::debug!(request_id = id, "cancelled before compute");
                self.count_cancel(m as u16, gone.len() as u64);
            }
        }
    }

    fn count_cancel(&self, model: u16, n: u64) {
        if let Some(s) = shm::stats::model_stats(self.peers.region(), self.gpu, model) {
            s.add(&s.cancel_count, n);
        }
    }

    /// What an instance reported.
    pub fn on_event(&mut self, event: InstanceEvent) {
        match event {
            InstanceEvent::Free { model, instance, busy_ns } => self.turns.free(model, instance, busy_ns),
        }
    }

    /// Forgets cancelled ids old enough that no work of theirs can still
    /// arrive (every few seconds; a no-op in between).
    pub fn prune(&mut self, now: u64) {
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY_NS;
            self.cancelled.prune(now);
        }
    }

    /// Hands batches to idle instances, at most `budget` computing at once,
    /// and fails expired requests; returns when the scheduler must look
    /// again even if nothing arrives.
    ///
    /// Backends that outnumber the cores only slow each other down (on the
    /// 2-core reference VM, OCR used ~12% more CPU per image with four model
    /// threads than with two), so a budget caps them. When several models have
    /// work, [`turns`] decides whose turn it is: by level, then by the
    /// tenants' weighted shares, then by deadline.
    pub fn dispatch(&mut self, now: u64) -> Option<u64> {
        let mut wake: Option<u64> = None;
        self.turns.begin_round();
        let head = |m: &ModelQueue| m.state.head().map(|p| Head::of(p, p.item.desc.tenant as usize));
        while let Some(i) = self.turns.next(now, |i| self.models[i].as_ref().and_then(head)) {
            let m = self.models[i].as_mut().expect("`next` chose a model with instances; this is a bug");
            match m.state.next_batch(&m.limits, now) {
                Next::Run(batch) => {
                    let k = self.turns.start(i, batch.iter().map(|p| (p.item.desc.tenant as usize, p.rows)).collect());
                    if let Err(mpsc::SendError(InstanceCommand::Run(batch))) =
                        m.instances[k].send(InstanceCommand::Run(batch))
                    {
                        self.turns.lost(i, k);
                        for p in batch {
                            p.item.fail(&self.peers, Status::Backend, "the model instance stopped");
                        }
                    }
                }
                Next::WaitUntil(t) => {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                    self.turns.pass(i);
                }
                Next::Idle => self.turns.pass(i),
            }
        }
        for m in self.models.iter_mut().flatten() {
            // After next_batch: it sets aside requests it found expired.
            for p in m.state.take_expired(now) {
                let msg =
                    "the request timed out before it could be computed (parameter `timeout` or the server default)";
                p.item.fail(&self.peers, Status::Timeout, msg);
            }
        }
        wake
    }
}
