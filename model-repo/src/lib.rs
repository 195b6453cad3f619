//! The model repository: `models/<name>/config.toml` plus
//! `models/<name>/<version>/model.onnx`. Loaded and validated once by the
//! supervisor, then handed to every child as part of its start-up spec, so all
//! processes agree on model indices (sorted by name) and shapes.
//!
//! Field names follow Triton's model configuration where one exists
//! (`max_batch_size`, `dynamic_batching.max_queue_delay_microseconds`,
//! `preferred_batch_size`, `instance` counts) so operators can port configs.
//! This crate does no I/O beyond reading the repository directory.
#![forbid(unsafe_code)]

mod config;
pub mod control;
mod load;
mod memory;
pub mod onnx_meta;
mod pipeline;

pub use config::{
    ChannelOrder, CpuBackend, DecodeOn, DynamicBatching, Layout, ModelConfig, Postprocess, PostprocessKind, Precision,
    Preprocess, ResizeMode, TensorConfig, VersionPolicy,
};
pub use load::{Model, ModelState, Repository, catalog, valid_name};
pub use memory::{DET_INPUT_PIXEL, SlotNeed, TABLE_ROOM};
pub use pipeline::{OcrDecode, OcrDetPostprocess, OcrDetPreprocess, OcrOrient, Pipeline, Step};
pub use shm::tensor::DType;

/// Everything that can be wrong with a repository or a model's config.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("model `{model}`: {message}")]
    Invalid { model: String, message: String },
    #[error("{0}")]
    Repository(String),
}
