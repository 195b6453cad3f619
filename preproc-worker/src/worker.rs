//! The preproc worker's loop: take descriptors from the inbox, hand each to
//! the job that does its CPU stage (an image → a tensor, a pipeline's steps,
//! a classification answer), and fail the request back to the frontend when
//! the job fails. What has arrived waits in a [`FairQueue`], not in the
//! lanes' arrival order: the next job is the highest level's, shared between
//! tenants by weight, so a live request waits for at most the job in hand
//! and one model's flood cannot starve another. Every job but a pipeline's is stateless (everything it
//! needs is in the descriptor and its slot), so a replacement worker can pick
//! up whatever a crashed one left in its lanes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use model_repo::Repository;
use model_repo::control::{Live, Notify, Report, Upstream};
use sched::{Active, FairQueue};
use shm::mailbox::Wiring;
use shm::{Descriptor, Inbox, Kind, Peers, ProcId, ShmError};

use crate::background::Background;
use crate::failure::{self, Failure};
use crate::image::DecodeLimits;
use crate::pipeline::{self, Engine, Io};
use crate::postprocess;
use crate::request;
use crate::tensorize::Tensorize;

/// What the preproc worker needs to run.
pub struct Config {
    pub wiring: Wiring,
    /// The model table at start.
    pub repository: Arc<Repository>,
    /// The tables the supervisor hands over later (the inbox is woken after
    /// each).
    pub updates: std::sync::mpsc::Receiver<Arc<Repository>>,
    /// Reports to the supervisor (applied).
    pub notify: model_repo::control::Notify,
    pub limits: DecodeLimits,
    /// Decode JPEGs at a reduced DCT scale when the model input is small.
    pub dct_scaling: bool,
    /// The inference workers drive GPUs: images of models with `decode =
    /// "gpu"` go to them encoded (JPEG) or raw (frames), after a header check.
    pub gpu_decode: bool,
    /// How long to spin on an empty inbox before sleeping.
    pub spin: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("the topology has no lane from {from:?} to {to:?}; this is a bug")]
    NoLane { from: ProcId, to: ProcId },
    #[error("pipeline set-up: {0}")]
    Pipeline(String),
    #[error("cannot start the background thread: {0}")]
    Thread(std::io::Error),
}

struct Worker {
    peers: Arc<Peers>,
    /// The model table; replaced whole when the supervisor changes it.
    models: Arc<Live>,
    tensorize: Tensorize,
    engine: Engine,
    cancelled: shm::cancel::Recent,
    /// Work that has arrived, by level, then tenant.
    queue: FairQueue<(ProcId, Descriptor)>,
    /// The levels and the tenants that had work lately.
    levels: Active<u8>,
    tenants: Active<usize>,
    /// Where image jobs below an active level, or of a tenant ahead of its
    /// share, run (at a lower OS priority).
    background: Background,
    /// Jobs that found no inference worker ready (one is restarting): they
    /// go back into the queue as soon as one is, or fail at their deadline.
    later: Vec<(ProcId, Descriptor)>,
}

/// Runs until `shutdown` is set (the caller also wakes the inbox).
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>, on_ready: impl FnOnce()) -> Result<(), WorkerError> {
    let me = cfg.wiring.me();
    let region = cfg.wiring.region().clone();
    let topo = region.layout().topology();
    let peers = Arc::new(Peers::new(&cfg.wiring));
    for to in std::iter::once(ProcId::FRONTEND).chain((0..topo.gpus).map(|i| topo.gpu(i))) {
        peers.outbox(to).map_err(|_| WorkerError::NoLane { from: me, to })?;
    }
    let tensorize = || Tensorize::new(cfg.limits, cfg.dct_scaling, cfg.gpu_decode);
    let models = Arc::new(Live::new(cfg.repository.clone()));
    let background = Background::start(peers.clone(), models.clone(), tensorize(), cfg.wiring.self_waker())
        .map_err(WorkerError::Thread)?;
    let mut worker = Worker {
        engine: Engine::new(&cfg.repository, cfg.limits).map_err(WorkerError::Pipeline)?,
        queue: FairQueue::new(&weights(&cfg.repository)),
        peers,
        models,
        tensorize: tensorize(),
        cancelled: Default::default(),
        levels: Active::default(),
        tenants: Active::default(),
        background,
        later: Vec::new(),
    };
    let mut inbox: Inbox = cfg.wiring.inbox();
    tracing::info!("preproc worker up ({} models)", cfg.repository.names().len());
    on_ready();
    let mut next_sweep = shm::now_ns();
    while !shutdown.load(Ordering::Acquire) {
        region.beat(me);
        // Wake up now and then while pipeline requests wait, to time them out,
        // and every millisecond while some wait for a free slot (no process
        // is told when another frees one).
        let wait = if worker.engine.parked() > 0 {
            Duration::from_millis(1)
        } else if !worker.later.is_empty() {
            // A restarted inference worker is used within this of its being ready.
            Duration::from_millis(5)
        } else if worker.engine.active() > 0 {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        };
        while let Ok(table) = cfg.updates.try_recv() {
            worker.models_changed(table, &cfg.notify);
        }
        while let Some((tenant, ns, wait)) = worker.background.finished() {
            worker.queue.charge(tenant, ns);
            worker.later.extend(wait);
        }
        if !worker.later.is_empty() && worker.peers.ready_gpu().is_some() {
            for (from, d) in std::mem::take(&mut worker.later) {
                worker.take(from, d);
            }
        }
        // Everything that has arrived goes into the queue before the next
        // job is chosen; with a job ready, only what is already there.
        let ready = worker.ready(shm::now_ns());
        let first = if ready { inbox.try_recv() } else { inbox.recv(Some(wait), cfg.spin) };
        if let Some((from, d)) = first {
            worker.take(from, d);
            while let Some((from, d)) = inbox.try_recv() {
                worker.take(from, d);
            }
        }
        worker.run_next(shm::now_ns());
        if worker.engine.parked() > 0
            && let Some(gpu) = worker.peers.ready_gpu()
        {
            for (d, f) in worker.engine.retry_parked(&Io { peers: &worker.peers, gpu }) {
                worker.fail(&d, f);
            }
        }
        let now = shm::now_ns();
        if now >= next_sweep {
            next_sweep = now + 20_000_000;
            for d in worker.engine.expire(now) {
                worker.fail(&d, pipeline::timeout_failure());
            }
            let (expired, kept) = std::mem::take(&mut worker.later)
                .into_iter()
                .partition(|(_, d)| d.deadline_ns != 0 && d.deadline_ns <= now);
            worker.later = kept;
            for (from, d) in expired {
                let why = "the request's deadline passed while it waited for an inference worker to come back";
                worker.fail(&d, Failure::new(shm::Status::Timeout, why));
                worker.drop_slot(from, &d);
            }
            worker.cancelled.prune(now);
        }
    }
    tracing::info!("preproc worker stopping");
    Ok(())
}

/// Each model's share of the worker (`weight`), by entry.
fn weights(table: &Repository) -> Vec<u32> {
    table.models.iter().map(|m| m.config.weight).collect()
}

impl Worker {
    /// The supervisor changed the model table: work by the new one (the
    /// pipelines' model steps go to the entries now serving their models),
    /// and say so.
    fn models_changed(&mut self, table: Arc<Repository>, notify: &Notify) {
        for e in self.engine.set_pipelines(&table) {
            tracing::error!("pipeline left out of the new model table: {e}");
        }
        self.queue.set_weights(&weights(&table));
        let generation = table.generation;
        self.models.set(table);
        notify(Upstream::Report(Report::Applied { generation }));
    }

    /// Queues what arrived; a cancellation acts at once.
    fn take(&mut self, from: ProcId, d: Descriptor) {
        if d.kind() == Some(Kind::Cancel) {
            // The client left: forget the request's pipeline state and its
            // queued work, and drop its work if it reaches us later.
            let _span = tracing::debug_span!("request", request_id = d.request_id).entered();
            self.engine.cancel(d.request_id);
            self.cancelled.insert(d.request_id, shm::now_ns());
            for (from, gone) in self.queue.remove(|(_, q)| q.request_id == d.request_id) {
                self.drop_slot(from, &gone);
            }
            return;
        }
        if self.cancelled.contains(d.request_id) {
            return self.drop_slot(from, &d);
        }
        // The frontend resolved the level; pipeline sub-requests inherit it.
        let (level, tenant, now) = (sched::level(d.priority, None), d.tenant as usize, shm::now_ns());
        self.levels.note(level, now);
        self.tenants.note(tenant, now);
        self.queue.push(level, tenant, (from, d));
    }

    /// Whether the next job goes to the background thread: an image job
    /// (the bulk of the CPU) below a level that is active, or of a tenant
    /// ahead of its share while one behind it is active.
    fn for_background(&self, level: u8, tenant: usize, d: &Descriptor, now_ns: u64) -> bool {
        d.kind() == Some(Kind::Images)
            && !self.engine.is_pipeline(d.model)
            && (self.levels.above(level, now_ns) || self.queue.ahead(tenant, self.tenants.active(now_ns)))
    }

    /// Whether a job can start now: one is queued, and it does not wait for
    /// the background thread.
    fn ready(&self, now_ns: u64) -> bool {
        self.queue.peek().is_some_and(|(level, tenant, (_, d))| {
            !(self.background.is_busy() && self.for_background(level, tenant, d, now_ns))
        })
    }

    /// Runs the next job, or hands it to the background thread.
    fn run_next(&mut self, now_ns: u64) {
        if !self.ready(now_ns) {
            return;
        }
        let Some((level, tenant, (from, d))) = self.queue.pop() else { return };
        let (from, d) = match self.for_background(level, tenant, &d, now_ns) {
            true => match self.background.run(from, d, tenant) {
                Ok(()) => return,
                Err(back) => back,
            },
            false => (from, d),
        };
        let started = Instant::now();
        self.handle(from, d);
        self.queue.charge(tenant, started.elapsed().as_nanos() as f64);
    }

    /// Frees the slot a descriptor handed us, if it carries one.
    fn drop_slot(&self, from: ProcId, d: &Descriptor) {
        if d.has_slot() {
            drop(self.peers.pool().take(from, self.peers.me(), d));
        }
    }

    fn handle(&mut self, from: ProcId, d: Descriptor) {
        let _span = tracing::debug_span!("request", request_id = d.request_id).entered();
        let repository = self.models.get();
        let Worker { peers, tensorize, engine, .. } = self;
        let result = match d.kind() {
            Some(Kind::Images) if engine.is_pipeline(d.model) => start_pipeline(peers, engine, from, &d),
            Some(Kind::Images) => tensorize.run(peers, &repository, from, &d),
            Some(Kind::Outputs) if engine.owns(d.request_id) => {
                failure::ready_gpu(peers).and_then(|gpu| engine.on_outputs(&Io { peers, gpu }, from, &d))
            }
            Some(Kind::Outputs) => postprocess::run(peers, &repository, from, &d),
            other => {
                // A buggy peer; free the slot if it really is ours and move on.
                tracing::warn!("unexpected {other:?} descriptor from {from:?}; dropped");
                return self.drop_slot(from, &d);
            }
        };
        match result {
            Err(f) if f.no_worker => self.later.push((from, d)),
            Err(f) => self.fail(&d, f),
            Ok(()) => {}
        }
    }

    /// Tells the frontend that request `d` failed.
    fn fail(&self, d: &Descriptor, f: Failure) {
        self.peers.fail(d, None, f.status, &f.message);
    }
}

/// Encoded image from the frontend → the first steps of its pipeline.
fn start_pipeline(peers: &Peers, engine: &mut Engine, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
    let input = peers.pool().take(from, peers.me(), d)?;
    let images = request::split_bytes(input.bytes(d.offset as usize, d.len as usize)?, d.rows)?;
    let io = Io { peers, gpu: failure::ready_gpu(peers)? };
    engine.start(&io, d, images[0])
}
