//! Decoded RGB8 image → one image tensor: resize (one `fast_image_resize`
//! pass, crop included), normalize through per-channel lookup tables, and
//! write the chosen layout and element type straight into the destination,
//! which in production is the request's shared-memory slot.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use half::f16;
use model_repo::{ChannelOrder, Layout, Preprocess, ResizeMode};
use shm::tensor::DType;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("an image can become an FP32, FP16 or UINT8 tensor, not {0}")]
    UnsupportedDType(DType),
    #[error("preprocess size {width}x{height}; 1 to 16384 per side is accepted")]
    EmptyTarget { width: u32, height: u32 },
    #[error("the decoded image is {width}x{height} with {len} bytes; RGB8 needs width * height * 3 bytes and a pixel")]
    BadSource { width: u32, height: u32, len: usize },
    #[error(
        "the output holds {actual} bytes but one {width}x{height} {dtype} image tensor is {expected}; this is a bug"
    )]
    OutputSize { width: u32, height: u32, dtype: DType, expected: usize, actual: usize },
    #[error("resizing failed: {0}; this is a bug")]
    Resize(String),
}

/// Bytes of one image tensor (3 x height x width elements); 0 for a type
/// without a fixed size, which [`preprocess_into`] rejects anyway.
pub fn tensor_len(spec: &Preprocess, dtype: DType) -> usize {
    3 * spec.width as usize * spec.height as usize * dtype.size().unwrap_or(0)
}

/// The smallest decoded size that still gives a full-quality result: pass it
/// to [`crate::image::decode_into`] as `scale_to`.
pub fn source_size_needed(spec: &Preprocess, src_w: u32, src_h: u32) -> (u32, u32) {
    match spec.resize {
        ResizeMode::Stretch => (spec.width, spec.height),
        ResizeMode::FitHeightPadRight => (fit_width(spec, src_w, src_h), spec.height),
        ResizeMode::CenterCrop => shorter_side_to(spec.shorter_side(), src_w, src_h),
    }
}

/// PaddleOCR's rule: the width that keeps the aspect ratio at the target
/// height, rounded up and capped at the target width.
fn fit_width(spec: &Preprocess, src_w: u32, src_h: u32) -> u32 {
    let w = (u64::from(spec.height) * u64::from(src_w)).div_ceil(u64::from(src_h.max(1)));
    w.clamp(1, u64::from(spec.width)) as u32
}

/// The image size after scaling its shorter side to `side`. The longer side
/// is truncated, as torchvision's `Resize(int)` does.
fn shorter_side_to(side: u32, w: u32, h: u32) -> (u32, u32) {
    // Zero sizes (rejected by config validation) are treated as 1, never divided by.
    let (side, w, h) = (side.max(1), u64::from(w.max(1)), u64::from(h.max(1)));
    let longer = |long: u64, short: u64| (u64::from(side) * long / short).clamp(1, u64::from(u32::MAX)) as u32;
    if w <= h { (side, longer(h, w)) } else { (longer(w, h), side) }
}

/// What one resize produces: a `width` x `height` image taken from `crop`
/// (left, top, width, height in source pixels; `None` for all of it).
#[derive(Debug, PartialEq)]
struct ResizePlan {
    width: u32,
    height: u32,
    crop: Option<[f64; 4]>,
}

fn plan(spec: &Preprocess, src_w: u32, src_h: u32) -> ResizePlan {
    let (width, height) = (spec.width, spec.height);
    match spec.resize {
        ResizeMode::Stretch => ResizePlan { width, height, crop: None },
        ResizeMode::FitHeightPadRight => ResizePlan { width: fit_width(spec, src_w, src_h), height, crop: None },
        ResizeMode::CenterCrop => {
            // The crop in the scaled image, mapped back to source pixels so one
            // resize does both (no full-size intermediate). A scaled image
            // smaller than the crop (validation forbids it) is stretched.
            let (sw, sh) = shorter_side_to(spec.shorter_side(), src_w, src_h);
            let (cw, ch) = (width.min(sw), height.min(sh));
            // Integer offsets, like torchvision's CenterCrop for an even margin.
            let (left, top) = ((sw - cw) / 2, (sh - ch) / 2);
            let (fx, fy) = (f64::from(src_w) / f64::from(sw), f64::from(src_h) / f64::from(sh));
            let (l, t) = (f64::from(left) * fx, f64::from(top) * fy);
            // `min` absorbs rounding that would put the box a hair outside.
            let crop =
                [l, t, (f64::from(cw) * fx).min(f64::from(src_w) - l), (f64::from(ch) * fy).min(f64::from(src_h) - t)];
            ResizePlan { width, height, crop: Some(crop) }
        }
    }
}

/// Per output channel, the little-endian element bytes for each pixel value.
type Lut<const N: usize> = [[[u8; N]; 256]; 3];

/// The normalization a LUT was built for, compared bit for bit.
#[derive(Clone, Copy, PartialEq, Eq)]
struct LutKey {
    scale: u32,
    mean: [u32; 3],
    std: [u32; 3],
}

impl LutKey {
    fn of(spec: &Preprocess) -> LutKey {
        LutKey { scale: spec.scale.to_bits(), mean: spec.mean.map(f32::to_bits), std: spec.std.map(f32::to_bits) }
    }
}

struct Luts {
    key: Option<LutKey>,
    f32: Box<Lut<4>>,
    f16: Box<Lut<2>>,
    /// UINT8 takes pixels as they are; an identity table keeps one code path.
    u8: Box<Lut<1>>,
}

impl Default for Luts {
    fn default() -> Self {
        let identity: [[u8; 1]; 256] = std::array::from_fn(|v| [v as u8]);
        Luts {
            key: None,
            f32: Box::new([[[0; 4]; 256]; 3]),
            f16: Box::new([[[0; 2]; 256]; 3]),
            u8: Box::new([identity; 3]),
        }
    }
}

impl Luts {
    /// Rebuilds the tables when the normalization changed since last time;
    /// each model has one, so a worker serving one model builds them once.
    fn update(&mut self, spec: &Preprocess) {
        let key = LutKey::of(spec);
        if self.key == Some(key) {
            return;
        }
        for c in 0..3 {
            for v in 0..256 {
                let x = (v as f32 * spec.scale - spec.mean[c]) / spec.std[c];
                self.f32[c][v] = x.to_le_bytes();
                self.f16[c][v] = f16::from_f32(x).to_le_bytes();
            }
        }
        self.key = Some(key);
    }
}

/// Buffers and tables reused across images; one per worker thread.
#[derive(Default)]
pub struct Scratch {
    resizer: Resizer,
    /// The resized RGB8 image of the last call, `resized_size` pixels.
    resized: Vec<u8>,
    resized_size: (u32, u32),
    luts: Luts,
}

impl Scratch {
    /// Resizes `src` as `spec` says into `self.resized`.
    fn resize(&mut self, src: (u32, u32, &[u8]), spec: &Preprocess) -> Result<(), PreprocessError> {
        let (src_w, src_h, pixels) = src;
        let plan = plan(spec, src_w, src_h);
        let len = plan.width as usize * plan.height as usize * 3;
        // Every byte is overwritten by the resize: only growth is zero-filled.
        if self.resized.len() < len {
            self.resized.resize(len, 0);
        }
        let bug = |e: &dyn std::fmt::Display| PreprocessError::Resize(e.to_string());
        let src = ImageRef::new(src_w, src_h, pixels, PixelType::U8x3).map_err(|e| bug(&e))?;
        let mut dst = Image::from_slice_u8(plan.width, plan.height, &mut self.resized[..len], PixelType::U8x3)
            .map_err(|e| bug(&e))?;
        let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        if let Some([l, t, w, h]) = plan.crop {
            options = options.crop(l, t, w, h);
        }
        self.resizer.resize(&src, &mut dst, &options).map_err(|e| bug(&e))?;
        self.resized_size = (plan.width, plan.height);
        Ok(())
    }
}

/// Writes one image tensor for `src` (RGB8, interleaved, `width * height * 3`
/// bytes) into `out`, which must be exactly [`tensor_len`] bytes: resized per
/// `spec.resize`, each channel `(pixel * scale - mean) / std` (UINT8: the
/// pixel itself), in `spec.channel_order` and `spec.layout`, little-endian.
pub fn preprocess_into(
    src: (u32, u32, &[u8]),
    spec: &Preprocess,
    dtype: DType,
    out: &mut [u8],
    scratch: &mut Scratch,
) -> Result<(), PreprocessError> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::U8) {
        return Err(PreprocessError::UnsupportedDType(dtype));
    }
    let (width, height) = (spec.width, spec.height);
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyTarget { width, height });
    }
    let (src_w, src_h, pixels) = src;
    if src_w == 0 || src_h == 0 || pixels.len() != src_w as usize * src_h as usize * 3 {
        return Err(PreprocessError::BadSource { width: src_w, height: src_h, len: pixels.len() });
    }
    let expected = tensor_len(spec, dtype);
    if out.len() != expected {
        return Err(PreprocessError::OutputSize { width, height, dtype, expected, actual: out.len() });
    }
    scratch.resize(src, spec)?;
    scratch.luts.update(spec);
    let (rw, rh) = scratch.resized_size;
    let resized = Resized { width: rw as usize, height: rh as usize, pixels: &scratch.resized };
    let target = Target { width: width as usize, layout: spec.layout, bgr: spec.channel_order == ChannelOrder::BGR };
    let luts = &scratch.luts;
    match dtype {
        DType::F32 => target.write(&resized, &luts.f32, spec.pad_value.to_le_bytes(), out),
        DType::F16 => target.write(&resized, &luts.f16, f16::from_f32(spec.pad_value).to_le_bytes(), out),
        // `as` saturates (and maps NaN to 0), so the clamp is only for clarity.
        _ => target.write(&resized, &luts.u8, [spec.pad_value.round().clamp(0.0, 255.0) as u8], out),
    }
    Ok(())
}

/// The resized image: `height` rows of `width` RGB8 pixels, no gaps.
struct Resized<'a> {
    width: usize,
    height: usize,
    pixels: &'a [u8],
}

/// Where the elements go: `width` columns (the resized image may be narrower;
/// the rest is padding), in `layout`, with R and B swapped for `bgr`.
struct Target {
    width: usize,
    layout: Layout,
    bgr: bool,
}

impl Target {
    /// Picks the loop once per image, so the per-pixel loops have no branches
    /// on layout, order or element type.
    fn write<const N: usize>(&self, src: &Resized, lut: &Lut<N>, pad: [u8; N], out: &mut [u8]) {
        let (elems, rest) = out.as_chunks_mut::<N>();
        debug_assert!(rest.is_empty(), "the caller checked out.len(); this is a bug");
        match (self.layout, self.bgr) {
            (Layout::NCHW, false) => write_nchw::<N, false>(src, self.width, lut, pad, elems),
            (Layout::NCHW, true) => write_nchw::<N, true>(src, self.width, lut, pad, elems),
            (Layout::NHWC, false) => write_nhwc::<N, false>(src, self.width, lut, pad, elems),
            (Layout::NHWC, true) => write_nhwc::<N, true>(src, self.width, lut, pad, elems),
        }
    }
}

/// Which source channel output channel 0 and 2 read; mean and std are
/// indexed by output channel, so BGR models get their own order's constants.
const fn outer_channels(bgr: bool) -> (usize, usize) {
    if bgr { (2, 0) } else { (0, 2) }
}

fn write_nchw<const N: usize, const BGR: bool>(
    src: &Resized,
    width: usize,
    lut: &Lut<N>,
    pad: [u8; N],
    out: &mut [[u8; N]],
) {
    let (first, last) = outer_channels(BGR);
    let plane = width * src.height;
    let (p0, rest) = out.split_at_mut(plane);
    let (p1, p2) = rest.split_at_mut(plane);
    let [l0, l1, l2] = lut;
    let rows = src.pixels.chunks_exact(src.width * 3);
    let dst_rows = p0.chunks_exact_mut(width).zip(p1.chunks_exact_mut(width)).zip(p2.chunks_exact_mut(width));
    for (row, ((d0, d1), d2)) in rows.zip(dst_rows) {
        let pixels = row.as_chunks::<3>().0;
        for (((p, a), b), c) in pixels.iter().zip(d0.iter_mut()).zip(d1.iter_mut()).zip(d2.iter_mut()) {
            *a = l0[p[first] as usize];
            *b = l1[p[1] as usize];
            *c = l2[p[last] as usize];
        }
        for d in [d0, d1, d2] {
            d[src.width..].fill(pad);
        }
    }
}

fn write_nhwc<const N: usize, const BGR: bool>(
    src: &Resized,
    width: usize,
    lut: &Lut<N>,
    pad: [u8; N],
    out: &mut [[u8; N]],
) {
    let (first, last) = outer_channels(BGR);
    let [l0, l1, l2] = lut;
    for (row, dst) in src.pixels.chunks_exact(src.width * 3).zip(out.chunks_exact_mut(width * 3)) {
        let (body, padding) = dst.split_at_mut(src.width * 3);
        for (p, d) in row.as_chunks::<3>().0.iter().zip(body.as_chunks_mut::<3>().0) {
            *d = [l0[p[first] as usize], l1[p[1] as usize], l2[p[last] as usize]];
        }
        padding.fill(pad);
    }
}

#[cfg(test)]
mod tests;
