//! What one request to a model needs of a shared-memory slot at most: the
//! sizes the daemon derives its slot classes from, and checks a model
//! against before loading it.

use crate::config::ModelConfig;
use crate::pipeline::Step;

/// Bytes a slot keeps before its tensors for their table (names, types,
/// shapes).
pub const TABLE_ROOM: usize = 4096;

/// Bytes per pixel of the OCR detector's input (3 FP32 channels): the
/// largest thing an OCR request holds in one slot.
pub const DET_INPUT_PIXEL: usize = 12;

/// The largest slot one request needs, and what needs it (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotNeed {
    pub what: String,
    pub bytes: usize,
}

impl ModelConfig {
    /// The largest slot one request to this model needs that its config
    /// fixes: a model's largest tensor for one request row (inputs and
    /// outputs; free dimensions are bounded by the request body instead),
    /// or a pipeline's largest step. `None` when nothing is fixed.
    pub fn slot_need(&self) -> Option<SlotNeed> {
        match &self.pipeline {
            Some(p) => p.steps.iter().filter_map(step_need).max_by_key(|n| n.bytes),
            None => self.largest_tensor().map(|(name, bytes)| SlotNeed {
                what: format!("its tensor `{name}` ({bytes} bytes for one request row)"),
                bytes: bytes + TABLE_ROOM,
            }),
        }
    }
}

fn step_need(step: &Step) -> Option<SlotNeed> {
    match step {
        // The detector input of a `max_side_len` square image (sides round
        // up to multiples of 32). A thinner image can scale up to more; the
        // step refuses it if no slot holds it.
        Step::OcrDetPreprocess(p) => {
            let side = (p.max_side_len as usize).div_ceil(32) * 32;
            Some(SlotNeed {
                what: format!("its detector input for a {side}x{side} image"),
                bytes: side * side * DET_INPUT_PIXEL + TABLE_ROOM,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::ModelConfig;

    #[test]
    fn a_models_need_is_its_largest_fixed_tensor_and_a_pipelines_its_detector_input() {
        let cls = ModelConfig::parse(
            "max_batch_size = 8\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [3, 48, 192]\n\
             [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n",
            "cls",
        )
        .unwrap();
        let need = cls.slot_need().unwrap();
        assert_eq!(need.bytes, 3 * 48 * 192 * 4 + 4096);
        assert!(need.what.contains("`x`"), "{}", need.what);
        let free = ModelConfig::parse(
            "max_batch_size = 1\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [3, -1, -1]\n\
             [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1, -1, -1]\n",
            "det",
        )
        .unwrap();
        assert_eq!(free.slot_need(), None);
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/ocr/config.toml")).unwrap();
        let ocr = ModelConfig::parse(&text, "ocr").unwrap();
        let need = ocr.slot_need().unwrap();
        assert_eq!(need.bytes, 2016 * 2016 * 12 + 4096, "{need:?}");
    }
}
