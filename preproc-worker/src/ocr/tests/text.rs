//! Classifier and recognizer inputs, batching widths and CTC decoding.

use super::{f32s, fixture, le_f32, smooth, uint};
use crate::ocr::{
    CLS_THRESH, OcrError, RecBatch, Rgb, bucket_width, charset_from_metadata, cls_input, cls_input_len, cls_rotates,
    ctc_decode, rec_batches, rec_input, rec_input_len, rec_width,
};

fn assert_samples(t: &[f32], idx: &serde_json::Value, val: &serde_json::Value, what: &str) {
    for (i, v) in idx.as_array().unwrap().iter().zip(f32s(val)) {
        let i = i.as_u64().unwrap() as usize;
        assert_eq!(t[i].to_bits(), v.to_bits(), "{what} element {i}");
    }
}

#[test]
fn cls_and_rec_inputs_match_rapidocr() {
    // Crops narrower and wider than the classifier's 192 px, and recognizer
    // widths of 320, the crop's own and 1000 px (padding), sampled; the
    // resize behind them is checked whole in resize.rs.
    for c in fixture(include_str!("fixtures/text_input.json")).as_array().unwrap() {
        let crop = smooth(uint(&c["w"]), uint(&c["h"]));
        let mut out = vec![0; cls_input_len()];
        cls_input(&crop, &mut out).unwrap();
        assert_samples(&le_f32(&out), &c["cls_idx"], &c["cls_val"], "cls");
        for r in c["rec"].as_array().unwrap() {
            let width = uint(&r["width"]);
            let mut out = vec![0; rec_input_len(width)];
            rec_input(&crop, width, &mut out).unwrap();
            assert_samples(&le_f32(&out), &r["idx"], &r["val"], &format!("rec {}x{} at {width}", c["w"], c["h"]));
        }
    }
}

#[test]
fn inputs_are_zero_right_of_the_crop() {
    // A 24x48 crop resizes to 24x48: columns from 24 on are padding.
    let crop = smooth(24, 48);
    let mut out = vec![0xAA; rec_input_len(320)];
    rec_input(&crop, 320, &mut out).unwrap();
    let t = le_f32(&out);
    for plane in t.chunks_exact(48 * 320) {
        for row in plane.chunks_exact(320) {
            assert!(row[..24].iter().any(|&v| v != 0.0));
            assert!(row[24..].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn input_buffers_of_the_wrong_size_are_errors() {
    let crop = smooth(30, 10);
    assert!(matches!(cls_input(&crop, &mut [0; 4]), Err(OcrError::OutputSize { .. })));
    assert!(matches!(rec_input(&crop, 320, &mut vec![0; rec_input_len(321)]), Err(OcrError::OutputSize { .. })));
    let bad = Rgb { width: 3, height: 3, data: vec![0; 5] };
    assert!(matches!(cls_input(&bad, &mut vec![0; cls_input_len()]), Err(OcrError::BadImage { .. })));
}

#[test]
fn rec_widths_follow_rapidocr() {
    // int(48 * max(320 / 48, w / h)): at least 320, else the aspect ratio.
    assert_eq!(rec_width(&Rgb::black(100, 48)), 320);
    assert_eq!(rec_width(&Rgb::black(700, 24)), 1400);
    assert_eq!(rec_width(&Rgb::black(333, 32)), 499);
    assert_eq!(bucket_width(499, 64, 2048), 512);
    assert_eq!(bucket_width(512, 64, 2048), 512);
    assert_eq!(bucket_width(5000, 64, 2048), 2048);
    assert_eq!(bucket_width(499, 0, 2048), 499);
}

#[test]
fn rec_batches_group_by_aspect_ratio() {
    // Sorted by w / h, six per batch, each as wide as its widest member.
    let sizes = [(100, 10), (20, 10), (300, 10), (40, 10), (30, 10), (10, 10), (50, 10), (25, 10)];
    let b = rec_batches(&sizes, 6);
    assert_eq!(
        b,
        [RecBatch { members: vec![5, 1, 7, 4, 3, 6], width: 320 }, RecBatch { members: vec![0, 2], width: 1440 }]
    );
}

#[test]
fn cls_turns_crops_only_when_sure() {
    assert!(cls_rotates(&[0.05, 0.95], CLS_THRESH));
    assert!(!cls_rotates(&[0.15, 0.85], CLS_THRESH));
    assert!(!cls_rotates(&[0.95, 0.05], CLS_THRESH));
    // np.argmax picks the first of equal scores: "0".
    assert!(!cls_rotates(&[0.5, 0.5], 0.1));
    assert!(!cls_rotates(&[0.9], CLS_THRESH));
}

#[test]
fn ctc_decoding_matches_rapidocr() {
    let data = fixture(include_str!("fixtures/ctc.json"));
    let charset = charset_from_metadata(data["chars"].as_str().unwrap());
    for c in data["cases"].as_array().unwrap() {
        let probs = f32s(&c["probs"]);
        let (text, score) = ctc_decode(&probs, charset.len(), &charset).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap());
        // rapidocr's mean is FP64; ours is that mean in FP32.
        assert_eq!(score, c["score"].as_f64().unwrap() as f32, "{text:?}");
    }
}

#[test]
fn ctc_drops_repeats_then_blanks() {
    let charset = charset_from_metadata("a\nb");
    // Classes: blank, a, b, space. Steps: a a blank a b b space.
    let steps = [1, 1, 0, 1, 2, 2, 3];
    let mut probs = vec![0.0f32; steps.len() * 4];
    for (t, &k) in steps.iter().enumerate() {
        probs[t * 4 + k] = 0.5 + t as f32 * 0.05;
    }
    let (text, score) = ctc_decode(&probs, 4, &charset).unwrap();
    assert_eq!(text, "aab ");
    // Kept steps 0, 3, 4 and 6.
    let expected = (0.5 + 0.65 + 0.7 + 0.8) / 4.0;
    assert!((f64::from(score) - expected).abs() < 1e-6);
    let (empty, zero) = ctc_decode(&[0.9, 0.1, 0.0, 0.0], 4, &charset).unwrap();
    assert_eq!((empty.as_str(), zero), ("", 0.0));
}

#[test]
fn ctc_rejects_mismatched_shapes() {
    let charset = charset_from_metadata("a\nb");
    assert!(matches!(ctc_decode(&[0.0; 7], 4, &charset), Err(OcrError::BadLogits { .. })));
    assert!(matches!(ctc_decode(&[0.0; 10], 5, &charset), Err(OcrError::CharsetMismatch { classes: 5, charset: 4 })));
}

#[test]
fn charset_splits_lines_like_python() {
    // str.splitlines(): \r\n, \r and \u2028 end lines too; no trailing empty entry.
    let set = charset_from_metadata("a\r\nb\rc\u{2028}d\n\ne\n");
    assert_eq!(set, ["blank", "a", "b", "c", "d", "", "e", " "]);
    assert_eq!(charset_from_metadata(""), ["blank", " "]);
}
