//! Every bad input gets a clear JSON error with the right status, and the
//! daemon keeps serving good requests afterwards.

mod common;

use common::*;

const CLS: &str = "/v2/models/ppocr_cls/infer";

fn error_of(r: &Reply) -> String {
    r.json()["error"].as_str().unwrap_or_else(|| panic!("no error message: {}", r.text())).to_string()
}

fn png_header(w: u32, h: u32) -> Vec<u8> {
    // A valid signature and IHDR chunk declaring w x h RGB: enough for a
    // decoder to learn the size before any pixel data.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
    png
}

/// A real JPEG whose frame header (SOF0 or SOF2) is patched to declare w x h.
fn jpeg_declaring(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut j = jpeg.to_vec();
    let sof = j.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]).expect("a JPEG has a frame header");
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn bad_inputs_get_clear_errors_and_serving_goes_on() {
    let d = Daemon::start(&[]);
    let jpeg = testdata("text_0_0.jpg");
    let jpeg_ct = [("Content-Type", "image/jpeg")];
    let cases: Vec<(&str, Reply, u16, &[&str])> = vec![
        ("empty body", d.post(CLS, &jpeg_ct, b""), 400, &["empty"]),
        ("random bytes", d.post(CLS, &jpeg_ct, &[7u8; 300]), 400, &["JPEG", "PNG"]),
        ("truncated JPEG", d.post(CLS, &jpeg_ct, &jpeg[..jpeg.len() / 3]), 400, &["JPEG"]),
        (
            "huge declared PNG",
            d.post(CLS, &[("Content-Type", "image/png")], &png_header(50_000, 50_000)),
            400,
            &["50000x50000"],
        ),
        ("GIF", d.post(CLS, &[("Content-Type", "image/gif")], b"GIF89a"), 415, &["image/jpeg"]),
        ("unknown model", d.post("/v2/models/resnet/infer", &jpeg_ct, &jpeg), 404, &["ppocr_cls"]),
        ("malformed JSON", d.post(CLS, &[("Content-Type", "application/json")], b"{\"inputs\": ["), 400, &["JSON"]),
        (
            "wrong tensor name",
            d.post(CLS, &[], br#"{"inputs":[{"name":"img","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#),
            400,
            &["img", "x"],
        ),
        (
            "wrong shape",
            d.post(CLS, &[], br#"{"inputs":[{"name":"x","shape":[1,3,4,4],"datatype":"FP32","data":[0]}]}"#),
            400,
            &["shape"],
        ),
        (
            "a BYTES tensor that is not an image",
            {
                let junk = b"hello, not an image";
                let header = format!(
                    r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
                    junk.len() + 4
                );
                let mut body = header.clone().into_bytes();
                body.extend_from_slice(&(junk.len() as u32).to_le_bytes());
                body.extend_from_slice(junk);
                d.post(CLS, &[("Inference-Header-Content-Length", &header.len().to_string())], &body)
            },
            400,
            &["JPEG", "PNG"],
        ),
        (
            "a PNG palette that crashed the png crate",
            d.post(
                CLS,
                &[("Content-Type", "image/png")],
                include_bytes!("../preproc-worker/src/image/fuzz_bad_palette.png"),
            ),
            400,
            &["PNG"],
        ),
        ("huge declared JPEG", d.post(CLS, &jpeg_ct, &jpeg_declaring(&jpeg, 60_000, 60_000)), 400, &["60000x60000"]),
        (
            "model without image preprocessing",
            d.post("/v2/models/ppocr_det/infer", &jpeg_ct, &jpeg),
            400,
            &["ppocr_det"],
        ),
        (
            "body over the limit",
            d.post(CLS, &[("Content-Type", "image/jpeg"), ("Content-Length", "999999999999")], b""),
            413,
            &["limit"],
        ),
    ];
    for (what, r, status, needles) in cases {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let msg = error_of(&r);
        for n in needles {
            assert!(msg.contains(n), "{what}: `{n}` not in: {msg}");
        }
    }
    // Nothing above hurt the daemon.
    let r = d.post(CLS, &jpeg_ct, &jpeg);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.get("/v2/health/ready").status, 200);
}
