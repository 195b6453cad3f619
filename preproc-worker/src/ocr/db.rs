//! DB post-processing: rapidocr's `DBPostProcess` (boxes_from_bitmap with
//! score_mode "fast"), then `TextDetector.filter_tag_det_res` and
//! `RapidOCR.sorted_boxes`.

use super::contours::{binarize, find_contours};
use super::geometry::{HullStart, mini_box_of};
use super::raster::box_score_fast;
use super::unclip::unclip;
use super::{DetPrep, OcrError, Quad};

/// rapidocr's `Det` post-processing settings. The FP64 ones are Python
/// floats there and their last bits matter (the unclip distance is rounded
/// to whole pixels); `thresh` is compared with the FP32 map, in FP32.
#[derive(Clone, Debug, PartialEq)]
pub struct DbParams {
    /// A map pixel is text when its probability exceeds this.
    pub thresh: f32,
    /// A box is kept when the mean probability inside it reaches this.
    pub box_thresh: f64,
    /// At most this many contours are looked at (cv2's order: bottom first).
    pub max_candidates: usize,
    /// Boxes grow by area * unclip_ratio / perimeter on each side.
    pub unclip_ratio: f64,
    /// Dilate the binary map with a 2x2 kernel first.
    pub use_dilation: bool,
}

impl Default for DbParams {
    /// rapidocr-onnxruntime 1.4.4's config.yaml.
    fn default() -> Self {
        DbParams { thresh: 0.3, box_thresh: 0.5, max_candidates: 1000, unclip_ratio: 1.6, use_dilation: true }
    }
}

/// DBPostProcess.min_size: boxes with a shorter side below this are noise.
const MIN_SIZE: f32 = 3.0;

/// Text quads in `prep.image`'s pixels (whole numbers), in reading order,
/// each with its box score (mean map probability, before unclipping), from
/// the detector's probability map `prob` (`map_w` x `map_h`, row-major; the
/// detector input's size).
pub fn db_boxes(
    prob: &[f32],
    map_w: usize,
    map_h: usize,
    prep: &DetPrep,
    p: &DbParams,
) -> Result<Vec<(Quad, f32)>, OcrError> {
    if prob.len() != map_w * map_h || map_w != prep.input_w as usize || map_h != prep.input_h as usize {
        return Err(OcrError::BadMap {
            len: prob.len(),
            width: map_w,
            height: map_h,
            expected_w: prep.input_w,
            expected_h: prep.input_h,
        });
    }
    let (dest_w, dest_h) = (prep.image.width, prep.image.height);
    let mask = binarize(prob, map_w, map_h, p.thresh, p.use_dilation);
    let mut boxes = Vec::new();
    for c in find_contours(&mask, map_w, map_h, p.max_candidates) {
        let start = if c.hole { HullStart::At(c.start) } else { HullStart::AfterTopLeft };
        let (quad, side) = mini_box_of(&c.points, start);
        if side < MIN_SIZE {
            continue;
        }
        let score = box_score_fast(prob, map_w, map_h, &quad);
        if p.box_thresh > score {
            continue;
        }
        let grown = unclip(&quad, p.unclip_ratio);
        if grown.is_empty() {
            continue;
        }
        let (quad, side) = mini_box_of(&grown, HullStart::AfterTopRight);
        if side < MIN_SIZE + 2.0 {
            continue;
        }
        let scale = |v: f32, from: usize, to: u32| {
            // FP32 as NumPy computes it; np.round is half to even.
            (v / from as f32 * to as f32).round_ties_even().clamp(0.0, to as f32) as i32
        };
        let ints = quad.map(|[x, y]| [scale(x, map_w, dest_w), scale(y, map_h, dest_h)]);
        boxes.push((ints, score as f32));
    }
    Ok(sorted_boxes(filter_tag(boxes, dest_w, dest_h)))
}

/// `order_points_clockwise` (imutils): the two leftmost points are the left
/// side, each side ordered by y; ties keep the input order, as NumPy's sort
/// does for four elements.
fn order_clockwise(pts: [[i32; 2]; 4]) -> [[i32; 2]; 4] {
    let mut by_x = pts;
    by_x.sort_by_key(|p| p[0]);
    let mut left = [by_x[0], by_x[1]];
    let mut right = [by_x[2], by_x[3]];
    left.sort_by_key(|p| p[1]);
    right.sort_by_key(|p| p[1]);
    [left[0], right[0], right[1], left[1]]
}

/// `filter_tag_det_res`: order, clip to the image (as integers) and drop
/// boxes 3 pixels or less wide or high.
fn filter_tag(boxes: Vec<([[i32; 2]; 4], f32)>, w: u32, h: u32) -> Vec<(Quad, f32)> {
    let (max_x, max_y) = ((w as i32 - 1).max(0), (h as i32 - 1).max(0));
    let mut out = Vec::with_capacity(boxes.len());
    for (b, score) in boxes {
        let q: Quad = order_clockwise(b).map(|[x, y]| [x.clamp(0, max_x) as f32, y.clamp(0, max_y) as f32]);
        // np.linalg.norm of the FP32 difference, truncated by int().
        let side =
            |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1])).sqrt() as i32;
        if side(q[0], q[1]) <= 3 || side(q[0], q[3]) <= 3 {
            continue;
        }
        out.push((q, score));
    }
    out
}

/// `sorted_boxes`: top to bottom by the first corner, then boxes whose first
/// corners are within 10 pixels vertically are put left to right.
fn sorted_boxes(mut boxes: Vec<(Quad, f32)>) -> Vec<(Quad, f32)> {
    // Python's sorted() on (y, x) tuples; stable.
    boxes.sort_by(|a, b| {
        let (ka, kb) = ((a.0[0][1], a.0[0][0]), (b.0[0][1], b.0[0][0]));
        ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (a, b) = (boxes[j].0[0], boxes[j + 1].0[0]);
            if (b[1] - a[1]).abs() < 10.0 && b[0] < a[0] {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
    boxes
}
