//! The OCR pipeline's CPU steps (`ocr_*` in a pipeline config): glue between
//! the engine and the algorithms in `crate::ocr`, which reproduce PaddleOCR
//! as packaged in rapidocr-onnxruntime. The steps share one [`State`] per
//! request (the prepared image, then the text regions), which only they know,
//! and the last one answers with the text lines.

use std::collections::BTreeMap;

use model_repo::Repository;
use shm::tensor::DType;

use super::step::{Answer, CpuStep, Ctx, Form, Output};
use super::tensors::{Item, Slots};
use crate::failure::Failure;
use crate::ocr as algo;

/// One text line of the answer.
#[derive(Clone, Debug, serde::Serialize)]
struct Line {
    text: String,
    score: f32,
    /// Corners (top-left, top-right, bottom-right, bottom-left) in the
    /// original image's pixels.
    #[serde(rename = "box")]
    points: algo::Quad,
}

/// A detected text region on its way through the pipeline.
struct Region {
    quad: algo::Quad,
    crop: Option<algo::Rgb>,
    text: String,
    score: f32,
}

/// What the OCR steps keep for one request between them.
#[derive(Default)]
struct State {
    prep: Option<algo::DetPrep>,
    /// The detector's boxes are in `regions` (which may be empty).
    detected: bool,
    regions: Vec<Region>,
}

/// The f64 closest to the decimal an f32 config value was written as.
fn f64_of(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

fn ocr_failure(e: algo::OcrError) -> Failure {
    Failure::input(e.to_string())
}

fn no_prep() -> Failure {
    Failure::internal("no prepared image")
}

const CLS_SHAPE: [i64; 3] = [3, 48, 192];

/// `ocr_det_preprocess`: the image → the detector's input.
pub struct DetPreprocess(algo::DetParams);

impl DetPreprocess {
    pub fn new(p: &model_repo::OcrDetPreprocess) -> DetPreprocess {
        DetPreprocess(algo::DetParams {
            limit_side_len: p.limit_side_len,
            limit_type_min: p.limit_type == "min",
            max_side_len: p.max_side_len,
            min_side_len: p.min_side_len,
            min_height: p.min_height,
            width_height_ratio: f64_of(p.width_height_ratio),
        })
    }
}

impl CpuStep for DetPreprocess {
    fn run(&self, ctx: &mut Ctx, slots: &Slots) -> Result<Option<Answer>, Failure> {
        let p = &self.0;
        let state = ctx.state.get::<State>()?;
        if state.prep.is_none() {
            let image = ctx.image.take().ok_or_else(|| Failure::internal("no image to detect text in"))?;
            let sizes = algo::det_sizes(image.width, image.height, p).map_err(ocr_failure)?;
            // The detector input must fit one shared-memory slot: 12 bytes a
            // pixel. A very thin image is scaled up until its short side is
            // limit_side_len, which can make it enormous.
            let pixels = sizes.input_w as u64 * sizes.input_h as u64;
            let limit =
                slots.largest().saturating_sub(model_repo::TABLE_ROOM) as u64 / model_repo::DET_INPUT_PIXEL as u64;
            if pixels > limit {
                return Err(Failure::input(format!(
                    "a {}x{} image needs a {}x{} detector input ({pixels} pixels); the largest \
                     shared-memory slot holds {limit} (config: shm.slots)",
                    image.width, image.height, sizes.input_w, sizes.input_h
                )));
            }
            state.prep = Some(algo::det_prepare(image, p).map_err(ocr_failure)?);
        }
        let prep = state.prep.as_ref().ok_or_else(no_prep)?;
        let mut item = Item::new(slots, &[1, 3, prep.input_h as i64, prep.input_w as i64], vec![])?;
        algo::det_input(prep, item.data_mut()).map_err(ocr_failure)?;
        ctx.pending = vec![item];
        Ok(None)
    }
}

/// `ocr_det_postprocess`: the detector's map → text regions and their
/// classifier inputs.
pub struct DetPostprocess {
    db: algo::DbParams,
    max_lines: usize,
}

impl DetPostprocess {
    pub fn new(p: &model_repo::OcrDetPostprocess) -> DetPostprocess {
        DetPostprocess {
            db: algo::DbParams {
                thresh: p.thresh,
                // rapidocr's values are Python floats: parse the config's decimal
                // as f64, not via f32 (1.6f32 as f64 is 1.6000000238, which
                // moves the unclip rounding by a pixel).
                box_thresh: f64_of(p.box_thresh),
                max_candidates: p.max_candidates as usize,
                unclip_ratio: f64_of(p.unclip_ratio),
                use_dilation: p.use_dilation,
            },
            max_lines: p.max_lines as usize,
        }
    }
}

impl CpuStep for DetPostprocess {
    fn run(&self, ctx: &mut Ctx, slots: &Slots) -> Result<Option<Answer>, Failure> {
        let state = ctx.state.get::<State>()?;
        let prep = state.prep.as_ref().ok_or_else(no_prep)?;
        if !state.detected {
            let (_, answer) = ctx.outputs.first().ok_or_else(|| Failure::internal("no detector output"))?;
            let (dims, prob) = answer.f32s(0)?;
            let &[_, _, h, w] = dims else {
                return Err(Failure::internal(format!("detector output of shape {dims:?}")));
            };
            let mut boxes = algo::db_boxes(prob, w as usize, h as usize, prep, &self.db).map_err(ocr_failure)?;
            boxes.truncate(self.max_lines);
            state.regions = boxes
                .iter()
                .map(|(quad, _)| Region {
                    quad: *quad,
                    crop: Some(algo::crop(prep, quad)),
                    text: String::new(),
                    score: 0.0,
                })
                .collect();
            state.detected = true;
        }
        let n = state.regions.len();
        if n > 0 {
            let dims = [n as i64, CLS_SHAPE[0], CLS_SHAPE[1], CLS_SHAPE[2]];
            let mut item = Item::new(slots, &dims, (0..n).collect())?;
            let per = item.data_mut().len() / n;
            for (r, out) in state.regions.iter().zip(item.data_mut().chunks_exact_mut(per)) {
                algo::cls_input(r.crop.as_ref().expect("crops exist until orientation"), out).map_err(ocr_failure)?;
            }
            ctx.pending = vec![item];
        }
        Ok(None)
    }
}

/// `ocr_orient`: the classifier's answers → crops turned upright, and the
/// recognizer's inputs grouped by width.
pub struct Orient {
    thresh: f32,
    width_step: u32,
    min_width: u32,
    max_width: u32,
}

impl Orient {
    pub fn new(p: &model_repo::OcrOrient) -> Orient {
        Orient { thresh: p.thresh, width_step: p.width_step, min_width: p.min_width, max_width: p.max_width }
    }
}

impl CpuStep for Orient {
    fn run(&self, ctx: &mut Ctx, slots: &Slots) -> Result<Option<Answer>, Failure> {
        let state = ctx.state.get::<State>()?;
        // Which crops to turn over (read only: turning is done once
        // every slot is taken, so that a run without a slot can be
        // repeated).
        let mut turn = vec![false; state.regions.len()];
        for (regions, answer) in &ctx.outputs {
            let (dims, probs) = answer.f32s(0)?;
            let classes = dims.get(1).copied().unwrap_or(0) as usize;
            for (&r, row) in regions.iter().zip(probs.chunks_exact(classes.max(1))) {
                if let Some(t) = turn.get_mut(r) {
                    *t = algo::cls_rotates(row, self.thresh);
                }
            }
        }
        // Group crops by padded width (turning a crop over keeps its
        // size): a bucket is one model request, and equal widths from
        // any request share a batch.
        let mut buckets: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in state.regions.iter().enumerate() {
            let crop = r.crop.as_ref().expect("crops exist until orientation");
            let w = algo::bucket_width(algo::rec_width_from(crop, self.min_width), self.width_step, self.max_width);
            buckets.entry(w).or_default().push(i);
        }
        let mut items = Vec::with_capacity(buckets.len());
        for (&width, members) in &buckets {
            let dims = [members.len() as i64, 3, 48, width as i64];
            items.push(Item::new(slots, &dims, members.clone())?);
        }
        for ((width, members), mut item) in buckets.into_iter().zip(items) {
            let per = item.data_mut().len() / members.len();
            for (&r, out) in members.iter().zip(item.data_mut().chunks_exact_mut(per)) {
                let mut crop = state.regions[r].crop.take().expect("each crop is in one bucket");
                if turn[r] {
                    algo::rotate180(&mut crop);
                }
                algo::rec_input(&crop, width, out).map_err(ocr_failure)?;
            }
            ctx.pending.push(item);
        }
        Ok(None)
    }
}

/// `ocr_decode`: the recognizer's answers → the text lines, the answer.
pub struct Decode {
    charset: Vec<String>,
    text_score: f32,
}

impl Decode {
    /// Reads the character list from the ONNX metadata of the model the
    /// config names.
    pub fn new(p: &model_repo::OcrDecode, repo: &Repository) -> Result<Decode, String> {
        let (_, model) = repo.get(&p.charset_model).ok_or_else(|| format!("no model `{}`", p.charset_model))?;
        let meta = model_repo::onnx_meta::read(&model.file(model.latest())).map_err(|e| e.to_string())?;
        let chars = meta
            .get("character")
            .ok_or_else(|| format!("model `{}` has no `character` metadata for CTC decoding", p.charset_model))?;
        Ok(Decode { charset: algo::charset_from_metadata(chars), text_score: p.text_score })
    }
}

impl CpuStep for Decode {
    fn run(&self, ctx: &mut Ctx, _: &Slots) -> Result<Option<Answer>, Failure> {
        let charset = &self.charset;
        let state = ctx.state.get::<State>()?;
        for (regions, answer) in &ctx.outputs {
            let (dims, probs) = answer.f32s(0)?;
            let &[rows, steps, classes] = dims else {
                return Err(Failure::internal(format!("recognizer output of shape {dims:?}")));
            };
            if classes as usize != charset.len() || rows as usize != regions.len() {
                return Err(Failure::internal(format!(
                    "recognizer output {dims:?} does not fit {} regions and {} characters",
                    regions.len(),
                    charset.len()
                )));
            }
            let per = (steps * classes) as usize;
            for (&r, row) in regions.iter().zip(probs.chunks_exact(per.max(1))) {
                let (text, score) = algo::ctc_decode(row, classes as usize, charset).map_err(ocr_failure)?;
                let region = &mut state.regions[r];
                region.text = text;
                region.score = score;
            }
        }
        let prep = state.prep.as_ref().ok_or_else(no_prep)?;
        let lines: Vec<Line> = state
            .regions
            .iter()
            .filter(|r| r.score >= self.text_score)
            .map(|r| Line { text: r.text.clone(), score: r.score, points: algo::to_original(prep, &r.quad) })
            .collect();
        answer(&lines, ctx.form).map(Some)
    }
}

/// The lines as JSON (`lines`: text, score, box each), or as v2 tensors: text
/// (BYTES [n]), score (FP32 [n]), box (FP32 [n, 4, 2]).
fn answer(lines: &[Line], form: Form) -> Result<Answer, Failure> {
    if form == Form::Json {
        let lines = serde_json::to_value(lines).map_err(|e| Failure::internal(e.to_string()))?;
        return Ok(Answer::Json(serde_json::Map::from_iter([("lines".to_string(), lines)])));
    }
    let n = lines.len() as i64;
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(&(l.text.len() as u32).to_le_bytes());
        text.extend_from_slice(l.text.as_bytes());
    }
    let scores: Vec<u8> = lines.iter().flat_map(|l| l.score.to_le_bytes()).collect();
    let boxes: Vec<u8> = lines.iter().flat_map(|l| l.points.iter().flatten().flat_map(|v| v.to_le_bytes())).collect();
    Ok(Answer::Tensors(vec![
        Output { dtype: DType::Bytes, dims: vec![n], data: text },
        Output { dtype: DType::F32, dims: vec![n], data: scores },
        Output { dtype: DType::F32, dims: vec![n, 4, 2], data: boxes },
    ]))
}
