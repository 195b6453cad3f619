//! What the inference worker is started with: the [`Config`] the daemon
//! builds for it, and the [`GpuEngine`] that runs models on a GPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model_repo::Repository;
use shm::mailbox::Wiring;

/// What the inference worker needs to run.
pub struct Config {
    pub wiring: Wiring,
    /// The model table at start: its READY and LOADING entries are loaded.
    pub repository: Arc<Repository>,
    /// The tables the supervisor hands over later (the inbox is woken after
    /// each).
    pub updates: std::sync::mpsc::Receiver<Arc<Repository>>,
    /// Reports to the supervisor (loaded, applied).
    pub notify: model_repo::control::Notify,
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

impl Config {
    /// Most batches computing at once, for a worker with `instances` backend
    /// instances in all (`max_concurrent_batches`, or its default).
    pub fn batch_budget(&self, instances: usize) -> usize {
        match self.max_concurrent_batches {
            // On a GPU every instance (stream) may have a batch in flight.
            0 if self.cuda_device.is_some() => instances.max(1),
            0 => {
                let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                (cores / self.intra_op_threads.max(1)).max(1)
            }
            n => n,
        }
    }
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
