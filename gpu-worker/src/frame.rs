//! Raw video frames (RGB24, BGR24, NV12) and the CPU reference of the GPU
//! preprocessing kernel (`src/cuda/preprocess.cu`): colour conversion,
//! bilinear (triangle-filter) resize whose support widens with the downscale
//! factor, and normalization into an NCHW tensor. The kernel and this code
//! compute the same sums in the same order of terms, so on a GPU host they
//! agree to float rounding; here this code is what the unit tests check.

pub use shm::frame::PixelFormat;

/// A packed frame in host memory.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

/// `out = (pixel / 255 - mean) / std` per output channel; `bgr` writes the
/// channels in B, G, R order (mean and std are then in that order too).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub bgr: bool,
}

impl Normalize {
    /// The kernel's form: `out = pixel * scale + bias`.
    pub fn scale_bias(&self) -> ([f32; 3], [f32; 3]) {
        let scale = [0, 1, 2].map(|c| 1.0 / (255.0 * self.std[c]));
        let bias = [0, 1, 2].map(|c| -self.mean[c] / self.std[c]);
        (scale, bias)
    }
}

fn clamp255(v: f32) -> f32 {
    v.clamp(0.0, 255.0)
}

fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [f32; 3] {
    let c = 1.164383 * (y - 16.0);
    let (d, e) = (u - 128.0, v - 128.0);
    [clamp255(c + 1.596027 * e), clamp255(c - 0.391762 * d - 0.812968 * e), clamp255(c + 2.017232 * d)]
}

fn load_rgb(f: &Frame<'_>, x: usize, y: usize) -> [f32; 3] {
    let w = f.width as usize;
    match f.format {
        PixelFormat::Nv12 => {
            let uv = &f.data[w * f.height as usize..];
            let c = (y >> 1) * w + (x & !1);
            yuv_to_rgb(f.data[y * w + x] as f32, uv[c] as f32, uv[c + 1] as f32)
        }
        PixelFormat::Rgb24 => {
            let p = &f.data[(y * w + x) * 3..];
            [p[0] as f32, p[1] as f32, p[2] as f32]
        }
        PixelFormat::Bgr24 => {
            let p = &f.data[(y * w + x) * 3..];
            [p[2] as f32, p[1] as f32, p[0] as f32]
        }
    }
}

fn tri(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// The filter window of output index `o`: (centre, support, first, last).
fn window(o: usize, scale: f32, n: usize) -> (f32, f32, usize, usize) {
    let s = scale.max(1.0);
    let centre = (o as f32 + 0.5) * scale;
    let first = (centre - s).floor().max(0.0) as usize;
    let last = ((centre + s).ceil() as usize).min(n - 1);
    (centre, s, first, last)
}

/// Resizes `f` to `out_w` x `out_h` and normalizes it into a 3 x out_h x
/// out_w tensor (the kernel's output for one frame).
pub fn resize_normalize(f: &Frame<'_>, norm: &Normalize, out_w: usize, out_h: usize) -> Vec<f32> {
    let (w, h) = (f.width as usize, f.height as usize);
    let (sx, sy) = (w as f32 / out_w as f32, h as f32 / out_h as f32);
    let (scale, bias) = norm.scale_bias();
    let plane = out_w * out_h;
    let mut out = vec![0.0f32; 3 * plane];
    for oy in 0..out_h {
        let (cy, wy, y0, y1) = window(oy, sy, h);
        for ox in 0..out_w {
            let (cx, wx, x0, x1) = window(ox, sx, w);
            let mut acc = [0.0f32; 3];
            let mut wsum = 0.0f32;
            for y in y0..=y1 {
                let ky = tri((y as f32 + 0.5 - cy) / wy);
                if ky == 0.0 {
                    continue;
                }
                for x in x0..=x1 {
                    let k = ky * tri((x as f32 + 0.5 - cx) / wx);
                    if k == 0.0 {
                        continue;
                    }
                    let rgb = load_rgb(f, x, y);
                    for c in 0..3 {
                        acc[c] += k * rgb[c];
                    }
                    wsum += k;
                }
            }
            let inv = if wsum > 0.0 { 1.0 / wsum } else { 0.0 };
            for c in 0..3 {
                let src = if norm.bgr { 2 - c } else { c };
                out[c * plane + oy * out_w + ox] = acc[src] * inv * scale[c] + bias[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGENET: Normalize = Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], bgr: false };
    const UNIT: Normalize = Normalize { mean: [0.0; 3], std: [1.0; 3], bgr: false };

    fn rgb_frame(w: u32, h: u32, px: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).flat_map(|(x, y)| px(x, y)).collect()
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn same_size_is_normalization_only() {
        let data = rgb_frame(3, 2, |x, y| [(x * 40) as u8, (y * 90) as u8, 200]);
        let f = Frame { data: &data, width: 3, height: 2, format: PixelFormat::Rgb24 };
        let out = resize_normalize(&f, &IMAGENET, 3, 2);
        for y in 0..2 {
            for x in 0..3 {
                let px = [(x * 40) as f32, (y * 90) as f32, 200.0];
                for c in 0..3 {
                    let want = (px[c] / 255.0 - IMAGENET.mean[c]) / IMAGENET.std[c];
                    assert!(close(out[c * 6 + y * 3 + x], want, 1e-5), "c{c} ({x},{y})");
                }
            }
        }
    }

    #[test]
    fn constant_frames_stay_constant_at_any_scale() {
        let data = rgb_frame(37, 23, |_, _| [10, 128, 250]);
        let f = Frame { data: &data, width: 37, height: 23, format: PixelFormat::Rgb24 };
        for (w, h) in [(5, 3), (224, 224), (37, 23), (80, 7)] {
            let out = resize_normalize(&f, &UNIT, w, h);
            let plane = w * h;
            for (i, v) in out.iter().enumerate() {
                let want = [10.0, 128.0, 250.0][i / plane] / 255.0;
                assert!(close(*v, want, 1e-5), "{w}x{h} element {i}: {v} vs {want}");
            }
        }
    }

    #[test]
    fn downscaling_by_two_averages_each_block() {
        // A 2x2 checkerboard of 0 and 255 shrunk 2x: the triangle filter of
        // support 2 spans the block and its neighbours, which (by symmetry)
        // average to grey, not to one sample's black or white.
        let data = rgb_frame(8, 8, |x, y| if (x + y) % 2 == 0 { [255; 3] } else { [0; 3] });
        let f = Frame { data: &data, width: 8, height: 8, format: PixelFormat::Rgb24 };
        let out = resize_normalize(&f, &UNIT, 4, 4);
        for v in &out[5..7] {
            assert!(close(*v, 0.5, 0.02), "{v}");
        }
    }

    #[test]
    fn bgr_input_and_bgr_output_swap_channels() {
        let data = rgb_frame(2, 2, |_, _| [1, 2, 3]);
        let rgb = Frame { data: &data, width: 2, height: 2, format: PixelFormat::Rgb24 };
        let bgr = Frame { format: PixelFormat::Bgr24, ..rgb };
        let a = resize_normalize(&rgb, &UNIT, 1, 1);
        let b = resize_normalize(&bgr, &UNIT, 1, 1);
        assert_eq!(a.iter().map(|v| (v * 255.0).round() as u8).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(b.iter().map(|v| (v * 255.0).round() as u8).collect::<Vec<_>>(), [3, 2, 1]);
        let out_bgr = resize_normalize(&rgb, &Normalize { bgr: true, ..UNIT }, 1, 1);
        assert_eq!(out_bgr.iter().map(|v| (v * 255.0).round() as u8).collect::<Vec<_>>(), [3, 2, 1]);
    }

    #[test]
    fn nv12_greys_and_primaries_convert_as_bt601() {
        // Y=16 is black, Y=235 white, U=V=128 no colour.
        let (w, h) = (4u32, 2u32);
        let mut data = vec![16u8; 4];
        data.extend([235u8; 4]);
        data.extend([128u8; 4]);
        let f = Frame { data: &data, width: w, height: h, format: PixelFormat::Nv12 };
        let out = resize_normalize(&f, &UNIT, 4, 2);
        for c in 0..3 {
            assert!(close(out[c * 8], 0.0, 1e-3) && close(out[c * 8 + 4], 1.0, 1e-3), "{out:?}");
        }
        // BT.601 red (R=255, G=0, B=0) is Y=81, U=90, V=240.
        let red = [81u8, 81, 81, 81, 81, 81, 81, 81, 90, 240, 90, 240];
        let f = Frame { data: &red, width: w, height: h, format: PixelFormat::Nv12 };
        let out = resize_normalize(&f, &UNIT, 1, 1);
        assert!(close(out[0], 1.0, 0.01) && close(out[1], 0.0, 0.01) && close(out[2], 0.0, 0.01), "{out:?}");
    }
}
