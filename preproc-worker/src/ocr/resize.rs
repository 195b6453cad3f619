//! `cv2.resize(img, (w, h))` (INTER_LINEAR) for RGB8, bit-exact with OpenCV's
//! fixed-point path: half-pixel centres, no antialiasing, weights in 1/2048,
//! a horizontal pass kept in 1/2048 and a vertical pass that drops 4 bits
//! before multiplying (OpenCV's `VResizeLinear` for 8-bit). fast_image_resize
//! rounds once, in floating point, so it differs by 1 on a few percent of
//! pixels; the detector input is the one place rapidocr's own numbers are
//! compared with ours, so this file exists.

use super::Rgb;

/// OpenCV's INTER_RESIZE_COEF_SCALE.
const COEF_SCALE: f32 = 2048.0;

/// For each destination index: the two source indices and their weights.
struct Taps {
    index: Vec<[usize; 2]>,
    weight: Vec<[i32; 2]>,
}

/// OpenCV's coordinate mapping for one axis. Horizontally a position left of
/// the first or right of the last centre takes the edge pixel at full weight;
/// vertically OpenCV keeps the fraction and clamps the two rows instead
/// (`clamp_weight` false), which rounds differently by 1 at the borders.
fn taps(src: u32, dst: u32, clamp_weight: bool) -> Taps {
    // cv::resize passes dst/src and hal::resize inverts it: same bits as OpenCV.
    let scale = 1.0 / (f64::from(dst) / f64::from(src));
    let last = src as i64 - 1;
    let mut index = Vec::with_capacity(dst as usize);
    let mut weight = Vec::with_capacity(dst as usize);
    for d in 0..dst {
        let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
        let mut s = f.floor() as i64;
        let mut frac = f - s as f32;
        if clamp_weight && (s < 0 || s >= last) {
            frac = 0.0;
            s = s.clamp(0, last);
        }
        let i0 = s.clamp(0, last) as usize;
        let i1 = (s + 1).clamp(0, last) as usize;
        index.push([i0, i1]);
        weight
            .push([((1.0 - frac) * COEF_SCALE).round_ties_even() as i32, (frac * COEF_SCALE).round_ties_even() as i32]);
    }
    Taps { index, weight }
}

/// Resizes `src` to `dw` x `dh` and hands each finished RGB8 row, top to
/// bottom, to `row` (its index and `dw * 3` bytes), so callers can normalize
/// straight into a tensor without a resized copy.
pub(crate) fn resize_rows(src: &Rgb, dw: u32, dh: u32, mut row: impl FnMut(usize, &[u8])) {
    let (sw, dwu) = (src.width as usize, dw as usize);
    let xs = taps(src.width, dw, true);
    let ys = taps(src.height, dh, false);
    // Horizontally resized source rows, 1/2048 units; two cached, as the
    // vertical pass walks down the source monotonically.
    let mut cache: [(usize, Vec<i32>); 2] = [(usize::MAX, vec![0; dwu * 3]), (usize::MAX, vec![0; dwu * 3])];
    let mut out = vec![0u8; dwu * 3];
    let hpass = |sy: usize, buf: &mut Vec<i32>| {
        let line = &src.data[sy * sw * 3..(sy + 1) * sw * 3];
        for (x, (&[i0, i1], &[a0, a1])) in xs.index.iter().zip(&xs.weight).enumerate() {
            for c in 0..3 {
                buf[x * 3 + c] = i32::from(line[i0 * 3 + c]) * a0 + i32::from(line[i1 * 3 + c]) * a1;
            }
        }
    };
    for (y, (&[r0, r1], &[b0, b1])) in ys.index.iter().zip(&ys.weight).enumerate() {
        if cache[0].0 != r0 {
            if cache[1].0 == r0 {
                cache.swap(0, 1);
            } else {
                hpass(r0, &mut cache[0].1);
                cache[0].0 = r0;
            }
        }
        if cache[1].0 != r1 {
            if r1 == r0 {
                let [first, second] = &mut cache;
                second.1.copy_from_slice(&first.1);
            } else {
                hpass(r1, &mut cache[1].1);
            }
            cache[1].0 = r1;
        }
        let (h0, h1) = (&cache[0].1, &cache[1].1);
        for ((o, &p0), &p1) in out.iter_mut().zip(h0).zip(h1) {
            let v = (((b0 * (p0 >> 4)) >> 16) + ((b1 * (p1 >> 4)) >> 16) + 2) >> 2;
            *o = v.clamp(0, 255) as u8;
        }
        row(y, &out);
    }
}

/// [`resize_rows`] into a new image.
pub(crate) fn resize(src: &Rgb, dw: u32, dh: u32) -> Rgb {
    if (dw, dh) == (src.width, src.height) {
        return src.clone();
    }
    let mut dst = Rgb::black(dw, dh);
    let stride = dw as usize * 3;
    resize_rows(src, dw, dh, |y, line| dst.data[y * stride..(y + 1) * stride].copy_from_slice(line));
    dst
}
