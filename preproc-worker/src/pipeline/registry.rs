//! Every kind of CPU step a pipeline config can name, and the one place that
//! turns a configured step into the object that runs it: a new kind of step
//! is a type implementing [`CpuStep`] and a line here.

use model_repo::{Repository, Step};

use super::ocr;
use super::step::CpuStep;

/// Builds configured step `step`, loading what it needs from the repository
/// (the recognizer's character list).
pub fn cpu_step(step: &Step, repo: &Repository) -> Result<Box<dyn CpuStep>, String> {
    Ok(match step {
        Step::OcrDetPreprocess(p) => Box::new(ocr::DetPreprocess::new(p)),
        Step::OcrDetPostprocess(p) => Box::new(ocr::DetPostprocess::new(p)),
        Step::OcrOrient(p) => Box::new(ocr::Orient::new(p)),
        Step::OcrDecode(p) => Box::new(ocr::Decode::new(p, repo)?),
        Step::Model { .. } => return Err("a model step is not a CPU step; this is a bug".into()),
    })
}
