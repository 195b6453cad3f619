//! The whole pipeline against a reference run of rapidocr (with the real
//! models) that `fixtures/make_reference.py` writes: every step must give
//! the reference's bytes. The run is hundreds of megabytes, so this test
//! needs `OCR_REFERENCE_DIR` pointing at one and is skipped without it.

use super::le_f32;
use crate::ocr::*;
use serde_json::Value;
use std::path::Path;

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn flat(q: &Quad) -> Vec<f32> {
    q.iter().flatten().copied().collect()
}

#[test]
fn pipeline_matches_a_rapidocr_reference_run() {
    let Some(dir) = std::env::var_os("OCR_REFERENCE_DIR") else {
        eprintln!("skipped: set OCR_REFERENCE_DIR to a folder made by fixtures/make_reference.py");
        return;
    };
    let dir = Path::new(&dir);
    let refs: Value = serde_json::from_slice(&read(dir, "reference.json")).unwrap();
    let charset = charset_from_metadata(&String::from_utf8(read(dir, "charset.txt")).unwrap());
    let mut lines = 0;
    for (name, r) in refs.as_object().unwrap() {
        let (w, h) = (r["size"][0].as_u64().unwrap() as u32, r["size"][1].as_u64().unwrap() as u32);
        let prep =
            det_prepare(Rgb { width: w, height: h, data: read(dir, &format!("{name}.rgb")) }, &DetParams::default())
                .unwrap();
        assert_eq!(prep.image.data, read(dir, &format!("{name}.prep.rgb")), "{name}: prepared image");
        let mut t = vec![0; det_input_len(&prep)];
        det_input(&prep, &mut t).unwrap();
        assert!(t == read(dir, &format!("{name}.det_in.f32")), "{name}: detector input");
        let prob = le_f32(&read(dir, &format!("{name}.prob.f32")));
        let boxes = db_boxes(&prob, prep.input_w as usize, prep.input_h as usize, &prep, &DbParams::default()).unwrap();
        let expected: Vec<Vec<f32>> = r["boxes"].as_array().unwrap().iter().map(floats).collect();
        assert_eq!(boxes.iter().map(|b| flat(&b.0)).collect::<Vec<_>>(), expected, "{name}: boxes");
        let finals = r["final"].as_array().unwrap();
        let mut kept = 0;
        for (i, (q, _)) in boxes.iter().enumerate() {
            let mut c = crop(&prep, q);
            assert_eq!(c.data, read(dir, &format!("{name}.crop{i}.rgb")), "{name}: crop {i}");
            let mut t = vec![0; cls_input_len()];
            cls_input(&c, &mut t).unwrap();
            assert!(t == read(dir, &format!("{name}.cls_in{i}.f32")), "{name}: cls input {i}");
            if cls_rotates(&floats(&r["cls"][i]), CLS_THRESH) {
                rotate180(&mut c);
            }
            assert_eq!(c.data, read(dir, &format!("{name}.turned{i}.rgb")), "{name}: turned crop {i}");
            let rec = &r["rec"][i];
            let width = rec["width"].as_u64().unwrap() as u32;
            let mut t = vec![0; rec_input_len(width)];
            rec_input(&c, width, &mut t).unwrap();
            assert!(t == read(dir, &format!("{name}.rec_in{i}.f32")), "{name}: rec input {i}");
            let logits = le_f32(&read(dir, &format!("{name}.rec_out{i}.f32")));
            let (text, score) = ctc_decode(&logits, rec["classes"].as_u64().unwrap() as usize, &charset).unwrap();
            assert_eq!(text, rec["text"].as_str().unwrap(), "{name}: text {i}");
            assert_eq!(score, rec["score"].as_f64().unwrap() as f32, "{name}: score {i}");
            // rapidocr's filter_result compares its FP64 score.
            if rec["score"].as_f64().unwrap() >= f64::from(TEXT_SCORE) {
                let f = &finals[kept];
                assert_eq!(flat(&to_original(&prep, q)), floats(&f[0]), "{name}: final box {kept}");
                assert_eq!(text, f[1].as_str().unwrap());
                kept += 1;
                lines += 1;
            }
        }
        assert_eq!(kept, finals.len(), "{name}: lines kept");
    }
    eprintln!("{} images, {lines} lines: all steps match the reference", refs.as_object().unwrap().len());
}
