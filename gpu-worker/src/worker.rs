//! The inference worker's process loop: start the runtime, load the
//! models the table makes ready (each instance on its own thread), then
//! receive requests, instance events and new tables, and let the
//! [`Scheduler`] hand out batches until shutdown. The [`Lifecycle`] loads
//! and unloads models as the tables say, without this thread waiting for a
//! load. This thread never blocks on a backend or on I/O other than its
//! inbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use shm::Peers;

use crate::config::Config;
use crate::error::WorkerError;
use crate::lifecycle::Lifecycle;
use crate::load::{Loader, pin_region};
use crate::onnx;
use crate::scheduler::Scheduler;

/// Loads the models the table makes ready, then schedules batches (and
/// applies new tables) until `shutdown` is set.
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
    // Per-entry structures are sized by the table's capacity (the
    // statistics' slots), so entries added later fit.
    let capacity = region.layout().params.models as usize;
    let mut sched = Scheduler::new(cfg.repository.clone(), peers.clone(), cfg.index, capacity, 1);
    let loader = Loader::new(&cfg, peers, events_tx);
    let mut life = Lifecycle::new(loader, cfg.notify.clone(), cfg.repository.clone(), capacity);
    let loaded = life.start(&mut sched)?;
    let mut inbox = cfg.wiring.inbox();
    tracing::info!("inference worker up: {loaded} models loaded");
    on_ready();
    let mut instances = sched.instances();
    let budget = cfg.batch_budget(instances);
    sched.set_budget(budget);
    tracing::info!("at most {budget} batches compute at once");
    let mut next_wake: Option<u64> = None;
    while !shutdown.load(Ordering::Acquire) {
        region.beat(me);
        while let Ok(table) = cfg.updates.try_recv() {
            life.apply(table, &mut sched);
        }
        let now = shm::now_ns();
        let timeout = match next_wake {
            // An entry being unloaded waits for the inbox to be drained.
            _ if life.needs_drain() => Duration::ZERO,
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
        life.drained();
        while let Ok(event) = events.try_recv() {
            sched.on_event(event);
        }
        life.poll(&mut sched);
        if sched.instances() != instances {
            // On a GPU the default budget follows the instances.
            instances = sched.instances();
            sched.set_budget(cfg.batch_budget(instances));
        }
        let now = shm::now_ns();
        sched.prune(now);
        next_wake = sched.dispatch(now);
    }
    tracing::info!("inference worker stopping");
    Ok(())
}
