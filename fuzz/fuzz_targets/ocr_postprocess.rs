//! The OCR pipeline's CPU steps on untrusted model outputs: DB
//! post-processing of an arbitrary probability map (contours, minimum-area
//! boxes, unclipping, crops) and CTC decoding of arbitrary probabilities.
#![no_main]

use libfuzzer_sys::fuzz_target;
use preproc_worker::ocr;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (w, h) = (1 + (data[0] % 64) as u32, 1 + (data[1] % 64) as u32);
    // A small detector limit keeps maps small (the default scales every image
    // up to 736 pixels), so each run takes microseconds, not a second.
    let params = ocr::DetParams { limit_side_len: 32, min_side_len: 8, min_height: 8, ..ocr::DetParams::default() };
    let prep = match ocr::det_prepare(ocr::Rgb::black(w * 4, h * 4), &params) {
        Ok(p) => p,
        Err(_) => return,
    };
    let (mw, mh) = (prep.input_w as usize, prep.input_h as usize);
    // The map's values come from the fuzzer, repeated to fill it.
    let bytes = &data[2..];
    let map: Vec<f32> = (0..mw * mh).map(|i| bytes[i % bytes.len()] as f32 / 255.0).collect();
    if let Ok(boxes) = ocr::db_boxes(&map, mw, mh, &prep, &ocr::DbParams::default()) {
        for (quad, _) in boxes.iter().take(8) {
            let crop = ocr::crop(&prep, quad);
            let mut out = vec![0u8; ocr::cls_input_len()];
            let _ = ocr::cls_input(&crop, &mut out);
            let _ = ocr::to_original(&prep, quad);
        }
    }
    let charset: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let probs: Vec<f32> = bytes.iter().map(|&b| b as f32 / 255.0).collect();
    let _ = ocr::ctc_decode(&probs, charset.len(), &charset);
});
