//! Pipeline models: a sequence of CPU steps (run in the preproc pool) and
//! model steps (batched in the inference workers). The OCR pipeline is one:
//! detection preprocessing → `ppocr_det` → box extraction and crops →
//! `ppocr_cls` → rotation → `ppocr_rec` → CTC decoding.

use serde::{Deserialize, Serialize};

/// `[pipeline]` of a model's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

/// One step; `step = "<name>"` picks it, the other keys are its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Run a model of the repository on the tensors the previous CPU step made.
    Model { model: String },
    /// Decode the image and make the detector's input (rapidocr's preprocess,
    /// letterbox and DetPreProcess).
    OcrDetPreprocess(OcrDetPreprocess),
    /// DB post-processing of the detector's map into boxes, perspective crops,
    /// and the classifier's inputs.
    OcrDetPostprocess(OcrDetPostprocess),
    /// Rotate the crops the classifier calls `180`, and make the recognizer's
    /// inputs grouped by width.
    OcrOrient(OcrOrient),
    /// CTC greedy decoding, the score filter, and the answer.
    OcrDecode(OcrDecode),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcrDetPreprocess {
    /// The detector's input side limit.
    #[serde(default = "d736")]
    pub limit_side_len: u32,
    /// `"min"`: upscale until the shorter side is `limit_side_len`;
    /// `"max"`: downscale until the longer side is.
    #[serde(default = "min_str")]
    pub limit_type: String,
    /// Images larger than this on their longer side are reduced first.
    #[serde(default = "d2000")]
    pub max_side_len: u32,
    /// Images smaller than this on their shorter side are enlarged first.
    #[serde(default = "d30")]
    pub min_side_len: u32,
    /// Single-line images (height at most this, or wider than
    /// `width_height_ratio` x height) get a black letterbox above and below.
    #[serde(default = "d30")]
    pub min_height: u32,
    #[serde(default = "d8")]
    pub width_height_ratio: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcrDetPostprocess {
    /// Probability above which a pixel is text.
    #[serde(default = "p03")]
    pub thresh: f32,
    /// Mean probability a box needs to be kept.
    #[serde(default = "p05")]
    pub box_thresh: f32,
    #[serde(default = "d1000")]
    pub max_candidates: u32,
    /// How far boxes are grown (distance = area x ratio / perimeter).
    #[serde(default = "p16")]
    pub unclip_ratio: f32,
    #[serde(default = "yes")]
    pub use_dilation: bool,
    /// Most text lines one image may have.
    #[serde(default = "d256")]
    pub max_lines: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcrOrient {
    /// A crop is rotated when the classifier says `180` with at least this score.
    #[serde(default = "p09")]
    pub thresh: f32,
    /// Recognizer inputs are padded to a multiple of this width so crops of
    /// similar width (from any request) share a batch.
    #[serde(default = "d64")]
    pub width_step: u32,
    /// Narrowest recognizer input. PaddleOCR (and rapidocr) pad every crop to
    /// at least 320; short words then cost the recognizer up to 3x the work.
    #[serde(default = "d320")]
    pub min_width: u32,
    /// Widest recognizer input; wider crops are squeezed to it.
    #[serde(default = "d2048")]
    pub max_width: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcrDecode {
    /// Model whose ONNX metadata `character` holds the character list.
    pub charset_model: String,
    /// Lines recognized with a lower score are dropped.
    #[serde(default = "p05")]
    pub text_score: f32,
}

fn d30() -> u32 {
    30
}
fn d64() -> u32 {
    64
}
fn d256() -> u32 {
    256
}
fn d320() -> u32 {
    320
}
fn d736() -> u32 {
    736
}
fn d1000() -> u32 {
    1000
}
fn d2000() -> u32 {
    2000
}
fn d2048() -> u32 {
    2048
}
fn d8() -> f32 {
    8.0
}
fn p03() -> f32 {
    0.3
}
fn p05() -> f32 {
    0.5
}
fn p09() -> f32 {
    0.9
}
fn p16() -> f32 {
    1.6
}
fn yes() -> bool {
    true
}
fn min_str() -> String {
    "min".into()
}

impl Step {
    /// The step's name in configs and statistics (a model step: the model).
    pub fn name(&self) -> &str {
        match self {
            Step::Model { model } => model,
            Step::OcrDetPreprocess(_) => "ocr_det_preprocess",
            Step::OcrDetPostprocess(_) => "ocr_det_postprocess",
            Step::OcrOrient(_) => "ocr_orient",
            Step::OcrDecode(_) => "ocr_decode",
        }
    }
}

impl Pipeline {
    /// The models its model steps run, in order.
    pub fn models(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Model { model } => Some(model.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Checks the shape of the step list (what does not need other models).
    pub fn validate(&self) -> Result<(), String> {
        let Some(first) = self.steps.first() else {
            return Err("a pipeline needs at least one step".into());
        };
        if matches!(first, Step::Model { .. }) {
            return Err("the first step must be a CPU step that takes the image".into());
        }
        if matches!(self.steps.last(), Some(Step::Model { .. })) {
            return Err("the last step must be a CPU step that makes the answer".into());
        }
        for pair in self.steps.windows(2) {
            if matches!(pair, [Step::Model { .. }, Step::Model { .. }]) {
                return Err(
                    "two model steps in a row: a CPU step must turn one's outputs into the next's inputs".into()
                );
            }
        }
        for s in &self.steps {
            if let Step::OcrDetPreprocess(p) = s
                && p.limit_type != "min"
                && p.limit_type != "max"
            {
                return Err(format!("limit_type `{}`; accepted: \"min\", \"max\"", p.limit_type));
            }
            if let Step::OcrOrient(o) = s
                && (o.width_step == 0 || o.min_width == 0 || o.max_width < o.min_width)
            {
                return Err("ocr_orient needs width_step > 0 and 0 < min_width <= max_width".into());
            }
        }
        Ok(())
    }
}
