//! Tests of the OCR steps against fixtures made by the reference itself
//! (rapidocr-onnxruntime 1.4.4 with OpenCV 5.0, pyclipper 1.4, shapely 2;
//! `fixtures/make_fixtures.py` regenerates them). The steps reproduce the
//! reference's arithmetic, so comparisons are exact: a difference of one
//! pixel level or one ULP is a regression, not noise.

mod crop;
mod db;
mod det;
mod reference;
mod resize;
mod text;

use super::Rgb;
use serde_json::Value;

/// A fixture file from `fixtures/`, parsed.
fn fixture(json: &str) -> Value {
    serde_json::from_str(json).expect("fixtures are valid JSON; this is a bug")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array().expect("an array").iter().map(|x| x.as_u64().expect("a byte") as u8).collect()
}

fn uint(v: &Value) -> u32 {
    v.as_u64().expect("an integer") as u32
}

fn quad(v: &[f32]) -> super::Quad {
    [[v[0], v[1]], [v[2], v[3]], [v[4], v[5]], [v[6], v[7]]]
}

fn flat(q: &super::Quad) -> Vec<f32> {
    q.iter().flatten().copied().collect()
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.as_chunks::<4>().0.iter().map(|c| f32::from_le_bytes(*c)).collect()
}

/// `pattern(w, h)` of make_fixtures.py: a busy deterministic image.
fn pattern(w: u32, h: u32) -> Rgb {
    let mut data = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..i64::from(h) {
        for x in 0..i64::from(w) {
            for c in 0..3 {
                data.push(((x * 37 + y * 91 + c * 71 + (x * y) % 23 * 11) % 256) as u8);
            }
        }
    }
    Rgb { width: w, height: h, data }
}

/// `smooth(w, h)` of make_fixtures.py: gradients and a bright disc.
fn smooth(w: u32, h: u32) -> Rgb {
    let (wi, hi) = (i64::from(w), i64::from(h));
    let r = wi.min(hi) / 3;
    let mut data = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..hi {
        for x in 0..wi {
            let disc = i64::from((x - wi / 2).pow(2) + (y - hi / 3).pow(2) < r * r);
            for c in 0..3 {
                let v = if c == 1 { y * 255 / (hi - 1).max(1) } else { x * 255 / (wi - 1).max(1) };
                data.push((v / 2 + disc * 100) as u8);
            }
        }
    }
    Rgb { width: w, height: h, data }
}

fn image(kind: &str, w: u32, h: u32) -> Rgb {
    if kind == "pattern" { pattern(w, h) } else { smooth(w, h) }
}

/// FNV-1a, 64 bits: `digest` of make_fixtures.py.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
