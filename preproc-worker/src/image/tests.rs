use turbojpeg::{Compressor, Subsamp};

use super::*;

/// A deterministic, not very compressible test pattern.
fn pattern(width: usize, height: usize, channels: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..width * height * channels)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let (x, y) = ((i / channels) % width, (i / channels) / width);
            ((x * 3 + y * 5 + (i % channels) * 40) as u32 + (state & 15)) as u8
        })
        .collect()
}

fn jpeg(width: usize, height: usize, format: PixelFormat, subsamp: Subsamp, pixels: &[u8]) -> Vec<u8> {
    let mut c = Compressor::new().unwrap();
    c.set_quality(95).unwrap();
    c.set_subsamp(subsamp).unwrap();
    let image = turbojpeg::Image { pixels, width, pitch: width * format.size(), height, format };
    c.compress_to_vec(image).unwrap()
}

fn rgb_jpeg(width: usize, height: usize) -> Vec<u8> {
    jpeg(width, height, PixelFormat::RGB, Subsamp::Sub2x2, &pattern(width, height, 3))
}

fn png(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    png_with(width, height, color, depth, data, |_| {})
}

fn png_with(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    setup: impl FnOnce(&mut png::Encoder<&mut Vec<u8>>),
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    setup(&mut encoder);
    encoder.write_header().unwrap().write_image_data(data).unwrap();
    out
}

fn decode(bytes: &[u8], scale_to: Option<(u32, u32)>) -> Result<(u32, u32, Vec<u8>), ImageError> {
    let info = probe(bytes, &DecodeLimits::default())?;
    let mut buf = Vec::new();
    let (w, h) = decode_into(bytes, &info, scale_to, &mut buf)?;
    assert_eq!(buf.len(), w as usize * h as usize * 3);
    Ok((w, h, buf))
}

fn assert_close(got: &[u8], want: &[u8], tolerance: u8) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.abs_diff(w) <= tolerance, "byte {i}: got {g}, want {w}");
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Rewrites the size in a PNG's IHDR (and its CRC).
fn patch_png_size(bytes: &mut [u8], width: u32, height: u32) {
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
}

/// Rewrites the size in a JPEG's SOF marker.
fn patch_jpeg_size(bytes: &mut [u8], width: u16, height: u16) {
    let sof = bytes.windows(2).position(|w| w[0] == 0xFF && matches!(w[1], 0xC0 | 0xC2)).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
}

#[test]
fn an_empty_body_says_so() {
    let e = probe(&[], &DecodeLimits::default()).unwrap_err();
    assert_eq!(e.to_string(), "the body is empty; send a JPEG or PNG image");
}

#[test]
fn other_formats_are_named_by_their_first_bytes() {
    let e = probe(b"GIF89a\x01\x00\x01\x00", &DecodeLimits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the body is not a JPEG or PNG image (it starts with 47 49 46 38 39 61 01 00 (\"GIF89a..\")); \
         accepted: JPEG (image/jpeg), PNG (image/png) and raw frames (video/x-raw; format=RGB|BGR|NV12; width=W; \
         height=H)"
    );
    let e = probe(b"{}", &DecodeLimits::default()).unwrap_err();
    assert!(e.to_string().contains("starts with 7b 7d (\"{}\")"), "{e}");
}

#[test]
fn jpeg_decodes_to_rgb() {
    // A smooth gradient: JPEG keeps it within a few levels.
    let pixels: Vec<u8> = (0..30 * 40).flat_map(|i| [(i % 40 * 5) as u8, (i / 40 * 7) as u8, 90]).collect();
    let bytes = jpeg(40, 30, PixelFormat::RGB, Subsamp::None, &pixels);
    let info = probe(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(info, ImageInfo { format: ImageFormat::Jpeg, width: 40, height: 30 });
    let (w, h, rgb) = decode(&bytes, None).unwrap();
    assert_eq!((w, h), (40, 30));
    assert_close(&rgb, &pixels, 4);
}

#[test]
fn greyscale_jpeg_comes_out_as_rgb() {
    let grey = pattern(24, 16, 1);
    let (w, h, rgb) = decode(&jpeg(24, 16, PixelFormat::GRAY, Subsamp::Gray, &grey), None).unwrap();
    assert_eq!((w, h), (24, 16));
    let want: Vec<u8> = grey.iter().flat_map(|&g| [g; 3]).collect();
    assert_close(&rgb, &want, 8);
    assert!(rgb.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "grey stays grey");
}

#[test]
fn cmyk_jpeg_comes_out_as_rgb() {
    // Inverted (Adobe) CMYK: C=255 is no cyan; K=200 darkens to 200/255.
    let cmyk: Vec<u8> = [255u8, 128, 0, 200].repeat(16 * 16);
    let (_, _, rgb) = decode(&jpeg(16, 16, PixelFormat::CMYK, Subsamp::None, &cmyk), None).unwrap();
    assert_close(&rgb, &[200u8, 100, 0].repeat(16 * 16), 3);
}

#[test]
fn jpeg_uses_the_smallest_dct_scale_that_covers_the_target() {
    let bytes = rgb_jpeg(1280, 720);
    let size = |scale_to| decode(&bytes, scale_to).map(|(w, h, _)| (w, h)).unwrap();
    assert_eq!(size(None), (1280, 720));
    assert_eq!(size(Some((455, 256))), (640, 360), "224x224 centre crop: 1/2");
    assert_eq!(size(Some((320, 180))), (320, 180), "exactly 1/4");
    assert_eq!(size(Some((321, 180))), (640, 360), "one pixel more than 1/4 gives");
    assert_eq!(size(Some((86, 48))), (160, 90), "48-high OCR line: 1/8");
    assert_eq!(size(Some((2000, 10))), (1280, 720), "wider than the image: full size");
    // Sizes round up, as libjpeg-turbo's own scaled size does.
    assert_eq!(jpeg_scale(1001, 9, false, Some((126, 2))), ScalingFactor::ONE_EIGHTH);
    assert_eq!(jpeg_scale(1000, 1000, true, Some((1, 1))), ScalingFactor::ONE, "lossless cannot scale");
}

#[test]
fn png_colour_types_all_become_rgb8() {
    let rgb = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("rgb", png(2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &rgb)),
        (
            "rgba (alpha dropped)",
            png(
                2,
                2,
                png::ColorType::Rgba,
                png::BitDepth::Eight,
                &[10, 20, 30, 0, 40, 50, 60, 9, 70, 80, 90, 255, 100, 110, 120, 1],
            ),
        ),
        (
            "16-bit rgb (high byte kept)",
            png(
                2,
                2,
                png::ColorType::Rgb,
                png::BitDepth::Sixteen,
                &rgb.iter().flat_map(|&v| [v, 0xEE]).collect::<Vec<_>>(),
            ),
        ),
        (
            "palette",
            png_with(2, 2, png::ColorType::Indexed, png::BitDepth::Eight, &[0, 1, 2, 3], |e| {
                e.set_palette(rgb.to_vec())
            }),
        ),
        (
            "palette with transparency",
            png_with(2, 2, png::ColorType::Indexed, png::BitDepth::Eight, &[0, 1, 2, 3], |e| {
                e.set_palette(rgb.to_vec());
                e.set_trns(vec![0, 128]);
            }),
        ),
    ];
    for (what, bytes) in cases {
        let (w, h, got) = decode(&bytes, Some((1, 1))).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((w, h, &got[..]), (2, 2, &rgb[..]), "{what}");
    }
    let grey = [0, 7, 128, 255];
    let want: Vec<u8> = grey.iter().flat_map(|&g| [g; 3]).collect();
    let grey_cases = [
        ("grey", png(2, 2, png::ColorType::Grayscale, png::BitDepth::Eight, &grey)),
        (
            "grey + alpha",
            png(2, 2, png::ColorType::GrayscaleAlpha, png::BitDepth::Eight, &[0, 1, 7, 2, 128, 3, 255, 4]),
        ),
        ("16-bit grey", png(2, 2, png::ColorType::Grayscale, png::BitDepth::Sixteen, &[0, 1, 7, 1, 128, 1, 255, 1])),
    ];
    for (what, bytes) in grey_cases {
        assert_eq!(decode(&bytes, None).unwrap().2, want, "{what}");
    }
    // 1-bit rows are padded to a byte: 0b1010_0000 is white, black, white.
    let (_, _, got) = decode(&png(3, 1, png::ColorType::Grayscale, png::BitDepth::One, &[0b1010_0000]), None).unwrap();
    assert_eq!(got, [255, 255, 255, 0, 0, 0, 255, 255, 255]);
}

#[test]
fn oversized_headers_are_rejected_before_decoding() {
    let want = "image is 50000x50000 pixels; the limit is 16384 pixels per side and 40000000 pixels in all \
                (config: max_image_side, max_image_pixels)";
    // A decompression bomb: a few KB of zeros claiming 50000x50000 (2.5 GB).
    let mut bomb = png(1000, 1000, png::ColorType::Grayscale, png::BitDepth::Eight, &vec![0; 1_000_000]);
    assert!(bomb.len() < 10_000, "{} bytes", bomb.len());
    patch_png_size(&mut bomb, 50000, 50000);
    assert_eq!(probe(&bomb, &DecodeLimits::default()).unwrap_err().to_string(), want);
    // Nor can decode_into be talked into it with someone else's header.
    let small = ImageInfo { format: ImageFormat::Png, width: 1000, height: 1000 };
    let e = decode_into(&bomb, &small, None, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, ImageError::InfoMismatch { .. }), "{e}");

    let mut big_jpeg = rgb_jpeg(16, 16);
    patch_jpeg_size(&mut big_jpeg, 50000, 50000);
    assert_eq!(probe(&big_jpeg, &DecodeLimits::default()).unwrap_err().to_string(), want);

    let limits = DecodeLimits { max_pixels: 100, max_side: 16 };
    let e = probe(&rgb_jpeg(11, 10), &limits).unwrap_err();
    assert!(e.to_string().starts_with("image is 11x10 pixels; the limit is 16 pixels per side and 100"), "{e}");
    assert!(probe(&rgb_jpeg(10, 10), &limits).is_ok(), "exactly at the limit");
}

#[test]
fn decode_into_reuses_the_buffer() {
    let bytes = rgb_jpeg(64, 48);
    let info = probe(&bytes, &DecodeLimits::default()).unwrap();
    let mut buf = Vec::new();
    decode_into(&bytes, &info, None, &mut buf).unwrap();
    let first = buf.clone();
    let ptr = buf.as_ptr();
    decode_into(&bytes, &info, Some((16, 12)), &mut buf).unwrap();
    assert_eq!(buf.len(), 16 * 12 * 3);
    decode_into(&bytes, &info, None, &mut buf).unwrap();
    assert_eq!(buf, first, "a smaller decode in between leaves no trace");
    assert_eq!(buf.as_ptr(), ptr, "no reallocation once warm");
}

#[test]
fn truncated_data_names_the_format() {
    let bytes = rgb_jpeg(64, 48);
    let e = decode(&bytes[..bytes.len() / 2], None).unwrap_err();
    assert!(e.to_string().starts_with("the JPEG data is corrupt or truncated: "), "{e}");
    let bytes = png(64, 48, png::ColorType::Rgb, png::BitDepth::Eight, &pattern(64, 48, 3));
    let e = decode(&bytes[..bytes.len() / 2], None).unwrap_err();
    assert!(e.to_string().starts_with("the PNG data is corrupt or truncated: "), "{e}");
    let e = decode(&bytes[..20], None).unwrap_err();
    assert!(e.to_string().starts_with("the PNG data is corrupt or truncated: "), "{e}");
}

/// Every truncation and many random corruptions of a real JPEG and PNG:
/// each call returns, Ok or Err, and never panics.
#[test]
fn no_input_panics() {
    let files = [
        rgb_jpeg(40, 24),
        jpeg(24, 16, PixelFormat::GRAY, Subsamp::Gray, &pattern(24, 16, 1)),
        png(40, 24, png::ColorType::Rgba, png::BitDepth::Eight, &pattern(40, 24, 4)),
    ];
    let good = decode(&files[0], None).unwrap();
    let mut buf = Vec::new();
    let mut exercise = |bytes: &[u8]| {
        if let Ok(info) = probe(bytes, &DecodeLimits::default()) {
            let full = decode_into(bytes, &info, None, &mut buf);
            let scaled = decode_into(bytes, &info, Some((4, 4)), &mut buf);
            if let (Ok(a), Ok(b)) = (full, scaled) {
                assert!(a.0 >= b.0 && a.1 >= b.1);
            }
        }
        // Whatever happened, the thread's reused JPEG decoder still works.
        assert!(decode(&files[0], None).unwrap() == good, "a good JPEG decodes wrong after {bytes:02x?}");
    };
    let mut state = 0x9E37_79B9_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as usize
    };
    for file in &files {
        for len in 0..file.len() {
            exercise(&file[..len]);
        }
        for _ in 0..400 {
            let mut bad = file.clone();
            for _ in 0..1 + next() % 8 {
                let at = next() % bad.len();
                bad[at] = next() as u8;
            }
            exercise(&bad);
        }
    }
}

#[test]
fn a_palette_the_png_crate_cannot_expand_is_an_error() {
    // Found by fuzz/fuzz_targets/image_preprocess: a PLTE chunk whose length is
    // not a multiple of 3 made png 0.18.1 index out of bounds. This file is
    // that case with valid CRCs (the fuzz build skips CRC checks).
    let png = include_bytes!("fuzz_bad_palette.png");
    let info = probe(png, &DecodeLimits::default()).unwrap();
    let mut buf = Vec::new();
    let err = decode_into(png, &info, None, &mut buf).unwrap_err().to_string();
    assert!(err.contains("palette"), "{err}");
}
