//! The preproc worker: a process with no model that does every CPU stage of a
//! request (decode, resize, normalize, layout, post-processing) and writes the
//! finished tensor straight into a shared-memory slot. It must never block on
//! an inference worker: it hands tensors over and moves on.
#![forbid(unsafe_code)]

mod background;
pub mod classify;
pub mod contain;
mod failure;
pub mod frame;
pub mod image;
pub mod ocr;
mod pipeline;
mod postprocess;
pub mod preprocess;
mod request;
mod tensorize;
mod worker;

pub use worker::{Config, WorkerError, run};
