//! `highserve bench` against the real daemon: a closed-loop sweep and an
//! open-loop run with a generated tensor, with every output format.

mod common;

use std::process::Command;

use common::{Daemon, root};

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_highserve")).arg("bench").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bench failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn a_sweep_and_an_open_loop_run_report_every_format() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/v2/models/ppocr_cls/infer", d.addr);
    let img = root().join(".cache/testdata/photo_640x480.jpg");
    let (json, csv, svg) = (dir.path().join("r.json"), dir.path().join("r.csv"), dir.path().join("r.svg"));
    let text = bench(&[
        "--url",
        &url,
        "--file",
        img.to_str().unwrap(),
        "-c",
        "1:2:x2",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(text.contains("| concurrency 2 |"), "{text}");
    let runs: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (r, c) in runs.iter().zip([1, 2]) {
        assert_eq!(r["concurrency"], c);
        assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["ok"], r["requests"], "{r}");
        assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
        assert!(r["windows"].as_u64().unwrap() >= 3);
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("mode,concurrency,rate,"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>"));

    // Open loop, Poisson arrivals, a generated tensor as a v2 binary request.
    let one = dir.path().join("one.json");
    bench(&[
        "--url",
        &url,
        "--tensor",
        "x:FP32:1,3,48,192",
        "--rate",
        "40",
        "--arrivals",
        "poisson",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--json",
        one.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&one).unwrap()).unwrap();
    assert_eq!(r["mode"], "open");
    assert_eq!(r["arrivals"], "poisson");
    assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["ok"], r["requests"], "{r}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (args, says) in [
        (&["--file", "/nonexistent.jpg"][..], "cannot read"),
        (&["--tensor", "x:FP32"][..], "NAME:DATATYPE:DIMS"),
        (&["--tensor", "x:FP99:1"][..], "datatype"),
        (&["--tensor", "x:FP32:1", "-c", "8:4:x2"][..], "START:END"),
        (&["--url", "not a url", "--tensor", "x:FP32:1"][..], "--url"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_highserve")).arg("bench").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
