//! The engine limit: a model's offline throughput by batch size through the
//! `Backend` trait alone (no daemon, no shared memory), the figure the served
//! throughput is measured against. Runs ONNX Runtime or tract on the CPU, or
//! tract-cuda or ONNX Runtime's CUDA execution provider (which needs a CUDA
//! build of the library) on a GPU, on the same model file and the same input.
//!
//! ```text
//! HIGHSERVE_BENCH_MODEL=models/ppocr_cls/1/model.onnx HIGHSERVE_BENCH_SHAPE=3,48,192 \
//! HIGHSERVE_BENCH_BACKEND=onnxruntime|onnxruntime-cuda|tract-cpu|tract-cuda HIGHSERVE_BENCH_FP16=1 \
//! HIGHSERVE_BENCH_BATCHES=1,8,32 HIGHSERVE_BENCH_SECONDS=3 \
//!   cargo bench -p gpu-worker --bench engine
//! ```
//! Prints one line per batch size (and `--json`-like lines with `BENCH_JSON=1`).
//! On tract-cuda each batch size is measured twice: with host inputs (`run`:
//! tract copies them to the device) and with device inputs (`device_inputs`
//! filled by a staging stream, then `run_device`: what the daemon does,
//! though here from pageable memory, not from the pinned slots).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpu_worker::backend::{Backend, TensorView};
use gpu_worker::cuda::staging::Staging;
use gpu_worker::onnx::{OnnxBackend, OnnxOptions, init_runtime};
use gpu_worker::tract::{Target, TractBackend, TractOptions};
use shm::tensor::DType;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn list(s: &str) -> Vec<i64> {
    s.split(',').map(|x| x.trim().parse().unwrap_or_else(|_| panic!("`{x}` is not a number"))).collect()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join(env("HIGHSERVE_BENCH_MODEL", "models/ppocr_cls/1/model.onnx"));
    let row = list(&env("HIGHSERVE_BENCH_SHAPE", "3,48,192"));
    let backend_name = env("HIGHSERVE_BENCH_BACKEND", "onnxruntime");
    let fp16 = env("HIGHSERVE_BENCH_FP16", "0") == "1";
    let batches = list(&env("HIGHSERVE_BENCH_BATCHES", "1,4,16"));
    let seconds: f64 = env("HIGHSERVE_BENCH_SECONDS", "2").parse().expect("HIGHSERVE_BENCH_SECONDS is a number");
    let max_batch = *batches.iter().max().expect("at least one batch size");
    let shapes: Vec<Vec<i64>> = vec![std::iter::once(-1).chain(row.iter().copied()).collect()];
    let mut backend: Box<dyn Backend> = match backend_name.as_str() {
        "onnxruntime" | "onnxruntime-cuda" => {
            let library = env("HIGHSERVE_BENCH_ONNXRUNTIME", ".cache/onnxruntime/libonnxruntime.so");
            init_runtime(&root.join(library)).expect("ONNX Runtime loads");
            let threads: usize = env("HIGHSERVE_BENCH_THREADS", "1").parse().expect("threads");
            let cuda_device = (backend_name == "onnxruntime-cuda").then_some(0);
            let opts = OnnxOptions { intra_op_threads: threads, spinning: false, cuda_device };
            Box::new(OnnxBackend::load(&model, &opts).unwrap_or_else(|e| panic!("{e}")))
        }
        "tract-cpu" | "tract-cuda" => {
            let target = if backend_name == "tract-cuda" { Target::Cuda } else { Target::Cpu };
            Box::new(TractBackend::load(&model, TractOptions { target, fp16 }, Some(&shapes)).expect("model loads"))
        }
        other => {
            panic!("HIGHSERVE_BENCH_BACKEND = {other}; accepted: onnxruntime, onnxruntime-cuda, tract-cpu, tract-cuda")
        }
    };
    println!("{}", backend.describe());
    let per_row: usize = row.iter().product::<i64>() as usize;
    // Deterministic input in [0, 1).
    let data: Vec<f32> = (0..per_row * max_batch as usize).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let staging = (backend_name == "tract-cuda").then(|| Staging::new().expect("a CUDA stream"));
    println!("{:>6} {:>7} {:>12} {:>12} {:>12}", "batch", "inputs", "items/s", "ms/batch", "batches");
    for &b in &batches {
        let shape: Vec<i64> = std::iter::once(b).chain(row.iter().copied()).collect();
        let bytes: &[u8] = bytemuck::cast_slice(&data[..per_row * b as usize]);
        let input = TensorView { dtype: DType::F32, shape: &shape, data: bytes };
        measure(&backend_name, fp16, b, "host", seconds, || {
            backend.run(&[input], &mut |_| {}).expect("inference runs")
        });
        if let Some(staging) = &staging {
            measure(&backend_name, fp16, b, "device", seconds, || {
                let dev = backend.device_inputs(&[input]).expect("device memory").expect("device inputs");
                staging.upload(dev[0].ptr, bytes).expect("copy");
                backend.run_device(staging.stream(), &mut |_| {}).expect("inference runs")
            });
        }
    }
}

/// Runs `once` for `seconds` (at least 3 times, after 3 unmeasured) and
/// prints the batch size's line.
fn measure(backend_name: &str, fp16: bool, b: i64, inputs: &str, seconds: f64, mut once: impl FnMut()) {
    for _ in 0..3 {
        once();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(seconds) || n < 3 {
        once();
        n += 1;
    }
    let took = start.elapsed().as_secs_f64();
    let items = (n * b as u64) as f64 / took;
    println!("{b:>6} {inputs:>7} {items:>12.1} {:>12.3} {n:>12}", took * 1e3 / n as f64);
    if env("BENCH_JSON", "0") == "1" {
        println!(
            "{{\"backend\":\"{backend_name}\",\"fp16\":{fp16},\"inputs\":\"{inputs}\",\"batch\":{b},\"items_per_s\":{items:.2},\"ms_per_batch\":{:.4}}}",
            took * 1e3 / n as f64
        );
    }
}
