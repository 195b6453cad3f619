//! The gRPC service (`inference.GRPCInferenceService`) against the real
//! binary, driven by a tonic client built from the daemon's own `.proto`
//! (`frontend::grpc::proto`): the same answers as HTTP, images and OCR as
//! BYTES inputs, streams answered by id, errors as status codes with the
//! server's messages, and clients that give up cancelling their requests.
//! NVIDIA's own client, unmodified, drives every RPC in
//! `triton_grpc_check.py` (the last test).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Daemon, free_port, repository_with, root, testdata};
use frontend::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use frontend::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use frontend::grpc::proto::*;
use frontend::grpc::tonic::codegen::tokio_stream;
use frontend::grpc::tonic::transport::Channel;
use frontend::grpc::tonic::{self, Code};

type Client = GrpcInferenceServiceClient<Channel>;

const CLS: &str = "ppocr_cls";
const CLS_OUT: &str = "save_infer_model/scale_0.tmp_1";
/// Floats in one ppocr_cls row (3x48x192).
const ROW: usize = 3 * 48 * 192;

/// One worker thread, so that connections make progress (a cancel's
/// RST_STREAM is sent) between the test's `block_on` calls.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// A daemon with gRPC on (`--grpc-port 0` is off).
fn start(extra: &[&str]) -> Daemon {
    let port = free_port().to_string();
    Daemon::start(&[extra, &["--grpc-port", &port]].concat())
}

async fn connect(d: &Daemon) -> Client {
    let url = format!("http://{}", d.grpc_addr());
    Client::connect(url).await.unwrap_or_else(|e| panic!("gRPC connect: {e}\n{}", d.log()))
}

/// `rows` rows of reproducible values in [-1, 1), different per `seed`.
fn tensor(rows: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..rows * ROW)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// BYTES elements, each a u32-LE length then the bytes.
fn bytes_tensor(elements: &[&[u8]]) -> Vec<u8> {
    elements.iter().flat_map(|e| [&(e.len() as u32).to_le_bytes()[..], e].concat()).collect()
}

fn elements(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8(b[4..4 + n].to_vec()).unwrap());
        b = &b[4 + n..];
    }
    out
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: datatype.into(), shape: shape.to_vec(), ..Default::default() }
}

/// A ppocr_cls request with `x` in raw_input_contents.
fn cls_request(id: &str, x: &[f32], shape: &[i64]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: CLS.into(),
        id: id.into(),
        inputs: vec![input("x", "FP32", shape)],
        raw_input_contents: vec![le_bytes(x).into()],
        ..Default::default()
    }
}

fn cls_rows(id: &str, x: &[f32]) -> ModelInferRequest {
    cls_request(id, x, &[(x.len() / ROW) as i64, 3, 48, 192])
}

/// Output `name` of `r`: its shape and raw bytes.
fn output<'r>(r: &'r ModelInferResponse, name: &str) -> (&'r [i64], &'r [u8]) {
    let i = r.outputs.iter().position(|o| o.name == name).unwrap_or_else(|| panic!("no output `{name}`: {r:?}"));
    (&r.outputs[i].shape, &r.raw_output_contents[i])
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// The same rows through HTTP (JSON tensors both ways).
fn http_probs(d: &Daemon, x: &[f32]) -> Vec<f32> {
    let data: Vec<String> = x.iter().map(f32::to_string).collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{},3,48,192],"datatype":"FP32","data":[{}]}}]}}"#,
        x.len() / ROW,
        data.join(",")
    );
    let r = d.post(&format!("/v2/models/{CLS}/infer"), &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|f| f.as_f64().unwrap() as f32).collect()
}

fn refused(result: Result<tonic::Response<ModelInferResponse>, tonic::Status>) -> tonic::Status {
    match result {
        Ok(r) => panic!("answered: {:?}", r.into_inner().outputs),
        Err(s) => s,
    }
}

#[test]
fn grpc_answers_as_http_does() {
    let d = start(&[]);
    runtime().block_on(async {
        let mut c = connect(&d).await;
        assert!(c.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
        assert!(c.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
        let ready = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
        assert!(c.model_ready(ready(CLS, "")).await.unwrap().into_inner().ready);
        assert!(c.model_ready(ready(CLS, "1")).await.unwrap().into_inner().ready);
        assert!(!c.model_ready(ready("nope", "")).await.unwrap().into_inner().ready);

        // Metadata: the extensions are HTTP's list, exactly.
        let meta = c.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
        let http: Vec<String> = serde_json::from_value(d.get("/v2").json()["extensions"].clone()).unwrap();
        assert_eq!((meta.name.as_str(), &meta.extensions), ("highserve", &http));
        let m = c.model_metadata(ModelMetadataRequest { name: CLS.into(), version: String::new() }).await.unwrap();
        let m = m.into_inner();
        assert_eq!((m.versions, m.platform.as_str()), (vec!["1".to_string()], "onnxruntime_onnx"));
        assert_eq!((m.inputs[0].name.as_str(), m.inputs[0].shape.as_slice()), ("x", &[-1, 3, 48, 192][..]));

        // The config perf_analyzer reads: dims without the batch dimension.
        let cfg = c.model_config(ModelConfigRequest { name: CLS.into(), version: String::new() }).await.unwrap();
        let cfg = cfg.into_inner().config.unwrap();
        assert_eq!((cfg.name.as_str(), cfg.platform.as_str(), cfg.max_batch_size), (CLS, "onnxruntime_onnx", 32));
        assert_eq!(
            (cfg.input[0].data_type, cfg.input[0].dims.as_slice()),
            (DataType::TypeFp32 as i32, &[3, 48, 192][..])
        );
        assert_eq!((cfg.output[0].name.as_str(), cfg.output[0].dims.as_slice()), (CLS_OUT, &[2][..]));
        let Some(model_config::SchedulingChoice::DynamicBatching(b)) = &cfg.scheduling_choice else {
            panic!("{cfg:?}")
        };
        assert_eq!((b.preferred_batch_size.as_slice(), b.max_queue_delay_microseconds), (&[16, 32][..], 500));
        assert_eq!(cfg.instance_group[0].count, 2);

        // Raw tensors: the same probabilities as HTTP's for the same rows.
        let x = tensor(2, 1);
        let r = c.model_infer(cls_rows("raw-1", &x)).await.unwrap().into_inner();
        assert_eq!((r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()), (CLS, "1", "raw-1"));
        let (shape, data) = output(&r, CLS_OUT);
        let probs = floats(data);
        assert_eq!(shape, [2, 2]);
        assert!(close(&probs, &http_probs(&d, &x)), "gRPC {probs:?} vs HTTP");

        // Typed contents: the same answer as raw.
        let mut typed = cls_rows("", &x);
        typed.raw_input_contents.clear();
        typed.inputs[0].contents = Some(InferTensorContents { fp32_contents: x.clone(), ..Default::default() });
        let r = c.model_infer(typed).await.unwrap().into_inner();
        assert!(close(&floats(output(&r, CLS_OUT).1), &probs));

        // Classification: "score:index:label" per row.
        let mut top = cls_rows("", &x);
        let mut out = InferRequestedOutputTensor { name: CLS_OUT.into(), ..Default::default() };
        out.parameters.insert(
            "classification".into(),
            InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(1)) },
        );
        top.outputs = vec![out];
        let r = c.model_infer(top).await.unwrap().into_inner();
        let (shape, data) = output(&r, CLS_OUT);
        assert_eq!((shape, r.outputs[0].datatype.as_str()), (&[2, 1][..], "BYTES"));
        assert!(elements(data).iter().all(|e| e.matches(':').count() == 2), "{:?}", elements(data));

        // Encoded images as a BYTES input: decoded and preprocessed as HTTP's.
        let (up, down) = (testdata("text_0_0.jpg"), testdata("text_0_180.jpg"));
        let images = ModelInferRequest {
            model_name: CLS.into(),
            inputs: vec![input("x", "BYTES", &[2])],
            raw_input_contents: vec![bytes_tensor(&[&up, &down]).into()],
            ..Default::default()
        };
        let r = c.model_infer(images).await.unwrap().into_inner();
        let p = floats(output(&r, CLS_OUT).1);
        assert!(p[0] > p[1] && p[3] > p[2], "upright then upside down: {p:?}");

        // OCR through the pipeline: one image in, text lines out.
        let ocr = ModelInferRequest {
            model_name: "ocr".into(),
            inputs: vec![input("image", "BYTES", &[1])],
            raw_input_contents: vec![bytes_tensor(&[&testdata("text_1_0.jpg")]).into()],
            ..Default::default()
        };
        let r = c.model_infer(ocr).await.unwrap().into_inner();
        let (shape, text) = output(&r, "text");
        let lines = elements(text);
        assert_eq!(shape, [lines.len() as i64]);
        assert_eq!(lines.concat().replace(' ', ""), "Invoice2026-11-23total418.50", "{lines:?}");
        assert_eq!(output(&r, "box").0, [lines.len() as i64, 4, 2]);

        // Errors: the code of HTTP's status, the message HTTP sends.
        let s = refused(c.model_infer(ModelInferRequest { model_name: "nope".into(), ..cls_rows("", &x) }).await);
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        assert!(s.message().contains(CLS) && s.message().contains("ppocr_rec"), "{s:?}");
        let s = refused(c.model_infer(cls_request("", &x, &[1, 3, 96, 192])).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("input `x` has shape [1, 3, 96, 192]"), "{s:?}");
        assert!(s.message().contains("[-1, 3, 48, 192]"), "{s:?}");
        let s = refused(c.model_infer(cls_request("", &x[..ROW], &[1, 3, 48, 192, 1])).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        // A deadline that has passed (the request's own `timeout`): 504's code.
        let mut late = cls_rows("", &x);
        late.parameters.insert(
            "timeout".into(),
            InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(0)) },
        );
        assert_eq!(refused(c.model_infer(late).await).code(), Code::DeadlineExceeded);

        // Client shared memory is off unless the daemon allows it.
        let reg = SystemSharedMemoryRegisterRequest { name: "r".into(), key: "/k".into(), offset: 0, byte_size: 8 };
        let s = c.system_shared_memory_register(reg).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("--allow-client-shm"), "{s:?}");
        let none = c.system_shared_memory_status(SystemSharedMemoryStatusRequest::default()).await.unwrap();
        assert!(none.into_inner().regions.is_empty());
        // No CUDA regions: nothing to show or unregister, none registered.
        let cuda = c.cuda_shared_memory_status(CudaSharedMemoryStatusRequest::default()).await.unwrap();
        assert!(cuda.into_inner().regions.is_empty());
        c.cuda_shared_memory_unregister(CudaSharedMemoryUnregisterRequest::default()).await.unwrap();
        let s = c.cuda_shared_memory_register(CudaSharedMemoryRegisterRequest::default()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("CUDA") && s.message().contains("system shared-memory"), "{s:?}");
        let s = c.trace_setting(TraceSettingRequest::default()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
        let s = c.log_settings(LogSettingsRequest::default()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unimplemented, "{s:?}");

        // The repository index and statistics say what HTTP's do.
        let index = c.repository_index(RepositoryIndexRequest::default()).await.unwrap().into_inner();
        assert!(index.models.iter().any(|m| m.name == CLS && m.state == "READY"), "{index:?}");
        let stats = |c: &mut Client| {
            let mut c = c.clone();
            async move {
                let req = ModelStatisticsRequest { name: CLS.into(), version: String::new() };
                c.model_statistics(req).await.unwrap().into_inner().model_stats[0].inference_count
            }
        };
        let http = || d.get(&format!("/v2/models/{CLS}/stats")).json()["model_stats"][0]["inference_count"].as_u64();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Some(stats(&mut c).await) != http() {
            assert!(Instant::now() < deadline, "gRPC {} vs HTTP {:?}", stats(&mut c).await, http());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(stats(&mut c).await >= 10);
    });
}

#[test]
fn a_stream_answers_each_request_with_its_id() {
    let d = start(&["--load", CLS]);
    runtime().block_on(async {
        let mut c = connect(&d).await;
        let rows: Vec<Vec<f32>> = (0..6).map(|i| tensor(1, 10 + i)).collect();
        let mut expected = BTreeMap::new();
        for (i, x) in rows.iter().enumerate() {
            let r = c.model_infer(cls_rows("", x)).await.unwrap().into_inner();
            expected.insert(format!("s{i}"), floats(output(&r, CLS_OUT).1));
        }
        let mut requests: Vec<ModelInferRequest> =
            rows.iter().enumerate().map(|(i, x)| cls_rows(&format!("s{i}"), x)).collect();
        // A bad request in the middle fails alone; the stream goes on.
        requests.insert(3, cls_request("bad", &rows[0], &[1, 3, 48, 100]));
        let mut answers = c.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
        let (mut seen, mut bad) = (BTreeMap::new(), false);
        while let Some(a) = answers.message().await.unwrap() {
            let r = a.infer_response.expect("every answer names its request");
            if r.id == "bad" {
                assert!(a.error_message.starts_with("[request id: bad] input `x` has shape"), "{}", a.error_message);
                assert_eq!(r.model_name, CLS);
                bad = true;
            } else {
                assert!(a.error_message.is_empty(), "{}", a.error_message);
                seen.insert(r.id.clone(), floats(output(&r, CLS_OUT).1));
            }
        }
        assert!(bad, "the failed request is answered too");
        assert_eq!(seen.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
        for (id, p) in &seen {
            assert!(close(p, &expected[id]), "{id}: {p:?} vs {:?}", expected[id]);
        }
    });
}

/// ppocr_cls waiting up to 3 s for a batch of 32 (as tests/limits.rs): a
/// lone request sits in the batcher long enough to be cancelled there.
fn slow_batching_repo() -> tempfile::TempDir {
    repository_with(CLS, |c| {
        c.replace("max_queue_delay_microseconds = 500", "max_queue_delay_microseconds = 3000000")
            .replace("preferred_batch_size = [16, 32]", "preferred_batch_size = [32]")
    })
}

#[test]
fn a_cancelled_or_late_rpc_is_dropped_before_compute_and_the_next_one_is_served() {
    let repo = slow_batching_repo();
    let d = start(&["--models", repo.path().to_str().unwrap(), "--load", CLS]);
    let stat = |key: &str| d.get(&format!("/v2/models/{CLS}/stats")).json()["model_stats"][0][key].as_u64().unwrap();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} did not happen:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let rt = runtime();
    let mut c = rt.block_on(connect(&d));
    let x = tensor(1, 3);

    // A client that gives up: its future is dropped mid-RPC (RST_STREAM).
    rt.block_on(async {
        let (mut c, gone) = (c.clone(), cls_rows("gone", &x));
        let call = tokio::spawn(async move { c.model_infer(gone).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        call.abort();
    });
    wait_for("the unary call's cancel", &|| stat("cancel_count") >= 1);
    // A stream the client drops with a request in flight.
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(cls_rows("streamed", &x)).await.unwrap();
        let answers = c.model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop((answers, tx));
    });
    wait_for("the stream's cancel", &|| stat("cancel_count") >= 2);

    // The RPC's deadline passes while the request waits for a batch.
    let mut late = tonic::Request::new(cls_rows("late", &x));
    late.set_timeout(Duration::from_millis(300));
    let s = refused(rt.block_on(c.model_infer(late)));
    // DEADLINE_EXCEEDED from highserve, or CANCELLED from tonic's own
    // timer if it fires first (a grpc-core client reports its own
    // DEADLINE_EXCEEDED either way: triton_grpc_check.py).
    assert!(matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled), "{s:?}");

    // The next request is served, and nothing was computed for the others.
    let full = tensor(32, 4);
    let r = rt.block_on(c.model_infer(cls_rows("next", &full))).unwrap().into_inner();
    assert_eq!(output(&r, CLS_OUT).0, [32, 2]);
    wait_for("the batch's statistics", &|| stat("inference_count") >= 32);
    assert_eq!(stat("inference_count"), 32, "only the last request was computed");
}

#[test]
fn tritonclient_grpc_works_unmodified() {
    let d = start(&[
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--admin-token",
        "s3cret",
        "--allow-client-shm",
    ]);
    let python = std::env::var("HIGHSERVE_TEST_PYTHON")
        .unwrap_or_else(|_| root().join(".cache/venv/bin/python").display().to_string());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing; run ./scripts/fetch --test (./scripts/test does)"
    );
    // The daemon's compiled .proto, which the script compares with the
    // client's own descriptors.
    let descriptors = d.dir.path().join("inference.bin");
    std::fs::write(&descriptors, frontend::grpc::proto::FILE_DESCRIPTOR_SET).unwrap();
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/triton_grpc_check.py"))
        .arg(d.grpc_addr())
        .arg(root().join(".cache/testdata"))
        .arg(&descriptors)
        .env("HIGHSERVE_TEST_TOKEN", "s3cret")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient.grpc checks failed:\n{text}\n---- daemon log ----\n{}", d.log());
    assert!(text.contains("all tritonclient.grpc checks passed"), "{text}");
    assert!(!d.log().contains("s3cret"), "the token is never logged");
}
