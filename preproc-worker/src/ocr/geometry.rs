//! Convex hull, `cv2.minAreaRect`, `cv2.boxPoints` and rapidocr's
//! `get_mini_boxes`, as OpenCV 5.0 has them (rectangle angles in [-90, 0),
//! all four corners computed from the centre). minAreaRect is OpenCV's
//! rotating calipers transcribed operation by operation in FP32 (with the
//! FP64 steps where OpenCV has them): box corners that are whole numbers in
//! exact arithmetic come out as 9.9999995 or 10.000001 there, and rapidocr
//! truncates them, so the rounding has to be OpenCV's, not merely accurate.

use super::Quad;

/// `cv::RotatedRect`: centre, size and angle in degrees as OpenCV returns them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RotatedRect {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
    pub angle: f32,
}

/// Where the hull starts. OpenCV's convexHull returns the hull in the input's
/// cyclic order, so the start depends on the contour; it decides which of
/// two equally small rectangles the calipers keep and their last bits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HullStart {
    /// An outer contour: cv2's hull ends at the topmost-leftmost point.
    AfterTopLeft,
    /// A pyclipper result: it ends at the topmost-rightmost point.
    AfterTopRight,
    /// A hole: cv2's hull starts where the hole's border tracing started,
    /// or at the first hull vertex after it.
    At([i32; 2]),
}

fn cross(o: [i32; 2], a: [i32; 2], b: [i32; 2]) -> i64 {
    i64::from(a[0] - o[0]) * i64::from(b[1] - o[1]) - i64::from(a[1] - o[1]) * i64::from(b[0] - o[0])
}

/// Appends `p` to a monotone chain that starts at `floor`, dropping points
/// that would turn it clockwise or run straight.
fn push_convex(hull: &mut Vec<[i32; 2]>, floor: usize, p: [i32; 2]) {
    while hull.len() >= floor + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
        hull.pop();
    }
    hull.push(p);
}

/// The convex hull of `points` without collinear points, oriented as
/// OpenCV's `convexHull(points, clockwise=false)` (positive shoelace sum in
/// these y-down coordinates) and rotated per `start`.
pub(crate) fn convex_hull(points: &[[i32; 2]], start: HullStart) -> Vec<[i32; 2]> {
    let mut pts = points.to_vec();
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        // OpenCV returns two points largest first.
        pts.reverse();
        return pts;
    }
    // Andrew's monotone chain: lower then upper chain, counter-clockwise in
    // a y-up frame, which is OpenCV's orientation with y down.
    let mut hull: Vec<[i32; 2]> = Vec::with_capacity(pts.len() + 1);
    for &p in &pts {
        push_convex(&mut hull, 0, p);
    }
    hull.pop();
    let floor = hull.len();
    for &p in pts.iter().rev() {
        push_convex(&mut hull, floor, p);
    }
    hull.pop();
    let first = match start {
        HullStart::AfterTopLeft => {
            let top_left = (0..hull.len()).min_by_key(|&i| (hull[i][1], hull[i][0])).unwrap_or(0);
            (top_left + 1) % hull.len()
        }
        HullStart::AfterTopRight => {
            let top_right = (0..hull.len()).min_by_key(|&i| (hull[i][1], -hull[i][0])).unwrap_or(0);
            (top_right + 1) % hull.len()
        }
        HullStart::At(s) => hull.iter().position(|&p| p == s).unwrap_or_else(|| first_after(&hull, s)),
    };
    hull.rotate_left(first);
    hull
}

/// The hull vertex that follows `s` going round the hull: angles about the
/// centroid grow along the hull's orientation.
fn first_after(hull: &[[i32; 2]], s: [i32; 2]) -> usize {
    let n = hull.len() as f64;
    let cx = hull.iter().map(|p| f64::from(p[0])).sum::<f64>() / n;
    let cy = hull.iter().map(|p| f64::from(p[1])).sum::<f64>() / n;
    let angle = |p: [i32; 2]| (f64::from(p[1]) - cy).atan2(f64::from(p[0]) - cx);
    let a0 = angle(s);
    let turn = |p: [i32; 2]| (angle(p) - a0).rem_euclid(std::f64::consts::TAU);
    (0..hull.len()).min_by(|&i, &j| turn(hull[i]).total_cmp(&turn(hull[j]))).unwrap_or(0)
}

/// `cv::minAreaRect` of a convex polygon given as OpenCV's hull would be,
/// as OpenCV 5.0 reports it: the angle in [-90, 0) degrees, `w` the side
/// along that angle.
pub(crate) fn min_area_rect(hull: &[[f32; 2]]) -> RotatedRect {
    // With no rectangle to measure OpenCV leaves the angle at -90 degrees.
    let mut angle = -std::f64::consts::FRAC_PI_2;
    let (cx, cy, w, h) = match hull.len() {
        0 => (0.0, 0.0, 0.0, 0.0),
        1 => (hull[0][0], hull[0][1], 0.0, 0.0),
        2 => {
            let (p, q) = (hull[0], hull[1]);
            let (dx, dy) = (f64::from(p[0] - q[0]), f64::from(p[1] - q[1]));
            let len = (dx * dx + dy * dy).sqrt() as f32;
            let (cx, cy) = ((p[0] + q[0]) * 0.5, (p[1] + q[1]) * 0.5);
            if dx == 0.0 {
                (cx, cy, len, 0.0)
            } else if dy < 0.0 {
                angle = dy.atan2(dx);
                (cx, cy, len, 0.0)
            } else {
                if dy > 0.0 {
                    angle = -dx.atan2(dy);
                }
                (cx, cy, 0.0, len)
            }
        }
        _ => {
            let [o, e1, e2] = calipers(hull);
            let (cx, cy) = (o[0] + (e1[0] + e2[0]) * 0.5, o[1] + (e1[1] + e2[1]) * 0.5);
            let len =
                |v: [f32; 2]| (f64::from(v[0]) * f64::from(v[0]) + f64::from(v[1]) * f64::from(v[1])).sqrt() as f32;
            if e1[0] == 0.0 && e1[1] > 0.0 {
                (cx, cy, len(e1), len(e2))
            } else {
                angle = -f64::from(e1[0]).atan2(f64::from(e1[1]));
                (cx, cy, len(e2), len(e1))
            }
        }
    };
    RotatedRect { cx, cy, w, h, angle: (angle * 180.0 / std::f64::consts::PI) as f32 }
}

/// OpenCV's `rotatingCalipers(CALIPERS_MINAREARECT)` since 4.5.4 for a hull
/// in OpenCV's orientation: a corner and the two edge vectors of the
/// smallest rectangle. The caliper to advance is the one whose edge turns
/// least, decided by the sign of a dot product; the last rectangle of equal
/// area wins.
fn calipers(p: &[[f32; 2]]) -> [[f32; 2]; 3] {
    let n = p.len();
    let mut vect = vec![[0f32; 2]; n];
    let mut inv_len = vec![0f32; n];
    let (mut left, mut bottom, mut right, mut top) = (0, 0, 0, 0);
    let (mut left_x, mut right_x, mut top_y, mut bottom_y) = (p[0][0], p[0][0], p[0][1], p[0][1]);
    for i in 0..n {
        let (p0, p1) = (p[i], p[(i + 1) % n]);
        if p0[0] < left_x {
            (left_x, left) = (p0[0], i);
        }
        if p0[0] > right_x {
            (right_x, right) = (p0[0], i);
        }
        if p0[1] > top_y {
            (top_y, top) = (p0[1], i);
        }
        if p0[1] < bottom_y {
            (bottom_y, bottom) = (p0[1], i);
        }
        // FP32 differences widened to FP64, as OpenCV assigns them.
        let (dx, dy) = (f64::from(p1[0] - p0[0]), f64::from(p1[1] - p0[1]));
        vect[i] = [dx as f32, dy as f32];
        inv_len[i] = (1.0 / (dx * dx + dy * dy).sqrt()) as f32;
    }
    let mut seq = [bottom, right, top, left];
    let mut min_area = f32::MAX;
    let mut best = (0usize, 0f32, 0f32, 0f32, 0f32, 0usize);
    for _ in 0..n {
        // Each caliper's next edge turned into the first caliper's frame.
        let v = seq.map(|s| vect[s]);
        let rot = [v[0], [v[1][1], -v[1][0]], [-v[2][0], -v[2][1]], [-v[3][1], v[3][0]]];
        let mut main = 0;
        for i in 1..4 {
            // firstVecIsRight(rot[i], rot[main]): rot[i] turned a quarter clockwise, dotted.
            if rot[i][1] * rot[main][0] + -rot[i][0] * rot[main][1] < 0.0 {
                main = i;
            }
        }
        let pi = seq[main];
        let (lx, ly) = (vect[pi][0] * inv_len[pi], vect[pi][1] * inv_len[pi]);
        let (base_a, base_b) = match main {
            0 => (lx, ly),
            1 => (ly, -lx),
            2 => (-lx, -ly),
            _ => (-ly, lx),
        };
        seq[main] = (seq[main] + 1) % n;
        let (dx, dy) = (p[seq[1]][0] - p[seq[3]][0], p[seq[1]][1] - p[seq[3]][1]);
        let width = dx * base_a + dy * base_b;
        let (dx, dy) = (p[seq[2]][0] - p[seq[0]][0], p[seq[2]][1] - p[seq[0]][1]);
        let height = -dx * base_b + dy * base_a;
        let area = width * height;
        if area <= min_area {
            min_area = area;
            best = (seq[3], base_a, width, base_b, height, seq[0]);
        }
    }
    let (i0, a1, width, b1, height, i5) = best;
    let (a2, b2) = (-b1, a1);
    let c1 = a1 * p[i0][0] + p[i0][1] * b1;
    let c2 = a2 * p[i5][0] + p[i5][1] * b2;
    let idet = 1.0 / (a1 * b2 - a2 * b1);
    let px = (c1 * b2 - c2 * b1) * idet;
    let py = (a1 * c2 - a2 * c1) * idet;
    [[px, py], [a1 * width, b1 * width], [a2 * height, b2 * height]]
}

/// `cv2.boxPoints` (`RotatedRect::points`, OpenCV 5.0: the last two corners
/// are computed like the first two, not mirrored through the centre).
pub(crate) fn box_points(r: &RotatedRect) -> [[f32; 2]; 4] {
    let angle = f64::from(r.angle) * std::f64::consts::PI / 180.0;
    let b = angle.cos() as f32 * 0.5;
    let a = angle.sin() as f32 * 0.5;
    [
        [r.cx - a * r.h - b * r.w, r.cy + b * r.h - a * r.w],
        [r.cx + a * r.h - b * r.w, r.cy - b * r.h - a * r.w],
        [r.cx + a * r.h + b * r.w, r.cy - b * r.h + a * r.w],
        [r.cx - a * r.h + b * r.w, r.cy + b * r.h + a * r.w],
    ]
}

/// rapidocr's `get_mini_boxes`: the rectangle's corners as top-left,
/// top-right, bottom-right, bottom-left (by its x-then-y rule) and its
/// shorter side.
pub(crate) fn mini_box(r: &RotatedRect) -> (Quad, f32) {
    let mut pts = box_points(r);
    // Python's sorted() is stable, and so is sort_by; -0.0 and 0.0 tie in both.
    pts.sort_by(|p, q| p[0].partial_cmp(&q[0]).unwrap_or(std::cmp::Ordering::Equal));
    let (i1, i4) = if pts[1][1] > pts[0][1] { (0, 1) } else { (1, 0) };
    let (i2, i3) = if pts[3][1] > pts[2][1] { (2, 3) } else { (3, 2) };
    ([pts[i1], pts[i2], pts[i3], pts[i4]], r.w.min(r.h))
}

/// get_mini_boxes of a contour given as a point set: hull, then minAreaRect.
pub(crate) fn mini_box_of(points: &[[i32; 2]], start: HullStart) -> (Quad, f32) {
    let hull: Vec<[f32; 2]> = convex_hull(points, start).iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
    mini_box(&min_area_rect(&hull))
}
