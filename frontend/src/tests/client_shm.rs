//! Client shared memory through the router: the extension's routes, and a
//! tensor request whose input is read from a client's region and whose
//! output is written into one.

use http::Method;
use serde_json::json;

use super::dispatch::{add_one, worker};
use super::{Harness, limits};
use crate::client_shm::tests::Object;

#[tokio::test]
async fn regions_register_list_and_unregister() {
    let h = Harness::new(limits());
    let obj = Object::new("routes", 64);
    let h = &h;
    let register = |name: &str, body: String| {
        let uri = format!("/v2/systemsharedmemory/region/{name}/register");
        async move { h.call(Method::POST, &uri, &[], body.as_bytes()).await }
    };
    let r = register("a", format!(r#"{{"key":"{}","offset":8,"byte_size":32}}"#, obj.key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = register("a", format!(r#"{{"key":"{}","byte_size":8}}"#, obj.key)).await;
    assert!(r.status == 400 && r.text().contains("`a` is already registered"), "{}", r.text());
    let r = register("b", r#"{"key":"/dev/shm/x","byte_size":8}"#.into()).await;
    assert!(r.status == 400 && r.text().contains("not a path"), "{}", r.text());
    let r = register("b", r#"{"key":"x","size":8}"#.into()).await;
    assert!(r.status == 400 && r.text().contains("\\\"byte_size\\\": bytes"), "{}", r.text());
    let r = h.call(Method::GET, "/v2/systemsharedmemory/status", &[], b"").await;
    assert_eq!(r.json(), json!([{"name": "a", "key": obj.key, "offset": 8, "byte_size": 32}]));
    let r = h.call(Method::GET, "/v2/systemsharedmemory/region/b/status", &[], b"").await;
    assert!(r.status == 404 && r.text().contains("registered: a"), "{}", r.text());
    let r = h.call(Method::GET, "/v2/systemsharedmemory/region/a/register", &[], b"").await;
    assert_eq!(r.status, 405);
    let r = h.call(Method::POST, "/v2/systemsharedmemory/region/a/unregister", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = h.call(Method::GET, "/v2/systemsharedmemory/status", &[], b"").await;
    assert_eq!(r.json(), json!([]));
    // No CUDA regions here: the status is empty and clearing them is fine.
    let r = h.call(Method::GET, "/v2/cudasharedmemory/status", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    let r = h.call(Method::POST, "/v2/cudasharedmemory/unregister", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = h.call(Method::POST, "/v2/cudasharedmemory/region/c/register", &[], b"{}").await;
    assert!(r.status == 503 && r.text().contains("system shared-memory region"), "{}", r.text());
}

#[tokio::test]
async fn a_tensor_comes_from_a_region_and_goes_into_one() {
    let h = Harness::new(limits());
    let gpu = worker(&h, h.topology().gpu(0), 1, add_one);
    // Bytes 0..64 of the object count up; the input is the 8 at 16..24.
    let obj = Object::new("infer", 64);
    let input: Vec<u8> = (16..24).collect();
    let x: Vec<f32> = input.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    for (name, offset) in [("in", 0), ("out", 32)] {
        let body = format!(r#"{{"key":"{}","offset":{offset},"byte_size":32}}"#, obj.key);
        let r =
            h.call(Method::POST, &format!("/v2/systemsharedmemory/region/{name}/register"), &[], body.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32",
        "parameters":{"shared_memory_region":"in","shared_memory_offset":16,"shared_memory_byte_size":8}}],
        "outputs":[{"name":"y","parameters":{"shared_memory_region":"out","shared_memory_offset":4,"shared_memory_byte_size":16}}]}"#;
    let r = h.call(Method::POST, "/v2/models/add/infer", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"model_name": "add", "model_version": "1", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2]}]})
    );
    let y: Vec<u8> = x.iter().flat_map(|v| (v + 1.0).to_le_bytes()).collect();
    assert_eq!(obj.bytes(36, 8), y);
    gpu.join().unwrap();
    // Bad references fail before anything is sent to a worker.
    let bad = |params: &str| {
        format!(r#"{{"inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{params}}}]}}"#)
    };
    for (params, says) in [
        (r#"{"shared_memory_region":"nope","shared_memory_byte_size":8}"#, "no shared-memory region `nope`"),
        (
            r#"{"shared_memory_region":"in","shared_memory_offset":28,"shared_memory_byte_size":8}"#,
            "past the end of region `in`",
        ),
    ] {
        let r = h.call(Method::POST, "/v2/models/add/infer", &[], bad(params).as_bytes()).await;
        assert!(r.status == 400 && r.text().contains(says), "{}: {}", r.status, r.text());
    }
}
