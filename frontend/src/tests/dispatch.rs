//! Dispatch end to end without a socket: the router hands requests to the
//! workers' lanes, threads standing in for the workers answer, the receive
//! loop completes the waiting request and the router renders the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use http::Method;
use serde_json::json;
use shm::desc::{FLAG_LENT, FLAG_POSTPROCESS};
use shm::region::ProcState;
use shm::tensor::{self, DType, TensorSpec};
use shm::{Descriptor, Kind, ProcId, Slot, Status};

use super::{ADD_JSON, Harness, limits};
use crate::dispatch::Target;

/// A worker that answers `n` requests with `answer` (which may rewrite the
/// slot and returns the reply's descriptor, or `None` to fail the request)
/// and returns each request's descriptor and slot bytes.
pub(super) fn worker(
    h: &Harness,
    p: ProcId,
    n: usize,
    answer: impl Fn(&Descriptor, &mut Slot) -> Option<Descriptor> + Send + 'static,
) -> JoinHandle<Vec<(Descriptor, Vec<u8>)>> {
    let (mut inbox, peers) = h.worker(p);
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < n {
            let (from, d) = inbox.recv(Some(Duration::from_secs(10)), Duration::ZERO).expect("a request arrives");
            // The frontend lends the request's slot: read it, answer in one of ours.
            let lent = peers.pool().borrow(from, ProcId::FRONTEND, &d).expect("the request's lent slot");
            let mut slot = peers.pool().alloc(lent.as_slice().len(), peers.me(), d.request_id).unwrap();
            slot.as_mut_slice().copy_from_slice(lent.as_slice());
            seen.push((d, lent.as_slice()[..(d.offset + d.len) as usize].to_vec()));
            match answer(&d, &mut slot) {
                Some(reply) => peers.send(ProcId::FRONTEND, reply, slot).unwrap(),
                None => peers.fail(&d, Some(slot), Status::InvalidInput, "the tensor is not to my taste"),
            }
        }
        seen
    })
}

/// `add`: y = x + 1, written over the request in its own slot.
pub(super) fn add_one(d: &Descriptor, slot: &mut Slot) -> Option<Descriptor> {
    let metas = tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize).unwrap();
    let x = &slot.as_slice()[metas[0].offset..metas[0].offset + metas[0].len];
    let y: Vec<u8> =
        x.chunks(4).flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) + 1.0).to_le_bytes()).collect();
    let specs = [TensorSpec { dtype: DType::F32, dims: metas[0].dims.clone(), byte_len: y.len() }];
    let (len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, &specs).unwrap();
    slot.as_mut_slice()[ranges[0].clone()].copy_from_slice(&y);
    Some(Descriptor { kind: Kind::Outputs as u8, offset: 0, len: len as u32, ..*d })
}

#[tokio::test]
async fn v2_tensors_go_to_an_inference_worker_and_come_back_rendered() {
    let h = Harness::new(limits());
    let gpu = worker(&h, h.topology().gpu(0), 2, add_one);
    let body = br#"{"id":"r1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.5,2]}],"parameters":{"priority":3}}"#;
    let r = h.call(Method::POST, "/v2/models/add/infer", &[("content-type", "application/json")], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.json(),
        json!({"model_name": "add", "model_version": "1", "id": "r1",
               "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [2.5, 3.0]}]})
    );
    // Binary outputs: the JSON header's length in Inference-Header-Content-Length.
    let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[0,-1]}],"parameters":{"binary_data_output":true}}"#;
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    let n: usize = r.headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let data: Vec<u8> = [1.0f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(&r.body[n..], &data[..]);
    let seen = gpu.join().unwrap();
    let (d, _) = &seen[0];
    assert_eq!((d.kind(), d.model, d.rows, d.priority, d.reply_to), (Some(Kind::Tensors), 0, 1, 3, 0));
    let metrics = h.metrics();
    assert!(metrics.contains("highserve_requests_total{model=\"add\",version=\"1\",code=\"200\"} 2\n"), "{metrics}");
}

#[tokio::test]
async fn a_worker_failure_comes_back_as_its_status() {
    let h = Harness::new(limits());
    let gpu = worker(&h, h.topology().gpu(0), 1, |_, _| None);
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], ADD_JSON).await;
    assert_eq!((r.status.as_u16(), r.error()), (400, "the tensor is not to my taste".into()));
    gpu.join().unwrap();
}

#[tokio::test]
async fn images_and_frames_land_on_the_preproc_lane() {
    let h = Harness::new(limits());
    let answer = br#"{"label":"yes"}"#;
    let preproc = worker(&h, h.topology().preproc(0), 3, move |d, slot| {
        slot.as_mut_slice()[..answer.len()].copy_from_slice(answer);
        Some(Descriptor { kind: Kind::Response as u8, offset: 0, len: answer.len() as u32, ..*d })
    });
    let jpeg = b"\xFF\xD8\xFF\xE0 a small jpeg";
    let len = jpeg.len().to_string();
    let posts: [&[(&str, &str)]; 3] = [
        &[("content-type", "image/jpeg"), ("content-length", &len)],
        // `curl --data-binary @photo.jpg`: no Content-Type, recognised by its bytes.
        &[],
        &[("content-type", "video/x-raw; format=RGB; width=2; height=2")],
    ];
    let pixels = [7u8; 12];
    for (headers, body) in posts.iter().zip([&jpeg[..], &jpeg[..], &pixels[..]]) {
        let r = h.call(Method::POST, "/v2/models/cls/infer", headers, body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!((r.headers["content-type"].to_str().unwrap(), &r.body[..]), ("application/json", &answer[..]));
    }
    let seen = preproc.join().unwrap();
    let mut image = (jpeg.len() as u32).to_le_bytes().to_vec();
    image.extend_from_slice(jpeg);
    for (d, bytes) in &seen[..2] {
        assert_eq!((d.kind(), d.model, d.rows, d.flags), (Some(Kind::Images), 1, 1, FLAG_POSTPROCESS | FLAG_LENT));
        assert_eq!(bytes, &image);
    }
    let (d, bytes) = &seen[2];
    let frame = shm::frame::FrameInfo { format: shm::frame::PixelFormat::Rgb24, width: 2, height: 2 };
    assert_eq!(d.len as usize, 4 + shm::frame::HEADER_LEN + 12);
    assert_eq!(bytes[..4], (shm::frame::HEADER_LEN as u32 + 12).to_le_bytes());
    assert_eq!(bytes[4..4 + shm::frame::HEADER_LEN], frame.header());
    assert_eq!(bytes[4 + shm::frame::HEADER_LEN..], pixels);
}

#[tokio::test]
async fn a_request_waits_for_its_worker_to_come_back() {
    let h = Harness::new(limits());
    let gpu = h.topology().gpu(0);
    h.set_state(gpu, ProcState::Down);
    let state = h.state.clone();
    let waiting = tokio::spawn(async move {
        let req = http::Request::post("/v2/models/add/infer").body(http_body_util::Full::new(ADD_JSON.into())).unwrap();
        crate::http::router::route(&state, req).await.status()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "it waits instead of a 503");
    let worker = worker(&h, gpu, 1, add_one);
    h.set_state(gpu, ProcState::Ready);
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(worker.join().unwrap()[0].0.attempt, 1);
    // Within its deadline only.
    h.set_state(gpu, ProcState::Down);
    let body =
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}],"parameters":{"timeout":20000}}"#;
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], body).await;
    assert_eq!(r.status, 504, "{}", r.text());
}

#[tokio::test]
async fn workers_that_cannot_come_back_fail_what_waits_for_them() {
    let h = Harness::new(limits());
    h.set_state(h.topology().preproc(0), ProcState::Down);
    let state = h.state.clone();
    let waiting = tokio::spawn(async move {
        let req = http::Request::post("/v2/models/cls/infer")
            .header("content-type", "image/png")
            .body(http_body_util::Full::new(b"\x89PNG\r\n\x1a\n"[..].into()))
            .unwrap();
        crate::http::router::route(&state, req).await.status()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let why = "the preproc0 worker crashed 5 times within 60s and is not restarted";
    h.state.dispatch.unavailable(Target::Preproc, why);
    assert_eq!(waiting.await.unwrap(), 503);
    let r = h.call(Method::POST, "/v2/models/cls/infer", &[("content-type", "image/png")], b"\x89PNG\r\n\x1a\n").await;
    assert_eq!((r.status.as_u16(), r.error()), (503, why.into()));
    assert_eq!(r.headers["retry-after"], "1");
    h.state.dispatch.sweep(u64::MAX);
    let metrics = h.metrics();
    assert!(metrics.contains("highserve_shm_slots_in_use{size=\"65536\"} 0\n"), "slots given back: {metrics}");
}

/// Takes requests from `p`'s inbox without answering them (the worker dies
/// with them), then answers the next `answer` with `add_one`. `received`
/// counts the requests taken so far.
fn dying_worker(
    h: &Harness,
    p: ProcId,
    drop_first: usize,
    answer: usize,
    received: Arc<AtomicUsize>,
) -> JoinHandle<Vec<Descriptor>> {
    let (mut inbox, peers) = h.worker(p);
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < drop_first + answer {
            let (from, d) = inbox.recv(Some(Duration::from_secs(10)), Duration::ZERO).expect("a request arrives");
            seen.push(d);
            received.fetch_add(1, Ordering::Relaxed);
            if seen.len() > drop_first {
                let lent = peers.pool().borrow(from, ProcId::FRONTEND, &d).unwrap();
                let mut slot = peers.pool().alloc(lent.as_slice().len(), peers.me(), d.request_id).unwrap();
                slot.as_mut_slice().copy_from_slice(lent.as_slice());
                let reply = add_one(&d, &mut slot).unwrap();
                peers.send(ProcId::FRONTEND, reply, slot).unwrap();
            }
        }
        seen
    })
}

/// Waits until the worker has taken `n` requests in all (a machine busy
/// elsewhere may take a while to get there).
async fn taken(received: &AtomicUsize, n: usize) {
    for _ in 0..1000 {
        if received.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the worker took {} requests, not {n}", received.load(Ordering::Relaxed));
}

#[tokio::test]
async fn a_request_lost_with_its_worker_is_sent_again_once() {
    let h = Harness::new(limits());
    let gpu = h.topology().gpu(0);
    let received = Arc::new(AtomicUsize::new(0));
    let worker = dying_worker(&h, gpu, 1, 1, received.clone());
    let state = h.state.clone();
    let call = tokio::spawn(async move {
        let req = http::Request::post("/v2/models/add/infer").body(http_body_util::Full::new(ADD_JSON.into())).unwrap();
        let resp = crate::http::router::route(&state, req).await;
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    });
    taken(&received, 1).await;
    h.state.dispatch.lost(gpu, &[], "the gpu0 worker crashed while handling this request");
    assert_eq!(call.await.unwrap()["outputs"][0]["data"], json!([2.0, 3.0]), "answered by the second sending");
    let seen = worker.join().unwrap();
    assert_eq!((seen[0].request_id, seen[0].attempt, seen[1].attempt), (seen[1].request_id, 1, 2));
    assert_eq!((seen[1].slot, seen[1].flags & FLAG_LENT), (seen[0].slot, FLAG_LENT), "the same loan, sent as it was");

    // Lost twice: it fails, saying why.
    let received = Arc::new(AtomicUsize::new(0));
    let worker = dying_worker(&h, gpu, 2, 0, received.clone());
    let state = h.state.clone();
    let call = tokio::spawn(async move {
        let req = http::Request::post("/v2/models/add/infer").body(http_body_util::Full::new(ADD_JSON.into())).unwrap();
        crate::http::router::route(&state, req).await.status()
    });
    for n in 1..=2 {
        taken(&received, n).await;
        h.state.dispatch.lost(gpu, &[], "the gpu0 worker crashed while handling this request");
    }
    assert_eq!(call.await.unwrap(), 503);
    assert_eq!(worker.join().unwrap().len(), 2);
}

#[tokio::test]
async fn the_error_of_a_superseded_copy_does_not_fail_the_request() {
    let h = Harness::new(limits());
    let gpu = h.topology().gpu(0);
    let (mut inbox, peers) = h.worker(gpu);
    let state = h.state.clone();
    let call = tokio::spawn(async move {
        let req = http::Request::post("/v2/models/add/infer").body(http_body_util::Full::new(ADD_JSON.into())).unwrap();
        crate::http::router::route(&state, req).await.status()
    });
    let first = tokio::task::spawn_blocking(move || {
        let (_, d) = inbox.recv(Some(Duration::from_secs(10)), Duration::ZERO).unwrap();
        (d, inbox)
    });
    let (first, mut inbox) = first.await.unwrap();
    h.state.dispatch.lost(gpu, &[first.request_id], "the gpu0 worker crashed");
    // The first copy, which was not lost after all, fails late: ignored.
    peers.fail(&first, None, Status::Timeout, "the first copy timed out");
    let (from, second) =
        tokio::task::spawn_blocking(move || inbox.recv(Some(Duration::from_secs(10)), Duration::ZERO).unwrap())
            .await
            .unwrap();
    assert_eq!(second.attempt, 2);
    let lent = peers.pool().borrow(from, ProcId::FRONTEND, &second).unwrap();
    let mut slot = peers.pool().alloc(lent.as_slice().len(), peers.me(), second.request_id).unwrap();
    slot.as_mut_slice().copy_from_slice(lent.as_slice());
    peers.send(ProcId::FRONTEND, add_one(&second, &mut slot).unwrap(), slot).unwrap();
    assert_eq!(call.await.unwrap(), 200);
}

#[tokio::test]
async fn the_level_and_tenant_reach_the_worker() {
    let h = Harness::new(limits());
    let gpu = worker(&h, h.topology().gpu(0), 3, add_one);
    let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}],"parameters":{"priority":2}}"#;
    for (uri, body) in [
        // From the query, as a plain image or frame POST carries it.
        ("/v2/models/add/infer?priority=1", ADD_JSON),
        // None asked for: after every explicit level (`add` declares none).
        ("/v2/models/add/infer", ADD_JSON),
        // A v2 request's own parameter wins over the query.
        ("/v2/models/add/infer?priority=1", &body[..]),
    ] {
        let r = h.call(Method::POST, uri, &[], body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen: Vec<(u8, u16)> = gpu.join().unwrap().iter().map(|(d, _)| (d.priority, d.tenant)).collect();
    assert_eq!(seen, [(1, 0), (255, 0), (2, 0)]);
    let stats = h.get("/v2/models/add/stats").await.json();
    let levels: Vec<(u64, u64)> = stats["model_stats"][0]["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["level"].as_u64().unwrap(), l["success"]["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(levels, [(1, 1), (2, 1), (255, 1)]);
}
