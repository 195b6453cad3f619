//! Where models run: `inference.device`, the tract backend served end to end,
//! and on a GPU host the GPU path (these skip, saying so, without a GPU).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CLS: &str = "/v2/models/ppocr_cls/infer";

fn has_gpu() -> bool {
    Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// A KServe v2 request for ppocr_cls with a fixed, non-trivial tensor.
fn cls_request() -> Vec<u8> {
    let data: Vec<f32> = (0..3 * 48 * 192).map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0).collect();
    serde_json::json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": data}]})
        .to_string()
        .into_bytes()
}

fn cls_output(d: &Daemon) -> Vec<f64> {
    let r = d.post(CLS, &[("Content-Type", "application/json")], &cls_request());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["outputs"][0]["data"].as_array().expect("output data").iter().map(|x| x.as_f64().expect("number")).collect()
}

#[test]
fn device_gpu_without_a_gpu_refuses_to_start_naming_what_is_missing() {
    if has_gpu() {
        eprintln!("skipped: this machine has a GPU (tests/gpu.rs checks the GPU path instead)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| c.replace("device = \"auto\"", "device = \"gpu\""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_highserve"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--port", "0"])
        .env_remove("HIGHSERVE_CUDA_LIBS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("highserve starts");
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("exits within 30 s");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("inference.device = \"gpu\"") && err.contains("libcuda.so.1"), "{err}");
    assert!(err.contains("inference.device = \"auto\" or \"cpu\""), "says how to run on the CPU: {err}");
}

#[test]
fn auto_on_a_machine_without_a_gpu_serves_on_the_cpu() {
    if has_gpu() {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    let d = Daemon::start(&[]);
    assert_eq!(cls_output(&d).len(), 2);
    assert!(d.log().contains("no CUDA driver on this machine; models run on the CPU"), "{}", d.log());
}

/// The tract backend (the GPU backend's code, on tract's CPU runtime) serves
/// the same answers as ONNX Runtime through the whole daemon.
#[test]
fn tract_backend_serves_what_onnx_runtime_serves() {
    let reference = cls_output(&Daemon::start(&["--load", "ppocr_cls"]));
    let repo = repository_with("ppocr_cls", |c| format!("backend = \"tract\"\n{c}"));
    let dir = tempfile::tempdir().unwrap();
    let models = repo.path().display().to_string();
    let config = config_with(dir.path(), |c| c);
    let started = Instant::now();
    let d = Daemon::start_with(&config, &["--models", &models, "--load", "ppocr_cls", "--device", "cpu"], &[]);
    eprintln!("tract daemon ready in {:?}", started.elapsed());
    assert!(d.log().contains("tract cpu FP32"), "{}", d.log());
    let got = cls_output(&d);
    let worst = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("tract vs ONNX Runtime through the daemon: largest difference {worst:e}");
    assert!(worst < 1e-4, "{got:?} vs {reference:?}");
}

/// On a GPU host: the default config runs on the GPU and answers as the CPU
/// does (FP32, so to within float rounding of different kernels).
#[test]
fn gpu_serves_what_the_cpu_serves() {
    if !has_gpu() {
        eprintln!("skipped: no GPU (nvidia-smi -L lists none)");
        return;
    }
    let reference = cls_output(&Daemon::start(&["--load", "ppocr_cls", "--device", "cpu"]));
    let d = Daemon::start(&["--load", "ppocr_cls", "--device", "gpu"]);
    assert!(d.log().contains("tract cuda FP32") && d.log().contains("pinned"), "{}", d.log());
    let got = cls_output(&d);
    let worst = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("GPU vs CPU through the daemon: largest difference {worst:e}");
    assert!(worst < 1e-3, "{got:?} vs {reference:?}");
}

/// ppocr_cls stretched to its input (what the GPU kernel does), with
/// `decode = "gpu"`, in a repository of its own.
fn cls_decoded_on_the_gpu() -> tempfile::TempDir {
    repository_with("ppocr_cls", |c| {
        assert!(c.contains("resize = \"fit_height_pad_right\""), "models/ppocr_cls/config.toml changed: {c}");
        c.replace("resize = \"fit_height_pad_right\"", "resize = \"stretch\"\ndecode = \"gpu\"")
    })
}

/// A 1280x720 JPEG and a raw RGB frame, as (Content-Type, body).
fn cls_images() -> Vec<(String, Vec<u8>)> {
    let (w, h) = (320u32, 96u32);
    let frame: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7 + i / 960) % 251) as u8).collect();
    vec![
        ("image/jpeg".into(), testdata("photo_1280x720.jpg")),
        (format!("video/x-raw; format=RGB; width={w}; height={h}"), frame),
    ]
}

fn classes(d: &Daemon, ctype: &str, body: &[u8]) -> Vec<(i64, f64)> {
    let r = d.post(CLS, &[("Content-Type", ctype)], body);
    assert_eq!(r.status, 200, "{ctype}: {}", r.text());
    let v = r.json();
    v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["index"].as_i64().unwrap(), c["score"].as_f64().unwrap()))
        .collect()
}

#[test]
fn decode_gpu_without_a_gpu_is_done_by_the_preproc_pool() {
    if has_gpu() {
        eprintln!("skipped: this machine has a GPU (decode_gpu_agrees_with_the_preproc_pool checks it)");
        return;
    }
    let repo = cls_decoded_on_the_gpu();
    let models = repo.path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| c);
    let d = Daemon::start_with(&config, &["--models", &models, "--load", "ppocr_cls", "--device", "cpu"], &[]);
    assert!(d.log().contains("decode = \"gpu\" but the models run on the CPU"), "{}", d.log());
    let cpu_repo =
        repository_with("ppocr_cls", |c| c.replace("resize = \"fit_height_pad_right\"", "resize = \"stretch\""));
    let cpu_models = cpu_repo.path().display().to_string();
    let reference =
        Daemon::start_with(&config, &["--models", &cpu_models, "--load", "ppocr_cls", "--device", "cpu"], &[]);
    for (ctype, body) in cls_images() {
        assert_eq!(classes(&d, &ctype, &body), classes(&reference, &ctype, &body), "{ctype}");
    }
}

/// On a GPU host: JPEGs decoded by nvJPEG and raw frames, resized and
/// normalized by the kernel, get the answers the preproc pool gives (with
/// DCT scaling off, so both decode at full size), to within the rounding of
/// two JPEG decoders and two resizers.
#[test]
fn decode_gpu_agrees_with_the_preproc_pool() {
    if !has_gpu() {
        eprintln!("skipped: no GPU (nvidia-smi -L lists none)");
        return;
    }
    let repo = cls_decoded_on_the_gpu();
    let models = repo.path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| c.replace("jpeg_dct_scaling = true", "jpeg_dct_scaling = false"));
    let args = |device| ["--models", &models, "--load", "ppocr_cls", "--device", device];
    let gpu = Daemon::start_with(&config, &args("gpu"), &[]);
    assert!(gpu.log().contains("GPU preprocessing: nvJPEG"), "{}", gpu.log());
    let cpu = Daemon::start_with(&config, &args("cpu"), &[]);
    for (ctype, body) in cls_images() {
        let (g, c) = (classes(&gpu, &ctype, &body), classes(&cpu, &ctype, &body));
        eprintln!("{ctype}: GPU {g:?}, preproc pool {c:?}");
        assert_eq!(g[0].0, c[0].0, "{ctype}: top-1 differs");
        assert!((g[0].1 - c[0].1).abs() < 0.02, "{ctype}: {g:?} vs {c:?}");
    }
    // A body that is not a JPEG fails alone, and the model still serves.
    let r = gpu.post(CLS, &[("Content-Type", "image/jpeg")], b"\xff\xd8\xff\xe0 not really a JPEG");
    assert_eq!(r.status, 400, "{}", r.text());
    classes(&gpu, "image/jpeg", &testdata("photo_1280x720.jpg"));
}
