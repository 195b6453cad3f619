//! Raw video frames (RGB24, BGR24, NV12; see `shm::frame`) → interleaved RGB8,
//! the decoder's output format, so every model and pipeline that takes images
//! takes frames too, with the same resize and normalization after this step.

use shm::frame::{FrameInfo, PixelFormat};

/// BT.601 limited range, the GPU kernel's coefficients (1.164383, 1.596027,
/// 0.391762, 0.812968, 2.017232) in 16.16 fixed point; results are within one
/// level of the kernel's float arithmetic, rounded.
const C_Y: i32 = 76309;
const C_RV: i32 = 104597;
const C_GU: i32 = 25675;
const C_GV: i32 = 53279;
const C_BU: i32 = 132201;
const HALF: i32 = 1 << 15;

fn clamp_u8(v: i32) -> u8 {
    (v >> 16).clamp(0, 255) as u8
}

/// One BT.601 limited-range sample (Y, U, V as 0..=255) as RGB8.
fn yuv_to_rgb(y: i32, u: i32, v: i32) -> [u8; 3] {
    let c = C_Y * (y - 16) + HALF;
    let (d, e) = (u - 128, v - 128);
    [clamp_u8(c + C_RV * e), clamp_u8(c - C_GU * d - C_GV * e), clamp_u8(c + C_BU * d)]
}

/// Writes the frame's `width * height` pixels as RGB8 into `buf` (resized to
/// fit; its capacity is kept). `pixels` must be exactly the frame's length,
/// which `shm::frame::parse` has checked.
pub fn to_rgb(info: &FrameInfo, pixels: &[u8], buf: &mut Vec<u8>) {
    let (w, h) = (info.width as usize, info.height as usize);
    buf.clear();
    buf.resize(w * h * 3, 0);
    match info.format {
        PixelFormat::Rgb24 => buf.copy_from_slice(&pixels[..w * h * 3]),
        PixelFormat::Bgr24 => {
            for (dst, src) in buf.chunks_exact_mut(3).zip(pixels.chunks_exact(3)) {
                dst.copy_from_slice(&[src[2], src[1], src[0]]);
            }
        }
        PixelFormat::Nv12 => nv12_to_rgb(pixels, w, h, buf),
    }
}

/// The largest power-of-two reduction (8, 4 or 2) that leaves the image at
/// least `target` in both sides (sides rounded up), or 1. JPEGs use it for
/// their DCT scaling, and frames for block means, so a 1280x720 frame for a
/// 192x48 model converts and resizes a quarter or a sixteenth of its pixels.
pub fn reduction(width: u32, height: u32, target: Option<(u32, u32)>) -> u32 {
    let Some((tw, th)) = target else { return 1 };
    [8, 4, 2].into_iter().find(|&f| width.div_ceil(f) >= tw && height.div_ceil(f) >= th).unwrap_or(1)
}

/// [`to_rgb`] at `1/factor` of the size (rounded up), each output pixel the
/// mean of its `factor` x `factor` block (fewer at the right and bottom
/// edges); returns the size written. NV12 blocks average Y, U and V, then
/// convert (the conversion is linear before clamping).
pub fn to_rgb_reduced(info: &FrameInfo, pixels: &[u8], factor: u32, buf: &mut Vec<u8>) -> (u32, u32) {
    if factor <= 1 {
        to_rgb(info, pixels, buf);
        return (info.width, info.height);
    }
    let (w, h, f) = (info.width as usize, info.height as usize, factor as usize);
    let (ow, oh) = (w.div_ceil(f), h.div_ceil(f));
    buf.clear();
    buf.resize(ow * oh * 3, 0);
    // Per output row: sums of the block's samples (3 per output pixel) and
    // how many pixels each block had.
    let mut sums = vec![0u32; ow * 3];
    for oy in 0..oh {
        sums.fill(0);
        let rows = oy * f..((oy + 1) * f).min(h);
        let rows_n = rows.len();
        match info.format {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => {
                for y in rows {
                    let row = &pixels[y * w * 3..(y + 1) * w * 3];
                    for (s, block) in sums.chunks_exact_mut(3).zip(row.chunks(3 * f)) {
                        let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
                        for px in block.chunks_exact(3) {
                            a += u32::from(px[0]);
                            b += u32::from(px[1]);
                            c += u32::from(px[2]);
                        }
                        s[0] += a;
                        s[1] += b;
                        s[2] += c;
                    }
                }
            }
            PixelFormat::Nv12 => {
                // Y into the first sum, U and V (the block's chroma, at half
                // resolution: f/2 x f/2 samples) into the others.
                for y in rows.clone() {
                    let row = &pixels[y * w..(y + 1) * w];
                    for (s, block) in sums.chunks_exact_mut(3).zip(row.chunks(f)) {
                        s[0] += block.iter().map(|&l| u32::from(l)).sum::<u32>();
                    }
                }
                let chroma = &pixels[w * h..];
                for cy in rows.start / 2..rows.end.div_ceil(2) {
                    let row = &chroma[cy * w..(cy + 1) * w];
                    for (s, block) in sums.chunks_exact_mut(3).zip(row.chunks(f)) {
                        let (mut u, mut v) = (0u32, 0u32);
                        for uv in block.chunks_exact(2) {
                            u += u32::from(uv[0]);
                            v += u32::from(uv[1]);
                        }
                        s[1] += u;
                        s[2] += v;
                    }
                }
            }
        }
        let out = &mut buf[oy * ow * 3..(oy + 1) * ow * 3];
        for ox in 0..ow {
            let cols = (ox * f..((ox + 1) * f).min(w)).len();
            let n = (cols * rows_n) as u32;
            let mean = |sum: u32, n: u32| (sum + n / 2) / n;
            let s = &sums[ox * 3..ox * 3 + 3];
            let px = &mut out[ox * 3..ox * 3 + 3];
            match info.format {
                PixelFormat::Rgb24 => px.copy_from_slice(&[0, 1, 2].map(|c| mean(s[c], n) as u8)),
                PixelFormat::Bgr24 => px.copy_from_slice(&[2, 1, 0].map(|c| mean(s[c], n) as u8)),
                PixelFormat::Nv12 => {
                    let chroma_n = (cols.div_ceil(2) * rows_n.div_ceil(2)) as u32;
                    let [y, u, v] = [mean(s[0], n), mean(s[1], chroma_n), mean(s[2], chroma_n)].map(|x| x as i32);
                    px.copy_from_slice(&yuv_to_rgb(y, u, v));
                }
            }
        }
    }
    (ow as u32, oh as u32)
}

fn nv12_to_rgb(pixels: &[u8], w: usize, h: usize, buf: &mut [u8]) {
    let (luma, chroma) = pixels.split_at(w * h);
    for (y, row) in buf.chunks_exact_mut(w * 3).enumerate() {
        let yrow = &luma[y * w..(y + 1) * w];
        let uv = &chroma[(y / 2) * w..(y / 2) * w + w];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&yuv_to_rgb(i32::from(yrow[x]), i32::from(uv[x & !1]), i32::from(uv[x | 1])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(format: PixelFormat, w: u32, h: u32, pixels: &[u8]) -> Vec<u8> {
        let mut buf = vec![9u8; 5];
        to_rgb(&FrameInfo { format, width: w, height: h }, pixels, &mut buf);
        buf
    }

    #[test]
    fn reduction_keeps_the_target_covered() {
        assert_eq!(reduction(1280, 720, None), 1);
        assert_eq!(reduction(1280, 720, Some((192, 48))), 4);
        assert_eq!(reduction(1280, 720, Some((224, 224))), 2);
        assert_eq!(reduction(1280, 720, Some((1280, 720))), 1);
        assert_eq!(reduction(1600, 400, Some((192, 48))), 8);
    }

    #[test]
    fn reduced_frames_average_blocks_and_agree_with_full_size_then_averaged() {
        // A 10x6 RGB gradient reduced by 4: 3x2 blocks, the right and bottom
        // ones partial.
        let (w, h) = (10u32, 6u32);
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [(i * 4) as u8, (i * 2) as u8, 200 - i as u8]).collect();
        let mut out = Vec::new();
        let info = FrameInfo { format: PixelFormat::Rgb24, width: w, height: h };
        assert_eq!(to_rgb_reduced(&info, &rgb, 4, &mut out), (3, 2));
        let block_mean = |bx: u32, by: u32, c: usize| {
            let (mut sum, mut n) = (0u32, 0u32);
            for y in by * 4..((by + 1) * 4).min(h) {
                for x in bx * 4..((bx + 1) * 4).min(w) {
                    sum += u32::from(rgb[((y * w + x) * 3) as usize + c]);
                    n += 1;
                }
            }
            ((sum + n / 2) / n) as u8
        };
        for by in 0..2 {
            for bx in 0..3 {
                for c in 0..3 {
                    assert_eq!(out[((by * 3 + bx) * 3) as usize + c], block_mean(bx, by, c), "block {bx},{by} c {c}");
                }
            }
        }
        let bgr: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
        let mut out_bgr = Vec::new();
        to_rgb_reduced(&FrameInfo { format: PixelFormat::Bgr24, ..info }, &bgr, 4, &mut out_bgr);
        assert_eq!(out_bgr, out);
        // NV12 with uniform chroma per 4x4 block: reduced = converted from the
        // averaged luma.
        let (w, h) = (8u32, 4u32);
        let mut nv12: Vec<u8> = (0..w * h).map(|i| 40 + (i * 5) as u8).collect();
        nv12.extend((0..w * h / 2).map(|i| if i % 2 == 0 { 90 } else { 200 }));
        let mut out = Vec::new();
        let info = FrameInfo { format: PixelFormat::Nv12, width: w, height: h };
        assert_eq!(to_rgb_reduced(&info, &nv12, 4, &mut out), (2, 1));
        for bx in 0..2u32 {
            let (mut sum, mut n) = (0u32, 0u32);
            for y in 0..4 {
                for x in bx * 4..bx * 4 + 4 {
                    sum += u32::from(nv12[(y * w + x) as usize]);
                    n += 1;
                }
            }
            let y_mean = ((sum + n / 2) / n) as u8;
            let want = convert(PixelFormat::Nv12, 2, 2, &[y_mean, y_mean, y_mean, y_mean, 90, 200]);
            assert_eq!(&out[bx as usize * 3..bx as usize * 3 + 3], &want[..3], "block {bx}");
        }
    }

    #[test]
    fn every_small_size_and_factor_converts_in_bounds() {
        // Odd sizes leave partial blocks (and, for RGB, no chroma rules):
        // every size up to 17x11 at every factor, through the image module's
        // own entry points, as a request would go.
        let limits = crate::image::DecodeLimits::default();
        for format in [PixelFormat::Rgb24, PixelFormat::Bgr24, PixelFormat::Nv12] {
            for w in 1..=17u32 {
                for h in 1..=11u32 {
                    let Ok(len) = format.frame_len(w, h) else { continue };
                    let mut bytes = FrameInfo { format, width: w, height: h }.header().to_vec();
                    bytes.extend((0..len).map(|i| (i * 37 % 251) as u8));
                    let info = crate::image::probe(&bytes, &limits).expect("a valid frame");
                    for target in [None, Some((1, 1)), Some((2, 3)), Some((w, h))] {
                        let mut buf = Vec::new();
                        let (ow, oh) = crate::image::decode_into(&bytes, &info, target, &mut buf).expect("decodes");
                        let f = reduction(w, h, target);
                        assert_eq!((ow, oh), (w.div_ceil(f), h.div_ceil(f)), "{format:?} {w}x{h} {target:?}");
                        assert_eq!(buf.len(), (ow * oh * 3) as usize);
                    }
                }
            }
        }
    }

    #[test]
    fn full_size_rgb_frames_are_read_in_place() {
        let limits = crate::image::DecodeLimits::default();
        let frame = |format| {
            let mut b = FrameInfo { format, width: 4, height: 2 }.header().to_vec();
            b.extend((0..24u8).map(|i| i * 3));
            b
        };
        let rgb = frame(PixelFormat::Rgb24);
        let info = crate::image::probe(&rgb, &limits).expect("a frame");
        let mut buf = Vec::new();
        let (w, h, px) = crate::image::pixels(&rgb, &info, None, &mut buf).expect("pixels");
        assert_eq!((w, h), (4, 2));
        assert!(std::ptr::eq(px, &rgb[shm::frame::HEADER_LEN..]), "not copied");
        // Reduced or converted frames go through the buffer, with the same values.
        let (_, _, reduced) = crate::image::pixels(&rgb, &info, Some((1, 1)), &mut buf).expect("reduced");
        assert_eq!(reduced.len(), 3, "1x1: the largest reduction that covers 1x1");
        let bgr = frame(PixelFormat::Bgr24);
        let info = crate::image::probe(&bgr, &limits).expect("a frame");
        let mut buf2 = Vec::new();
        let (_, _, px) = crate::image::pixels(&bgr, &info, None, &mut buf2).expect("pixels");
        assert_eq!(px, convert(PixelFormat::Bgr24, 4, 2, &bgr[shm::frame::HEADER_LEN..]).as_slice());
    }

    #[test]
    fn rgb_is_copied_and_bgr_swapped() {
        let px = [1, 2, 3, 4, 5, 6];
        assert_eq!(convert(PixelFormat::Rgb24, 2, 1, &px), px);
        assert_eq!(convert(PixelFormat::Bgr24, 2, 1, &px), [3, 2, 1, 6, 5, 4]);
    }

    /// The float formula the GPU kernel (and its CPU reference) uses.
    fn reference(y: u8, u: u8, v: u8) -> [f32; 3] {
        let c = 1.164383 * (f32::from(y) - 16.0);
        let (d, e) = (f32::from(u) - 128.0, f32::from(v) - 128.0);
        [c + 1.596027 * e, c - 0.391762 * d - 0.812968 * e, c + 2.017232 * d].map(|x| x.clamp(0.0, 255.0))
    }

    #[test]
    fn nv12_matches_bt601_within_one_level_and_shares_chroma_per_2x2() {
        // Every Y with a spread of chroma values: a 4x2 frame per (u, v).
        for u in (0..=255u8).step_by(17) {
            for v in (0..=255u8).step_by(15) {
                for y0 in (0..=255u8).step_by(5) {
                    let ys = [y0, y0.wrapping_add(60), y0.wrapping_add(120), y0.wrapping_add(180)];
                    let mut px = Vec::new();
                    px.extend_from_slice(&ys); // row 0
                    px.extend_from_slice(&ys); // row 1
                    px.extend_from_slice(&[u, v, u, v]); // one U/V pair per 2x2 block
                    let rgb = convert(PixelFormat::Nv12, 4, 2, &px);
                    for (i, &yy) in ys.iter().chain(ys.iter()).enumerate() {
                        let want = reference(yy, u, v);
                        for c in 0..3 {
                            let got = f32::from(rgb[i * 3 + c]);
                            assert!(
                                (got - want[c]).abs() <= 1.0,
                                "y {yy} u {u} v {v} channel {c}: {got} vs {}",
                                want[c]
                            );
                        }
                    }
                }
            }
        }
        // Studio black and white.
        assert_eq!(convert(PixelFormat::Nv12, 2, 2, &[16, 16, 16, 16, 128, 128]), [0; 12]);
        assert_eq!(convert(PixelFormat::Nv12, 2, 2, &[235, 235, 235, 235, 128, 128]), [255; 12]);
    }
}
