//! Loading a model: each instance's backend is created on the OS thread
//! that runs it for its life (with, on a GPU, its stream and GPU
//! preprocessing) and warmed up there ([`warmup`]); a load waits until every
//! instance has loaded or one has failed, and then on failure stops those
//! that loaded. At start-up the worker loads its models this way on its own
//! thread; while it serves, a load runs on a thread of its own
//! ([`Loader::spawn`]) and reports [`LoadDone`], so the scheduler never
//! waits for it. On a GPU the shared-memory region is pinned first, once.

mod warmup;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use model_repo::{CpuBackend, Model, ModelConfig, Precision};
use shm::Peers;
use shm::mailbox::SelfWaker;

use self::warmup::Warmed;
use crate::backend::{self, Backend, BackendError};
use crate::config::{Config, GpuEngine};
use crate::cuda::pinned::Pinned;
use crate::error::WorkerError;
use crate::instance::{self, Gpu, Instance, InstanceCommand, InstanceEvent};
use crate::onnx::{OnnxBackend, OnnxOptions};
use crate::tract::{Target, TractBackend, TractOptions};

/// Page-locks the whole shared-memory region once, so copies between it and
/// the device are DMA without a staging buffer.
pub fn pin_region(device: u32, region: &Arc<shm::Region>) -> Result<Pinned, WorkerError> {
    let fail = |m: String| WorkerError::Runtime(BackendError::Run(format!("GPU {device}: {m}")));
    // CUDA_VISIBLE_DEVICES leaves this worker's GPU as ordinal 0.
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| fail(e.to_string()))?;
    let pinned = Pinned::register(&ctx, region.clone())
        .map_err(|e| fail(format!("cannot pin the shared-memory region: {e}")))?;
    tracing::info!("GPU {device}: {} MiB of shared memory pinned", pinned.len() >> 20);
    Ok(pinned)
}

/// What every instance is started with. Owned, so that a load can run on a
/// thread of its own.
#[derive(Clone)]
pub struct Loader {
    pub peers: Arc<Peers>,
    /// Where instances say they are free.
    pub events: mpsc::Sender<InstanceEvent>,
    /// Wakes the scheduler (instances after each batch, a load when done).
    pub waker: SelfWaker,
    /// This inference worker's index (its statistics' row).
    pub gpu_index: u16,
    /// Default ONNX Runtime intra-op threads (a model's config may override it).
    pub intra_op_threads: usize,
    /// What runs models on this worker's GPU; None: the CPU backends.
    pub gpu: Option<GpuEngine>,
}

/// A model's instances, loaded, warmed up and waiting for batches.
pub struct Loaded {
    pub instances: Vec<mpsc::Sender<InstanceCommand>>,
    /// The instances' threads: dropping `instances` stops them, joining
    /// them waits until their memory is freed.
    pub threads: Vec<JoinHandle<()>>,
    /// Images of this model are decoded and preprocessed here, on the GPU.
    pub gpu_decode: bool,
}

/// A load that ran on its own thread, done: entry `slot` (`model`) loaded,
/// or why not (which model, which version, what failed).
pub struct LoadDone {
    pub slot: usize,
    pub model: Model,
    pub result: Result<Loaded, String>,
}

/// How one instance's backend is opened, on its thread.
#[derive(Clone)]
struct Recipe {
    file: std::path::PathBuf,
    opts: OnnxOptions,
    config: ModelConfig,
    gpu: Option<GpuEngine>,
    /// `decode = "gpu"` on a GPU: the preprocessing and the input's type.
    gpu_decode: Option<(model_repo::Preprocess, model_repo::DType)>,
}

/// What an instance's thread says once its backend is open and warmed up.
type Opened = Result<(Duration, Warmed, String), BackendError>;

impl Loader {
    /// The loader of the worker started with `cfg`.
    pub fn new(cfg: &Config, peers: Arc<Peers>, events: mpsc::Sender<InstanceEvent>) -> Loader {
        Loader {
            peers,
            events,
            waker: cfg.wiring.self_waker(),
            gpu_index: cfg.index,
            intra_op_threads: cfg.intra_op_threads,
            gpu: cfg.cuda_device.map(|_| cfg.gpu_engine),
        }
    }

    /// Loads entry `mi` (`model`) on a thread of its own, and sends what
    /// came of it to `done` (then wakes the scheduler).
    pub fn spawn(self, mi: usize, model: Model, done: mpsc::Sender<LoadDone>) {
        let name = format!("load-{}", model.name);
        let (loader, entry) = (self.clone(), model.clone());
        let done_here = done.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let result = loader.load(mi, &entry).map_err(|e| reason(&entry, &e));
            let _ = done_here.send(LoadDone { slot: mi, model: entry, result });
            loader.waker.wake();
        });
        if let Err(e) = spawned {
            let result = Err(reason(&model, &WorkerError::Thread(e)));
            let _ = done.send(LoadDone { slot: mi, model, result });
            self.waker.wake();
        }
    }

    /// Loads entry `mi`'s instances, each on its own thread, one after the
    /// other; on failure, stops those that loaded.
    pub fn load(&self, mi: usize, model: &Model) -> Result<Loaded, WorkerError> {
        let opts = OnnxOptions {
            intra_op_threads: model.config.intra_op_threads.map(|n| n as usize).unwrap_or(self.intra_op_threads),
            spinning: false,
            cuda_device: None,
        };
        let gpu = self.gpu;
        // `decode = "gpu"` on a GPU: each instance decodes and preprocesses its
        // batches' images on its own stream (the preproc pool sends them on).
        let gpu_decode = match (&model.config.preprocess, model.config.image_input()) {
            (Some(p), Some((_, input))) if gpu.is_some() && model.config.decodes_on_gpu() => {
                Some((p.clone(), input.datatype))
            }
            _ => None,
        };
        let recipe = Recipe { file: model.file(model.latest()), opts, config: model.config.clone(), gpu, gpu_decode };
        let load_started = Instant::now();
        let mut loaded = Loaded { instances: Vec::new(), threads: Vec::new(), gpu_decode: recipe.gpu_decode.is_some() };
        for k in 0..model.config.instances as usize {
            match self.start(mi, model, k, recipe.clone()) {
                Ok((tx, thread)) => {
                    loaded.instances.push(tx);
                    loaded.threads.push(thread);
                }
                Err(e) => {
                    loaded.stop();
                    return Err(e);
                }
            }
        }
        let took = load_started.elapsed();
        if let Some(s) = shm::stats::model_stats(self.peers.region(), self.gpu_index, mi as u16) {
            s.load_duration_ns.store(took.as_nanos() as u64, Ordering::Relaxed);
        }
        tracing::info!("loaded {} version {} (entry {mi}) in {took:?}", model.name, model.latest());
        Ok(loaded)
    }

    /// Starts instance `k` of model `mi` on its thread, and waits for it to
    /// load and warm up.
    fn start(
        &self,
        mi: usize,
        model: &Model,
        k: usize,
        recipe: Recipe,
    ) -> Result<(mpsc::Sender<InstanceCommand>, JoinHandle<()>), WorkerError> {
        let err = |source| WorkerError::Backend { model: model.name.clone(), source };
        let (tx, rx) = mpsc::channel();
        let inst = Instance {
            name: model.name.clone(),
            model_index: mi,
            instance: k,
            gpu: self.gpu_index,
            config: model.config.clone(),
            peers: self.peers.clone(),
            events: self.events.clone(),
            waker: self.waker.clone(),
        };
        // The backend is created on the thread that will run it for its life
        // (STYLE.md): ONNX Runtime applies some per-thread settings to the
        // thread that creates a session, and a CUDA context belongs to one
        // thread too.
        let (loaded_tx, loaded_rx) = mpsc::channel::<Opened>();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{k}", model.name))
            .spawn(move || {
                let started = Instant::now();
                let (mut b, gpu) = match open(&recipe) {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let took = started.elapsed();
                let warmed = warmup::run(b.as_mut(), &recipe.config, recipe.gpu_decode.is_some());
                let mut description = b.describe();
                if let Some(d) = gpu.as_ref().and_then(|g| g.decode.as_ref()) {
                    description = format!("{description}; {}", d.describe());
                }
                match warmed {
                    Ok(w) => {
                        let _ = loaded_tx.send(Ok((took, w, description)));
                        instance::run(inst, b, gpu, rx);
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                }
            })
            .map_err(WorkerError::Thread)?;
        let opened =
            loaded_rx.recv().unwrap_or_else(|_| Err(BackendError::Run("the backend thread died while loading".into())));
        let (took, warmed, description) = match opened {
            Ok(o) => o,
            Err(e) => {
                let _ = thread.join();
                return Err(err(e));
            }
        };
        match warmed {
            Warmed::Took(w) => {
                tracing::info!("loaded {} instance {k} in {took:?}, warmed up in {w:?}: {description}", model.name)
            }
            Warmed::Skipped(why) => {
                tracing::info!("loaded {} instance {k} in {took:?} (no warm-up: {why}): {description}", model.name)
            }
        }
        Ok((tx, thread))
    }
}

impl Loaded {
    /// Stops the instances and waits until their threads are gone (their
    /// backends dropped, their memory freed).
    pub fn stop(self) {
        drop(self.instances);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Why a load failed, as its user wants it: which model, which version,
/// what failed.
fn reason(model: &Model, e: &WorkerError) -> String {
    let what = match e {
        WorkerError::Backend { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    format!("model `{}` version {}: {what}", model.name, model.latest())
}

/// Opens an instance's backend, checks it against the config, and on a GPU
/// opens its GPU side.
fn open(r: &Recipe) -> Result<(Box<dyn Backend>, Option<Gpu>), BackendError> {
    let b = open_backend(&r.file, &r.opts, &r.config, r.gpu)?;
    backend::check_config(b.as_ref(), &r.config)?;
    let gpu = match r.gpu {
        Some(_) => Some(Gpu::open(r.gpu_decode.as_ref())?),
        None => None,
    };
    Ok((b, gpu))
}

/// The backend for one instance: on a GPU, the daemon's GPU engine
/// (tract-cuda: one CUDA stream per instance thread); on the CPU, the
/// model's `backend`.
fn open_backend(
    file: &Path,
    opts: &OnnxOptions,
    config: &ModelConfig,
    gpu: Option<GpuEngine>,
) -> Result<Box<dyn Backend>, BackendError> {
    let fp16 = config.precision == Precision::Fp16;
    let shapes: Vec<Vec<i64>> = config.inputs.iter().map(|t| config.full_shape(t)).collect();
    let tract = |target, fp16| TractBackend::load(file, TractOptions { target, fp16 }, Some(&shapes));
    Ok(match (gpu, config.backend) {
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
        (None, CpuBackend::Tract) => Box::new(tract(Target::Cpu, false)?),
        (None, CpuBackend::OnnxRuntime) => Box::new(OnnxBackend::load(file, opts)?),
    })
}
