//! Admission through the router: what is shed with 429 (and counted), and
//! what is refused before a byte of the body is read.

use http::Method;

use super::{ADD_JSON, Harness, limits};
use crate::state::Limits;

#[tokio::test]
async fn requests_beyond_max_inflight_are_shed_and_counted() {
    let h = Harness::new(Limits { max_inflight: 0, ..limits() });
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], ADD_JSON).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.error(), "0 requests are in flight, the limit (server.max_inflight); retry later");
    let metrics = h.metrics();
    assert!(metrics.contains("highserve_rejected_total{model=\"add\",version=\"1\"} 1\n"), "{metrics}");
    assert!(metrics.contains("nv_inference_request_failure{model=\"add\",version=\"1\",reason=\"REJECTED\"} 1\n"));
    assert!(metrics.contains("highserve_inflight_requests{model=\"add\",version=\"1\"} 0\n"));
}

#[tokio::test]
async fn a_model_limit_sheds_that_model_only() {
    let h = Harness::new(limits());
    // `add` takes one request at a time (max_inflight = 1 in its config).
    let held = h.state.admission.admit(0, "add", u8::MAX).unwrap();
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], ADD_JSON).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.error(),
        "1 requests for model `add` are in flight, its limit (max_inflight in its config); retry later"
    );
    // `cls` has no limit of its own: admitted, then refused for its body.
    let empty = [("content-type", "image/jpeg"), ("content-length", "0")];
    let r = h.call(Method::POST, "/v2/models/cls/infer", &empty, b"").await;
    assert_eq!((r.status.as_u16(), r.error()), (400, "the body is empty; send a JPEG or PNG image".into()));
    drop(held);
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], b"{").await;
    assert_eq!(r.status, 400, "admitted again: {}", r.text());
}

#[tokio::test]
async fn body_bytes_in_flight_are_bounded() {
    let h = Harness::new(Limits { max_inflight_bytes: 1024, ..limits() });
    let full = "requests in flight hold 1024 bytes, the limit (server.max_inflight_bytes); retry later";
    let body = vec![0xFF; 2000];
    // Declared: refused before reading.
    let r = h
        .call(
            Method::POST,
            "/v2/models/cls/infer",
            &[("content-type", "image/jpeg"), ("content-length", "2000")],
            &body,
        )
        .await;
    assert_eq!((r.status.as_u16(), r.error()), (429, full.into()));
    // Chunked: refused once read.
    let r = h.call(Method::POST, "/v2/models/cls/infer", &[("content-type", "image/jpeg")], &body).await;
    assert_eq!((r.status.as_u16(), r.error()), (429, full.into()));
    // A chunked raw frame reserves the size its caps give, before reading.
    let frame = [("content-type", "video/x-raw; format=RGB; width=20; height=20")];
    let r = h.call(Method::POST, "/v2/models/cls/infer", &frame, &[0; 1200]).await;
    assert_eq!((r.status.as_u16(), r.error()), (429, full.into()));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_reading() {
    let h = Harness::new(Limits { max_body_bytes: 100, ..limits() });
    let headers = [("content-type", "image/jpeg"), ("content-length", "2000")];
    let r = h.call(Method::POST, "/v2/models/cls/infer", &headers, &[0; 2000]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error(), "the body is over the 100-byte limit (config: server.max_body_bytes)");
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], &[b' '; 101]).await;
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (413, "the body is over the 100-byte limit (config: server.max_body_bytes)".into())
    );
    let frame = [("content-type", "video/x-raw; format=NV12; width=20; height=20")];
    let r = h.call(Method::POST, "/v2/models/cls/infer", &frame, &[0; 600]).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.error(),
        "a 20x20 NV12 frame is 600 bytes; the body limit is 100 (config: server.max_body_bytes; NV12 is half the size of RGB)"
    );
}

#[tokio::test]
async fn requests_shed_are_counted_by_level_and_reason() {
    let h = Harness::new(Limits { max_inflight: 0, ..limits() });
    let r = h.call(Method::POST, "/v2/models/add/infer?priority=1", &[], ADD_JSON).await;
    assert_eq!(r.status, 429);
    let metrics = h.metrics();
    let line = "highserve_shed_total{model=\"add\",version=\"1\",level=\"1\",reason=\"max_inflight\"} 1\n";
    assert!(metrics.contains(line), "{metrics}");
    let stats = h.get("/v2/models/add/stats").await.json();
    assert_eq!(stats["model_stats"][0]["levels"][0]["shed"]["max_inflight"], 1, "{stats}");
    let r = h.call(Method::POST, "/v2/models/add/infer?priority=first", &[], ADD_JSON).await;
    assert_eq!(r.status, 429, "admission comes first, as for a malformed body");
}
