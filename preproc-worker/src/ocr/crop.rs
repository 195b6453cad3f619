//! rapidocr's `get_rotate_crop_image`: `cv2.getPerspectiveTransform` (an
//! 8x8 LU solve) and `cv2.warpPerspective(INTER_CUBIC, BORDER_REPLICATE)`
//! as OpenCV 5.0 runs them, then `np.rot90` for tall crops. OpenCV 5.0 maps
//! each output pixel with an FP32 copy of the inverse matrix and weights the
//! 4x4 neighbourhood with bicubic (A = -0.75) weights computed in FP32 and
//! summed with fused multiply-adds. (OpenCV 4.x rounded positions to 1/32
//! pixel and used fixed-point tables; its crops differ from these by about
//! one level on smooth images and a few on noise.)

use super::{DetPrep, Quad, Rgb};

/// A crop this many times taller than wide is turned a quarter (vertical text).
const TALL: f64 = 1.5;

/// The crop of `prep.image` under `quad` (top-left, top-right, bottom-right,
/// bottom-left), straightened, turned upright when tall. See [`crop_image`].
pub fn crop(prep: &DetPrep, quad: &Quad) -> Rgb {
    crop_image(&prep.image, quad)
}

/// get_rotate_crop_image on any image: the output is as wide as the longer
/// of the quad's top and bottom edges and as high as the longer of its
/// sides (truncated to whole pixels, at least 1), rotated 90° counter-
/// clockwise when its height is 1.5 times its width or more. A degenerate
/// quad (three corners on a line) gives a black crop; OpenCV's result there
/// is not meaningful either. `img` must hold width * height * 3 bytes.
pub fn crop_image(img: &Rgb, quad: &Quad) -> Rgb {
    // np.linalg.norm of FP32 differences, truncated by int().
    let dist = |a: [f32; 2], b: [f32; 2]| {
        let (dx, dy) = (a[0] - b[0], a[1] - b[1]);
        (dx * dx + dy * dy).sqrt()
    };
    let w = (dist(quad[0], quad[1]).max(dist(quad[2], quad[3])) as u32).max(1);
    let h = (dist(quad[0], quad[3]).max(dist(quad[1], quad[2])) as u32).max(1);
    let dst = [[0.0, 0.0], [w as f32, 0.0], [w as f32, h as f32], [0.0, h as f32]];
    let out = match perspective_transform(quad, &dst).and_then(|m| invert3(&m)) {
        Some(inv) => warp_cubic(img, &inv, w, h),
        None => Rgb::black(w, h),
    };
    if f64::from(out.height) / f64::from(out.width) >= TALL { rot90(&out) } else { out }
}

/// `cv2.getPerspectiveTransform(src, dst)` (DECOMP_LU): the 3x3 matrix
/// mapping `src` onto `dst`, row-major; `None` when singular.
fn perspective_transform(src: &Quad, dst: &Quad) -> Option<[f64; 9]> {
    let mut a = [[0f64; 8]; 8];
    let mut b = [0f64; 8];
    for i in 0..4 {
        let ([sx, sy], [dx, dy]) = (src[i], dst[i]);
        a[i][0] = f64::from(sx);
        a[i + 4][3] = f64::from(sx);
        a[i][1] = f64::from(sy);
        a[i + 4][4] = f64::from(sy);
        a[i][2] = 1.0;
        a[i + 4][5] = 1.0;
        // FP32 products, as OpenCV multiplies two Point2f coordinates.
        a[i][6] = f64::from(-sx * dx);
        a[i][7] = f64::from(-sy * dx);
        a[i + 4][6] = f64::from(-sx * dy);
        a[i + 4][7] = f64::from(-sy * dy);
        b[i] = f64::from(dx);
        b[i + 4] = f64::from(dy);
    }
    lu_solve(&mut a, &mut b)?;
    let mut m = [1f64; 9];
    m[..8].copy_from_slice(&b);
    Some(m)
}

/// OpenCV's LUImpl: Gaussian elimination with partial pivoting; the
/// solution replaces `b`.
fn lu_solve(a: &mut [[f64; 8]; 8], b: &mut [f64; 8]) -> Option<()> {
    let eps = f64::EPSILON * 100.0;
    for i in 0..8 {
        let mut k = i;
        for j in i + 1..8 {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        if a[k][i].abs() < eps {
            return None;
        }
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        let (pivot, below) = a.split_at_mut(i + 1);
        let pivot = &pivot[i];
        for (j, row) in below.iter_mut().enumerate() {
            let alpha = row[i] * d;
            for (v, p) in row[i + 1..].iter_mut().zip(&pivot[i + 1..]) {
                *v += alpha * p;
            }
            b[i + 1 + j] += alpha * b[i];
        }
    }
    for i in (0..8).rev() {
        let mut s = b[i];
        for k in i + 1..8 {
            s -= a[i][k] * b[k];
        }
        b[i] = s / a[i][i];
    }
    Some(())
}

/// `cv::invert` of a 3x3 FP64 matrix (the closed form OpenCV uses for 3x3).
fn invert3(m: &[f64; 9]) -> Option<[f64; 9]> {
    let s = |r: usize, c: usize| m[r * 3 + c];
    let det = s(0, 0) * (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1)) - s(0, 1) * (s(1, 0) * s(2, 2) - s(1, 2) * s(2, 0))
        + s(0, 2) * (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0));
    if det == 0.0 {
        return None;
    }
    let d = 1.0 / det;
    Some([
        (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1)) * d,
        (s(0, 2) * s(2, 1) - s(0, 1) * s(2, 2)) * d,
        (s(0, 1) * s(1, 2) - s(0, 2) * s(1, 1)) * d,
        (s(1, 2) * s(2, 0) - s(1, 0) * s(2, 2)) * d,
        (s(0, 0) * s(2, 2) - s(0, 2) * s(2, 0)) * d,
        (s(0, 2) * s(1, 0) - s(0, 0) * s(1, 2)) * d,
        (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0)) * d,
        (s(0, 1) * s(2, 0) - s(0, 0) * s(2, 1)) * d,
        (s(0, 0) * s(1, 1) - s(0, 1) * s(1, 0)) * d,
    ])
}

/// FP32 fused multiply-add. The FP64 product of two FP32 values is exact, so
/// one FP64 addition and one narrowing give the fused result, except when
/// the FP64 sum lies exactly halfway between two FP32 values (double
/// rounding, about once in 2^29 operations, and then by one unit in the last
/// place); `f32::mul_add` would call libm for every tap.
fn fma(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// `v.round_ties_even()` for |v| < 2^22 without a libm call (baseline
/// x86-64 has no rounding instruction): adding and removing 1.5 * 2^23
/// leaves no fraction bits, and FP32 addition rounds half to even.
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// `v.floor()` as an integer for |v| < 2^31, without a libm call.
fn floor_int(v: f32) -> i64 {
    let t = v as i64;
    t - i64::from((t as f32) > v)
}

/// OpenCV 5.0's bicubic weights for a fraction `t` in [0, 1).
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let (t2, u) = (t * t, 1.0 - t);
    let w0 = A * (t * (u * u));
    let w3 = A * (t2 * u);
    let w1 = fma(t2, fma(A + 2.0, t, -(A + 3.0)), 1.0);
    [w0, w1, 1.0 - w0 - w1 - w3, w3]
}

/// `cv2.warpPerspective(img, M, (w, h), INTER_CUBIC, BORDER_REPLICATE)`
/// given M's inverse (output pixel → source position).
fn warp_cubic(img: &Rgb, inv: &[f64; 9], w: u32, h: u32) -> Rgb {
    let m = inv.map(|v| v as f32);
    let (sw, sh) = (img.width as usize, img.height as usize);
    // OpenCV clamps positions far outside, keeping floor() in range.
    let (big_w, big_h) = (sw.max(16) as f32, sh.max(16) as f32);
    let mut out = Rgb::black(w, h);
    let mut o = 0;
    for y in 0..h {
        let yf = y as f32;
        let (mx, my, mz) = (yf * m[1] + m[2], yf * m[4] + m[5], yf * m[7] + m[8]);
        for x in 0..w {
            // The per-pixel projection in FP64 from the FP32 row terms, rounded
            // once: this reproduces OpenCV's positions bit for bit.
            let xd = f64::from(x);
            let inv_z = 1.0 / (f64::from(mz) + f64::from(m[6]) * xd);
            let xs = ((f64::from(mx) + f64::from(m[0]) * xd) * inv_z) as f32;
            let ys = ((f64::from(my) + f64::from(m[3]) * xd) * inv_z) as f32;
            let (xs, ys) = (xs.clamp(-big_w, big_w * 2.0), ys.clamp(-big_h, big_h * 2.0));
            let (ix, iy) = (floor_int(xs), floor_int(ys));
            let (fx, fy) = (xs - ix as f32, ys - iy as f32);
            let (ix, iy) = (ix as isize, iy as isize);
            if fx == 0.0 && fy == 0.0 {
                // On a pixel centre the weights are exactly (-0, 1, 0, -0) and
                // the sums give that pixel back: copy it (upright boxes with
                // whole-pixel corners, the usual case, are all centres).
                let at = ((iy.clamp(0, sh as isize - 1) as usize) * sw + ix.clamp(0, sw as isize - 1) as usize) * 3;
                out.data[o..o + 3].copy_from_slice(&img.data[at..at + 3]);
                o += 3;
                continue;
            }
            let (wx, wy) = (cubic_weights(fx), cubic_weights(fy));
            let cols: [usize; 4] =
                std::array::from_fn(|k| (ix + k as isize - 1).clamp(0, sw as isize - 1) as usize * 3);
            let rows: [usize; 4] =
                std::array::from_fn(|k| (iy + k as isize - 1).clamp(0, sh as isize - 1) as usize * sw * 3);
            // Per source row, the three channels at once.
            let mut acc = [0f32; 3];
            for (&row, &wr) in rows.iter().zip(&wy) {
                let tap = |k: usize| -> [f32; 3] {
                    let p = &img.data[row + cols[k]..row + cols[k] + 3];
                    [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])]
                };
                let (p0, p1, p2, p3) = (tap(0), tap(1), tap(2), tap(3));
                for c in 0..3 {
                    let mut s = p0[c] * wx[0];
                    s = fma(p1[c], wx[1], s);
                    s = fma(p2[c], wx[2], s);
                    s = fma(p3[c], wx[3], s);
                    acc[c] = fma(s, wr, acc[c]);
                }
            }
            for (dst, a) in out.data[o..o + 3].iter_mut().zip(acc) {
                // Sums of 0..255 weighted by at most 1.6 in absolute value.
                *dst = round_even(a).clamp(0.0, 255.0) as u8;
            }
            o += 3;
        }
    }
    out
}

/// `np.rot90`: a quarter turn counter-clockwise.
fn rot90(img: &Rgb) -> Rgb {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut out = Rgb::black(img.height, img.width);
    for i in 0..w {
        for j in 0..h {
            let (s, d) = ((j * w + (w - 1 - i)) * 3, (i * h + j) * 3);
            out.data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    out
}

/// Turns `img` half a turn (`cv2.rotate(img, ROTATE_180)`), in place.
pub fn rotate180(img: &mut Rgb) {
    let (pixels, _) = img.data.as_chunks_mut::<3>();
    pixels.reverse();
}
