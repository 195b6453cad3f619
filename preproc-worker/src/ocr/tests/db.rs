//! DB post-processing: contours, minAreaRect, box scores, unclip, and the
//! whole of rapidocr's DBPostProcess + filter_tag_det_res + sorted_boxes.

use super::{f32s, fixture, flat, uint};
use crate::ocr::contours::{binarize, find_contours};
use crate::ocr::geometry::{HullStart, mini_box_of};
use crate::ocr::raster::box_score_fast;
use crate::ocr::unclip::unclip;
use crate::ocr::{DbParams, DetPrep, OcrError, Rgb, db_boxes};

/// A DetPrep whose detector input is `w` x `h` and prepared image `dw` x `dh`.
fn prep(w: usize, h: usize, dw: u32, dh: u32) -> DetPrep {
    DetPrep {
        image: Rgb::black(dw, dh),
        input_w: w as u32,
        input_h: h as u32,
        ratio_w: 1.0,
        ratio_h: 1.0,
        pad_top: 0,
        raw_w: dw,
        raw_h: dh,
    }
}

fn boxes_of(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(f32s).collect()
}

/// cv2.mean adds in FP64 in its own order; the sum of a few hundred values
/// can differ from ours in the last bits.
const SCORE_TOLERANCE: f64 = 1e-12;

/// The synthetic maps of db_synthetic.json, in its order.
const SYNTHETIC: [&[u8]; 3] = [
    include_bytes!("fixtures/map_synthetic0.png"),
    include_bytes!("fixtures/map_synthetic1.png"),
    include_bytes!("fixtures/map_synthetic2.png"),
];

/// Each synthetic map with its reference results.
fn synthetic() -> Vec<(usize, usize, Vec<f32>, serde_json::Value)> {
    let refs = fixture(include_str!("fixtures/db_synthetic.json"));
    let refs = refs.as_array().unwrap();
    assert_eq!(refs.len(), SYNTHETIC.len());
    SYNTHETIC
        .iter()
        .zip(refs)
        .map(|(png, r)| {
            let (w, h, map) = png_map(png);
            assert_eq!((w, h), (uint(&r["w"]) as usize, uint(&r["h"]) as usize));
            (w, h, map, r.clone())
        })
        .collect()
}

#[test]
fn contours_boxes_scores_and_unclip_match_opencv_and_pyclipper() {
    // Per contour, in cv2.findContours' order: get_mini_boxes' corners and
    // shorter side bit for bit, the box score, and the unclipped box.
    for (m, (w, h, map, c)) in synthetic().into_iter().enumerate() {
        let contours = find_contours(&binarize(&map, w, h, 0.3, true), w, h, 1000);
        let expected = c["contours"].as_array().unwrap();
        assert_eq!(contours.len(), expected.len(), "map {m}");
        for (k, (got, exp)) in contours.iter().zip(expected).enumerate() {
            let start = if got.hole { HullStart::At(got.start) } else { HullStart::AfterTopLeft };
            let (q, side) = mini_box_of(&got.points, start);
            assert_eq!(flat(&q), f32s(&exp["box"]), "map {m} contour {k}");
            assert_eq!(side, exp["side"].as_f64().unwrap() as f32, "map {m} contour {k}");
            if side < 3.0 {
                continue;
            }
            let score = box_score_fast(&map, w, h, &q);
            assert!((score - exp["score"].as_f64().unwrap()).abs() < SCORE_TOLERANCE, "map {m} contour {k}");
            let (g, gside) = mini_box_of(&unclip(&q, 1.6), HullStart::AfterTopRight);
            assert_eq!(flat(&g), f32s(&exp["grown"]), "map {m} contour {k}");
            assert_eq!(gside, exp["grown_side"].as_f64().unwrap() as f32, "map {m} contour {k}");
        }
    }
}

#[test]
fn db_boxes_match_rapidocr_on_synthetic_maps() {
    // Map 0: a low-confidence line is dropped. Map 1: a hole just below the
    // threshold yields a box of its own, as cv2's inner contour does in
    // rapidocr. Map 2: boxes reaching past the map border are clipped.
    for (m, (w, h, map, c)) in synthetic().into_iter().enumerate() {
        let p = prep(w, h, uint(&c["dest"][0]), uint(&c["dest"][1]));
        let got: Vec<Vec<f32>> =
            db_boxes(&map, w, h, &p, &DbParams::default()).unwrap().iter().map(|b| flat(&b.0)).collect();
        assert_eq!(got, boxes_of(&c["boxes"]), "map {m}");
    }
}

/// A detector map saved as 8-bit grey: value / 255 in FP32, as NumPy makes it.
fn png_map(bytes: &[u8]) -> (usize, usize, Vec<f32>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let map = buf[..info.buffer_size()].iter().map(|&v| f32::from(v) / 255.0).collect();
    (info.width as usize, info.height as usize, map)
}

#[test]
fn db_boxes_match_rapidocr_on_real_detector_maps() {
    // PP-OCRv4 det outputs for a rendered page and a tilted one, halved and
    // quantized to fit the repository; the reference ran on the same values.
    let maps =
        [("page", &include_bytes!("fixtures/map_page.png")[..]), ("tilted", include_bytes!("fixtures/map_tilted.png"))];
    let refs = fixture(include_str!("fixtures/db_real.json"));
    for ((name, png), r) in maps.iter().zip(refs.as_array().unwrap()) {
        assert_eq!(r["name"].as_str().unwrap(), *name);
        let (w, h, map) = png_map(png);
        let p = prep(w, h, uint(&r["dest"][0]), uint(&r["dest"][1]));
        let got = db_boxes(&map, w, h, &p, &DbParams::default()).unwrap();
        let boxes: Vec<Vec<f32>> = got.iter().map(|b| flat(&b.0)).collect();
        assert_eq!(boxes, boxes_of(&r["boxes"]), "{name}");
        let mut scores: Vec<f64> = got.iter().map(|b| f64::from(b.1)).collect();
        scores.sort_by(f64::total_cmp);
        for (s, e) in scores.iter().zip(f32s(&r["scores"])) {
            // Ours are reported in FP32.
            assert!((s - f64::from(e)).abs() < 1e-6, "{name}: {s} vs {e}");
        }
    }
}

/// A map with 1.0 inside the given (x0, y0, x1, y1) rectangles, inclusive.
fn rect_map(w: usize, h: usize, rects: &[(usize, usize, usize, usize)]) -> Vec<f32> {
    let mut m = vec![0.0; w * h];
    for &(x0, y0, x1, y1) in rects {
        for y in y0..=y1 {
            m[y * w + x0..=y * w + x1].fill(1.0);
        }
    }
    m
}

#[test]
fn dilation_grows_right_and_down() {
    // OpenCV anchors the 2x2 kernel at (1, 1).
    let m = rect_map(5, 4, &[(1, 1, 1, 1)]);
    let on: Vec<usize> = (0..20).filter(|&i| binarize(&m, 5, 4, 0.3, true)[i]).collect();
    assert_eq!(on, [6, 7, 11, 12]);
    let plain: Vec<usize> = (0..20).filter(|&i| binarize(&m, 5, 4, 0.3, false)[i]).collect();
    assert_eq!(plain, [6]);
}

#[test]
fn lines_come_in_reading_order() {
    // Two lines whose tops are within 10 px read left to right; a line below follows.
    let m = rect_map(80, 40, &[(40, 4, 70, 12), (2, 6, 30, 14), (5, 25, 60, 33)]);
    let got = db_boxes(&m, 80, 40, &prep(80, 40, 80, 40), &DbParams::default()).unwrap();
    let tops: Vec<[f32; 2]> = got.iter().map(|b| b.0[0]).collect();
    assert_eq!(tops.len(), 3);
    assert!(tops[0][0] < tops[1][0] && tops[2][1] > tops[1][1], "{tops:?}");
    // Boxes come from the dilated map, one pixel wider and taller; the score
    // averages the map itself: 31x9 ones in a 32x10 box.
    assert_eq!(got[1].1, 279.0 / 320.0);
}

#[test]
fn max_candidates_keeps_cv2s_first_contours() {
    // cv2 lists contours bottom-up, so a limit of one keeps the lowest line.
    let m = rect_map(60, 40, &[(5, 3, 50, 10), (5, 25, 50, 32)]);
    let p = DbParams { max_candidates: 1, ..DbParams::default() };
    let got = db_boxes(&m, 60, 40, &prep(60, 40, 60, 40), &p).unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].0[0][1] >= 15.0, "the upper line was kept: {got:?}");
}

#[test]
fn small_or_empty_maps_give_no_boxes() {
    let p = prep(32, 32, 32, 32);
    assert!(db_boxes(&vec![0.0; 32 * 32], 32, 32, &p, &DbParams::default()).unwrap().is_empty());
    // A 2x2 blob dilates to 3x3, whose box (2 px between pixel centres) is under min_size.
    let m = rect_map(32, 32, &[(10, 10, 11, 11)]);
    assert!(db_boxes(&m, 32, 32, &p, &DbParams::default()).unwrap().is_empty());
}

#[test]
fn a_map_of_the_wrong_size_is_an_error() {
    let p = prep(32, 32, 32, 32);
    let err = db_boxes(&vec![0.0; 32 * 31], 32, 31, &p, &DbParams::default()).unwrap_err();
    assert!(matches!(err, OcrError::BadMap { expected_w: 32, expected_h: 32, .. }), "{err}");
    assert!(db_boxes(&[0.0; 10], 32, 32, &p, &DbParams::default()).is_err());
}

#[test]
fn box_corners_are_whole_pixels_inside_the_prepared_image() {
    let m = rect_map(40, 20, &[(0, 0, 39, 19)]);
    let got = db_boxes(&m, 40, 20, &prep(40, 20, 100, 50), &DbParams::default()).unwrap();
    assert_eq!(got.len(), 1);
    for [x, y] in got[0].0 {
        assert!(x.fract() == 0.0 && y.fract() == 0.0 && (0.0..=99.0).contains(&x) && (0.0..=49.0).contains(&y));
    }
}
