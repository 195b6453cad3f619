//! The inference worker's scheduler: receive tensors, keep one `BatchState`
//! per model, and hand a batch to a backend instance the moment one is free
//! (so batches are cut as late as possible and grow while the model is busy).
//! Backends run on their own threads ([`crate::instance`]); this thread never
//! blocks on them or on I/O other than its inbox.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use model_repo::{Model, Repository};
use shm::mailbox::Wiring;
use shm::tensor::{self, TensorMeta};
use shm::{Descriptor, Kind, Outbox, ProcId, ShmError, Slot, SlotPool, Status};

use crate::backend::{self, BackendError};
use crate::batcher::{BatchState, Limits, Next, Pending};
use crate::instance::{self, Instance};
use crate::onnx::{self, OnnxBackend, OnnxOptions};
use crate::tract::{Target, TractBackend, TractOptions};
use shm::cancel::Recent;

/// What the inference worker needs to run.
pub struct Config {
    pub wiring: Wiring,
    pub repository: Arc<Repository>,
    /// This worker's index among the inference workers.
    pub index: u16,
    pub onnxruntime_library: PathBuf,
    /// Default ONNX Runtime intra-op threads (a model's config may override it).
    pub intra_op_threads: usize,
    /// Most batches computing at once across all models (0: as many as the
    /// machine has cores, divided by `intra_op_threads`).
    pub max_concurrent_batches: usize,
    pub spin: Duration,
    /// The GPU this worker drives (visible to it as CUDA ordinal 0 through
    /// CUDA_VISIBLE_DEVICES); None: the CPU backends.
    pub cuda_device: Option<u32>,
    /// What runs the models on that GPU.
    pub gpu_engine: GpuEngine,
}

/// What runs models on a GPU (`inference.gpu_backend` in the daemon's
/// config, which deserializes straight into this).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum GpuEngine {
    /// tract-cuda: NVRTC kernels, cuDNN, cuBLAS; one CUDA stream per instance.
    #[default]
    #[serde(rename = "tract-cuda")]
    TractCuda,
    /// ONNX Runtime's CUDA execution provider; needs an ONNX Runtime library
    /// built with it (the `onnxruntime-gpu` package's), else the inference
    /// worker refuses to start, naming the library.
    #[serde(rename = "onnxruntime-cuda")]
    OnnxRuntimeCuda,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("model `{model}`: {source}")]
    Backend { model: String, source: BackendError },
    #[error(transparent)]
    Runtime(BackendError),
    #[error("cannot start a backend thread: {0}")]
    Thread(std::io::Error),
}

/// The backend for one instance: on a GPU, the daemon's GPU engine
/// (tract-cuda: one CUDA stream per instance thread); on the CPU, the
/// model's `backend`.
fn open_backend(
    file: &std::path::Path,
    opts: &OnnxOptions,
    config: &model_repo::ModelConfig,
    gpu: Option<GpuEngine>,
) -> Result<Box<dyn backend::Backend>, BackendError> {
    let fp16 = config.precision == model_repo::Precision::Fp16;
    let shapes: Vec<Vec<i64>> = config.inputs.iter().map(|t| config.full_shape(t)).collect();
    let tract = |target, fp16| TractBackend::load(file, TractOptions { target, fp16 }, Some(&shapes));
    Ok(match (gpu, config.backend.as_str()) {
        (Some(GpuEngine::TractCuda), _) => Box::new(tract(Target::Cuda, fp16)?),
        (Some(GpuEngine::OnnxRuntimeCuda), _) if fp16 => {
            return Err(BackendError::ConfigMismatch(
                "precision = \"fp16\" needs inference.gpu_backend = \"tract-cuda\": ONNX Runtime's CUDA \
                 execution provider computes in the model file's own types (give it an FP16 file instead)"
                    .into(),
            ));
        }
        // The worker sees only its GPU, as ordinal 0 (CUDA_VISIBLE_DEVICES).
        (Some(GpuEngine::OnnxRuntimeCuda), _) => {
            Box::new(OnnxBackend::load(file, &OnnxOptions { cuda_device: Some(0), ..opts.clone() })?)
        }
        (None, "tract") => Box::new(tract(Target::Cpu, false)?),
        (None, _) => Box::new(OnnxBackend::load(file, opts)?),
    })
}

/// An instance's staging stream, and its GPU preprocessing where the model
/// decodes on the GPU (`pre`: its preprocessing and input type).
fn open_gpu_side(pre: Option<&(model_repo::Preprocess, model_repo::DType)>) -> Result<instance::Gpu, BackendError> {
    let staging = crate::cuda::staging::Staging::new()
        .map_err(|e| BackendError::Run(format!("the instance's CUDA stream: {e}")))?;
    let decode = match pre {
        Some((p, dtype)) => Some(
            crate::cuda::decode::GpuDecode::new(p, *dtype, &staging)
                .map_err(|e| BackendError::Run(format!("GPU preprocessing (decode = \"gpu\"): {e}")))?,
        ),
        None => None,
    };
    Ok(instance::Gpu { staging, decode })
}

fn pin_region(device: u32, region: &Arc<shm::Region>) -> Result<crate::cuda::pinned::Pinned, WorkerError> {
    let fail = |m: String| WorkerError::Runtime(BackendError::Run(format!("GPU {device}: {m}")));
    // CUDA_VISIBLE_DEVICES leaves this worker's GPU as ordinal 0.
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| fail(e.to_string()))?;
    let pinned = crate::cuda::pinned::Pinned::register(&ctx, region.clone())
        .map_err(|e| fail(format!("cannot pin the shared-memory region: {e}")))?;
    tracing::info!("GPU {device}: {} MiB of shared memory pinned", pinned.len() >> 20);
    Ok(pinned)
}

/// One request waiting for, or in, a batch.
pub struct Item {
    pub desc: Descriptor,
    pub slot: Slot,
    /// The tensors in the slot (none when `encoded`).
    pub inputs: Vec<TensorMeta>,
    /// The slot holds the images as the client sent them (a BYTES payload of
    /// JPEGs or raw frames) for GPU preprocessing (`decode = "gpu"`).
    pub encoded: bool,
    /// Once staged on the GPU: the rows of the device tensor holding its images.
    pub staged: Option<std::ops::Range<usize>>,
}

struct ModelRt {
    state: BatchState<Item>,
    /// Images of this model are decoded and preprocessed here, on the GPU.
    gpu_decode: bool,
    limits: Limits,
    idle: Vec<usize>,
    instances: Vec<mpsc::Sender<Vec<Pending<Item>>>>,
}

/// Sends errors and results; shared by the scheduler and the instances.
pub struct Replies {
    pub me: ProcId,
    pub pool: SlotPool,
    /// Indexed by process id; `None` where there is no lane.
    pub outboxes: Vec<Option<Outbox>>,
}

impl Replies {
    fn outbox(&self, to: ProcId) -> Result<&Outbox, ShmError> {
        self.outboxes.get(to.0 as usize).and_then(Option::as_ref).ok_or(ShmError::PeerGone(to))
    }

    /// Sends `slot` to `to`, waiting up to a second while the lane is full.
    pub fn send(&self, to: ProcId, d: Descriptor, slot: Slot) -> Result<(), ShmError> {
        self.outbox(to)?.send_slot_wait(d, slot, Duration::from_secs(1))
    }

    /// Fails the request of `d` towards the frontend, reusing `slot` for the message.
    pub fn fail(&self, d: &Descriptor, slot: Option<Slot>, status: Status, message: &str) {
        tracing::debug!(request_id = d.request_id, "request failed: {message}");
        let sent =
            self.outbox(ProcId::FRONTEND).and_then(|o| o.send_error(&self.pool, self.me, d, slot, status, message));
        if let Err(e) = sent {
            tracing::warn!(request_id = d.request_id, "could not report a failure to the frontend: {e}");
        }
    }
}

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
    let procs = region.layout().topology().procs();
    let replies = Arc::new(Replies {
        me,
        pool: SlotPool::new(region.clone()),
        outboxes: (0..procs).map(|p| cfg.wiring.outbox(ProcId(p as u16))).collect(),
    });
    let (done_tx, done_rx) = mpsc::channel::<(usize, usize)>();
    let mut models = Vec::new();
    for (mi, model) in cfg.repository.models.iter().enumerate() {
        models.push(if model.is_pipeline() {
            // Pipelines run in the preproc pool; their model steps come here
            // as requests for the models they name.
            ModelRt {
                state: BatchState::new(),
                gpu_decode: false,
                limits: Limits::from_config(&model.config),
                idle: vec![],
                instances: vec![],
            }
        } else {
            load_model(&cfg, mi, model, &replies, &done_tx)?
        });
    }
    let mut inbox = cfg.wiring.inbox();
    let loaded = cfg.repository.models.iter().filter(|m| !m.is_pipeline()).count();
    tracing::info!("inference worker up: {loaded} models loaded");
    on_ready();
    let budget = match cfg.max_concurrent_batches {
        // On a GPU every instance (stream) may have a batch in flight.
        0 if cfg.cuda_device.is_some() => models.iter().map(|m| m.instances.len()).sum::<usize>().max(1),
        0 => {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            (cores / cfg.intra_op_threads.max(1)).max(1)
        }
        n => n,
    };
    tracing::info!("at most {budget} batches compute at once");
    let mut sched = Scheduler {
        repo: cfg.repository.clone(),
        replies,
        gpu: cfg.index,
        models,
        cancelled: Recent::default(),
        running: 0,
        budget,
    };
    let mut next_wake: Option<u64> = None;
    let mut next_prune = 0u64;
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
        while let Ok((m, k)) = done_rx.try_recv() {
            sched.models[m].idle.push(k);
            sched.running = sched.running.saturating_sub(1);
        }
        let now = shm::now_ns();
        if now >= next_prune {
            next_prune = now + 10_000_000_000;
            sched.cancelled.prune(now);
        }
        next_wake = sched.schedule(now);
    }
    tracing::info!("inference worker stopping");
    Ok(())
}

fn load_model(
    cfg: &Config,
    mi: usize,
    model: &Model,
    replies: &Arc<Replies>,
    done: &mpsc::Sender<(usize, usize)>,
) -> Result<ModelRt, WorkerError> {
    let opts = OnnxOptions {
        intra_op_threads: model.config.intra_op_threads.map(|n| n as usize).unwrap_or(cfg.intra_op_threads),
        spinning: false,
        cuda_device: None,
    };
    let file = model.file(model.latest());
    let gpu = cfg.cuda_device.map(|_| cfg.gpu_engine);
    // `decode = "gpu"` on a GPU: each instance decodes and preprocesses its
    // batches' images on its own stream (the preproc pool sends them on).
    let gpu_decode = match (&model.config.preprocess, model.config.image_input()) {
        (Some(p), Some((_, input))) if gpu.is_some() && model.config.decodes_on_gpu() => {
            Some((p.clone(), input.datatype))
        }
        _ => None,
    };
    let err = |source| WorkerError::Backend { model: model.name.clone(), source };
    let mut instances = Vec::new();
    let load_started = std::time::Instant::now();
    for k in 0..model.config.instances as usize {
        let (tx, rx) = mpsc::channel();
        let inst = Instance {
            name: model.name.clone(),
            model_index: mi,
            instance: k,
            gpu: cfg.index,
            config: model.config.clone(),
            replies: replies.clone(),
            done: done.clone(),
            waker: cfg.wiring.self_waker(),
        };
        // The backend is created on the thread that will run it for its life
        // (STYLE.md): ONNX Runtime applies some per-thread settings to the
        // thread that creates a session, and a CUDA context belongs to one
        // thread too.
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let (file, opts, config, pre) = (file.clone(), opts.clone(), model.config.clone(), gpu_decode.clone());
        std::thread::Builder::new()
            .name(format!("{}-{k}", model.name))
            .spawn(move || {
                let started = std::time::Instant::now();
                let backend = open_backend(&file, &opts, &config, gpu)
                    .and_then(|b| backend::check_config(b.as_ref(), &config).map(|()| b))
                    .and_then(|b| match gpu {
                        Some(_) => open_gpu_side(pre.as_ref()).map(|g| (b, Some(g))),
                        None => Ok((b, None)),
                    });
                match backend {
                    Ok((b, gpu)) => {
                        let mut description = b.describe();
                        if let Some(d) = gpu.as_ref().and_then(|g| g.decode.as_ref()) {
                            description = format!("{description}; {}", d.describe());
                        }
                        let _ = loaded_tx.send(Ok((started.elapsed(), description)));
                        instance::run(inst, b, gpu, rx);
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                }
            })
            .map_err(WorkerError::Thread)?;
        let (took, description) = loaded_rx
            .recv()
            .map_err(|_| err(BackendError::Run("the backend thread died while loading".into())))?
            .map_err(err)?;
        tracing::info!("loaded {} instance {k} in {took:?}: {description}", model.name);
        instances.push(tx);
    }
    if let Some(s) = shm::stats::model_stats(replies.pool.region(), cfg.index, mi as u16) {
        let ns = load_started.elapsed().as_nanos() as u64;
        s.load_duration_ns.store(ns, Ordering::Relaxed);
    }
    Ok(ModelRt {
        state: BatchState::new(),
        gpu_decode: gpu_decode.is_some(),
        limits: Limits::from_config(&model.config),
        idle: (0..instances.len()).collect(),
        instances,
    })
}

/// The scheduler thread's state: a queue per model, the instances that are
/// free, and what the clients cancelled.
struct Scheduler {
    repo: Arc<Repository>,
    replies: Arc<Replies>,
    gpu: u16,
    models: Vec<ModelRt>,
    cancelled: Recent,
    running: usize,
    budget: usize,
}

impl Scheduler {
    /// Validates an incoming descriptor and queues it for its model.
    fn accept(&mut self, from: ProcId, d: Descriptor) {
        let _span = tracing::debug_span!("request", request_id = d.request_id).entered();
        let replies = &self.replies;
        let gpu_decode = self.models.get(d.model as usize).is_some_and(|m| m.gpu_decode);
        match d.kind() {
            Some(Kind::Tensors) => {}
            Some(Kind::Images) if gpu_decode => {}
            Some(Kind::Cancel) => return self.cancel(d.request_id),
            other => {
                tracing::warn!("unexpected {other:?} descriptor from {from:?}; dropped");
                if d.has_slot() {
                    drop(replies.pool.adopt(from, replies.me, &d));
                }
                return;
            }
        }
        let slot = match replies.pool.adopt(from, replies.me, &d) {
            Ok(s) => s,
            Err(e) => return replies.fail(&d, None, Status::Internal, &e.to_string()),
        };
        if self.cancelled.contains(d.request_id) {
            // Its client left while it was upstream: skip it (the slot is freed).
            self.count_cancel(d.model, 1);
            return;
        }
        let Some(model) = self.repo.models.get(d.model as usize).filter(|m| !m.is_pipeline()) else {
            return replies.fail(&d, Some(slot), Status::Internal, &format!("no runnable model #{}", d.model));
        };
        let encoded = d.kind() == Some(Kind::Images);
        let checked = if encoded {
            check_images(model, &slot, &d).map(|(rows, key)| (Vec::new(), rows, key))
        } else {
            tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize)
                .map_err(|e| e.to_string())
                .and_then(|metas| check_inputs(model, &metas).map(|(rows, key)| (metas, rows, key)))
        };
        match checked {
            Ok((inputs, rows, shape_key)) => self.models[d.model as usize].state.push(Pending {
                item: Item { desc: d, slot, inputs, encoded, staged: None },
                rows,
                shape_key,
                arrived_ns: shm::now_ns(),
                deadline_ns: d.deadline_ns,
                priority: d.priority,
            }),
            Err(message) => replies.fail(&d, Some(slot), Status::InvalidInput, &message),
        }
    }

    /// Drops every queued (not yet computing) request of `id`, and remembers
    /// the id for work of it that has not arrived yet.
    fn cancel(&mut self, id: u64) {
        self.cancelled.insert(id, shm::now_ns());
        for m in 0..self.models.len() {
            let gone = self.models[m].state.remove(|item| item.desc.request_id == id);
            if !gone.is_empty() {
                tracing::debug!(request_id = id, "cancelled before compute");
                self.count_cancel(m as u16, gone.len() as u64);
            }
        }
    }

    fn count_cancel(&self, model: u16, n: u64) {
        if let Some(s) = shm::stats::model_stats(self.replies.pool.region(), self.gpu, model) {
            s.add(&s.cancel_count, n);
        }
    }
}

/// Checks a request of images for GPU preprocessing (the preproc pool read
/// their headers): one to max_batch_size of them. Returns the batch rows and
/// the key of the tensor they become, as `check_inputs` would give it, so
/// they share batches with tensor requests of that shape.
fn check_images(model: &Model, slot: &Slot, d: &Descriptor) -> Result<(u32, u64), String> {
    let bytes = slot.bytes(d.offset as usize, d.len as usize).map_err(|e| e.to_string())?;
    let n = tensor::bytes_elements(bytes)?.len();
    let cfg = &model.config;
    if n == 0 || n != d.rows as usize || n > cfg.max_batch_size as usize {
        return Err(format!("{n} images for {} rows (1 to {} are accepted)", d.rows, cfg.max_batch_size));
    }
    let Some(pre) = &cfg.preprocess else {
        return Err(format!("model `{}` does not take images", model.name));
    };
    let mut key = DefaultHasher::new();
    pre.image_dims()[..].hash(&mut key);
    Ok((n as u32, key.finish()))
}

/// Checks tensors against the model's config; returns the batch rows and a key
/// that is equal for requests that may share a batch (same non-batch shapes).
fn check_inputs(model: &Model, metas: &[TensorMeta]) -> Result<(u32, u64), String> {
    let cfg = &model.config;
    if metas.len() != cfg.inputs.len() {
        return Err(format!("model `{}` takes {} inputs, got {}", model.name, cfg.inputs.len(), metas.len()));
    }
    let batched = cfg.max_batch_size > 0;
    let mut rows = None;
    let mut key = DefaultHasher::new();
    for (m, c) in metas.iter().zip(&cfg.inputs) {
        let dims = if batched { m.dims.get(1..).unwrap_or(&[]) } else { &m.dims[..] };
        let fits = m.dtype == c.datatype
            && dims.len() == c.dims.len()
            && dims.iter().zip(&c.dims).all(|(&d, &want)| want == -1 || d == want)
            && (!batched || !m.dims.is_empty());
        if !fits {
            return Err(format!(
                "input `{}` is {} {:?}; the model takes {} {:?}",
                c.name,
                m.dtype,
                m.dims,
                c.datatype,
                cfg.full_shape(c)
            ));
        }
        let r = if batched { m.dims[0] as u32 } else { 1 };
        if *rows.get_or_insert(r) != r || r == 0 || (batched && r > cfg.max_batch_size) {
            return Err(format!("batch size {r} is not accepted (1 to {} for every input)", cfg.max_batch_size));
        }
        dims.hash(&mut key);
    }
    Ok((rows.unwrap_or(1), key.finish()))
}

impl Scheduler {
    /// Fails expired requests and hands batches to idle instances, at most
    /// `budget` computing at once; returns when the scheduler must look again even
    /// if nothing arrives.
    ///
    /// Backends that outnumber the cores only slow each other down (on the
    /// 2-core reference VM, OCR used ~12% more CPU per image with four model
    /// threads than with two), so a budget caps them. When several models have
    /// work, the one whose next request has the earliest deadline goes first: a
    /// pipeline's later steps (whose requests started earlier) finish before new
    /// requests start, which keeps latency and memory down.
    fn schedule(&mut self, now: u64) -> Option<u64> {
        let (replies, models, running, budget) = (&self.replies, &mut self.models, &mut self.running, self.budget);
        let mut wake: Option<u64> = None;
        let mut passed = vec![false; models.len()];
        while *running < budget {
            let urgency =
                |m: &ModelRt| m.state.head().map(|p| if p.deadline_ns != 0 { p.deadline_ns } else { p.arrived_ns });
            let next = (0..models.len())
                .filter(|&i| !passed[i] && !models[i].idle.is_empty())
                .filter_map(|i| urgency(&models[i]).map(|u| (u, i)))
                .min();
            let Some((_, i)) = next else { break };
            let m = &mut models[i];
            match m.state.next_batch(&m.limits, now) {
                Next::Run(batch) => {
                    let k = m.idle.pop().expect("filtered on an idle instance; this is a bug");
                    *running += 1;
                    if let Err(mpsc::SendError(batch)) = m.instances[k].send(batch) {
                        *running -= 1;
                        for p in batch {
                            replies.fail(
                                &p.item.desc,
                                Some(p.item.slot),
                                Status::Backend,
                                "the model instance stopped",
                            );
                        }
                    }
                }
                Next::WaitUntil(t) => {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                    passed[i] = true;
                }
                Next::Idle => passed[i] = true,
            }
        }
        for m in models.iter_mut() {
            // After next_batch: it sets aside requests it found expired.
            for p in m.state.take_expired(now) {
                let msg =
                    "the request timed out before it could be computed (parameter `timeout` or the server default)";
                replies.fail(&p.item.desc, Some(p.item.slot), Status::Timeout, msg);
            }
        }
        wake
    }
}
