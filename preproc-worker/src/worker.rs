//! The preproc worker's loop: take descriptors from the inbox, hand each to
//! the job that does its CPU stage (an image → a tensor, a pipeline's steps,
//! a classification answer), and fail the request back to the frontend when
//! the job fails. Every job but a pipeline's is stateless (everything it
//! needs is in the descriptor and its slot), so a replacement worker can pick
//! up whatever a crashed one left in its lanes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use model_repo::Repository;
use shm::mailbox::Wiring;
use shm::{Descriptor, Inbox, Kind, Peers, ProcId, ShmError};

use crate::failure::{self, Failure};
use crate::image::DecodeLimits;
use crate::pipeline::{self, Engine, Io};
use crate::postprocess;
use crate::request;
use crate::tensorize::Tensorize;

/// What the preproc worker needs to run.
pub struct Config {
    pub wiring: Wiring,
    pub repository: Arc<Repository>,
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
}

struct Worker {
    peers: Peers,
    repository: Arc<Repository>,
    tensorize: Tensorize,
    engine: Engine,
    cancelled: shm::cancel::Recent,
}

/// Runs until `shutdown` is set (the caller also wakes the inbox).
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>, on_ready: impl FnOnce()) -> Result<(), WorkerError> {
    let me = cfg.wiring.me();
    let region = cfg.wiring.region().clone();
    let topo = region.layout().topology();
    let peers = Peers::new(&cfg.wiring);
    for to in std::iter::once(ProcId::FRONTEND).chain((0..topo.gpus).map(|i| topo.gpu(i))) {
        peers.outbox(to).map_err(|_| WorkerError::NoLane { from: me, to })?;
    }
    let mut worker = Worker {
        peers,
        engine: Engine::new(&cfg.repository, cfg.limits).map_err(WorkerError::Pipeline)?,
        repository: cfg.repository,
        tensorize: Tensorize::new(cfg.limits, cfg.dct_scaling, cfg.gpu_decode),
        cancelled: Default::default(),
    };
    let mut inbox: Inbox = cfg.wiring.inbox();
    tracing::info!("preproc worker up ({} models)", worker.repository.models.len());
    on_ready();
    let mut next_sweep = shm::now_ns();
    while !shutdown.load(Ordering::Acquire) {
        region.beat(me);
        // Wake up now and then while pipeline requests wait, to time them out,
        // and every millisecond while some wait for a free slot (no process
        // is told when another frees one).
        let wait = if worker.engine.parked() > 0 {
            Duration::from_millis(1)
        } else if worker.engine.active() > 0 {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        };
        if let Some((from, d)) = inbox.recv(Some(wait), cfg.spin) {
            worker.handle(from, d);
        }
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
            worker.cancelled.prune(now);
        }
    }
    tracing::info!("preproc worker stopping");
    Ok(())
}

impl Worker {
    fn handle(&mut self, from: ProcId, d: Descriptor) {
        let _span = tracing::debug_span!("request", request_id = d.request_id).entered();
        if d.kind() == Some(Kind::Cancel) {
            // The client left: forget the request's pipeline state, and drop its
            // work if it reaches us later.
            self.engine.cancel(d.request_id);
            self.cancelled.insert(d.request_id, shm::now_ns());
            return;
        }
        if self.cancelled.contains(d.request_id) {
            if d.has_slot() {
                drop(self.peers.pool().adopt(from, self.peers.me(), &d));
            }
            return;
        }
        let Worker { peers, repository, tensorize, engine, .. } = self;
        let result = match d.kind() {
            Some(Kind::Images) if engine.is_pipeline(d.model) => start_pipeline(peers, engine, from, &d),
            Some(Kind::Images) => tensorize.run(peers, repository, from, &d),
            Some(Kind::Outputs) if engine.owns(d.request_id) => {
                failure::ready_gpu(peers).and_then(|gpu| engine.on_outputs(&Io { peers, gpu }, from, &d))
            }
            Some(Kind::Outputs) => postprocess::run(peers, repository, from, &d),
            other => {
                // A buggy peer; free the slot if it really is ours and move on.
                tracing::warn!("unexpected {other:?} descriptor from {from:?}; dropped");
                if d.has_slot() {
                    drop(peers.pool().adopt(from, peers.me(), &d));
                }
                return;
            }
        };
        if let Err(f) = result {
            self.fail(&d, f);
        }
    }

    /// Tells the frontend that request `d` failed.
    fn fail(&self, d: &Descriptor, f: Failure) {
        self.peers.fail(d, None, f.status, &f.message);
    }
}

/// Encoded image from the frontend → the first steps of its pipeline.
fn start_pipeline(peers: &Peers, engine: &mut Engine, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
    let input = peers.pool().adopt(from, peers.me(), d)?;
    let images = request::split_bytes(input.bytes(d.offset as usize, d.len as usize)?, d.rows)?;
    let io = Io { peers, gpu: failure::ready_gpu(peers)? };
    engine.start(&io, d, images[0])
}
