//! The classifier's and recognizer's side of rapidocr: `resize_norm_img` of
//! TextClassifier (3x48x192) and TextRecognizer (3x48xW), its width and
//! batching rules, `ClsPostProcess`'s rotate decision and `CTCLabelDecode`.

use super::resize::resize_rows;
use super::{OcrError, Rgb, check, check_len, put_f32};

/// Classifier input height and width (Cls.cls_image_shape).
pub const CLS_HEIGHT: u32 = 48;
pub const CLS_WIDTH: u32 = 192;
/// Cls.cls_thresh: a crop is turned when "180" wins with more than this.
pub const CLS_THRESH: f32 = 0.9;
/// Recognizer input height and narrowest width (Rec.rec_img_shape).
pub const REC_HEIGHT: u32 = 48;
pub const REC_MIN_WIDTH: u32 = 320;
/// Global.text_score: rapidocr drops texts scoring below this.
pub const TEXT_SCORE: f32 = 0.5;

/// Both models' normalization per pixel value: `x / 255` in FP32, then
/// `-= 0.5` and `/= 0.5` in place, all FP32 as NumPy does them.
fn lut() -> [f32; 256] {
    std::array::from_fn(|x| (x as f32 / 255.0 - 0.5) / 0.5)
}

/// `math.ceil(48 * (w / h))` in FP64, the width keeping the crop's aspect ratio.
fn fit_width(crop: &Rgb, height: u32) -> f64 {
    (f64::from(height) * (f64::from(crop.width) / f64::from(crop.height))).ceil()
}

/// Resizes `crop` to `resized_w` x `height` (cv2.resize INTER_LINEAR) into a
/// 3 x height x `width` FP32 BGR tensor, zeros right of the image.
fn write_chw(crop: &Rgb, resized_w: u32, height: u32, width: u32, out: &mut [u8]) {
    out.fill(0);
    let lut = lut();
    let (w, plane) = (width as usize, width as usize * height as usize);
    resize_rows(crop, resized_w, height, |y, line| {
        for (x, px) in line.chunks_exact(3).enumerate() {
            let i = y * w + x;
            put_f32(out, i, lut[px[2] as usize]);
            put_f32(out, plane + i, lut[px[1] as usize]);
            put_f32(out, 2 * plane + i, lut[px[0] as usize]);
        }
    });
}

/// Bytes of one classifier input: 3 x 48 x 192 FP32.
pub fn cls_input_len() -> usize {
    3 * CLS_HEIGHT as usize * CLS_WIDTH as usize * 4
}

/// The classifier input for `crop` into `out` ([`cls_input_len`] bytes): BGR
/// planes, height 48, width min(192, ceil(48 * w / h)), `(x / 255 - 0.5) /
/// 0.5`, zeros on the right.
pub fn cls_input(crop: &Rgb, out: &mut [u8]) -> Result<(), OcrError> {
    check(crop)?;
    check_len(out, cls_input_len())?;
    let fit = fit_width(crop, CLS_HEIGHT);
    let resized_w = if fit > f64::from(CLS_WIDTH) { CLS_WIDTH } else { fit as u32 };
    write_chw(crop, resized_w, CLS_HEIGHT, CLS_WIDTH, out);
    Ok(())
}

/// ClsPostProcess plus TextClassifier's test: the classifier's two scores
/// (labels "0" and "180") say to turn the crop when "180" wins (a tie goes
/// to "0", as np.argmax picks the first) with more than `thresh` ([`CLS_THRESH`]).
pub fn cls_rotates(probs: &[f32], thresh: f32) -> bool {
    matches!(probs, [p0, p180, ..] if p180 > p0 && *p180 > thresh)
}

/// Bytes of one recognizer input `width` pixels wide: 3 x 48 x width FP32.
pub fn rec_input_len(width: u32) -> usize {
    3 * REC_HEIGHT as usize * width as usize * 4
}

/// The recognizer input for `crop` padded to `width` into `out`
/// ([`rec_input_len`] bytes): BGR planes, height 48, width min(width,
/// ceil(48 * w / h)), normalized like [`cls_input`], zeros on the right.
pub fn rec_input(crop: &Rgb, width: u32, out: &mut [u8]) -> Result<(), OcrError> {
    check(crop)?;
    check_len(out, rec_input_len(width))?;
    let fit = fit_width(crop, REC_HEIGHT);
    let resized_w = if fit > f64::from(width) { width } else { fit as u32 };
    if resized_w > 0 {
        write_chw(crop, resized_w, REC_HEIGHT, width, out);
    } else {
        out.fill(0);
    }
    Ok(())
}

/// TextRecognizer's batch width for a batch whose widest crop (by w / h) is
/// `w` x `h`: `int(48 * max(320 / 48, w / h))`, so 320 or more.
fn batch_width(w: u32, h: u32) -> u32 {
    let max_ratio = (f64::from(REC_MIN_WIDTH) / f64::from(REC_HEIGHT)).max(f64::from(w) / f64::from(h));
    (f64::from(REC_HEIGHT) * max_ratio) as u32
}

/// The input width rapidocr gives `crop` when it is alone in its batch (or
/// the widest of it): `int(48 * max(320 / 48, w / h))`.
pub fn rec_width(crop: &Rgb) -> u32 {
    batch_width(crop.width, crop.height.max(1))
}

/// Like [`rec_width`] with another floor than rapidocr's 320: `int(48 *
/// max(min_width / 48, w / h))`. Narrow text padded to 320 costs the
/// recognizer up to 3x the work for the same characters.
pub fn rec_width_from(crop: &Rgb, min_width: u32) -> u32 {
    let (w, h) = (f64::from(crop.width), f64::from(crop.height.max(1)));
    let ratio = (f64::from(min_width) / f64::from(REC_HEIGHT)).max(w / h);
    (f64::from(REC_HEIGHT) * ratio) as u32
}

/// `width` rounded up to a multiple of `step` and capped at `max`, so crops of
/// similar widths can share a batch. Padding wider than rapidocr would costs
/// a little accuracy, rarely; a crop capped at `max` is squeezed to fit.
pub fn bucket_width(width: u32, step: u32, max: u32) -> u32 {
    if step == 0 { width.min(max) } else { width.div_ceil(step).saturating_mul(step).min(max) }
}

/// One recognizer batch as rapidocr forms it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecBatch {
    /// Indices into the crops, in batch order.
    pub members: Vec<usize>,
    /// The input width of every member.
    pub width: u32,
}

/// rapidocr's batching: crops (`(width, height)` each) sorted by aspect
/// ratio, cut into runs of `batch` (Rec.rec_batch_num, 6), each padded to
/// its widest member's [`rec_width`]. Equal ratios keep their order here;
/// NumPy's argsort does not promise that, so crops with equal ratios can
/// trade places (and widths, at a batch boundary) compared with rapidocr.
pub fn rec_batches(sizes: &[(u32, u32)], batch: usize) -> Vec<RecBatch> {
    let ratio = |i: usize| f64::from(sizes[i].0) / f64::from(sizes[i].1.max(1));
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
    order
        .chunks(batch.max(1))
        .map(|members| {
            let widest = members.iter().map(|&i| batch_width(sizes[i].0, sizes[i].1.max(1))).max().unwrap_or(0);
            RecBatch { members: members.to_vec(), width: widest }
        })
        .collect()
}

/// Python's `str.splitlines()`: the line boundaries it knows, no trailing
/// empty line.
fn split_lines(s: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut cur));
            }
            '\n' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                lines.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The recognizer's charset from its ONNX metadata entry "character" (one
/// character per line), as CTCLabelDecode builds it: "blank" first, then the
/// lines, then " ".
pub fn charset_from_metadata(character: &str) -> Vec<String> {
    let mut set = vec!["blank".to_string()];
    set.extend(split_lines(character));
    set.push(" ".to_string());
    set
}

/// CTCLabelDecode for one sequence: `probs` is T x `classes` softmax
/// outputs, row-major. Per step the most likely class (the first on ties);
/// a repeat of the previous step's class and the blank (index 0) are
/// dropped; the text joins the rest, its score is their mean probability
/// (FP64, as NumPy's mean of Python floats), or 0 for no characters.
pub fn ctc_decode(probs: &[f32], classes: usize, charset: &[String]) -> Result<(String, f32), OcrError> {
    if classes == 0 || !probs.len().is_multiple_of(classes) {
        return Err(OcrError::BadLogits { len: probs.len(), classes });
    }
    if charset.len() != classes {
        return Err(OcrError::CharsetMismatch { classes, charset: charset.len() });
    }
    let (mut text, mut sum, mut kept) = (String::new(), 0f64, 0usize);
    let mut prev = usize::MAX;
    for step in probs.chunks_exact(classes) {
        let (mut best, mut p) = (0, step[0]);
        for (i, &v) in step.iter().enumerate().skip(1) {
            if v > p {
                (best, p) = (i, v);
            }
        }
        if best != prev && best != 0 {
            text.push_str(&charset[best]);
            sum += f64::from(p);
            kept += 1;
        }
        prev = best;
    }
    Ok((text, if kept == 0 { 0.0 } else { (sum / kept as f64) as f32 }))
}
