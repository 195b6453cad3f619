//! The inference worker: one process per device (on a machine without a GPU,
//! one process running the CPU backend). It owns the models, a dynamic batcher
//! per model and the backends that run batches. Backends run on their own OS
//! threads and never on an async runtime; the scheduler thread never blocks on
//! I/O or on a backend.
//!
//! The way through: `worker` runs the process loop; `lifecycle` follows the
//! supervisor's tables (models loaded, swapped and unloaded while serving);
//! `load` starts (and warms up) each model's instances; `scheduler` queues
//! requests (one [`batcher`] state per loaded entry) and hands batches to
//! idle instances; `instance` gathers, runs the [`backend`] and scatters the
//! outputs.
//!
//! `unsafe` is allowed only in [`cuda`] (STYLE.md).

pub mod backend;
pub mod batcher;
mod config;
#[allow(unsafe_code)]
pub mod cuda;
mod error;
pub mod frame;
mod instance;
mod lifecycle;
mod load;
pub mod onnx;
mod request;
mod scheduler;
#[cfg(test)]
mod test_util;
pub mod tract;
mod worker;

pub use config::{Config, GpuEngine};
pub use error::WorkerError;
pub use instance::PANIC_FILE_ENV;
pub use worker::run;
