//! The repository extension: the index (read from a repository directory),
//! load and unload forwarded to the supervisor and its answers mapped, and
//! the admin token that guards them.

use std::path::PathBuf;
use std::sync::Arc;

use http::Method;
use model_repo::ModelState::{Loading, Ready, Unloading};
use model_repo::Repository;
use model_repo::control::{ControlError, ControlOp, Upstream};
use serde_json::json;

use super::{ADD, CLS, Harness, Reply, limits, model, version};

/// A repository directory of its own, removed when dropped.
struct TempRepo(PathBuf);

impl TempRepo {
    fn new(tag: &str, models: &[&str]) -> TempRepo {
        let dir = std::env::temp_dir().join(format!("highserve-frontend-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for m in models {
            std::fs::create_dir_all(dir.join(m)).unwrap();
            std::fs::write(dir.join(m).join("config.toml"), "max_batch_size = 1\n").unwrap();
        }
        // Neither a model directory nor a model.
        std::fs::create_dir_all(dir.join("notes")).unwrap();
        std::fs::write(dir.join("README"), "models").unwrap();
        TempRepo(dir)
    }
}

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_index_lists_every_model_directory_with_its_state() {
    let h = Harness::new(limits());
    let repo = TempRepo::new("index", &["add", "broken", "cls", "spare"]);
    let table = Repository {
        root: repo.0.clone(),
        models: vec![version("add", ADD, 1, Unloading), model("cls", CLS), version("add", ADD, 2, Ready)],
        generation: 1,
        failures: [("broken".to_string(), "model.onnx: not an ONNX file".to_string())].into(),
    };
    h.state.apply(Arc::new(table.clone()));
    let index = |body: &'static [u8]| h.call(Method::POST, "/v2/repository/index", &[], body);
    let all = json!([
        {"name": "add", "version": "1", "state": "UNLOADING"},
        {"name": "add", "version": "2", "state": "READY"},
        {"name": "broken", "state": "UNAVAILABLE", "reason": "model.onnx: not an ONNX file"},
        {"name": "cls", "version": "1", "state": "READY"},
        {"name": "spare", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]);
    assert_eq!(index(b"").await.json(), all);
    assert_eq!(index(b"{}").await.json(), all);
    assert_eq!(index(br#"{"ready": false}"#).await.json(), all);
    let ready = json!([
        {"name": "add", "version": "2", "state": "READY"},
        {"name": "cls", "version": "1", "state": "READY"},
    ]);
    assert_eq!(index(br#"{"ready": true}"#).await.json(), ready);
    let r = index(br#"{"ready": "yes"}"#).await;
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (400, "malformed repository index request JSON: `ready` must be true or false".into())
    );
    // A model loading is listed as such; one added to the directory shows up.
    std::fs::create_dir_all(repo.0.join("new")).unwrap();
    std::fs::write(repo.0.join("new").join("config.toml"), "").unwrap();
    // A failed load of a model that serves is listed beside its versions.
    let failures = [("add".to_string(), "loading add failed: version 3 is not ONNX".to_string())].into();
    let loading = Repository {
        models: vec![model("add", ADD), model("cls", CLS), version("new", ADD, 3, Loading)],
        failures,
        ..table
    };
    h.state.apply(Arc::new(loading));
    let names: Vec<String> = index(b"")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m["name"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        ["add READY", "add UNAVAILABLE", "broken UNAVAILABLE", "cls READY", "new LOADING", "spare UNAVAILABLE"]
    );
}

/// Posts `body` to `uri` in a task, so the test can answer the order.
fn post(
    h: &Harness,
    uri: &'static str,
    auth: Option<&'static str>,
    body: &'static [u8],
) -> tokio::task::JoinHandle<Reply> {
    let state = h.state.clone();
    tokio::spawn(async move {
        let mut req = http::Request::post(uri);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from_static(body))).unwrap();
        let resp = crate::http::router::route(&state, req).await;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    })
}

/// The order the frontend sent up, and its id.
async fn order(h: &Harness) -> (u64, ControlOp) {
    match h.next_sent().await {
        Upstream::Control { id, op } => (id, op),
        other => panic!("expected an order, got {other:?}"),
    }
}

#[tokio::test]
async fn load_and_unload_are_forwarded_and_answered() {
    let h = Harness::new(limits());
    let call =
        post(&h, "/v2/repository/models/add/load", None, br#"{"parameters": {"config": "{\"max_batch_size\": 8}"}}"#);
    let (id, op) = order(&h).await;
    assert_eq!(op, ControlOp::Load { name: "add".into(), config: Some(r#"{"max_batch_size": 8}"#.into()) });
    h.state.orders.done(id, Ok(()));
    let r = call.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "{}"));

    // tritonclient's own bodies: `{}` for a load, unload_dependents always.
    let call = post(&h, "/v2/repository/models/cls/load", None, b"{}");
    let (id, op) = order(&h).await;
    assert_eq!(op, ControlOp::Load { name: "cls".into(), config: None });
    h.state.orders.done(id, Ok(()));
    assert_eq!(call.await.unwrap().status, 200);
    for (body, dependents) in [(&br#"{"parameters": {"unload_dependents": true}}"#[..], true), (b"", false)] {
        let call = post(&h, "/v2/repository/models/cls/unload", None, body);
        let (id, op) = order(&h).await;
        assert_eq!(op, ControlOp::Unload { name: "cls".into(), dependents });
        h.state.orders.done(id, Ok(()));
        assert_eq!(call.await.unwrap().status, 200);
    }

    // Each refusal, by the one table.
    for (error, status) in [
        (ControlError::NotFound("model `zz` is not in the repository".into()), 404),
        (ControlError::Invalid("pipeline `ocr` uses it; unload_dependents".into()), 400),
        (ControlError::LoadFailed("the inference worker could not load it".into()), 400),
        (ControlError::Unavailable("the daemon is stopping".into()), 503),
    ] {
        let call = post(&h, "/v2/repository/models/zz/load", None, b"");
        let (id, _) = order(&h).await;
        let message = error.to_string();
        h.state.orders.done(id, Err(error));
        let r = call.await.unwrap();
        assert_eq!((r.status.as_u16(), r.error()), (status, message));
    }
}

#[tokio::test]
async fn bad_orders_are_refused_before_anything_is_sent() {
    let h = Harness::new(limits());
    for (uri, body, needle) in [
        ("/v2/repository/models/..hidden/load", &b""[..], "`..hidden` is not a model name"),
        ("/v2/repository/models/a%2Fb/unload", b"", "`a%2Fb` is not a model name"),
        ("/v2/repository/models/add/load", b"{", "malformed load request JSON"),
        ("/v2/repository/models/add/load", br#"{"parameters": {"config": {}}}"#, "parameters.config must be a string"),
        ("/v2/repository/models/add/load", br#"{"parameters": {"file:1/model.onnx": "AA=="}}"#, "cannot be sent"),
        ("/v2/repository/models/add/unload", br#"{"parameters": {"unload_dependents": 1}}"#, "true or false"),
        ("/v2/repository/models/add/unload", br#"{"parameters": {"force": true}}"#, "accepted: unload_dependents"),
    ] {
        let r = h.call(Method::POST, uri, &[], body).await;
        assert_eq!(r.status, 400, "{uri}: {}", r.text());
        assert!(r.error().contains(needle), "{uri}: {}", r.error());
    }
    assert_eq!(h.sent(), [], "nothing went up");
    assert_eq!(h.get("/v2/repository/models/add/load").await.status, 405);
}

#[tokio::test]
async fn an_order_whose_client_left_is_answered_to_nobody() {
    let h = Harness::new(limits());
    let call = post(&h, "/v2/repository/models/add/unload", None, b"");
    let (id, _) = order(&h).await;
    call.abort();
    let _ = call.await;
    h.state.orders.done(id, Ok(()));
    // The next order is answered as usual.
    let call = post(&h, "/v2/repository/models/add/load", None, b"");
    let (next, _) = order(&h).await;
    assert_ne!(next, id, "ids are not reused");
    h.state.orders.fail_all("the daemon is stopping");
    let r = call.await.unwrap();
    assert_eq!((r.status.as_u16(), r.error()), (503, "the daemon is stopping".into()));
}

#[tokio::test]
async fn with_an_admin_token_orders_need_it() {
    let h = Harness::with_token(limits(), Some("s3cret-token"));
    for auth in [None, Some("Bearer wrong"), Some("Basic s3cret-token"), Some("s3cret-token"), Some("Bearer")] {
        let r = post(&h, "/v2/repository/models/add/unload", auth, b"").await.unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(r.error().contains("Authorization: Bearer <token>"), "{}", r.error());
        assert!(!r.text().contains("s3cret"), "the token is never shown: {}", r.text());
    }
    // Unauthorised, even a bad name is not looked at.
    let r = post(&h, "/v2/repository/models/..x/load", None, b"").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(h.sent(), [], "nothing went up");
    for auth in ["Bearer s3cret-token", "bearer  s3cret-token "] {
        let call = post(&h, "/v2/repository/models/add/load", Some(auth), b"");
        let (id, _) = order(&h).await;
        h.state.orders.done(id, Ok(()));
        assert_eq!(call.await.unwrap().status, 200, "{auth}");
    }
    // The index needs none.
    assert_eq!(h.call(Method::POST, "/v2/repository/index", &[], b"").await.status, 200);
}
