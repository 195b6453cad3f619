//! Models changing while the daemon serves, against the real binary: a new
//! version swapped in under load with every answer a 200, a broken one
//! refused while the old one serves, unload, poll mode, and the admin
//! token's rules. (Killed workers losing nothing: tests/faults.rs.)

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, config_with, repository_with, root, testdata};

const CLS: &str = "/v2/models/ppocr_cls/infer";

/// Version `v` of ppocr_cls in `repo`: the fetched model file under another
/// version number (same answers, another `model_version`), or `bytes`.
fn add_version(repo: &Path, v: u64, bytes: Option<&[u8]>) {
    let dir = repo.join("ppocr_cls").join(v.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    match bytes {
        Some(b) => std::fs::write(dir.join("model.onnx"), b).unwrap(),
        None => {
            std::os::unix::fs::symlink(root().join("models/ppocr_cls/1/model.onnx"), dir.join("model.onnx")).unwrap()
        }
    }
}

fn start(repo: &Path, extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| c);
    let models = repo.display().to_string();
    let mut args = vec!["--models", &models];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(&config, &args, &[]);
    std::mem::forget(dir); // the config file outlives the daemon
    d
}

fn post(d: &Daemon, path: &str, body: &[u8]) -> common::Reply {
    d.post(path, &[("Content-Type", "application/json")], body)
}

fn versions_answering(d: &Daemon, img: &[u8]) -> String {
    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], img);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model_version"].as_str().unwrap().to_string()
}

fn index(d: &Daemon) -> serde_json::Value {
    let r = post(d, "/v2/repository/index", b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_for(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_new_version_swaps_in_under_load_with_every_answer_a_200() {
    let repo = repository_with("ppocr_cls", |c| c);
    let d = start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "ppocr_cls"]);
    let img = testdata("text_1_0.jpg");
    assert_eq!(versions_answering(&d, &img), "1");
    add_version(repo.path(), 2, None);
    let stop = AtomicBool::new(false);
    let (bad, seen) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &img);
                    match r.status {
                        200 => seen.lock().unwrap().push(r.json()["model_version"].as_str().unwrap().to_string()),
                        other => bad.lock().unwrap().push(format!("{other}: {}", r.text())),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let r = post(&d, "/v2/repository/models/ppocr_cls/load", b"");
        assert_eq!(r.status, 200, "{}", r.text());
        eprintln!("the load call took {:?}", started.elapsed());
        // From the answer on, new requests go to version 2.
        assert_eq!(versions_answering(&d, &img), "2");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let bad = bad.into_inner().unwrap();
    assert!(bad.is_empty(), "{} failed during the swap, e.g. {:?}\n{}", bad.len(), &bad[..bad.len().min(3)], d.log());
    let seen = seen.into_inner().unwrap();
    let first_2 = seen.iter().position(|v| v == "2").expect("answers from version 2");
    assert!(seen[..first_2].iter().all(|v| v == "1") && seen.len() > 50, "answers switch once: {seen:?}");
    // Version 1 drains, then unloads: the index shows only version 2 ready.
    wait_for("version 1 unloaded", &d, || {
        let i = index(&d);
        let cls: Vec<&serde_json::Value> = i.as_array().unwrap().iter().filter(|e| e["name"] == "ppocr_cls").collect();
        cls.len() == 1 && cls[0]["version"] == "2" && cls[0]["state"] == "READY"
    });
    assert!(d.log().contains("unloaded ppocr_cls version 1"), "{}", d.log());
    let r = d.get("/v2/models/ppocr_cls/versions/1");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn a_broken_version_is_refused_and_the_serving_one_goes_on() {
    let repo = repository_with("ppocr_cls", |c| c);
    let d = start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "ppocr_cls"]);
    add_version(repo.path(), 2, Some(b"this is not an ONNX model"));
    let r = post(&d, "/v2/repository/models/ppocr_cls/load", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("version 2"), "the reason names the version: {}", r.text());
    assert_eq!(versions_answering(&d, &testdata("text_1_0.jpg")), "1");
    let i = index(&d);
    let failed = i.as_array().unwrap().iter().find(|e| e["name"] == "ppocr_cls" && e["state"] == "UNAVAILABLE");
    assert!(failed.is_some_and(|e| !e["reason"].as_str().unwrap().is_empty()), "the index shows it: {i}");
    // A bad config override is refused before anything loads.
    let r = post(
        &d,
        "/v2/repository/models/ppocr_cls/load",
        br#"{"parameters":{"config":"{\"max_batch_size\": \"many\"}"}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn an_unloaded_model_is_a_404_and_a_pipelines_models_are_held_by_it() {
    let d = start(&root().join("models"), &["--model-control-mode", "explicit", "--load-model", "*"]);
    let r = post(&d, "/v2/repository/models/ppocr_det/unload", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("ocr") && r.text().contains("unload_dependents"), "{}", r.text());
    let r = post(&d, "/v2/repository/models/ppocr_cls/unload", br#"{"parameters":{"unload_dependents":true}}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &testdata("text_1_0.jpg"));
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("ppocr_rec") && !r.text().contains("ppocr_cls,"), "it names what exists: {}", r.text());
    let i = index(&d);
    let cls = i.as_array().unwrap().iter().find(|e| e["name"] == "ppocr_cls").unwrap();
    assert_eq!((&cls["state"], &cls["reason"]), (&"UNAVAILABLE".into(), &"unloaded".into()), "{i}");
    // And back.
    let r = post(&d, "/v2/repository/models/ppocr_cls/load", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(versions_answering(&d, &testdata("text_1_0.jpg")), "1");
}

#[test]
fn poll_mode_picks_up_a_new_version() {
    let repo = repository_with("ppocr_cls", |c| c);
    let d = start(repo.path(), &["--model-control-mode", "poll", "--repository-poll-secs", "1", "--load", "ppocr_cls"]);
    let img = testdata("text_1_0.jpg");
    assert_eq!(versions_answering(&d, &img), "1");
    add_version(repo.path(), 2, None);
    wait_for("version 2 serving", &d, || versions_answering(&d, &img) == "2");
    // The repository API does not load in poll mode: the directory decides.
    let r = post(&d, "/v2/repository/models/ppocr_cls/load", b"");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn model_control_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| c);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_highserve"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--host", "0.0.0.0", "--port", "0", "--model-control-mode", "explicit"])
        .env_remove("HIGHSERVE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token") && err.contains("0.0.0.0"), "{err}");
    // With a token, load and unload need it; the index does not.
    let d = start(&root().join("models"), &["--model-control-mode", "explicit", "--admin-token", "s3cret"]);
    let r = post(&d, "/v2/repository/models/ppocr_cls/load", b"");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains("s3cret"));
    let r = d.post(
        "/v2/repository/models/ppocr_cls/load",
        &[("Content-Type", "application/json"), ("Authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = d.post("/v2/repository/models/ppocr_cls/load", &[("Authorization", "Bearer s3cret")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(index(&d).as_array().unwrap().iter().filter(|e| e["state"] == "READY").count(), 1);
    assert!(!d.log().contains("s3cret"), "the token is never logged");
}
