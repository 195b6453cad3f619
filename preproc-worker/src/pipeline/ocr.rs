//! The OCR pipeline's CPU steps (`ocr_*` in a pipeline config): glue between
//! the executor and the algorithms in `crate::ocr`, which reproduce PaddleOCR
//! as packaged in rapidocr-onnxruntime.

use std::collections::BTreeMap;
use std::sync::Arc;

use model_repo::{Repository, Step};

use super::{Ctx, Io, Item};
use crate::image::{self, DecodeLimits};
use crate::ocr as algo;
use crate::worker::Failure;

/// Decodes the pipeline's input image (full size: detection needs it).
pub struct Decoder {
    pub limits: DecodeLimits,
}

/// One text line of the answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Line {
    pub text: String,
    pub score: f32,
    /// Corners (top-left, top-right, bottom-right, bottom-left) in the
    /// original image's pixels.
    #[serde(rename = "box")]
    pub points: algo::Quad,
}

/// A detected text region on its way through the pipeline.
pub struct Region {
    quad: algo::Quad,
    crop: Option<algo::Rgb>,
    text: String,
    score: f32,
}

/// The OCR part of a request's context.
#[derive(Default)]
pub struct State {
    image: Option<algo::Rgb>,
    prep: Option<algo::DetPrep>,
    /// The detector's boxes are in `regions` (which may be empty).
    detected: bool,
    regions: Vec<Region>,
}

impl State {
    pub fn from_image(bytes: &[u8], decoder: &Decoder) -> Result<State, Failure> {
        let info = image::probe(bytes, &decoder.limits).map_err(|e| Failure::input(e.to_string()))?;
        let mut data = Vec::new();
        let (width, height) =
            image::decode_into(bytes, &info, None, &mut data).map_err(|e| Failure::input(e.to_string()))?;
        Ok(State { image: Some(algo::Rgb { width, height, data }), ..State::default() })
    }
}

pub enum CpuStep {
    DetPre(algo::DetParams),
    DetPost { db: algo::DbParams, max_lines: usize },
    Orient { thresh: f32, width_step: u32, min_width: u32, max_width: u32 },
    Decode { charset: Arc<Vec<String>>, text_score: f32 },
}

/// The f64 closest to the decimal an f32 config value was written as.
fn f64_of(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

fn ocr_failure(e: algo::OcrError) -> Failure {
    Failure::input(e.to_string())
}

const CLS_SHAPE: [i64; 3] = [3, 48, 192];

impl CpuStep {
    pub fn new(step: &Step, repo: &Repository) -> Result<CpuStep, String> {
        Ok(match step {
            Step::OcrDetPreprocess(p) => CpuStep::DetPre(algo::DetParams {
                limit_side_len: p.limit_side_len,
                limit_type_min: p.limit_type == "min",
                max_side_len: p.max_side_len,
                min_side_len: p.min_side_len,
                min_height: p.min_height,
                width_height_ratio: f64_of(p.width_height_ratio),
            }),
            Step::OcrDetPostprocess(p) => CpuStep::DetPost {
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
            },
            Step::OcrOrient(p) => CpuStep::Orient {
                thresh: p.thresh,
                width_step: p.width_step,
                min_width: p.min_width,
                max_width: p.max_width,
            },
            Step::OcrDecode(p) => {
                let (_, model) = repo.get(&p.charset_model).ok_or_else(|| format!("no model `{}`", p.charset_model))?;
                let meta = model_repo::onnx_meta::read(&model.file(model.latest())).map_err(|e| e.to_string())?;
                let chars = meta.get("character").ok_or_else(|| {
                    format!("model `{}` has no `character` metadata for CTC decoding", p.charset_model)
                })?;
                CpuStep::Decode { charset: Arc::new(algo::charset_from_metadata(chars)), text_score: p.text_score }
            }
            Step::Model { .. } => return Err("a model step is not a CPU step; this is a bug".into()),
        })
    }

    /// Runs the step on `ctx`. A step that fails for want of a free
    /// shared-memory slot (`Failure::no_slot`) has changed nothing that a
    /// second run would do differently, so the executor can run it again
    /// once a slot is free: the work before the allocation is kept in `ctx`
    /// (the prepared image, the boxes) or only read from it (the model's
    /// answers), and nothing is changed in place before every slot is taken.
    pub fn run(&self, ctx: &mut Ctx, io: &Io) -> Result<(), Failure> {
        let id = ctx.desc.request_id;
        match self {
            CpuStep::DetPre(p) => {
                if ctx.ocr.prep.is_none() {
                    let image = ctx.ocr.image.take().ok_or_else(|| Failure::internal("no image to detect text in"))?;
                    let sizes = algo::det_sizes(image.width, image.height, p).map_err(ocr_failure)?;
                    // The detector input must fit one shared-memory slot: 12 bytes a
                    // pixel. A very thin image is scaled up until its short side is
                    // limit_side_len, which can make it enormous.
                    let pixels = sizes.input_w as u64 * sizes.input_h as u64;
                    let limit = (io.pool.largest() as u64).saturating_sub(4096) / 12;
                    if pixels > limit {
                        return Err(Failure::input(format!(
                            "a {}x{} image needs a {}x{} detector input ({pixels} pixels); the largest \
                             shared-memory slot holds {limit} (config: shm.slots)",
                            image.width, image.height, sizes.input_w, sizes.input_h
                        )));
                    }
                    ctx.ocr.prep = Some(algo::det_prepare(image, p).map_err(ocr_failure)?);
                }
                let prep = ctx.ocr.prep.as_ref().ok_or_else(|| Failure::internal("no prepared image"))?;
                let mut item = Item::new(io, id, &[1, 3, prep.input_h as i64, prep.input_w as i64], vec![])?;
                algo::det_input(prep, item.data_mut()).map_err(ocr_failure)?;
                ctx.pending = vec![item];
            }
            CpuStep::DetPost { db, max_lines } => {
                let prep = ctx.ocr.prep.as_ref().ok_or_else(|| Failure::internal("no prepared image"))?;
                if !ctx.ocr.detected {
                    let (_, answer) = ctx.outputs.first().ok_or_else(|| Failure::internal("no detector output"))?;
                    let (dims, prob) = answer.f32s(0)?;
                    let &[_, _, h, w] = dims else {
                        return Err(Failure::internal(format!("detector output of shape {dims:?}")));
                    };
                    let mut boxes = algo::db_boxes(prob, w as usize, h as usize, prep, db).map_err(ocr_failure)?;
                    boxes.truncate(*max_lines);
                    ctx.ocr.regions = boxes
                        .iter()
                        .map(|(quad, _)| Region {
                            quad: *quad,
                            crop: Some(algo::crop(prep, quad)),
                            text: String::new(),
                            score: 0.0,
                        })
                        .collect();
                    ctx.ocr.detected = true;
                }
                let n = ctx.ocr.regions.len();
                if n > 0 {
                    let dims = [n as i64, CLS_SHAPE[0], CLS_SHAPE[1], CLS_SHAPE[2]];
                    let mut item = Item::new(io, id, &dims, (0..n).collect())?;
                    let per = item.data_mut().len() / n;
                    for (r, out) in ctx.ocr.regions.iter().zip(item.data_mut().chunks_exact_mut(per)) {
                        algo::cls_input(r.crop.as_ref().expect("crops exist until orientation"), out)
                            .map_err(ocr_failure)?;
                    }
                    ctx.pending = vec![item];
                }
            }
            CpuStep::Orient { thresh, width_step, min_width, max_width } => {
                // Which crops to turn over (read only: turning is done once
                // every slot is taken, so that a run without a slot can be
                // repeated).
                let mut turn = vec![false; ctx.ocr.regions.len()];
                for (regions, answer) in &ctx.outputs {
                    let (dims, probs) = answer.f32s(0)?;
                    let classes = dims.get(1).copied().unwrap_or(0) as usize;
                    for (&r, row) in regions.iter().zip(probs.chunks_exact(classes.max(1))) {
                        if let Some(t) = turn.get_mut(r) {
                            *t = algo::cls_rotates(row, *thresh);
                        }
                    }
                }
                // Group crops by padded width (turning a crop over keeps its
                // size): a bucket is one model request, and equal widths from
                // any request share a batch.
                let mut buckets: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                for (i, r) in ctx.ocr.regions.iter().enumerate() {
                    let crop = r.crop.as_ref().expect("crops exist until orientation");
                    let w = algo::bucket_width(algo::rec_width_from(crop, *min_width), *width_step, *max_width);
                    buckets.entry(w).or_default().push(i);
                }
                let mut items = Vec::with_capacity(buckets.len());
                for (&width, members) in &buckets {
                    let dims = [members.len() as i64, 3, 48, width as i64];
                    items.push(Item::new(io, id, &dims, members.clone())?);
                }
                for ((width, members), mut item) in buckets.into_iter().zip(items) {
                    let per = item.data_mut().len() / members.len();
                    for (&r, out) in members.iter().zip(item.data_mut().chunks_exact_mut(per)) {
                        let mut crop = ctx.ocr.regions[r].crop.take().expect("each crop is in one bucket");
                        if turn[r] {
                            algo::rotate180(&mut crop);
                        }
                        algo::rec_input(&crop, width, out).map_err(ocr_failure)?;
                    }
                    ctx.pending.push(item);
                }
            }
            CpuStep::Decode { charset, text_score } => {
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
                        let region = &mut ctx.ocr.regions[r];
                        region.text = text;
                        region.score = score;
                    }
                }
                let prep = ctx.ocr.prep.as_ref().ok_or_else(|| Failure::internal("no prepared image"))?;
                ctx.lines = Some(
                    ctx.ocr
                        .regions
                        .iter()
                        .filter(|r| r.score >= *text_score)
                        .map(|r| Line {
                            text: r.text.clone(),
                            score: r.score,
                            points: algo::to_original(prep, &r.quad),
                        })
                        .collect(),
                );
            }
        }
        Ok(())
    }
}
