//! The inference worker's process loop: start the runtime, load every model
//! (each instance on its own thread), then receive requests and instance
//! events and let the [`Scheduler`] hand out batches until shutdown. This
//! thread never blocks on a backend or on I/O other than its inbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use shm::Peers;

use crate::config::Config;
use crate::error::WorkerError;
use crate::load::{Loader, pin_region};
use crate::onnx;
use crate::scheduler::{ModelQueue, Scheduler};

/// Loads every model, then schedules batches until `shutdown` is set.
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>, on_ready: impl FnOnce()) -> Result<(), WorkerError> {
    onnx::init_runtime(&cfg.onnxruntime_library).map_err(WorkerError::Runtime)?;
    let me = cfg.wiring.me();
    let region = cfg.wiring.region().clone();
    // On a GPU, page-lock the whole shared-memory region once, so copies
    // between it and the device are DMA without a staging buffer.
    let _pinned = match cfg.cuda_device {
        Some(d) => Some(pin_region(d, &region)?),
        None => None,
    };
    let peers = Arc::new(Peers::new(&cfg.wiring));
    let (events_tx, events) = mpsc::channel();
    let loader = Loader { cfg: &cfg, peers: &peers, events: &events_tx };
    let mut models = Vec::new();
    let mut instances = 0;
    for (mi, model) in cfg.repository.models.iter().enumerate() {
        models.push(if model.is_pipeline() {
            // Pipelines run in the preproc pool; their model steps come here
            // as requests for the models they name.
            ModelQueue::new(&model.config, Vec::new(), false)
        } else {
            let loaded = loader.load(mi, model)?;
            instances += loaded.instances.len();
            ModelQueue::new(&model.config, loaded.instances, loaded.gpu_decode)
        });
    }
    let mut inbox = cfg.wiring.inbox();
    let loaded = cfg.repository.models.iter().filter(|m| !m.is_pipeline()).count();
    tracing::info!("inference worker up: {loaded} models loaded");
    on_ready();
    let budget = cfg.batch_budget(instances);
    tracing::info!("at most {budget} batches compute at once");
    let mut sched = Scheduler::new(cfg.repository.clone(), peers, cfg.index, models, budget);
    let mut next_wake: Option<u64> = None;
    while !shutdown.load(Ordering::Acquire) {
        region.beat(me);
        let now = shm::now_ns();
        let timeout = match next_wake {
            Some(t) if t > now => Duration::from_nanos(t - now).min(Duration::from_millis(500)),
            Some(_) => Duration::ZERO,
            None => Duration::from_millis(500),
        };
        if let Some((from, d)) = inbox.recv(Some(timeout), cfg.spin) {
            sched.accept(from, d);
            while let Some((from, d)) = inbox.try_recv() {
                sched.accept(from, d);
            }
        }
        while let Ok(event) = events.try_recv() {
            sched.on_event(event);
        }
        let now = shm::now_ns();
        sched.prune(now);
        next_wake = sched.dispatch(now);
    }
    tracing::info!("inference worker stopping");
    Ok(())
}
