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
        decode: Default::default(),
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
