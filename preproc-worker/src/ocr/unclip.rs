//! rapidocr's `unclip`: grow a box by `area * unclip_ratio / perimeter`
//! (shapely's area and length) with pyclipper's `PyclipperOffset` and round
//! joins. Clipper works on integers: it truncates the box corners, offsets
//! each edge along its normal and approximates each corner's arc with
//! rounded points. The points are reproduced exactly; the union Clipper runs
//! afterwards only removes points that are not on the convex hull, and the
//! next step (minAreaRect) reads the hull alone, so it is left out.

use super::Quad;

/// Clipper's default ArcTolerance (pyclipper's too).
const ARC_TOLERANCE: f64 = 0.25;

/// Clipper's `Round`: half away from zero.
fn round(v: f64) -> i64 {
    if v < 0.0 { (v - 0.5) as i64 } else { (v + 0.5) as i64 }
}

/// shapely's `Polygon(box).area` and `.length` (GEOS's formulas).
fn area_and_length(q: &Quad) -> (f64, f64) {
    let p: Vec<[f64; 2]> = q.iter().chain(std::iter::once(&q[0])).map(|p| [f64::from(p[0]), f64::from(p[1])]).collect();
    let x0 = p[0][0];
    let mut sum = 0.0;
    for i in 1..p.len() - 1 {
        sum += (p[i][0] - x0) * (p[i - 1][1] - p[i + 1][1]);
    }
    let length = p.windows(2).map(|s| ((s[1][0] - s[0][0]).powi(2) + (s[1][1] - s[0][1]).powi(2)).sqrt()).sum();
    ((sum / 2.0).abs(), length)
}

/// Clipper's `GetUnitNormal`: the edge direction turned a quarter clockwise.
fn unit_normal(a: [i64; 2], b: [i64; 2]) -> [f64; 2] {
    if a == b {
        return [0.0, 0.0];
    }
    let (dx, dy) = ((b[0] - a[0]) as f64, (b[1] - a[1]) as f64);
    let f = 1.0 / (dx * dx + dy * dy).sqrt();
    [dy * f, -(dx * f)]
}

/// The expanded polygon's points for `quad` grown by `unclip_ratio`; empty
/// where Clipper drops the path (fewer than 3 distinct integer corners).
pub(crate) fn unclip(quad: &Quad, unclip_ratio: f64) -> Vec<[i32; 2]> {
    let (area, length) = area_and_length(quad);
    let delta = area * unclip_ratio / length;
    // pyclipper converts coordinates with int(): truncation towards zero.
    let mut path: Vec<[i64; 2]> = Vec::with_capacity(4);
    for p in quad {
        let q = [p[0] as i64, p[1] as i64];
        if path.last() != Some(&q) {
            path.push(q);
        }
    }
    while path.len() > 1 && path.first() == path.last() {
        path.pop();
    }
    if path.len() < 3 || !delta.is_finite() || delta <= 0.0 {
        return Vec::new();
    }
    // FixOrientations: Clipper offsets outwards for paths of non-negative area.
    let signed: f64 = (0..path.len())
        .map(|i| {
            let (j, k) = (path[(i + path.len() - 1) % path.len()], path[i]);
            (j[0] + k[0]) as f64 * (j[1] - k[1]) as f64
        })
        .sum::<f64>()
        * -0.5;
    if signed < 0.0 {
        path.reverse();
    }
    offset_round(&path, delta)
}

/// ClipperOffset::DoOffset for one closed polygon with round joins.
fn offset_round(src: &[[i64; 2]], delta: f64) -> Vec<[i32; 2]> {
    let y = if ARC_TOLERANCE > delta.abs() * ARC_TOLERANCE { delta.abs() * ARC_TOLERANCE } else { ARC_TOLERANCE };
    let mut steps = std::f64::consts::PI / (1.0 - y / delta.abs()).acos();
    if steps > delta.abs() * std::f64::consts::PI {
        steps = delta.abs() * std::f64::consts::PI;
    }
    let two_pi = std::f64::consts::TAU;
    let (sin, cos) = ((two_pi / steps).sin(), (two_pi / steps).cos());
    let steps_per_rad = steps / two_pi;
    let n = src.len();
    let normals: Vec<[f64; 2]> = (0..n).map(|j| unit_normal(src[j], src[(j + 1) % n])).collect();
    let at = |j: usize, v: [f64; 2]| [round(src[j][0] as f64 + v[0] * delta), round(src[j][1] as f64 + v[1] * delta)];
    let mut out: Vec<[i64; 2]> = Vec::with_capacity(n * 8);
    let mut k = n - 1;
    for j in 0..n {
        let (nk, nj) = (normals[k], normals[j]);
        let mut sin_a = nk[0] * nj[1] - nj[0] * nk[1];
        if (sin_a * delta).abs() < 1.0 {
            let cos_a = nk[0] * nj[0] + nj[1] * nk[1];
            if cos_a > 0.0 {
                // Nearly straight: one point, and `k` stays (Clipper returns early).
                out.push(at(j, nk));
                continue;
            }
        } else {
            sin_a = sin_a.clamp(-1.0, 1.0);
        }
        if sin_a * delta < 0.0 {
            out.extend([at(j, nk), src[j], at(j, nj)]);
        } else {
            // DoRound
            let a = sin_a.atan2(nk[0] * nj[0] + nk[1] * nj[1]);
            let count = (round(steps_per_rad * a.abs()) as i32).max(1);
            let (mut x, mut yv) = (nk[0], nk[1]);
            for _ in 0..count {
                out.push(at(j, [x, yv]));
                let x2 = x;
                x = x * cos - sin * yv;
                yv = x2 * sin + yv * cos;
            }
            out.push(at(j, nj));
        }
        k = j;
    }
    out.into_iter().map(|p| [p[0] as i32, p[1] as i32]).collect()
}
