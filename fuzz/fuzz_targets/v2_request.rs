//! Untrusted KServe v2 request bodies through the frontend's parsers: JSON
//! and binary-tensor requests (the first two bytes choose the header length),
//! raw binary bodies, and validation against the shipped ppocr_cls and ocr
//! models.
#![no_main]

use std::path::PathBuf;

use frontend::v2;
use libfuzzer_sys::fuzz_target;
use model_repo::{Model, ModelConfig};

fn model(name: &str, config: &str) -> Model {
    Model {
        name: name.into(),
        dir: PathBuf::from("/nonexistent"),
        versions: vec![1],
        config: ModelConfig::parse(config, name).expect("the shipped config parses"),
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static MODELS: [Model; 2] = [
            model("ppocr_cls", include_str!("../../models/ppocr_cls/config.toml")),
            model("ocr", include_str!("../../models/ocr/config.toml")),
        ];
    }
    if data.len() < 2 {
        return;
    }
    let split = u16::from_le_bytes([data[0], data[1]]) as usize;
    let body = &data[2..];
    let header_len = if split == 0 { None } else { Some(split % (body.len() + 1)) };
    MODELS.with(|models| {
        if let Ok(req) = v2::parse_infer(body, header_len) {
            for m in models {
                let _ = v2::validate(&req, m);
            }
            for input in &req.inputs {
                // Every range the parser hands out must lie inside the body.
                let _ = input.data.tensor_bytes(body);
            }
        }
        for m in models {
            if let Ok(req) = v2::parse_raw(body, m) {
                let _ = v2::validate(&req, m);
            }
        }
    });
});
