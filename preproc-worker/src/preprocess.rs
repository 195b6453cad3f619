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
mod tests {
    use super::*;

    const MODES: [ResizeMode; 3] = [ResizeMode::Stretch, ResizeMode::FitHeightPadRight, ResizeMode::CenterCrop];
    const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::U8];

    fn spec(resize: ResizeMode, width: u32, height: u32) -> Preprocess {
        Preprocess {
            input: None,
            resize,
            width,
            height,
            resize_shorter: None,
            channel_order: ChannelOrder::RGB,
            layout: Layout::NCHW,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            pad_value: -1.25,
        }
    }

    /// A deterministic RGB8 image with every channel different.
    fn pattern(width: u32, height: u32) -> Vec<u8> {
        (0..width * height * 3).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ (i % 3 * 85) as u8).collect()
    }

    fn solid(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
        rgb.repeat((width * height) as usize)
    }

    fn run(src: (u32, u32, &[u8]), spec: &Preprocess, dtype: DType, scratch: &mut Scratch) -> Vec<u8> {
        let mut out = vec![0xAA; tensor_len(spec, dtype)];
        preprocess_into(src, spec, dtype, &mut out, scratch).unwrap();
        out
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    /// The same math as `preprocess_into`, element by element in memory order,
    /// applied to the image it resized.
    fn reference(scratch: &Scratch, spec: &Preprocess, dtype: DType) -> Vec<u8> {
        let (rw, rh) = (scratch.resized_size.0 as usize, scratch.resized_size.1 as usize);
        let resized = &scratch.resized[..rw * rh * 3];
        let (w, h) = (spec.width as usize, spec.height as usize);
        assert_eq!(rh, h);
        let element = |c: usize, y: usize, x: usize| -> Vec<u8> {
            if x >= rw {
                return match dtype {
                    DType::F32 => spec.pad_value.to_le_bytes().to_vec(),
                    DType::F16 => f16::from_f32(spec.pad_value).to_le_bytes().to_vec(),
                    _ => vec![spec.pad_value.round().clamp(0.0, 255.0) as u8],
                };
            }
            let from = if spec.channel_order == ChannelOrder::BGR { 2 - c } else { c };
            let v = resized[(y * rw + x) * 3 + from];
            let normalized = (v as f32 * spec.scale - spec.mean[c]) / spec.std[c];
            match dtype {
                DType::F32 => normalized.to_le_bytes().to_vec(),
                DType::F16 => f16::from_f32(normalized).to_le_bytes().to_vec(),
                _ => vec![v],
            }
        };
        let mut out = Vec::new();
        match spec.layout {
            Layout::NCHW => {
                for c in 0..3 {
                    for y in 0..h {
                        for x in 0..w {
                            out.extend(element(c, y, x));
                        }
                    }
                }
            }
            Layout::NHWC => {
                for y in 0..h {
                    for x in 0..w {
                        for c in 0..3 {
                            out.extend(element(c, y, x));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_naive_reference_in_every_combination() {
        let (sw, sh) = (97, 61);
        let src = pattern(sw, sh);
        for mode in MODES {
            // Fit: 16 * 97 / 61 = 25.4 → 26 columns of image, 38 of padding.
            let (w, h, resized_w) = match mode {
                ResizeMode::Stretch => (32, 24, 32),
                ResizeMode::FitHeightPadRight => (64, 16, 26),
                ResizeMode::CenterCrop => (24, 24, 24),
            };
            for layout in [Layout::NCHW, Layout::NHWC] {
                for order in [ChannelOrder::RGB, ChannelOrder::BGR] {
                    for dtype in DTYPES {
                        let what = format!("{mode:?} {layout:?} {order:?} {dtype}");
                        let mut s = spec(mode, w, h);
                        s.layout = layout;
                        s.channel_order = order;
                        if dtype == DType::U8 {
                            s.pad_value = 114.6;
                        }
                        let mut scratch = Scratch::default();
                        let out = run((sw, sh, &src), &s, dtype, &mut scratch);
                        assert_eq!(scratch.resized_size, (resized_w, h), "{what}");
                        assert!(out == reference(&scratch, &s, dtype), "{what}: differs from the reference");
                    }
                }
            }
        }
    }

    #[test]
    fn a_uniform_colour_gives_known_values() {
        let src = solid(50, 40, [10, 200, 30]);
        // (v / 255 - 0.5) / 0.5 for 10, 200 and 30.
        let rgb = [-0.921_568_6_f32, 0.568_627_5, -0.764_705_9];
        for mode in MODES {
            for order in [ChannelOrder::RGB, ChannelOrder::BGR] {
                let mut s = spec(mode, 20, 10);
                (s.mean, s.std, s.channel_order) = ([0.5; 3], [0.5; 3], order);
                let want = if order == ChannelOrder::BGR { [rgb[2], rgb[1], rgb[0]] } else { rgb };
                let what = format!("{mode:?} {order:?}");
                let mut scratch = Scratch::default();
                let width = scratch_width(&s, 50, 40);
                let out = f32s(&run((50, 40, &src), &s, DType::F32, &mut scratch));
                for (c, plane) in out.chunks(200).enumerate() {
                    for row in plane.chunks(20) {
                        assert!(row[..width].iter().all(|v| (v - want[c]).abs() < 1e-6), "{what} channel {c}: {row:?}");
                    }
                }
                let out = run((50, 40, &src), &s, DType::F16, &mut scratch);
                let halves: Vec<f32> = out.chunks(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                assert!((halves[0] - want[0]).abs() < 1e-3 && (halves[400] - want[2]).abs() < 1e-3, "{what}");
                let out = run((50, 40, &src), &s, DType::U8, &mut scratch);
                let bytes = if order == ChannelOrder::BGR { [30, 200, 10] } else { [10, 200, 30] };
                assert_eq!([out[0], out[200], out[400]], bytes, "{what}");
            }
        }
    }

    fn scratch_width(spec: &Preprocess, src_w: u32, src_h: u32) -> usize {
        plan(spec, src_w, src_h).width as usize
    }

    #[test]
    fn padding_columns_hold_pad_value() {
        // 40x20 at height 10 is 20 wide: columns 20..50 are padding.
        let src = pattern(40, 20);
        let mut s = spec(ResizeMode::FitHeightPadRight, 50, 10);
        s.pad_value = 0.25;
        let mut scratch = Scratch::default();
        let out = f32s(&run((40, 20, &src), &s, DType::F32, &mut scratch));
        for row in out.chunks(50) {
            assert!(row[20..].iter().all(|&v| v == 0.25), "{row:?}");
            assert!(row[..20].iter().all(|&v| v != 0.25));
        }
        s.layout = Layout::NHWC;
        let out = f32s(&run((40, 20, &src), &s, DType::F32, &mut scratch));
        for row in out.chunks(150) {
            assert!(row[60..].iter().all(|&v| v == 0.25), "{row:?}");
        }
        s.pad_value = 114.6;
        let out = run((40, 20, &src), &s, DType::U8, &mut scratch);
        assert!(out.chunks(150).all(|row| row[60..].iter().all(|&v| v == 115)));
        s.pad_value = -3.0;
        let out = run((40, 20, &src), &s, DType::U8, &mut scratch);
        assert!(out.chunks(150).all(|row| row[60..].iter().all(|&v| v == 0)), "clamped to 0");
        s.pad_value = -1.5;
        let out = run((40, 20, &src), &s, DType::F16, &mut scratch);
        assert_eq!(f16::from_le_bytes([out[298], out[299]]).to_f32(), -1.5);
    }

    #[test]
    fn center_crop_keeps_only_the_centre() {
        // Red centre [40, 160) x [8, 92), blue border; scaled to 256x128 the
        // 64x64 crop is source [75, 125) x [25, 75), well inside the red.
        let (red, blue) = ([250, 10, 10], [0, 0, 255]);
        let mut src = solid(200, 100, blue);
        for y in 8..92 {
            for x in 40..160 {
                src[(y * 200 + x) * 3..][..3].copy_from_slice(&red);
            }
        }
        let mut s = spec(ResizeMode::CenterCrop, 64, 64);
        s.resize_shorter = Some(128);
        s.layout = Layout::NHWC;
        let mut scratch = Scratch::default();
        let out = run((200, 100, &src), &s, DType::U8, &mut scratch);
        assert!(out.chunks(3).all(|p| p == red), "only the centre colour");
        s.resize = ResizeMode::Stretch;
        let out = run((200, 100, &src), &s, DType::U8, &mut scratch);
        assert!(out.chunks(3).any(|p| p == blue), "the border is there when not cropping");
    }

    #[test]
    fn source_size_needed_is_the_smallest_full_quality_size() {
        let crop = spec(ResizeMode::CenterCrop, 224, 224);
        assert_eq!(source_size_needed(&crop, 1280, 720), (455, 256));
        assert_eq!(source_size_needed(&crop, 720, 1280), (256, 455));
        let ocr = spec(ResizeMode::FitHeightPadRight, 192, 48);
        assert_eq!(source_size_needed(&ocr, 1280, 720), (86, 48), "ceil(48 * 1280 / 720)");
        assert_eq!(source_size_needed(&ocr, 400, 100), (192, 48), "capped at the width");
        assert_eq!(source_size_needed(&ocr, 1, 1000), (1, 48), "never zero wide");
        let stretch = spec(ResizeMode::Stretch, 300, 200);
        assert_eq!(source_size_needed(&stretch, 10, 5000), (300, 200));
        assert_eq!(tensor_len(&crop, DType::F32), 3 * 224 * 224 * 4);
        assert_eq!(tensor_len(&ocr, DType::F16), 3 * 48 * 192 * 2);
        assert_eq!(tensor_len(&ocr, DType::U8), 3 * 48 * 192);
    }

    #[test]
    fn a_reused_scratch_gives_what_a_fresh_one_does() {
        let (a, b) = (pattern(97, 61), pattern(33, 80));
        let first = spec(ResizeMode::CenterCrop, 24, 24);
        let mut second = spec(ResizeMode::FitHeightPadRight, 40, 16);
        (second.mean, second.std, second.layout) = ([0.5; 3], [0.25; 3], Layout::NHWC);
        let mut reused = Scratch::default();
        run((97, 61, &a), &first, DType::F32, &mut reused);
        for dtype in DTYPES {
            let got = run((33, 80, &b), &second, dtype, &mut reused);
            assert_eq!(got, run((33, 80, &b), &second, dtype, &mut Scratch::default()), "{dtype}");
        }
        let got = run((97, 61, &a), &first, DType::F16, &mut reused);
        assert_eq!(got, run((97, 61, &a), &first, DType::F16, &mut Scratch::default()));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let src = pattern(10, 10);
        let s = spec(ResizeMode::Stretch, 8, 8);
        let mut scratch = Scratch::default();
        let mut out = vec![0; tensor_len(&s, DType::F32)];
        let e = preprocess_into((10, 10, &src), &s, DType::I64, &mut out, &mut scratch).unwrap_err();
        assert_eq!(e.to_string(), "an image can become an FP32, FP16 or UINT8 tensor, not INT64");
        let e = preprocess_into((10, 10, &src), &s, DType::F16, &mut out, &mut scratch).unwrap_err();
        assert!(matches!(e, PreprocessError::OutputSize { expected: 384, actual: 768, .. }), "{e}");
        let e = preprocess_into((10, 11, &src), &s, DType::F32, &mut out, &mut scratch).unwrap_err();
        assert!(matches!(e, PreprocessError::BadSource { .. }), "{e}");
        let e = preprocess_into((0, 0, &[]), &s, DType::F32, &mut out, &mut scratch).unwrap_err();
        assert!(matches!(e, PreprocessError::BadSource { .. }), "{e}");
        let e = preprocess_into((10, 10, &src), &spec(ResizeMode::Stretch, 0, 8), DType::F32, &mut [], &mut scratch);
        assert!(matches!(e, Err(PreprocessError::EmptyTarget { .. })));
    }

    #[test]
    fn extreme_aspect_ratios_do_not_break_the_crop() {
        let mut scratch = Scratch::default();
        for (w, h) in [(1, 1), (500, 1), (1, 500), (3, 2)] {
            let src = pattern(w, h);
            for mode in MODES {
                let s = spec(mode, 16, 16);
                run((w, h, &src), &s, DType::F32, &mut scratch);
            }
            // A shorter side below the crop (config validation forbids it) still works.
            let mut s = spec(ResizeMode::CenterCrop, 16, 16);
            for shorter in [0, 4] {
                s.resize_shorter = Some(shorter);
                run((w, h, &src), &s, DType::U8, &mut scratch);
            }
        }
    }
}
