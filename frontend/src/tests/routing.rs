//! The routing table: what each route answers, without a socket.

use http::{Method, Request};
use http_body_util::Empty;
use shm::region::ProcState;

use super::{Harness, limits};

#[tokio::test]
async fn unknown_routes_and_models_say_what_exists() {
    let h = Harness::new(limits());
    let r = h.get("/v1/models").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "no route /v1/models; the API is under /v2 (see docs/api.md)");
    let r = h.get("/v2/models/nope/config").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "unknown model `nope`; available models: add, cls");
    let r = h.call(Method::POST, "/v2/models/nope/infer", &[], b"{}").await;
    assert_eq!((r.status.as_u16(), r.error()), (404, "unknown model `nope`; available models: add, cls".into()));
    let r = h.get("/v2/models/add/versions/7").await;
    assert_eq!(
        r.error(),
        "model `add` has no ready version `7`; ready: 1 (the latest loaded version is 1, which requests without a \
         version go to)"
    );
    let r = h.get("/v2/models/add/versions/1/explain").await;
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (404, "no route /v2/models/add/versions/1/explain; see docs/api.md".into())
    );
    assert!(!h.metrics().contains("highserve_requests_total{"), "requests that reach no model are not counted");
}

#[tokio::test]
async fn known_routes_refuse_other_methods() {
    let h = Harness::new(limits());
    let r = h.call(Method::POST, "/v2/health/live", &[], b"").await;
    assert_eq!((r.status.as_u16(), r.error()), (405, "POST is not allowed on /v2/health/live".into()));
    assert_eq!(r.headers["content-type"], "application/json");
    let r = h.get("/v2/models/add/infer/").await;
    assert_eq!((r.status.as_u16(), r.error()), (405, "GET is not allowed on /v2/models/add/infer".into()));
    assert_eq!(h.call(Method::DELETE, "/v2/models/stats", &[], b"").await.status, 405);
    assert_eq!(h.get("/v2/repository/index").await.status, 405);
    assert_eq!(h.call(Method::PUT, "/metrics", &[], b"").await.status, 405);
}

#[tokio::test]
async fn health_follows_the_workers() {
    let h = Harness::new(limits());
    for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/add/ready", "/v2/health/ready/"] {
        let r = h.get(path).await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 0), "{path}");
    }
    assert_eq!(h.call(Method::HEAD, "/v2/health/ready", &[], b"").await.status, 200);
    h.set_state(h.topology().gpu(0), ProcState::Down);
    assert_eq!(h.get("/v2/health/ready").await.status, 503);
    assert_eq!(h.get("/v2/models/cls/ready").await.status, 503);
    assert_eq!(h.get("/v2/health/live").await.status, 200, "live while a worker restarts");
    let index = h.call(Method::POST, "/v2/repository/index", &[], b"").await.json();
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    h.set_state(h.topology().gpu(0), ProcState::Ready);
    let index = h.call(Method::POST, "/v2/repository/index", &[], b"").await.json();
    assert_eq!(
        index,
        serde_json::json!([
            {"name": "add", "version": "1", "state": "READY"},
            {"name": "cls", "version": "1", "state": "READY"},
        ])
    );
}

#[tokio::test]
async fn metadata_config_and_stats_are_json() {
    let h = Harness::new(limits());
    let server = h.get("/v2").await;
    assert_eq!(server.headers["content-type"], "application/json");
    assert_eq!(server.json()["name"], "highserve");
    assert!(server.json()["extensions"].as_array().unwrap().iter().any(|e| e == "binary_tensor_data"));
    let meta = h.get("/v2/models/add").await.json();
    assert_eq!(meta["inputs"][0], serde_json::json!({"name": "x", "datatype": "FP32", "shape": [-1, 2]}));
    assert_eq!(h.get("/v2/models/add/versions/1").await.json(), meta);
    assert_eq!(h.get("/v2/models/cls/config").await.json()["max_batch_size"], 4);
    let stats = h.get("/v2/models/stats").await.json();
    let names: Vec<&str> =
        stats["model_stats"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["add", "cls"]);
    assert_eq!(h.get("/v2/models/cls/stats").await.json()["model_stats"][0]["inference_count"], 0);
}

#[tokio::test]
async fn metrics_are_served_on_both_listeners() {
    let h = Harness::new(limits());
    let r = h.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    assert!(r.text().contains("nv_inference_request_success{model=\"add\",version=\"1\"} 0\n"), "{}", r.text());
    assert!(r.text().contains("highserve_ready 1\n"));
    let only = |method: Method, uri: &str| {
        let req = Request::builder().method(method).uri(uri).body(Empty::<bytes::Bytes>::new()).unwrap();
        crate::http::router::metrics_only(&h.state, &req)
    };
    assert_eq!(only(Method::GET, "/metrics/").status(), 200);
    assert_eq!(only(Method::POST, "/metrics").status(), 405);
    assert_eq!(only(Method::GET, "/v2/health/live").status(), 404);
}
