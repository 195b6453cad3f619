//! Single-thread throughput of the CPU image pipeline on a 1280x720 JPEG:
//! decode (full and DCT-scaled), resize + normalize, and the whole pipeline,
//! for an ImageNet-style 224x224 centre crop and a PaddleOCR-style 3x48x192
//! text line, both written as FP32 NCHW.
//!
//! `cargo bench -p preproc-worker --bench preprocess` (another JPEG with
//! `HIGHSERVE_BENCH_IMAGE=path`; only the measurements whose label contains
//! `HIGHSERVE_BENCH_ONLY=text`; `HIGHSERVE_BENCH_ITERATIONS=n` instead of 300)

use std::hint::black_box;
use std::time::Instant;

use model_repo::{ChannelOrder, DType, Layout, Preprocess, ResizeMode};
use preproc_worker::image::{self, DecodeLimits};
use preproc_worker::preprocess::{self, Scratch};

/// Enough for a stable mean at a few ms per image, short enough for 2 cores.
const ITERATIONS: u32 = 300;

fn target(resize: ResizeMode, width: u32, height: u32, mean: [f32; 3], std: [f32; 3]) -> Preprocess {
    Preprocess {
        input: None,
        resize,
        width,
        height,
        resize_shorter: None,
        channel_order: ChannelOrder::RGB,
        layout: Layout::NCHW,
        scale: 1.0 / 255.0,
        mean,
        std,
        pad_value: 0.0,
        decode: Default::default(),
    }
}

fn measure(name: &str, mut f: impl FnMut()) {
    if std::env::var("HIGHSERVE_BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let iterations: u32 = std::env::var("HIGHSERVE_BENCH_ITERATIONS")
        .map(|n| n.parse().expect("HIGHSERVE_BENCH_ITERATIONS is a number"))
        .unwrap_or(ITERATIONS);
    // One untimed run warms the buffers, the LUTs and the caches.
    f();
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let per_image = start.elapsed().as_secs_f64() / f64::from(iterations);
    println!("{name:<58} {:>9.1} µs/image {:>8.0} images/s", per_image * 1e6, 1.0 / per_image);
}

fn main() {
    // Another image with HIGHSERVE_BENCH_IMAGE (scripts/perf_doc measures
    // both test photos).
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/testdata/photo_1280x720.jpg");
    let path = std::env::var("HIGHSERVE_BENCH_IMAGE").unwrap_or_else(|_| default.to_string());
    let path = path.as_str();
    let Ok(jpeg) = std::fs::read(path) else {
        eprintln!("{path} is missing: run ./scripts/fetch --test");
        std::process::exit(1);
    };
    let crop = target(ResizeMode::CenterCrop, 224, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let ocr = target(ResizeMode::FitHeightPadRight, 192, 48, [0.5; 3], [0.5; 3]);
    let targets = [("224x224 centre crop", &crop), ("3x48x192 fit height, pad right", &ocr)];

    let limits = DecodeLimits::default();
    let info = image::probe(&jpeg, &limits).expect("the test photo is a valid JPEG");
    let mut buf = Vec::new();
    let mut scratch = Scratch::default();
    println!("{} ({}x{}), one thread", path, info.width, info.height);

    measure("decode, full size", || {
        black_box(image::decode_into(black_box(&jpeg), &info, None, &mut buf).unwrap());
    });
    for (name, spec) in targets {
        let need = preprocess::source_size_needed(spec, info.width, info.height);
        let (w, h) = image::decode_into(&jpeg, &info, Some(need), &mut buf).unwrap();
        measure(&format!("decode, DCT-scaled to {w}x{h} for {name}"), || {
            black_box(image::decode_into(black_box(&jpeg), &info, Some(need), &mut buf).unwrap());
        });
    }

    let (w, h) = image::decode_into(&jpeg, &info, None, &mut buf).unwrap();
    let decoded = buf.clone();
    for (name, spec) in targets {
        let mut out = vec![0u8; preprocess::tensor_len(spec, DType::F32)];
        measure(&format!("resize + normalize from {w}x{h}, {name}"), || {
            preprocess::preprocess_into((w, h, black_box(&decoded)), spec, DType::F32, &mut out, &mut scratch).unwrap();
            black_box(&out);
        });
    }

    for (name, spec) in targets {
        let mut out = vec![0u8; preprocess::tensor_len(spec, DType::F32)];
        for dct in [false, true] {
            let label = format!("whole pipeline{}, {name}", if dct { " with DCT scaling" } else { "" });
            measure(&label, || {
                let info = image::probe(black_box(&jpeg), &limits).unwrap();
                let scale_to = dct.then(|| preprocess::source_size_needed(spec, info.width, info.height));
                let (w, h) = image::decode_into(&jpeg, &info, scale_to, &mut buf).unwrap();
                preprocess::preprocess_into((w, h, &buf), spec, DType::F32, &mut out, &mut scratch).unwrap();
                black_box(&out);
            });
        }
    }
}
