//! Client shared memory end to end: the real daemon, driven by NVIDIA's
//! unmodified tritonclient (tests/client_shm_check.py), and off unless the
//! operator allows it.

mod common;

use common::{Daemon, root};

#[test]
fn off_by_default() {
    let d = Daemon::start(&[]);
    let r = d.post("/v2/systemsharedmemory/region/r/register", &[], br#"{"key":"/x","byte_size":8}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("--allow-client-shm"), "{}", r.text());
    // Listing and clearing answer as for a server with no regions.
    assert_eq!(d.get("/v2/systemsharedmemory/status").text(), "[]");
}

#[test]
fn tritonclient_shared_memory_works_unmodified() {
    let d = Daemon::start(&["--allow-client-shm"]);
    let python = std::env::var("HIGHSERVE_TEST_PYTHON")
        .unwrap_or_else(|_| root().join(".cache/venv/bin/python").display().to_string());
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/client_shm_check.py"))
        .arg(&d.addr)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}; run ./scripts/fetch --test (./scripts/test does)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "shared-memory checks failed:\n{text}\n---- daemon log ----\n{}", d.log());
    assert!(text.contains("all client shared-memory checks passed"), "{text}");
}
