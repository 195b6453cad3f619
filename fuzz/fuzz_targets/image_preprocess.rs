//! Untrusted image bytes (JPEG, PNG, raw frames behind their shm::frame
//! header) through the preproc worker's path: header check,
//! decode (with and without DCT scaling), resize + normalize for two model
//! input layouts. Any input must give Ok or Err, never a panic or a read
//! beyond a buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_repo::{ChannelOrder, DType, Layout, Preprocess, ResizeMode};
use preproc_worker::image::{DecodeLimits, decode_into, probe};
use preproc_worker::preprocess::{Scratch, preprocess_into, source_size_needed, tensor_len};

fn spec(resize: ResizeMode, layout: Layout, width: u32, height: u32) -> Preprocess {
    Preprocess {
        input: None,
        resize,
        width,
        height,
        resize_shorter: None,
        channel_order: ChannelOrder::BGR,
        layout,
        scale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
        pad_value: 0.0,
        decode: Default::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    // Smaller limits than the daemon's keep each run fast; the checks are the same.
    let limits = DecodeLimits { max_pixels: 4_000_000, max_side: 4096 };
    let Ok(info) = probe(data, &limits) else { return };
    let specs = [
        (spec(ResizeMode::FitHeightPadRight, Layout::NCHW, 192, 48), DType::F32),
        (spec(ResizeMode::CenterCrop, Layout::NHWC, 32, 32), DType::F16),
        (spec(ResizeMode::Stretch, Layout::NCHW, 17, 9), DType::U8),
    ];
    let mut buf = Vec::new();
    let mut scratch = Scratch::default();
    for (i, (pre, dtype)) in specs.iter().enumerate() {
        let scale_to = (i % 2 == 0).then(|| source_size_needed(pre, info.width, info.height));
        let Ok((w, h)) = decode_into(data, &info, scale_to, &mut buf) else { return };
        assert_eq!(buf.len(), w as usize * h as usize * 3, "decoded size matches the reported size");
        let mut out = vec![0u8; tensor_len(pre, *dtype)];
        let _ = preprocess_into((w, h, &buf), pre, *dtype, &mut out, &mut scratch);
    }
});
