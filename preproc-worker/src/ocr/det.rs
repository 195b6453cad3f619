//! The detector's side of rapidocr: `RapidOCR.preprocess` (reduce_max_side /
//! increase_min_side), `maybe_add_letterbox`, `DetPreProcess` (resize to
//! multiples of 32, normalize) and `_get_origin_points`.

use super::resize::{resize, resize_rows};
use super::{OcrError, Quad, Rgb, check, check_len, put_f32};

/// rapidocr's `Global` and `Det` settings that shape the detector input.
#[derive(Clone, Debug, PartialEq)]
pub struct DetParams {
    /// Det.limit_side_len: with `limit_type_min`, the detector input's shorter
    /// side is scaled up to this many pixels (never down).
    pub limit_side_len: u32,
    /// Det.limit_type "min" (true) or "max" (false). With "max" rapidocr
    /// ignores `limit_side_len` and caps the longer side at 960, 1500 or 2000
    /// by the image's size.
    pub limit_type_min: bool,
    /// Global.max_side_len: a longer side above this is scaled down to it first.
    pub max_side_len: u32,
    /// Global.min_side_len: a shorter side below this is scaled up to it first.
    pub min_side_len: u32,
    /// Global.min_height: images this short or shorter get black bands above
    /// and below (the letterbox), so text is not cut at the border.
    pub min_height: u32,
    /// Global.width_height_ratio: images wider than this many heights get the
    /// letterbox too; -1 turns that off. FP64, as rapidocr's Python float.
    pub width_height_ratio: f64,
}

impl Default for DetParams {
    /// rapidocr-onnxruntime 1.4.4's config.yaml.
    fn default() -> Self {
        DetParams {
            limit_side_len: 736,
            limit_type_min: true,
            max_side_len: 2000,
            min_side_len: 30,
            min_height: 30,
            width_height_ratio: 8.0,
        }
    }
}

/// The sizes [`det_prepare`] produces for an image, computed without pixels
/// so a caller can check them against its limits first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetSizes {
    /// After `preprocess`, before the letterbox.
    pub scaled_w: u32,
    pub scaled_h: u32,
    /// Original pixels per scaled pixel (rapidocr's ratio_w, ratio_h).
    pub ratio_w: f64,
    pub ratio_h: f64,
    /// Black rows added above (and as many below) the scaled image.
    pub pad_top: u32,
    /// The prepared image: the scaled image plus the letterbox.
    pub prepared_w: u32,
    pub prepared_h: u32,
    /// The detector input, multiples of 32.
    pub input_w: u32,
    pub input_h: u32,
}

/// An image made ready for detection, and what maps its coordinates back.
#[derive(Clone, Debug, PartialEq)]
pub struct DetPrep {
    /// The prepared image (scaled, letterboxed): [`db_boxes`](super::db_boxes)
    /// gives quads in its pixels and [`crop`](super::crop) cuts from it.
    pub image: Rgb,
    /// The detector input size; its probability map has this size too.
    pub input_w: u32,
    pub input_h: u32,
    /// Original pixels per scaled pixel.
    pub ratio_w: f64,
    pub ratio_h: f64,
    /// Letterbox rows above the scaled image.
    pub pad_top: u32,
    /// The caller's image size.
    pub raw_w: u32,
    pub raw_h: u32,
}

/// Python's `int(round(x / 32) * 32)`: round half to even, as Python does.
fn round32(x: i64) -> i64 {
    ((x as f64 / 32.0).round_ties_even() as i64).saturating_mul(32)
}

/// `int(h * ratio)`, `int(w * ratio)` rounded to multiples of 32, as
/// reduce_max_side, increase_min_side and DetPreProcess.resize all do.
fn scaled(w: u32, h: u32, ratio: f64) -> (i64, i64) {
    (round32((f64::from(w) * ratio) as i64), round32((f64::from(h) * ratio) as i64))
}

/// The sizes for a `width` x `height` image; an error where rapidocr fails
/// (or, for the detector's own resize, finds nothing) because a side would
/// become 0.
pub fn det_sizes(width: u32, height: u32, p: &DetParams) -> Result<DetSizes, OcrError> {
    let too_thin = || OcrError::TooThin { width, height };
    if width == 0 || height == 0 {
        return Err(too_thin());
    }
    let (mut w, mut h) = (width, height);
    let (mut ratio_w, mut ratio_h) = (1.0, 1.0);
    // preprocess: the two steps overwrite the ratios, as rapidocr's do (both
    // never apply: a shrunk side is 0 or at least 32).
    if w.max(h) > p.max_side_len {
        let side = f64::from(p.max_side_len);
        let (nw, nh) = scaled(w, h, if h > w { side / f64::from(h) } else { side / f64::from(w) });
        if nw <= 0 || nh <= 0 {
            return Err(too_thin());
        }
        (ratio_w, ratio_h) = (f64::from(w) / nw as f64, f64::from(h) / nh as f64);
        (w, h) = (nw as u32, nh as u32);
    }
    if w.min(h) < p.min_side_len {
        let side = f64::from(p.min_side_len);
        let (nw, nh) = scaled(w, h, if h < w { side / f64::from(h) } else { side / f64::from(w) });
        if nw <= 0 || nh <= 0 {
            return Err(too_thin());
        }
        (ratio_w, ratio_h) = (f64::from(w) / nw as f64, f64::from(h) / nh as f64);
        (w, h) = (nw as u32, nh as u32);
    }
    // maybe_add_letterbox
    let ratio = p.width_height_ratio;
    let too_wide = ratio != -1.0 && f64::from(w) / f64::from(h) > ratio;
    let pad_top = if h <= p.min_height || too_wide {
        // Saturating, so a nonsensical ratio (0) gives huge sizes, not a panic.
        let new_h = ((f64::from(w) / ratio) as i64).max(i64::from(p.min_height)).saturating_mul(2);
        (new_h.saturating_sub(i64::from(h)).abs() / 2).min(i64::from(u32::MAX / 4)) as u32
    } else {
        0
    };
    let (pw, ph) = (w, h.saturating_add(2 * pad_top));
    // DetPreProcess.resize; with limit "max" rapidocr picks the limit by size.
    let (pwf, phf) = (f64::from(pw), f64::from(ph));
    let r = if p.limit_type_min {
        let limit = f64::from(p.limit_side_len);
        if pw.min(ph) < p.limit_side_len { if ph < pw { limit / phf } else { limit / pwf } } else { 1.0 }
    } else {
        let longer = pw.max(ph);
        let limit = if longer < 960 {
            960
        } else if longer < 1500 {
            1500
        } else {
            2000
        };
        if longer > limit { if ph > pw { f64::from(limit) / phf } else { f64::from(limit) / pwf } } else { 1.0 }
    };
    let (iw, ih) = scaled(pw, ph, r);
    if iw <= 0 || ih <= 0 {
        return Err(too_thin());
    }
    Ok(DetSizes {
        scaled_w: w,
        scaled_h: h,
        ratio_w,
        ratio_h,
        pad_top,
        prepared_w: pw,
        prepared_h: ph,
        input_w: iw.min(i64::from(u32::MAX)) as u32,
        input_h: ih.min(i64::from(u32::MAX)) as u32,
    })
}

/// rapidocr's `preprocess` and `maybe_add_letterbox` on `img`, plus the
/// detector input size. Takes the image by value: when no scaling applies
/// (most photos) it becomes the prepared image without a copy.
pub fn det_prepare(img: Rgb, p: &DetParams) -> Result<DetPrep, OcrError> {
    check(&img)?;
    let s = det_sizes(img.width, img.height, p)?;
    let (raw_w, raw_h) = (img.width, img.height);
    let scaled = if (s.scaled_w, s.scaled_h) == (raw_w, raw_h) { img } else { resize(&img, s.scaled_w, s.scaled_h) };
    let image = if s.pad_top == 0 {
        scaled
    } else {
        let mut padded = Rgb::black(s.prepared_w, s.prepared_h);
        let offset = s.pad_top as usize * s.prepared_w as usize * 3;
        padded.data[offset..offset + scaled.data.len()].copy_from_slice(&scaled.data);
        padded
    };
    Ok(DetPrep {
        image,
        input_w: s.input_w,
        input_h: s.input_h,
        ratio_w: s.ratio_w,
        ratio_h: s.ratio_h,
        pad_top: s.pad_top,
        raw_w,
        raw_h,
    })
}

/// Bytes of the detector input for `prep`: 1 x 3 x input_h x input_w FP32.
pub fn det_input_len(prep: &DetPrep) -> usize {
    3 * prep.input_w as usize * prep.input_h as usize * 4
}

/// DetPreProcess.normalize per pixel value: `x * (1/255)` in FP32 (NumPy
/// casts the Python scale to the array's type), then `(v - 0.5) / 0.5` in
/// FP64 (the mean and std are FP64 arrays), then back to FP32.
fn det_lut() -> [f32; 256] {
    let scale = (1.0f64 / 255.0) as f32;
    std::array::from_fn(|x| ((f64::from(x as f32 * scale) - 0.5) / 0.5) as f32)
}

/// Writes the detector input for `prep` into `out` ([`det_input_len`] bytes):
/// 1 x 3 x H x W FP32 little-endian, BGR planes, `(x / 255 - 0.5) / 0.5`,
/// resized like cv2.resize INTER_LINEAR.
pub fn det_input(prep: &DetPrep, out: &mut [u8]) -> Result<(), OcrError> {
    check_len(out, det_input_len(prep))?;
    let lut = det_lut();
    let (w, plane) = (prep.input_w as usize, prep.input_w as usize * prep.input_h as usize);
    resize_rows(&prep.image, prep.input_w, prep.input_h, |y, line| {
        for (x, px) in line.chunks_exact(3).enumerate() {
            let i = y * w + x;
            // BGR planes from RGB pixels.
            put_f32(out, i, lut[px[2] as usize]);
            put_f32(out, plane + i, lut[px[1] as usize]);
            put_f32(out, 2 * plane + i, lut[px[0] as usize]);
        }
    });
    Ok(())
}

/// rapidocr's `_get_origin_points`: a quad in the prepared image back in the
/// caller's image, clipped to [0, raw_w] x [0, raw_h]. FP32 arithmetic, as
/// NumPy does it on rapidocr's FP32 box array.
pub fn to_original(prep: &DetPrep, quad: &Quad) -> Quad {
    let (rw, rh) = (prep.ratio_w as f32, prep.ratio_h as f32);
    let (top, max_x, max_y) = (prep.pad_top as f32, prep.raw_w as f32, prep.raw_h as f32);
    quad.map(|[x, y]| [(x * rw).max(0.0).min(max_x), ((y - top) * rh).max(0.0).min(max_y)])
}
