//! rapidocr's `box_score_fast`: the mean of the probability map over a box,
//! rasterized as `cv2.fillPoly` does it (scanline fill in 16.16 fixed point
//! that takes pixels whose centres are inside, plus each edge drawn as an
//! 8-connected Bresenham line), so the same pixels are averaged.

use super::Quad;

const XY_SHIFT: u32 = 16;
const XY_ONE: i64 = 1 << XY_SHIFT;

/// A w x h mask, row-major.
struct Mask {
    w: i64,
    h: i64,
    on: Vec<bool>,
}

impl Mask {
    fn set(&mut self, x: i64, y: i64) {
        self.on[(y * self.w + x) as usize] = true;
    }
}

/// OpenCV's `clipLine` for a w x h image: clips the segment in place (even
/// when it then reports a miss, as OpenCV leaves it) and tells whether
/// anything is left. Integer division truncates, as in C.
fn clip_line(w: i64, h: i64, p1: &mut [i64; 2], p2: &mut [i64; 2]) -> bool {
    let (right, bottom) = (w - 1, h - 1);
    let code = |p: [i64; 2]| {
        i32::from(p[0] < 0) + i32::from(p[0] > right) * 2 + i32::from(p[1] < 0) * 4 + i32::from(p[1] > bottom) * 8
    };
    let (mut c1, mut c2) = (code(*p1), code(*p2));
    if (c1 & c2) == 0 && (c1 | c2) != 0 {
        if c1 & 12 != 0 {
            let a = if c1 < 8 { 0 } else { bottom };
            p1[0] += (a - p1[1]) * (p2[0] - p1[0]) / (p2[1] - p1[1]);
            p1[1] = a;
            c1 = i32::from(p1[0] < 0) + i32::from(p1[0] > right) * 2;
        }
        if c2 & 12 != 0 {
            let a = if c2 < 8 { 0 } else { bottom };
            p2[0] += (a - p2[1]) * (p2[0] - p1[0]) / (p2[1] - p1[1]);
            p2[1] = a;
            c2 = i32::from(p2[0] < 0) + i32::from(p2[0] > right) * 2;
        }
        if (c1 & c2) == 0 && (c1 | c2) != 0 {
            if c1 != 0 {
                let a = if c1 == 1 { 0 } else { right };
                p1[1] += (a - p1[0]) * (p2[1] - p1[1]) / (p2[0] - p1[0]);
                p1[0] = a;
                c1 = 0;
            }
            if c2 != 0 {
                let a = if c2 == 1 { 0 } else { right };
                p2[1] += (a - p2[0]) * (p2[1] - p1[1]) / (p2[0] - p1[0]);
                p2[0] = a;
                c2 = 0;
            }
        }
    }
    (c1 | c2) == 0
}

fn inside(m: &Mask, p: [i64; 2]) -> bool {
    (0..m.w).contains(&p[0]) && (0..m.h).contains(&p[1])
}

/// OpenCV's 8-connected `Line` (LineIterator, left to right, clipped first).
fn line(m: &mut Mask, mut p1: [i64; 2], mut p2: [i64; 2]) {
    if (!inside(m, p1) || !inside(m, p2)) && !clip_line(m.w, m.h, &mut p1, &mut p2) {
        return;
    }
    if p2[0] < p1[0] {
        std::mem::swap(&mut p1, &mut p2);
    }
    let (dx, mut dy) = (p2[0] - p1[0], p2[1] - p1[1]);
    let step_y = if dy < 0 { -1 } else { 1 };
    dy = dy.abs();
    let steep = dy > dx;
    let (major, minor) = if steep { (dy, dx) } else { (dx, dy) };
    let mut err = major - 2 * minor;
    let [mut x, mut y] = p1;
    for _ in 0..=major {
        m.set(x, y);
        let diagonal = err < 0;
        err += -2 * minor + if diagonal { 2 * major } else { 0 };
        if steep {
            y += step_y;
            x += i64::from(diagonal);
        } else {
            x += 1;
            if diagonal {
                y += step_y;
            }
        }
    }
}

/// `cv2.fillPoly(mask, [pts], 1)` with integer vertices and line type 8.
fn fill_poly(m: &mut Mask, pts: &[[i64; 2]]) {
    // (y0, y1, x at y0 in 16.16, dx per row)
    let mut edges: Vec<(i64, i64, i64, i64)> = Vec::with_capacity(pts.len());
    for i in 0..pts.len() {
        let (p0, p1) = (pts[(i + pts.len() - 1) % pts.len()], pts[i]);
        line(m, p0, p1);
        // An edge leaving the mask takes its slope from the clipped segment
        // and is extended back to its own rows (OpenCV 4.7+).
        let (mut t0, mut t1) = (p0, p1);
        let (mut y0c, mut y1c) = (p0[1], p1[1]);
        if !inside(m, t0) || !inside(m, t1) {
            clip_line(m.w, m.h, &mut t0, &mut t1);
            if t0[1] != t1[1] {
                (y0c, y1c) = (t0[1], t1[1]);
            }
        }
        if p0[1] == p1[1] {
            continue;
        }
        let (x0c, x1c) = (t0[0] << XY_SHIFT, t1[0] << XY_SHIFT);
        let dx = (x1c - x0c) / (y1c - y0c);
        edges.push(if p0[1] < p1[1] {
            (p0[1], p1[1], x0c + (p0[1] - y0c) * dx, dx)
        } else {
            (p1[1], p0[1], x1c + (p1[1] - y1c) * dx, dx)
        });
    }
    if edges.len() < 2 {
        return;
    }
    let ends = edges.iter().flat_map(|e| [e.2, e.2 + (e.1 - e.0) * e.3]);
    let (x_min, x_max) = ends.fold((i64::MAX, i64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let y_min = edges.iter().map(|e| e.0).min().unwrap_or(0);
    let y_max = edges.iter().map(|e| e.1).max().unwrap_or(0);
    if y_max < 0 || y_min >= m.h || x_max < 0 || x_min >= m.w << XY_SHIFT {
        return;
    }
    let mut xs = Vec::with_capacity(edges.len());
    for y in y_min.max(0)..y_max.min(m.h) {
        xs.clear();
        xs.extend(edges.iter().filter(|e| e.0 <= y && y < e.1).map(|e| e.2 + (y - e.0) * e.3));
        xs.sort_unstable();
        for pair in xs.chunks_exact(2) {
            // Pixel centres inside: ceil of the left edge, floor of the right.
            let (x1, x2) = ((pair[0] + XY_ONE - 1) >> XY_SHIFT, pair[1] >> XY_SHIFT);
            if x1 < m.w && x2 >= 0 {
                for x in x1.max(0)..=x2.min(m.w - 1) {
                    m.set(x, y);
                }
            }
        }
    }
}

/// `box_score_fast(pred, box)`: the mean of `prob` (w x h) over the box's
/// pixels, within the box's bounding rectangle clipped to the map. The box
/// corners are truncated to integers, as rapidocr's `astype(np.int32)` does.
pub(crate) fn box_score_fast(prob: &[f32], w: usize, h: usize, quad: &Quad) -> f64 {
    let (wi, hi) = (w as i64, h as i64);
    let fold = |f: fn(f32, f32) -> f32, c: usize| quad.iter().map(|p| p[c]).fold(quad[0][c], f);
    let xmin = (fold(f32::min, 0).floor() as i64).clamp(0, wi - 1);
    let xmax = (fold(f32::max, 0).ceil() as i64).clamp(0, wi - 1);
    let ymin = (fold(f32::min, 1).floor() as i64).clamp(0, hi - 1);
    let ymax = (fold(f32::max, 1).ceil() as i64).clamp(0, hi - 1);
    let (mw, mh) = (xmax - xmin + 1, ymax - ymin + 1);
    let mut mask = Mask { w: mw, h: mh, on: vec![false; (mw * mh) as usize] };
    // FP32 subtraction, then truncation towards zero, as NumPy does.
    let pts = quad.map(|[x, y]| [(x - xmin as f32) as i64, (y - ymin as f32) as i64]);
    fill_poly(&mut mask, &pts);
    let (mut sum, mut count) = (0f64, 0u64);
    for (r, row) in mask.on.chunks_exact(mw as usize).enumerate() {
        let line = &prob[(ymin as usize + r) * w + xmin as usize..][..mw as usize];
        for (&on, &p) in row.iter().zip(line) {
            if on {
                sum += f64::from(p);
                count += 1;
            }
        }
    }
    if count == 0 { 0.0 } else { sum / count as f64 }
}
