//! Pipeline models: a declared chain of CPU steps (run here, in the preproc
//! worker) and model steps (batched in the inference workers), run for each
//! request by the [`Engine`]. The engine knows no kind of step: CPU steps are
//! objects behind the [`CpuStep`] trait, built from the config by
//! [`registry`]; OCR's are in [`ocr`].

mod engine;
mod ocr;
mod registry;
mod step;
mod tensors;

pub use engine::{Engine, Io, timeout_failure};

#[cfg(test)]
mod tests;
