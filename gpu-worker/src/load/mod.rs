//! Loading the models: each instance's backend is created on the OS thread
//! that runs it for its life (with, on a GPU, its stream and GPU
//! preprocessing), and loading waits until every instance has loaded or one
//! has failed. On a GPU the shared-memory region is pinned first, once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use model_repo::{CpuBackend, Model, ModelConfig, Precision};
use shm::Peers;

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

/// What every instance is started with.
pub struct Loader<'a> {
    pub cfg: &'a Config,
    pub peers: &'a Arc<Peers>,
    /// Where instances say they are free.
    pub events: &'a mpsc::Sender<InstanceEvent>,
}

/// A model's instances, loaded and waiting for batches.
pub struct Loaded {
    pub instances: Vec<mpsc::Sender<InstanceCommand>>,
    /// Images of this model are decoded and preprocessed here, on the GPU.
    pub gpu_decode: bool,
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

impl Loader<'_> {
    /// Loads model `mi`'s instances, each on its own thread.
    pub fn load(&self, mi: usize, model: &Model) -> Result<Loaded, WorkerError> {
        let cfg = self.cfg;
        let opts = OnnxOptions {
            intra_op_threads: model.config.intra_op_threads.map(|n| n as usize).unwrap_or(cfg.intra_op_threads),
            spinning: false,
            cuda_device: None,
        };
        let gpu = cfg.cuda_device.map(|_| cfg.gpu_engine);
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
        let instances = (0..model.config.instances as usize)
            .map(|k| self.start(mi, model, k, recipe.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(s) = shm::stats::model_stats(self.peers.region(), cfg.index, mi as u16) {
            let ns = load_started.elapsed().as_nanos() as u64;
            s.load_duration_ns.store(ns, Ordering::Relaxed);
        }
        Ok(Loaded { instances, gpu_decode: recipe.gpu_decode.is_some() })
    }

    /// Starts instance `k` of model `mi` on its thread, and waits for it to
    /// load.
    fn start(
        &self,
        mi: usize,
        model: &Model,
        k: usize,
        recipe: Recipe,
    ) -> Result<mpsc::Sender<InstanceCommand>, WorkerError> {
        let err = |source| WorkerError::Backend { model: model.name.clone(), source };
        let (tx, rx) = mpsc::channel();
        let inst = Instance {
            name: model.name.clone(),
            model_index: mi,
            instance: k,
            gpu: self.cfg.index,
            config: model.config.clone(),
            peers: self.peers.clone(),
            events: self.events.clone(),
            waker: self.cfg.wiring.self_waker(),
        };
        // The backend is created on the thread that will run it for its life
        // (STYLE.md): ONNX Runtime applies some per-thread settings to the
        // thread that creates a session, and a CUDA context belongs to one
        // thread too.
        let (loaded_tx, loaded_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{}-{k}", model.name))
            .spawn(move || {
                let started = Instant::now();
                match open(&recipe) {
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
        Ok(tx)
    }
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
