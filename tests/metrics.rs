//! `/metrics` (Prometheus text), the statistics and configuration extensions,
//! against the real binary: counts must follow the requests sent.

mod common;

use std::collections::HashMap;

use common::{Daemon, request, testdata};

const CLS: &str = "/v2/models/ppocr_cls/infer";

/// Parses the exposition text: `name{labels}` → value, checking that every
/// sample belongs to a family announced with HELP and TYPE before it.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(families.contains_key(family), "sample before its TYPE line: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        assert!(samples.insert(series.to_string(), value).is_none(), "duplicate series: {line}");
    }
    samples
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let mut keys: Vec<&String> = m.keys().filter(|k| k.starts_with(series.split('{').next().unwrap())).collect();
        keys.sort();
        panic!("no series {series}; have {keys:?}")
    })
}

#[test]
fn metrics_follow_the_requests() {
    let d = Daemon::start(&["--metrics-port", "0"]);
    let img = testdata("photo_640x480.jpg");
    let jpeg = [("Content-Type", "image/jpeg")];
    for _ in 0..3 {
        assert_eq!(d.post(CLS, &jpeg, &img).status, 200);
    }
    assert_eq!(d.post(CLS, &jpeg, b"not a jpeg at all").status, 400);

    let l = "model=\"ppocr_cls\",version=\"1\"";
    // The inference worker adds a batch's counters just after answering it:
    // wait (bounded) until the last batch is counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (r, m) = loop {
        let r = d.get("/metrics");
        let m = parse(&r.text());
        let get = |k: String| m.get(&k).copied();
        let counted = get(format!("nv_inference_count{{{l}}}")) == Some(3.0)
            && get(format!("highserve_stage_duration_seconds_count{{{l},stage=\"queue\"}}")) == Some(3.0)
            && get(format!("highserve_stage_duration_seconds_count{{{l},stage=\"compute\"}}"))
                == get(format!("nv_inference_exec_count{{{l}}}"));
        if counted || std::time::Instant::now() > deadline {
            break (r, m);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    assert_eq!(get(&m, &format!("nv_inference_request_success{{{l}}}")), 3.0);
    assert_eq!(get(&m, &format!("nv_inference_request_failure{{{l},reason=\"OTHER\"}}")), 1.0);
    assert_eq!(get(&m, &format!("nv_inference_request_failure{{{l},reason=\"REJECTED\"}}")), 0.0);
    assert_eq!(get(&m, &format!("nv_inference_count{{{l}}}")), 3.0);
    let execs = get(&m, &format!("nv_inference_exec_count{{{l}}}"));
    assert!((1.0..=3.0).contains(&execs), "{execs} batches for 3 requests");
    assert!(get(&m, &format!("nv_inference_compute_infer_duration_us{{{l}}}")) > 0.0);
    assert!(get(&m, &format!("nv_inference_request_duration_us{{{l}}}")) > 0.0);
    assert!(get(&m, &format!("nv_model_load_duration_secs{{{l}}}")) > 0.0);
    assert_eq!(get(&m, &format!("nv_inference_pending_request_count{{{l}}}")), 0.0);
    assert_eq!(get(&m, &format!("highserve_requests_total{{{l},code=\"200\"}}")), 3.0);
    assert_eq!(get(&m, &format!("highserve_requests_total{{{l},code=\"400\"}}")), 1.0);

    // A histogram per stage; decode and preprocess saw the three good images.
    let stage = |s: &str, part: &str| get(&m, &format!("highserve_stage_duration_seconds_{part}{{{l},stage=\"{s}\"}}"));
    for s in ["receive", "decode", "preprocess", "queue", "total"] {
        let want = if s == "receive" { 4.0 } else { 3.0 };
        assert_eq!(stage(s, "count"), want, "stage {s}");
        assert!(stage(s, "sum") > 0.0, "stage {s}");
    }
    assert_eq!(stage("compute", "count"), execs);
    assert_eq!(stage("postprocess", "count"), 3.0, "classification JSON is made in the preproc pool");
    let inf = get(&m, &format!("highserve_stage_duration_seconds_bucket{{{l},stage=\"total\",le=\"+Inf\"}}"));
    let ten_s = get(&m, &format!("highserve_stage_duration_seconds_bucket{{{l},stage=\"total\",le=\"10\"}}"));
    assert_eq!((inf, ten_s), (3.0, 3.0), "buckets are cumulative");
    assert_eq!(get(&m, &format!("highserve_batch_size_count{{{l}}}")), execs);
    assert_eq!(get(&m, &format!("highserve_batch_size_sum{{{l}}}")), 3.0);

    assert_eq!(get(&m, "highserve_ready"), 1.0);
    assert_eq!(get(&m, "highserve_inflight_bytes"), 0.0);
    assert_eq!(get(&m, "highserve_worker_restarts_total{role=\"preproc\"}"), 0.0);
    assert!(m.contains_key("highserve_ring_occupancy{ring=\"frontend->preproc0\"}"));
    for p in ["supervisor", "frontend", "gpu0", "preproc0", "preproc1"] {
        let role = match p {
            "gpu0" => "inference",
            "preproc0" | "preproc1" => "preproc",
            r => r,
        };
        let rss = get(&m, &format!("highserve_process_resident_memory_bytes{{role=\"{role}\",process=\"{p}\"}}"));
        assert!(rss > 1e6, "{p}: {rss} bytes resident");
        assert!(m.contains_key(&format!("highserve_process_cpu_seconds_total{{role=\"{role}\",process=\"{p}\"}}")));
    }

    // The same on the metrics port, which serves nothing else.
    let log = d.log();
    let maddr = log
        .lines()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    let r = request(&maddr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(parse(&r.text()).contains_key(&format!("nv_inference_request_success{{{l}}}")));
    assert_eq!(request(&maddr, "GET", "/v2", &[], b"").status, 404);
    assert_eq!(request(&maddr, "POST", "/metrics", &[], b"").status, 405);
}

#[test]
fn statistics_and_configuration_extensions() {
    let d = Daemon::start(&[]);
    let img = testdata("photo_640x480.jpg");
    for _ in 0..2 {
        assert_eq!(d.post(CLS, &[("Content-Type", "image/jpeg")], &img).status, 200);
    }
    // Counters are added just after a batch's answers go out: wait (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        let s = d.get("/v2/models/ppocr_cls/stats").json();
        if s["model_stats"][0]["inference_count"] == 2 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let st = &s["model_stats"][0];
    assert_eq!(st["inference_count"], 2);
    assert!(st["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0);
    assert!(st["last_inference"].as_u64().unwrap() > 1_600_000_000_000, "wall-clock ms: {st}");
    let batches = st["batch_stats"].as_array().unwrap();
    assert!(!batches.is_empty());
    for b in batches {
        assert!(b["compute_infer"]["ns"].as_u64().unwrap() > 0, "per-batch-size times: {b}");
    }
    let all = d.get("/v2/models/stats").json();
    assert!(all["model_stats"].as_array().unwrap().len() >= 3);

    let c = d.get("/v2/models/ppocr_cls/config");
    assert_eq!(c.status, 200);
    let c = c.json();
    assert_eq!(c["name"], "ppocr_cls");
    assert_eq!(c["platform"], "onnxruntime_onnx");
    assert!(c["max_batch_size"].as_u64().unwrap() > 0);
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(c["input"][0]["dims"], serde_json::json!([3, 48, 192]));
    assert!(c["highserve"]["preprocess"].is_object());
    assert_eq!(d.get("/v2/models/nope/config").status, 404);
    assert_eq!(d.post("/v2/models/ppocr_cls/config", &[], b"").status, 405);
}
