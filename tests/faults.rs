//! Faults against the real binary: killed workers, a killed frontend, a
//! panic, and requests that must not hang through any of it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CLS: &str = "/v2/models/ppocr_cls/infer";

/// 16 clients sending until `stop`; returns how many were answered 200.
/// Every other answer is recorded in `bad`: a killed worker's requests are
/// sent again, and new ones wait for a restarting worker, so none fails.
fn load(d: &Daemon, stop: &AtomicBool, img: &[u8], bad: &std::sync::Mutex<Vec<String>>) -> usize {
    let ok = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], img);
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.lock().unwrap().push(format!("{}: {}", r.status, r.text()));
                    }
                    // A liveness bound, not a speed goal: a request that takes
                    // this long was stuck behind the dead worker.
                    if started.elapsed() > Duration::from_secs(20) {
                        bad.lock().unwrap().push(format!("a request took {:?}", started.elapsed()));
                    }
                }
            });
        }
    });
    ok.into_inner()
}

fn wait_for(what: &str, d: &Daemon, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_preproc_worker_killed_under_load_loses_no_request() {
    let d = Daemon::start(&[]);
    let img = testdata("photo_640x480.jpg");
    let before = d.children();
    // Start order: inference worker, preproc workers, frontend.
    let victim = before[1];
    let stop = AtomicBool::new(false);
    let bad = std::sync::Mutex::new(Vec::new());
    let ok = std::thread::scope(|s| {
        let clients = s.spawn(|| load(&d, &stop, &img, &bad));
        std::thread::sleep(Duration::from_millis(1500));
        signal(victim, "KILL");
        wait_for("a replacement preproc worker", &d, || {
            let now = d.children();
            now.len() == 4 && !now.contains(&victim) && d.log().contains("preproc0 ready again")
        });
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        clients.join().unwrap()
    });
    let bad = bad.into_inner().unwrap();
    assert!(bad.is_empty(), "{} bad answers, e.g. {:?}\n{}", bad.len(), &bad[..bad.len().min(5)], d.log());
    assert!(ok > 100, "{ok} requests succeeded");
    assert!(d.log().contains("sent again after"), "the killed worker's requests were sent again:\n{}", d.log());
    // Every slot came back: the daemon still serves a full load afterwards.
    for _ in 0..50 {
        assert_eq!(d.post(CLS, &[("Content-Type", "image/jpeg")], &img).status, 200);
    }
    assert!(d.log().contains("restarting preproc0"), "{}", d.log());
}

#[test]
fn an_inference_worker_killed_under_load_is_restarted_and_readiness_follows() {
    let d = Daemon::start(&[]);
    let img = testdata("photo_640x480.jpg");
    let gpu = d.children()[0];
    let stop = AtomicBool::new(false);
    let bad = std::sync::Mutex::new(Vec::new());
    let saw_unready = AtomicBool::new(false);
    let ok = std::thread::scope(|s| {
        let clients = s.spawn(|| load(&d, &stop, &img, &bad));
        std::thread::sleep(Duration::from_millis(1000));
        signal(gpu, "KILL");
        // Readiness turns false while the worker is down, then true again.
        wait_for("readiness turning false", &d, || {
            let unready = d.get("/v2/health/ready").status == 503;
            if unready {
                saw_unready.store(true, Ordering::Relaxed);
            }
            unready || d.log().contains("gpu0 ready again")
        });
        wait_for("the inference worker coming back", &d, || d.log().contains("gpu0 ready again"));
        wait_for("readiness turning true", &d, || d.get("/v2/health/ready").status == 200);
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        clients.join().unwrap()
    });
    let bad = bad.into_inner().unwrap();
    assert!(bad.is_empty(), "{} bad answers, e.g. {:?}\n{}", bad.len(), &bad[..bad.len().min(5)], d.log());
    assert!(saw_unready.load(Ordering::Relaxed), "readiness never said 503 while the worker was down");
    assert!(ok > 50);
    assert_eq!(d.post(CLS, &[("Content-Type", "image/jpeg")], &img).status, 200);
}

#[test]
fn a_dead_frontend_stops_the_daemon_with_an_error_for_the_service_manager() {
    let mut d = Daemon::start(&[]);
    let kids = d.children();
    let frontend = *kids.last().unwrap();
    signal(frontend, "KILL");
    let status = wait_timeout(&mut d.child, Duration::from_secs(30)).expect("the supervisor exits");
    assert!(!status.success(), "exit status {status}: systemd must see a failure");
    let deadline = Instant::now() + Duration::from_secs(10);
    while kids.iter().any(|&k| alive(k)) {
        assert!(Instant::now() < deadline, "children outlived the supervisor");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("the frontend exited"), "{}", d.log());
}

#[test]
fn a_panic_takes_down_only_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("panic-once");
    std::fs::write(&trigger, b"").unwrap();
    let d = Daemon::start_with(
        &root().join("configs/default.toml"),
        &[],
        &[("HIGHSERVE_FAULT_PANIC_FILE", trigger.to_str().unwrap())],
    );
    let before = d.children();
    let img = testdata("text_0_0.jpg");
    // The first batch panics in a backend thread: the inference worker
    // process is replaced, nothing else is, and the request it held is sent
    // again and answered.
    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &img);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(d.log().contains("gpu0 ready again") && d.log().contains("sent again after"), "{}", d.log());
    let after = d.children();
    assert!(
        !after.contains(&before[0]) && after.len() == 4,
        "the inference worker was replaced: {before:?} -> {after:?}"
    );
    assert!(
        before[1..].iter().all(|p| after.contains(p)),
        "the other processes were untouched: {before:?} -> {after:?}"
    );
    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &img);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(d.log().contains("fault injected"), "{}", d.log());
}
