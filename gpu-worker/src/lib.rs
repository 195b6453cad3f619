//! The inference worker: one process per device (on a machine without a GPU,
//! one process running the CPU backend). It owns the models, a dynamic batcher
//! per model and the backends that run batches. Backends run on their own OS
//! threads and never on an async runtime; the scheduler thread never blocks on
//! I/O or on a backend.
//!
//! `unsafe` is allowed only in [`cuda`] (STYLE.md).

pub mod backend;
pub mod batcher;
#[allow(unsafe_code)]
pub mod cuda;
pub mod frame;
mod instance;
pub mod onnx;
#[cfg(test)]
mod test_util;
pub mod tract;
mod worker;

pub use instance::PANIC_FILE_ENV;
pub use worker::{Config, GpuEngine, WorkerError, run};
