//! rapidocr's preprocess, letterbox, detector input and the way back.

use super::{digest, f32s, fixture, flat, le_f32, quad, smooth, uint};
use crate::ocr::{DetParams, OcrError, Rgb, det_input, det_input_len, det_prepare, det_sizes, to_original};

#[test]
fn sizes_match_rapidocr() {
    // Scaling down past 2000 px, up to 30 px, letterboxes for short and wide
    // images, the 736 px detector minimum, Python's round-half-to-even on
    // /32 (e.g. 48 -> 64, 80 -> 64) and images too thin to scale.
    let p = DetParams::default();
    for c in fixture(include_str!("fixtures/det_sizes.json")).as_array().unwrap() {
        let (w, h) = (uint(&c["w"]), uint(&c["h"]));
        let got = det_sizes(w, h, &p);
        if c["error"].as_bool().unwrap() {
            assert!(matches!(got, Err(OcrError::TooThin { .. })), "{w}x{h}: {got:?}");
            continue;
        }
        let s = got.unwrap_or_else(|e| panic!("{w}x{h}: {e}"));
        assert_eq!([s.scaled_w, s.scaled_h], [uint(&c["scaled"][0]), uint(&c["scaled"][1])], "{w}x{h}");
        assert_eq!([s.ratio_w, s.ratio_h], [c["ratio"][0].as_f64().unwrap(), c["ratio"][1].as_f64().unwrap()]);
        assert_eq!(s.pad_top, uint(&c["pad_top"]), "{w}x{h}");
        assert_eq!([s.prepared_w, s.prepared_h], [uint(&c["prepared"][0]), uint(&c["prepared"][1])], "{w}x{h}");
        assert_eq!([s.input_w, s.input_h], [uint(&c["input"][0]), uint(&c["input"][1])], "{w}x{h}");
    }
}

#[test]
fn prepared_image_and_detector_input_match_rapidocr() {
    // 300x20 is scaled up and letterboxed, 300x200 only has its detector
    // input scaled, 2300x900 is scaled down. The tensor is compared at
    // sampled positions; the resize behind it is checked whole in resize.rs.
    let data = fixture(include_str!("fixtures/det_input.json"));
    for c in data["inputs"].as_array().unwrap() {
        let (w, h) = (uint(&c["w"]), uint(&c["h"]));
        let prep = det_prepare(smooth(w, h), &DetParams::default()).unwrap();
        assert_eq!([prep.image.width, prep.image.height], [uint(&c["prepared"][0]), uint(&c["prepared"][1])]);
        assert_eq!(digest(&prep.image.data).to_string(), c["prepared_digest"].as_str().unwrap(), "{w}x{h}");
        assert_eq!([prep.input_w, prep.input_h], [uint(&c["input"][0]), uint(&c["input"][1])]);
        let mut out = vec![0; det_input_len(&prep)];
        det_input(&prep, &mut out).unwrap();
        let t = le_f32(&out);
        let (idx, val) = (c["idx"].as_array().unwrap(), f32s(&c["val"]));
        for (i, v) in idx.iter().zip(val) {
            let i = i.as_u64().unwrap() as usize;
            assert_eq!(t[i].to_bits(), v.to_bits(), "{w}x{h} element {i}");
        }
    }
}

#[test]
fn boxes_map_back_to_the_original_image() {
    let p = DetParams::default();
    for c in fixture(include_str!("fixtures/det_input.json"))["origin"].as_array().unwrap() {
        let (w, h) = (uint(&c["w"]), uint(&c["h"]));
        let prep = det_prepare(Rgb::black(w, h), &p).unwrap();
        for (b, e) in c["boxes"].as_array().unwrap().iter().zip(c["expected"].as_array().unwrap()) {
            assert_eq!(flat(&to_original(&prep, &quad(&f32s(b)))), f32s(e), "{w}x{h}");
        }
    }
}

#[test]
fn bad_images_and_buffers_are_errors() {
    let p = DetParams::default();
    let short = Rgb { width: 4, height: 4, data: vec![0; 47] };
    assert!(matches!(det_prepare(short, &p), Err(OcrError::BadImage { len: 47, .. })));
    assert!(matches!(det_prepare(Rgb::black(0, 5), &p), Err(OcrError::BadImage { .. })));
    let prep = det_prepare(Rgb::black(8, 8), &p).unwrap();
    let mut out = vec![0; det_input_len(&prep) - 4];
    assert!(matches!(det_input(&prep, &mut out), Err(OcrError::OutputSize { .. })));
    let msg = det_sizes(4000, 20, &p).unwrap_err().to_string();
    assert!(msg.contains("4000x20"), "{msg}");
}

#[test]
fn unscaled_images_are_kept_as_they_are() {
    // Most photos need no preprocess scaling: the prepared image is the input.
    let img = smooth(640, 480);
    let prep = det_prepare(img.clone(), &DetParams::default()).unwrap();
    assert_eq!(prep.image, img);
    assert_eq!((prep.pad_top, prep.ratio_w, prep.ratio_h), (0, 1.0, 1.0));
}
