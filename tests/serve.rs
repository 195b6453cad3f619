//! End-to-end: the real daemon, real models, real processes and shared memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gpu_worker::backend::{Backend, TensorView};
use model_repo::{DType, Repository};

const CLS: &str = "/v2/models/ppocr_cls/infer";

/// The scores ONNX Runtime itself gives for the tensor the daemon's
/// preprocessing makes from `img` (same code, same config).
fn reference_scores(img: &[u8]) -> Vec<f32> {
    let repo = Repository::load(&root().join("models"), Some(&["ppocr_cls".to_string()])).unwrap();
    let model = &repo.models[0];
    let pre = model.config.preprocess.as_ref().unwrap();
    let limits = preproc_worker::image::DecodeLimits { max_pixels: 40_000_000, max_side: 16384 };
    let info = preproc_worker::image::probe(img, &limits).unwrap();
    let scale_to = preproc_worker::preprocess::source_size_needed(pre, info.width, info.height);
    let mut rgb = Vec::new();
    let (w, h) = preproc_worker::image::decode_into(img, &info, Some(scale_to), &mut rgb).unwrap();
    let mut tensor = vec![0f32; preproc_worker::preprocess::tensor_len(pre, DType::F32) / 4];
    let mut scratch = preproc_worker::preprocess::Scratch::default();
    preproc_worker::preprocess::preprocess_into(
        (w, h, &rgb),
        pre,
        DType::F32,
        bytemuck::cast_slice_mut(&mut tensor),
        &mut scratch,
    )
    .unwrap();
    gpu_worker::onnx::init_runtime(&root().join(".cache/onnxruntime/libonnxruntime.so")).unwrap();
    let opts = gpu_worker::onnx::OnnxOptions::default();
    let mut backend = gpu_worker::onnx::OnnxBackend::load(&model.file(1), &opts).unwrap();
    let shape = [1, 3, 48, 192];
    let mut scores = Vec::new();
    let input = TensorView { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice(&tensor) };
    backend
        .run(&[input], &mut |outs| {
            scores = outs[0].data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        })
        .unwrap();
    scores
}

#[test]
fn classifies_text_crops_exactly_as_onnx_runtime_does() {
    let d = Daemon::start(&[]);
    for (file, upright) in
        [("text_0_0.jpg", true), ("text_0_180.jpg", false), ("text_2_0.jpg", true), ("text_2_180.jpg", false)]
    {
        let img = testdata(file);
        let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &img);
        assert_eq!(r.status, 200, "{file}: {}", r.text());
        let v = r.json();
        assert_eq!(v["model_name"], "ppocr_cls");
        let classes = v["classes"].as_array().unwrap();
        assert_eq!(classes.len(), 2, "top_k = 2 in the model config");
        let want = reference_scores(&img);
        for c in classes {
            let i = c["index"].as_u64().unwrap() as usize;
            let got = c["score"].as_f64().unwrap() as f32;
            assert!((got - want[i]).abs() < 1e-4, "{file}: class {i} scored {got}, ONNX Runtime {}", want[i]);
        }
        assert_eq!(classes[0]["label"], if upright { "0" } else { "180" }, "{file}: {v}");
    }
    // The same works for a PNG, and for a JPEG posted without a Content-Type.
    let r = d.post(CLS, &[("Content-Type", "image/png")], &testdata("astronaut.png"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d.post(CLS, &[], &testdata("text_1_0.jpg"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["classes"][0]["label"], "0");
}

#[test]
fn concurrent_requests_are_batched() {
    let d = Daemon::start(&[]);
    let img = testdata("photo_640x480.jpg");
    let (clients, each) = (16, 15);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                for _ in 0..each {
                    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &img);
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            });
        }
    });
    let requests = (clients * each) as u64;
    // An instance records a batch's statistics after sending its answers: the
    // last batch's may come a moment after the last answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let stats = loop {
        let stats = d.get("/v2/models/ppocr_cls/stats");
        assert_eq!(stats.status, 200);
        let done = stats.json()["model_stats"][0]["inference_count"].as_u64() == Some(requests);
        if done || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let s = &stats.json()["model_stats"][0];
    assert_eq!(s["inference_count"].as_u64(), Some(requests), "{s}");
    let execs = s["execution_count"].as_u64().unwrap();
    let biggest = s["batch_stats"].as_array().unwrap().iter().map(|b| b["batch_size"].as_u64().unwrap()).max();
    assert!(execs < requests && biggest > Some(1), "no batching under 16 concurrent clients: {s}");
}

#[test]
fn tritonclient_works_unmodified() {
    let d = Daemon::start(&[]);
    let python = std::env::var("HIGHSERVE_TEST_PYTHON")
        .unwrap_or_else(|_| root().join(".cache/venv/bin/python").display().to_string());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing; run ./scripts/fetch --test (./scripts/test does)"
    );
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/triton_client_check.py"))
        .arg(&d.addr)
        .arg(root().join(".cache/testdata"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient checks failed:\n{text}\n---- daemon log ----\n{}", d.log());
    assert!(text.contains("all tritonclient checks passed"), "{text}");
}

#[test]
fn health_and_metadata() {
    let d = Daemon::start(&[]);
    assert_eq!(d.get("/v2/health/live").status, 200);
    assert_eq!(d.get("/v2/health/ready").status, 200);
    assert_eq!(d.get("/v2/models/ppocr_cls/ready").status, 200);
    assert_eq!(d.get("/v2/models/ppocr_cls/versions/1/ready").status, 200);
    let m = d.get("/v2/models/ppocr_rec").json();
    assert_eq!(m["inputs"][0]["shape"], serde_json::json!([-1, 3, 48, -1]));
    let r = d.get("/v2/models/nope");
    assert_eq!(r.status, 404);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("ppocr_cls") && msg.contains("ppocr_det") && msg.contains("ppocr_rec"), "{msg}");
    let r = d.get("/v2/models/ppocr_cls/versions/7");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("loaded version is 1"), "{}", r.text());
    assert_eq!(d.get("/v2/models/ppocr_cls/infer").status, 405);
    assert_eq!(d.get("/nothing/here").status, 404);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let before = dev_shm_entries();
    let mut d = Daemon::start(&[]);
    let img = testdata("photo_1280x720.jpg");
    let addr = d.addr.clone();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, img) = (addr.clone(), img.clone());
            std::thread::spawn(move || request(&addr, "POST", CLS, &[("Content-Type", "image/jpeg")], &img).status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let status = d.terminate();
    for c in clients {
        // Every request that reached the server before SIGTERM is answered.
        assert_eq!(c.join().unwrap(), 200, "{}", d.log());
    }
    assert!(status.success(), "exit status {status}:\n{}", d.log());
    let leaked: Vec<String> = dev_shm_entries().into_iter().filter(|e| !before.contains(e)).collect();
    assert!(leaked.is_empty(), "left in /dev/shm: {leaked:?}");
    assert!(d.log().contains("draining"), "{}", d.log());
}

#[test]
fn children_die_with_a_killed_supervisor() {
    let mut d = Daemon::start(&[]);
    let kids = d.children();
    assert_eq!(kids.len(), 4, "gpu worker, 2 preproc workers, frontend: {kids:?}");
    signal(d.pid(), "KILL");
    let _ = d.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while kids.iter().any(|&k| alive(k)) {
        assert!(Instant::now() < deadline, "children outlived the supervisor: {kids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
