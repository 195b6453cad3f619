//! The model table changing while the frontend serves: routing by version
//! and to the latest ready one, a new table switching new requests while
//! those in flight finish where they were, and the reports the supervisor
//! waits for (`Applied`, `Drained`).

use std::sync::mpsc;
use std::time::Duration;

use http::Method;
use model_repo::ModelState::{Loading, Ready, Unloaded, Unloading};
use model_repo::control::{Report, Upstream};
use serde_json::json;
use shm::ProcId;

use super::dispatch::add_one;
use super::{ADD, ADD_JSON, CLS, Harness, limits, model, version};
use crate::state::Limits;

fn applied(generation: u64) -> Upstream {
    Upstream::Report(Report::Applied { generation })
}

fn drained(slot: u16) -> Upstream {
    Upstream::Report(Report::Drained { slot })
}

/// `add` 1 (entry 0) and 2 (entry 2) ready, `cls` (entry 1).
fn two_versions(h: &Harness) {
    h.apply(vec![version("add", ADD, 1, Ready), model("cls", CLS), version("add", ADD, 2, Ready)]);
}

/// An inference worker on its own thread that tells `seen` of each request
/// as it arrives and answers it (with `add_one`) when `go` says so.
fn held_worker(h: &Harness, seen: mpsc::Sender<u16>, go: mpsc::Receiver<()>, n: usize) -> std::thread::JoinHandle<()> {
    let (mut inbox, peers) = h.worker(h.topology().gpu(0));
    std::thread::spawn(move || {
        for _ in 0..n {
            let (from, d) = inbox.recv(Some(Duration::from_secs(10)), Duration::ZERO).expect("a request arrives");
            seen.send(d.model).unwrap();
            go.recv_timeout(Duration::from_secs(10)).expect("told to answer");
            let lent = peers.pool().borrow(from, ProcId::FRONTEND, &d).unwrap();
            let mut slot = peers.pool().alloc(lent.as_slice().len(), peers.me(), d.request_id).unwrap();
            slot.as_mut_slice().copy_from_slice(lent.as_slice());
            peers.send(ProcId::FRONTEND, add_one(&d, &mut slot).unwrap(), slot).unwrap();
        }
    })
}

#[tokio::test]
async fn requests_go_to_the_latest_ready_version_or_the_one_named() {
    let h = Harness::new(limits());
    two_versions(&h);
    assert_eq!(h.sent(), [applied(1)], "no entry to drain");
    let meta = h.get("/v2/models/add").await.json();
    assert_eq!(meta["versions"], json!(["1", "2"]), "every ready version");
    assert_eq!(h.get("/v2/models/add/versions/1").await.json(), meta);
    let (tx, seen) = mpsc::channel();
    let (go, rx) = mpsc::channel();
    let worker = held_worker(&h, tx, rx, 3);
    for _ in 0..3 {
        go.send(()).unwrap();
    }
    for (uri, entry, version) in [
        ("/v2/models/add/infer", 2, "2"),
        ("/v2/models/add/versions/1/infer", 0, "1"),
        ("/v2/models/add/versions/2/infer", 2, "2"),
    ] {
        let r = h.call(Method::POST, uri, &[], ADD_JSON).await;
        assert_eq!(r.status, 200, "{uri}: {}", r.text());
        assert_eq!(r.json()["model_version"], version, "{uri}");
        assert_eq!(seen.recv().unwrap(), entry, "{uri}");
    }
    worker.join().unwrap();
    let r = h.get("/v2/models/add/versions/7/config").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error(),
        "model `add` has no ready version `7`; ready: 1, 2 (the latest loaded version is 2, which requests without a \
         version go to)"
    );
    let r = h.call(Method::POST, "/v2/models/add/versions/x/infer", &[], ADD_JSON).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // Each entry is labelled with its model and version.
    let metrics = h.metrics();
    for line in [
        "nv_inference_request_success{model=\"add\",version=\"1\"} 1\n",
        "nv_inference_request_success{model=\"add\",version=\"2\"} 2\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let stats = h.get("/v2/models/add/stats").await.json();
    let versions: Vec<&str> =
        stats["model_stats"].as_array().unwrap().iter().map(|s| s["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1", "2"], "a model's stats: every version loaded");
    assert_eq!(h.get("/v2/models/add/versions/2/stats").await.json()["model_stats"][0]["version"], "2");
}

#[tokio::test]
async fn only_ready_versions_take_requests() {
    let h = Harness::new(limits());
    // A version loading and one unloading: neither is routed to.
    h.apply(vec![version("add", ADD, 1, Unloading), model("cls", CLS), version("add", ADD, 2, Loading)]);
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], ADD_JSON).await;
    assert_eq!((r.status.as_u16(), r.error()), (404, "unknown model `add`; available models: cls".into()));
    assert_eq!(h.get("/v2/models/add/versions/2").await.status, 404);
    // An unloaded entry is gone from the metrics and the stats.
    h.apply(vec![version("add", ADD, 1, Unloaded), model("cls", CLS), version("add", ADD, 2, Ready)]);
    let metrics = h.metrics();
    assert!(!metrics.contains("model=\"add\",version=\"1\""), "{metrics}");
    assert!(metrics.contains("nv_inference_request_success{model=\"add\",version=\"2\"} 0\n"), "{metrics}");
    let stats = h.get("/v2/models/stats").await.json();
    let names: Vec<String> = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s["name"].as_str().unwrap(), s["version"].as_str().unwrap()))
        .collect();
    assert_eq!(names, ["cls 1", "add 2"]);
}

#[tokio::test]
async fn a_new_table_switches_new_requests_while_those_in_flight_finish_where_they_were() {
    let h = Harness::new(limits());
    let (tx, seen) = mpsc::channel();
    let (go, rx) = mpsc::channel();
    let worker = held_worker(&h, tx, rx, 2);
    let state = h.state.clone();
    let post = move || {
        let state = state.clone();
        tokio::spawn(async move {
            let req = http::Request::post("/v2/models/add/infer")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(ADD_JSON)))
                .unwrap();
            let resp = crate::http::router::route(&state, req).await;
            let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["model_version"].clone()
        })
    };
    let first = post();
    let (entry, seen) = tokio::task::spawn_blocking(move || (seen.recv().unwrap(), seen)).await.unwrap();
    assert_eq!(entry, 0);
    // Version 2 replaces version 1, which is in flight: it drains.
    h.apply(vec![version("add", ADD, 1, Unloading), model("cls", CLS), version("add", ADD, 2, Ready)]);
    assert_eq!(h.sent(), [applied(1)], "not drained while a request of it is in flight");
    go.send(()).unwrap(); // answers the first...
    go.send(()).unwrap(); // ...and the second when it comes
    let second = post();
    assert_eq!(second.await.unwrap(), "2", "new requests go to the new version");
    assert_eq!(first.await.unwrap(), "1", "the one in flight finished on the old one");
    assert_eq!(h.next_sent().await, drained(0), "once the last of it is done");
    worker.join().unwrap();
    assert_eq!(seen.try_iter().collect::<Vec<_>>(), [2]);
    assert_eq!(h.sent(), [], "reported once");
}

#[tokio::test]
async fn idle_entries_are_reported_drained_once_per_table() {
    let h = Harness::new(limits());
    let unloading_cls = || vec![model("add", ADD), version("cls", CLS, 1, Unloading)];
    h.apply(unloading_cls());
    assert_eq!(h.sent(), [applied(1), drained(1)]);
    h.apply(unloading_cls());
    assert_eq!(h.sent(), [applied(2), drained(1)], "a table that marks it again is answered again");
    h.apply(vec![model("add", ADD), version("cls", CLS, 1, Unloaded)]);
    assert_eq!(h.sent(), [applied(3)]);
    let r = h.get("/v2/models/cls").await;
    assert_eq!((r.status.as_u16(), r.error()), (404, "unknown model `cls`; available models: add".into()));
}

#[tokio::test]
async fn an_entry_given_to_another_version_counts_from_zero() {
    let h = Harness::new(Limits { max_inflight: 0, ..limits() });
    let r = h.call(Method::POST, "/v2/models/cls/infer", &[], b"").await;
    assert_eq!(r.status, 429);
    assert!(h.metrics().contains("highserve_rejected_total{model=\"cls\",version=\"1\"} 1\n"));
    h.apply(vec![model("add", ADD), version("cls", CLS, 1, Unloaded)]);
    // Entry 1 given to version 2 of `cls`.
    h.apply(vec![model("add", ADD), version("cls", CLS, 2, Ready)]);
    let metrics = h.metrics();
    assert!(metrics.contains("highserve_rejected_total{model=\"cls\",version=\"2\"} 0\n"), "{metrics}");
    assert!(!metrics.contains("highserve_shed_total{model=\"cls\""), "{metrics}");
}
