//! Memory on demand (docs/operations.md#memory): the slot pool's ceiling
//! refuses what would cross it (429, and models that cannot fit, naming
//! `shm.max_bytes`), and its memory is in /metrics.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// The default config with a 1 MiB body limit (so the derived classes are
/// small) and the pool's ceiling at `max_bytes`.
fn config(dir: &std::path::Path, max_bytes: &str) -> std::path::PathBuf {
    config_with(dir, |c| {
        c.replace("max_body_bytes = \"16MiB\"", "max_body_bytes = \"1MiB\"")
            .replace("max_bytes = \"1GiB\"", &format!("max_bytes = \"{max_bytes}\""))
    })
}

fn metric(d: &Daemon, name: &str) -> u64 {
    let text = d.get("/metrics").text();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_model_whose_request_exceeds_the_ceiling_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // OCR holds a detector input of up to 47 MiB in one slot.
    let out = Command::new(env!("CARGO_BIN_EXE_highserve"))
        .args(["serve", "--config"])
        .arg(config(dir.path(), "16MiB"))
        .args(["--port", "0", "--grpc-port", "0", "--load", "ocr", "--run-dir"])
        .arg(dir.path().join("run"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("model `ocr`") && log.contains("shm.max_bytes") && log.contains("detector input"), "{log}");

    // Loaded later, under model control: refused, and the daemon serves on.
    let d = Daemon::start_with(
        &config(dir.path(), "16MiB"),
        &["--model-control-mode", "explicit", "--load-model", "ppocr_cls"],
        &[],
    );
    let r = d.post("/v2/repository/models/ocr/load", &[], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("detector input") && r.text().contains("shm.max_bytes"), "{}", r.text());
    let r = d.post("/v2/models/ppocr_cls/infer", &[("Content-Type", "image/jpeg")], &testdata("text_0_0.jpg"));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn at_the_ceiling_requests_are_refused_with_429_and_memory_stays_under_it() {
    let dir = tempfile::tempdir().unwrap();
    // Slow batching keeps requests (and their slots) in flight together;
    // 2 MiB holds the largest slot, and 8 of the 256 KiB ones.
    let repo = repository_with("ppocr_cls", |c| {
        c.replace("max_queue_delay_microseconds = 500", "max_queue_delay_microseconds = 1000000")
            .replace("preferred_batch_size = [16, 32]", "preferred_batch_size = [32]")
    });
    let d = Daemon::start_with(
        &config(dir.path(), "2MiB"),
        &["--models", repo.path().to_str().unwrap(), "--load", "ppocr_cls"],
        &[],
    );
    assert_eq!(metric(&d, "highserve_shm_ceiling_bytes"), 2 << 20);
    let img = testdata("text_0_0.jpg");
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..24)
            .map(|_| s.spawn(|| d.post("/v2/models/ppocr_cls/infer", &[("Content-Type", "image/jpeg")], &img)))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty(), "24 requests at once fit under a 2 MiB ceiling? {statuses:?}");
    assert!(refused.iter().all(|r| r.text().contains("shm.max_bytes")), "{}", refused[0].text());
    assert!(statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
    assert!(metric(&d, "highserve_shm_committed_bytes") <= 2 << 20);
    // Nothing is stuck: the next request is served.
    let r = d.post("/v2/models/ppocr_cls/infer", &[("Content-Type", "image/jpeg")], &img);
    assert_eq!(r.status, 200, "{}", r.text());
}
