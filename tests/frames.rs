//! Raw video frames (`Content-Type: video/x-raw; format=...; width=...;
//! height=...`) are served like images: the same pixels as a PNG give the
//! same answer, NV12 reads the same text, and bad frames get clear errors.

mod common;

use common::*;

const OCR: &str = "/v2/models/ocr/infer";
const CLS: &str = "/v2/models/ppocr_cls/infer";

/// An OCR test-set PNG (made by scripts/make_ocr_testset.py) and its RGB8 pixels.
fn test_image(name: &str) -> (Vec<u8>, Vec<u8>, u32, u32) {
    let path = root().join(".cache/ocrset").join(name);
    let png = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run ./scripts/fetch --test (./scripts/test does)", path.display()));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(&png[..]));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("pixels");
    let channels = info.color_type.samples();
    let rgb: Vec<u8> = buf[..info.buffer_size()].chunks_exact(channels).flat_map(|p| [p[0], p[1], p[2]]).collect();
    (png, rgb, info.width, info.height)
}

/// BT.601 limited range, chroma averaged over each 2x2 block: what a video
/// decoder would hand over for these pixels.
fn rgb_to_nv12(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]].map(f64::from)
    };
    let mut out = Vec::with_capacity(w * h * 3 / 2);
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = px(x, y);
            out.push((16.0 + 0.256788 * r + 0.504129 * g + 0.097906 * b).round() as u8);
        }
    }
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let mut sum = [0.0; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(x + dx, y + dy);
                (0..3).for_each(|c| sum[c] += p[c] / 4.0);
            }
            let [r, g, b] = sum;
            out.push((128.0 - 0.148223 * r - 0.290993 * g + 0.439216 * b).round() as u8);
            out.push((128.0 + 0.439216 * r - 0.367788 * g - 0.071427 * b).round() as u8);
        }
    }
    out
}

fn frame_type(format: &str, w: u32, h: u32) -> String {
    format!("video/x-raw; format={format}; width={w}; height={h}")
}

fn texts(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    v["lines"].as_array().expect("lines").iter().map(|l| l["text"].as_str().expect("text").to_string()).collect()
}

#[test]
fn frames_answer_as_the_same_pixels_in_a_png_do() {
    let d = Daemon::start(&[]);
    let (png, rgb, w, h) = test_image("ocr_00_plain_640x480.png");
    let bgr: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let nv12 = rgb_to_nv12(&rgb, w as usize, h as usize);

    let from_png = d.post(OCR, &[("Content-Type", "image/png")], &png);
    let want = texts(&from_png);
    assert!(want.len() >= 2, "the test image has lines of text: {}", from_png.text());
    for (format, body) in [("RGB", &rgb), ("bgr24", &bgr)] {
        let r = d.post(OCR, &[("Content-Type", &frame_type(format, w, h))], body);
        assert_eq!(texts(&r), want, "{format}");
        // Same pixels, same tensor: boxes and scores too.
        assert_eq!(r.json()["lines"], from_png.json()["lines"], "{format}");
    }
    // NV12 loses some colour resolution; the text reads the same, though a
    // narrow gap between words may come out as a space or not (it read
    // "Open 08:45-18:00" where the PNG reads "Open08:45-18:00").
    let squeeze = |v: Vec<String>| -> Vec<String> { v.into_iter().map(|t| t.replace(' ', "")).collect() };
    let r = d.post(OCR, &[("Content-Type", &frame_type("NV12", w, h))], &nv12);
    assert_eq!(squeeze(texts(&r)), squeeze(want), "NV12");

    // A classification model on a one-line label. For a model whose input is
    // much smaller than the frame, the frame is first reduced by 2, 4 or 8
    // (block means), as a JPEG is decoded at 1/2 to 1/8 by DCT scaling: the
    // answer is then close to the PNG's, not identical. RGB and BGR agree
    // exactly.
    let (png, rgb, w, h) = test_image("ocr_15_noisy_480x160.png");
    let bgr: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let top = |r: &Reply| -> (String, f64) {
        assert_eq!(r.status, 200, "{}", r.text());
        let best = &r.json()["classes"][0];
        (best["label"].as_str().expect("label").to_string(), best["score"].as_f64().expect("score"))
    };
    let from_png = top(&d.post(CLS, &[("Content-Type", "image/png")], &png));
    let from_rgb = top(&d.post(CLS, &[("Content-Type", &frame_type("RGB", w, h))], &rgb));
    let from_bgr = top(&d.post(CLS, &[("Content-Type", &frame_type("BGR", w, h))], &bgr));
    assert_eq!(from_rgb, from_bgr);
    assert_eq!(from_rgb.0, from_png.0, "{from_rgb:?} vs {from_png:?}");
    assert!((from_rgb.1 - from_png.1).abs() < 0.02, "{from_rgb:?} vs {from_png:?}");
    eprintln!("ppocr_cls on a 480x160 label: PNG {from_png:?}, RGB frame {from_rgb:?}");
}

/// What is wrong, Content-Type, body, path, status, words the error must say.
type BadCase<'a> = (&'a str, String, Vec<u8>, &'a str, u16, &'a [&'a str]);

#[test]
fn bad_frames_get_clear_errors_and_serving_goes_on() {
    let d = Daemon::start(&[]);
    let (_, rgb, w, h) = test_image("ocr_00_plain_640x480.png");
    let error = |r: &Reply| r.json()["error"].as_str().unwrap_or_else(|| panic!("no error: {}", r.text())).to_string();
    let cases: Vec<BadCase> = vec![
        ("no size", "video/x-raw; format=RGB".into(), rgb.clone(), CLS, 400, &["format, width and height", "NV12"]),
        ("unknown format", frame_type("YUY2", w, h), rgb.clone(), CLS, 415, &["YUY2", "NV12"]),
        ("bad width", "video/x-raw; format=RGB; width=wide; height=2".into(), rgb.clone(), CLS, 400, &["width"]),
        ("short body", frame_type("RGB", w, h), rgb[..rgb.len() - 3].to_vec(), CLS, 400, &["bytes", "640x480 RGB"]),
        ("odd NV12", frame_type("NV12", 5, 4), vec![0; 30], CLS, 400, &["even"]),
        ("zero size", frame_type("RGB", 0, 4), vec![], CLS, 400, &["no pixels"]),
        ("huge frame", frame_type("RGB", 20000, 20000), vec![0; 12], CLS, 413, &["1200000000 bytes", "max_body_bytes"]),
        ("tensor model", frame_type("RGB", w, h), rgb.clone(), "/v2/models/ppocr_det/infer", 400, &["no image"]),
    ];
    for (what, ctype, body, path, status, words) in cases {
        let r = d.post(path, &[("Content-Type", &ctype)], &body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let msg = error(&r);
        for word in words {
            assert!(msg.contains(word), "{what}: {msg:?} should mention {word:?}");
        }
    }
    // A frame larger than the image limits is refused by the preproc worker
    // from its header, not decoded.
    let tall = frame_type("RGB", 1, 20000);
    let r = d.post(CLS, &[("Content-Type", &tall)], &vec![0; 60000]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error(&r).contains("limit"), "{}", r.text());
    let ok = d.post(CLS, &[("Content-Type", &frame_type("RGB", w, h))], &rgb);
    assert_eq!(ok.status, 200, "{}", ok.text());
}
