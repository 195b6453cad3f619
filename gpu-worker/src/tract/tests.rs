//! The tract backend against ONNX Runtime on the CPU, and its device inputs
//! where a GPU is present (skipped, saying so, where none is).

use super::*;
use crate::onnx::{OnnxBackend, OnnxOptions, init_runtime};
use crate::test_util::{need, noise, outputs_f32, repo_path, run_f32};

fn model(name: &str) -> std::path::PathBuf {
    repo_path(&format!("models/{name}/1/model.onnx"))
}

fn ort(name: &str) -> OnnxBackend {
    init_runtime(need(&repo_path(".cache/onnxruntime/libonnxruntime.so"))).expect("ONNX Runtime loads");
    OnnxBackend::load(need(&model(name)), &OnnxOptions::default()).expect("model loads")
}

fn shapes(name: &str) -> Vec<Vec<i64>> {
    let path = repo_path(&format!("models/{name}/config.toml"));
    let text = std::fs::read_to_string(need(&path)).expect("config is readable");
    let cfg = model_repo::ModelConfig::parse(&text, "config.toml").expect("config parses");
    cfg.inputs.iter().map(|t| cfg.full_shape(t)).collect()
}

fn tract(name: &str, fp16: bool) -> TractBackend {
    let opts = TractOptions { target: Target::Cpu, fp16 };
    TractBackend::load(need(&model(name)), opts, Some(&shapes(name))).expect("tract loads")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The tract path (what the GPU runs, here on tract's CPU runtime)
/// describes the model as ONNX Runtime does and computes the same
/// outputs, batched, at the model's dynamic sizes.
#[test]
fn tract_agrees_with_onnx_runtime() {
    for (name, shape, tol) in [
        ("ppocr_cls", vec![4i64, 3, 48, 192], 1e-4f32),
        ("ppocr_rec", vec![2, 3, 48, 320], 1e-3),
        ("ppocr_det", vec![1, 3, 160, 224], 1e-3),
    ] {
        let mut reference = ort(name);
        let mut t = tract(name, false);
        assert_eq!(t.inputs().len(), reference.inputs().len(), "{name}");
        for (a, b) in t.inputs().iter().zip(reference.inputs()) {
            assert_eq!((&a.name, a.dtype), (&b.name, b.dtype), "{name}");
        }
        for (a, b) in t.outputs().iter().zip(reference.outputs()) {
            assert_eq!((&a.name, a.dtype), (&b.name, b.dtype), "{name}");
        }
        let data = noise(shape.iter().product::<i64>() as usize, 7);
        let want = run_f32(&mut reference, &shape, &data);
        let got = run_f32(&mut t, &shape, &data);
        for ((gs, g), (ws, w)) in got.iter().zip(&want) {
            assert_eq!(gs, ws, "{name}");
            let d = max_abs_diff(g, w);
            eprintln!("{name} {shape:?}: largest difference from ONNX Runtime {d:e}");
            assert!(d <= tol, "{name}: {d} > {tol}");
        }
    }
}

/// FP16 keeps the declared FP32 interface and the classifier's answer.
#[test]
fn fp16_keeps_fp32_inputs_and_outputs() {
    let mut reference = ort("ppocr_cls");
    let mut t = tract("ppocr_cls", true);
    assert_eq!(t.inputs()[0].dtype, DType::F32);
    let shape = [3i64, 3, 48, 192];
    let data = noise(3 * 3 * 48 * 192, 11);
    let want = run_f32(&mut reference, &shape, &data);
    let got = run_f32(&mut t, &shape, &data);
    let d = max_abs_diff(&got[0].1, &want[0].1);
    eprintln!("ppocr_cls FP16: largest difference from ONNX Runtime FP32 {d:e}");
    assert!(d < 2e-2, "{d}");
}

#[test]
fn wrong_inputs_are_errors_naming_the_tensor() {
    let mut t = tract("ppocr_cls", false);
    let data = vec![0u8; 4 * 3 * 48 * 192];
    let bad_shape = TensorView { dtype: DType::F32, shape: &[1, 4, 48, 192], data: &data };
    let err = t.run(&[bad_shape], &mut |_| {}).expect_err("4 channels are refused").to_string();
    assert!(err.contains("input `x`") && err.contains("does not fit"), "{err}");
    let bad_type = TensorView { dtype: DType::I32, shape: &[1, 3, 48, 192], data: &data };
    let err = t.run(&[bad_type], &mut |_| {}).expect_err("INT32 is refused").to_string();
    assert!(err.contains("given as INT32 but the model takes FP32"), "{err}");
}

#[test]
fn the_cuda_runtime_loads_or_says_why_not() {
    let opts = TractOptions { target: Target::Cuda, fp16: false };
    match TractBackend::load(need(&model("ppocr_cls")), opts, Some(&shapes("ppocr_cls"))) {
        Ok(b) => eprintln!("CUDA available: {}", b.describe()),
        Err(e) => {
            let e = e.to_string();
            eprintln!("skipped (no GPU): {e}");
            assert!(e.contains("libcuda.so.1"), "a missing driver is named: {e}");
        }
    }
}

/// Off the GPU, tract takes host inputs only: the instance gathers into a
/// host buffer and calls `run`.
#[test]
fn the_cpu_runtime_takes_host_inputs_only() {
    let mut t = tract("ppocr_cls", false);
    let view = TensorView { dtype: DType::F32, shape: &[2, 3, 48, 192], data: &[] };
    assert!(t.device_inputs(&[view]).expect("no error").is_none());
}

/// On a GPU, a batch handed over in device memory (filled by the
/// instance's staging stream, as from a pinned slot) gives the outputs
/// the same batch gives from host memory; wrong shapes are refused
/// before any device memory is handed out.
#[test]
fn device_inputs_give_the_outputs_of_host_inputs() {
    let opts = TractOptions { target: Target::Cuda, fp16: false };
    let mut t = match TractBackend::load(need(&model("ppocr_cls")), opts, Some(&shapes("ppocr_cls"))) {
        Ok(t) => t,
        Err(e) => return eprintln!("skipped (no GPU): {e}"),
    };
    let shape = [4i64, 3, 48, 192];
    let data = noise(4 * 3 * 48 * 192, 5);
    let want = run_f32(&mut t, &shape, &data);
    let bad = TensorView { dtype: DType::F32, shape: &[4, 4, 48, 192], data: &[] };
    let err = t.device_inputs(&[bad]).expect_err("4 channels are refused").to_string();
    assert!(err.contains("does not fit"), "{err}");
    let view = TensorView { dtype: DType::F32, shape: &shape, data: &[] };
    let dev = t.device_inputs(&[view]).expect("device memory").expect("tract-cuda takes device inputs");
    assert_eq!(dev[0].len, data.len() * 4);
    let staging = crate::cuda::staging::Staging::new().expect("a stream");
    staging.upload(dev[0].ptr, bytemuck::cast_slice(&data)).expect("copy");
    // No host wait: the run's stream waits for the copy.
    let got = outputs_f32(&mut t, |b, sink| b.run_device(staging.stream(), sink));
    for ((gs, g), (ws, w)) in got.iter().zip(&want) {
        assert_eq!(gs, ws);
        let d = max_abs_diff(g, w);
        eprintln!("ppocr_cls on the GPU: device inputs against host inputs, largest difference {d:e}");
        assert!(d <= 1e-6, "{d}");
    }
}
