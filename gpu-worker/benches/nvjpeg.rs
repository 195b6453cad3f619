//! JPEG decoding throughput, GPU against CPU, on the same image: nvJPEG one
//! image at a time (hybrid: Huffman on this CPU thread) and in batches with
//! each backend (hybrid, GPU hybrid, the hardware JPEG engines), against
//! libjpeg-turbo on one CPU thread (the preproc pool runs one per core).
//! Prints "skipped" without a GPU or without libnvjpeg.
//!
//! ```text
//! HIGHSERVE_BENCH_JPEG=.cache/testdata/photo_1280x720.jpg HIGHSERVE_BENCH_BATCHES=32,128 \
//! HIGHSERVE_BENCH_SECONDS=3 cargo bench -p gpu-worker --bench nvjpeg
//! ```
//! libnvjpeg is looked for in .cache/cuda/lib (`./scripts/fetch --test`),
//! then where the other CUDA libraries are.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpu_worker::cuda::nvjpeg::{Backend, Decoder, Nvjpeg};
use gpu_worker::cuda::{device, libs};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Runs `once` (which handles `per_call` images) for `seconds`; images/s.
fn rate(seconds: f64, per_call: usize, mut once: impl FnMut()) -> f64 {
    for _ in 0..2 {
        once();
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        once();
        calls += 1;
    }
    (calls as usize * per_call) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = root.join(env("HIGHSERVE_BENCH_JPEG", ".cache/testdata/photo_1280x720.jpg"));
    let seconds: f64 = env("HIGHSERVE_BENCH_SECONDS", "3").parse().expect("HIGHSERVE_BENCH_SECONDS is a number");
    let batches: Vec<usize> = env("HIGHSERVE_BENCH_BATCHES", "32,128")
        .split(',')
        .map(|b| b.trim().parse().expect("HIGHSERVE_BENCH_BATCHES: numbers"))
        .collect();
    let jpeg = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e} (./scripts/fetch --test)", file.display()));

    let cpu = rate(seconds, 1, || {
        turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::RGB).expect("libjpeg-turbo decodes it");
    });
    println!("{}: {} bytes", file.display(), jpeg.len());
    println!("{:<44} {:>10.1} images/s", "libjpeg-turbo, one CPU thread", cpu);

    let mut dirs = vec![root.join(".cache/cuda/lib")];
    dirs.extend(libs::search_dirs(&[]));
    let api = match Nvjpeg::find(&dirs) {
        Ok(api) => api,
        Err(e) => return println!("nvJPEG skipped: {e}"),
    };
    if let Err(e) = device::probe() {
        return println!("nvJPEG skipped: no GPU ({e})");
    }
    let (major, minor, patch) = api.version().expect("version");
    println!("nvJPEG {major}.{minor}.{patch} from {}", api.path().display());
    let ctx = cudarc::driver::CudaContext::new(0).expect("CUDA context");
    let stream = ctx.new_stream().expect("stream");

    let mut single = Decoder::new(api.clone(), Backend::Default).expect("handle");
    let info = single.info(&jpeg).expect("header");
    // Whether the hardware backend takes a JPEG depends on its layout.
    println!(
        "{}x{}, {} components, chroma subsampling code {}",
        info.width, info.height, info.components, info.subsampling
    );
    let bytes = info.width as usize * info.height as usize * 3;
    let mut out = stream.alloc_zeros::<u8>(bytes).expect("alloc");
    let r = rate(seconds, 1, || {
        single.decode(&jpeg, &mut out, &stream).expect("decode");
        stream.synchronize().expect("sync");
    });
    println!("{:<44} {:>10.1} images/s", "nvJPEG one at a time (default backend)", r);

    for backend in [Backend::Hybrid, Backend::GpuHybrid, Backend::Hardware] {
        let mut dec = match Decoder::new(api.clone(), backend) {
            Ok(d) => d,
            Err(e) => {
                println!("nvJPEG {backend:?}: not available here: {e}");
                continue;
            }
        };
        for &b in &batches {
            let jpegs: Vec<&[u8]> = vec![&jpeg; b];
            let mut outs: Vec<_> = (0..b).map(|_| stream.alloc_zeros::<u8>(bytes).expect("alloc")).collect();
            if let Err(e) = dec.decode_batch(&jpegs, &mut outs, &stream) {
                println!("nvJPEG {backend:?} batch {b}: {e}");
                continue;
            }
            let r = rate(seconds, b, || {
                dec.decode_batch(&jpegs, &mut outs, &stream).expect("decode");
                stream.synchronize().expect("sync");
            });
            println!("{:<44} {:>10.1} images/s", format!("nvJPEG {backend:?}, batches of {b}"), r);
        }
    }
}
