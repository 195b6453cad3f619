//! A backend instance: one OS thread that owns one backend for its life and
//! runs the batches the scheduler sends it ([`InstanceCommand`]), telling it
//! each time it is free again ([`InstanceEvent`]). A batch goes through GPU
//! preprocessing where the model decodes on the GPU ([`gpu`]), the gather
//! (the only copy of its input bytes on this side, [`gather`]), the backend,
//! and the scatter: outputs are written from the backend's memory straight
//! into each request's slot ([`scatter`]), or wait for one ([`parked`]).
//!
//! The thread's log lines about a batch are in a `batch` span that follows
//! from its requests' spans; what is done for one request alone (its
//! answer, its failure) is in that request's own span, so the line names it.

mod gather;
mod gpu;
mod outputs;
mod parked;
mod scatter;
mod stats;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use model_repo::ModelConfig;
use shm::mailbox::SelfWaker;
use shm::stats::model_stats;
use shm::{Peers, Status};

use self::gather::{AlignedBuf, DeviceFailures, Gather, GatherError, Layout, Place};
pub use self::gpu::Gpu;
use self::gpu::ModelRef;
use self::parked::Parked;
use self::scatter::scatter;
use self::stats::{Clock, Outcome};
use crate::backend::{Backend, TensorView};
use crate::request::Batch;

/// What the scheduler sends an instance.
pub enum InstanceCommand {
    /// Compute this batch, then report [`InstanceEvent::Free`].
    Run(Batch),
}

/// What an instance tells the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceEvent {
    /// `instance` of model `model` finished its batch, which kept it busy
    /// `busy_ns`, and takes another.
    Free { model: usize, instance: usize, busy_ns: u64 },
}

/// Fault injection for the test suite: when this variable names a file that
/// exists, the next batch's thread removes it and panics (once), so tests can
/// check that a panic takes down only its process and the supervisor recovers.
pub const PANIC_FILE_ENV: &str = "HIGHSERVE_FAULT_PANIC_FILE";

/// Who an instance is, and its lines to the rest of the worker.
pub struct Instance {
    pub name: String,
    pub model_index: usize,
    pub instance: usize,
    /// The inference worker's index (its statistics' row).
    pub gpu: u16,
    pub config: ModelConfig,
    pub peers: Arc<Peers>,
    pub events: mpsc::Sender<InstanceEvent>,
    pub waker: SelfWaker,
}

/// What an instance's thread owns for its life.
struct Runner<'r> {
    inst: Instance,
    backend: Box<dyn Backend>,
    /// On a GPU, the instance's stream and GPU preprocessing.
    gpu: Option<Gpu>,
    /// One gather buffer per model input, for batches on host inputs.
    bufs: Vec<AlignedBuf>,
    /// Outputs waiting for a free slot.
    parked: Parked,
    failures: DeviceFailures,
    stats: stats::Sink<'r>,
}

/// Runs batches until the scheduler hangs up. `gpu`: the instance's GPU
/// side, on a GPU.
pub fn run(inst: Instance, backend: Box<dyn Backend>, gpu: Option<Gpu>, commands: mpsc::Receiver<InstanceCommand>) {
    let fault = std::env::var_os(PANIC_FILE_ENV).map(PathBuf::from);
    let region = inst.peers.region().clone();
    let model = inst.model_index as u16;
    let stats = stats::Sink { region: &region, model, stats: model_stats(&region, inst.gpu, model) };
    let mut r = Runner {
        bufs: (0..inst.config.inputs.len()).map(|_| AlignedBuf::default()).collect(),
        parked: Parked::default(),
        failures: DeviceFailures::default(),
        stats,
        inst,
        backend,
        gpu,
    };
    loop {
        // While outputs wait for a slot, look again every millisecond.
        let command = if r.parked.is_empty() {
            match commands.recv() {
                Ok(c) => c,
                Err(_) => break,
            }
        } else {
            match commands.recv_timeout(Duration::from_millis(1)) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    r.parked.retry(&r.inst.peers);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        let started = Instant::now();
        match command {
            InstanceCommand::Run(batch) => r.run_batch(batch, fault.as_deref()),
        }
        r.parked.retry(&r.inst.peers);
        // Tell the scheduler this instance is free, and wake it if it sleeps.
        let busy_ns = started.elapsed().as_nanos() as u64;
        let free = InstanceEvent::Free { model: r.inst.model_index, instance: r.inst.instance, busy_ns };
        if r.inst.events.send(free).is_err() {
            break;
        }
        r.inst.waker.wake();
    }
    r.parked.give_up(&r.inst.peers, "the inference worker is shutting down");
}

impl Runner<'_> {
    /// Runs one batch: on a GPU, from inputs in device memory where the
    /// backend takes them, else, or where that fails before any answer is
    /// sent, from host memory.
    fn run_batch(&mut self, batch: Batch, fault: Option<&Path>) {
        if let Some(f) = fault
            && std::fs::remove_file(f).is_ok()
        {
            panic!("fault injected by {PANIC_FILE_ENV}");
        }
        let (name, instance, requests) = (&self.inst.name, self.inst.instance, batch.len());
        let span = tracing::debug_span!("batch", model = %name, instance, requests);
        for p in &batch {
            span.follows_from(&p.item.span);
        }
        let _span = span.enter();
        let batch = self.decode(batch);
        if batch.is_empty() {
            return;
        }
        let Some(again) = self.attempt(batch, true) else { return };
        // Its device inputs failed before any answer was sent: once more,
        // from host memory (which is never handed back).
        let again = self.attempt(again, false);
        debug_assert!(again.is_none(), "a batch on host inputs runs once; this is a bug");
    }

    /// Decodes the batch's images into rows on the GPU, where the model
    /// decodes there.
    fn decode(&mut self, batch: Batch) -> Batch {
        let peers = &self.inst.peers;
        match self.gpu.as_mut().and_then(|g| g.decode.as_mut()) {
            Some(d) if batch.iter().any(|p| p.item.encoded) => {
                let model = ModelRef { name: &self.inst.name, index: self.inst.model_index };
                gpu::stage_images(d, peers, model, batch)
            }
            Some(_) => batch,
            // Images reach an instance only when it decodes on the GPU; a
            // bug otherwise, which must not take the batch's tensors with it.
            None => {
                let (images, tensors): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.item.encoded);
                for p in images {
                    let msg = "images reached an instance that does not decode them; this is a bug";
                    p.item.fail(peers, Status::Internal, msg);
                }
                tensors
            }
        }
    }

    /// Runs `batch` once, on inputs in device memory where `try_device` and
    /// the backend takes them. Returns the batch when the device path failed
    /// before answering anyone, to run again from host memory (what the CPU
    /// tests check), so that serving goes on and the log says why.
    fn attempt(&mut self, mut batch: Batch, try_device: bool) -> Option<Batch> {
        let clock = Clock::start(&batch);
        let rows: u32 = batch.iter().map(|p| p.rows).sum();
        let requests = batch.len();
        let (inst, peers) = (&self.inst, &self.inst.peers);
        let layout = Layout::of(&inst.config, &batch);
        let mut gather = Gather {
            model: &inst.name,
            config: &inst.config,
            backend: self.backend.as_mut(),
            gpu: self.gpu.as_ref(),
            bufs: &mut self.bufs,
            failures: &mut self.failures,
        };
        let place = match gather.run(&layout, &batch, try_device) {
            Ok(place) => place,
            Err(GatherError::Device(e)) => {
                self.failures.record(&inst.name, &e);
                return Some(batch);
            }
            Err(GatherError::Failed(message)) => {
                tracing::error!("{}: {message}", inst.name);
                for p in batch {
                    p.item.fail(peers, Status::Backend, &message);
                }
                return None;
            }
        };
        let gathered = Instant::now();
        let views: Vec<TensorView<'_>> = self
            .bufs
            .iter()
            .zip(&layout.shapes)
            .zip(&layout.lens)
            .enumerate()
            .map(|(i, ((b, s), &l))| TensorView {
                dtype: inst.config.inputs[i].datatype,
                shape: s,
                data: if place == Place::Device { &[] } else { b.bytes(l) },
            })
            .collect();
        let batched = inst.config.max_batch_size > 0;
        let parked = &mut self.parked;
        let mut scattered = None;
        let mut sink = |outputs: &[TensorView<'_>]| {
            let t = Instant::now();
            scatter(peers, parked, &mut batch, outputs, batched);
            scattered = Some(t);
        };
        let result = match (place, &self.gpu) {
            (Place::Device, Some(g)) => self.backend.run_device(g.staging.stream(), &mut sink),
            _ => self.backend.run(&views, &mut sink),
        };
        let end = Instant::now();
        if place == Place::Device
            && scattered.is_none()
            && let Err(e) = &result
        {
            self.failures.record(&inst.name, e);
            return Some(batch);
        }
        // Whatever was not answered (a backend error, or outputs that did not
        // split) fails with the reason.
        let message = match &result {
            Ok(()) => "the model produced outputs that do not split into the batch's requests".to_string(),
            Err(e) => format!("inference failed: {e}"),
        };
        let failed = batch.len() as u64;
        for p in batch {
            p.item.fail(peers, Status::Backend, &message);
        }
        if let Err(e) = &result {
            tracing::error!("{}: batch of {rows} failed: {e}", inst.name);
        }
        self.stats.record(&clock, &Outcome { rows, requests, failed, gathered, scattered, end });
        None
    }
}
