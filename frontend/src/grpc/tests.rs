//! The adapter's pure parts: deadlines, and messages to and from the v2
//! request the core runs. The service itself is driven end to end by
//! `tests/grpc.rs` and `tests/triton_grpc_check.py`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use model_repo::DType;
use serde_json::json;
use tonic::metadata::MetadataMap;

use super::config::data_type;
use super::convert::{held_bytes, infer_request, response};
use super::infer::budget;
use super::proto::DataType;
use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest};
use crate::v2::{InferRequest, InputData, Selected, ShmRef, V2Error};

#[test]
fn grpc_timeout_becomes_the_requests_budget() {
    let with = |v: &str| {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        budget(&m)
    };
    assert_eq!(with("250m"), Some(Duration::from_millis(250)));
    assert_eq!(with("2S"), Some(Duration::from_secs(2)));
    assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(with("99999999u"), Some(Duration::from_micros(99_999_999)));
    for bad in ["", "m", "123456789m", "5x", "-1S"] {
        assert_eq!(with(bad), None, "{bad}");
    }
    assert_eq!(budget(&MetadataMap::new()), None);
}

fn param(p: ParameterChoice) -> InferParameter {
    InferParameter { parameter_choice: Some(p) }
}

fn input(name: &str, datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents,
    }
}

fn request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
    ModelInferRequest { model_name: "m".into(), inputs, raw_input_contents: raw, ..Default::default() }
}

/// The one input's bytes as the core will copy them into the slot.
fn typed_bytes(datatype: &str, shape: &[i64], contents: InferTensorContents) -> Result<Vec<u8>, String> {
    let req =
        infer_request(request(vec![input("x", datatype, shape, Some(contents))], vec![])).map_err(|e| e.to_string())?;
    match &req.inputs[0].data {
        InputData::Json(v) => Ok(v.clone()),
        other => panic!("typed contents became {other:?}"),
    }
}

fn refused(msg: ModelInferRequest) -> String {
    match infer_request(msg) {
        Err(V2Error::Request(m)) => m,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn typed_contents_of_each_datatype_become_little_endian_tensors() {
    let c = InferTensorContents::default;
    let le = |v: &[i64], f: fn(i64) -> Vec<u8>| v.iter().flat_map(|&x| f(x)).collect::<Vec<u8>>();
    assert_eq!(
        typed_bytes("BOOL", &[3], InferTensorContents { bool_contents: vec![true, false, true], ..c() }),
        Ok(vec![1, 0, 1])
    );
    let ints = InferTensorContents { int_contents: vec![-1, 2, -128], ..c() };
    assert_eq!(typed_bytes("INT8", &[3], ints.clone()), Ok(vec![0xff, 2, 0x80]));
    assert_eq!(typed_bytes("INT16", &[3], ints.clone()), Ok(le(&[-1, 2, -128], |x| (x as i16).to_le_bytes().to_vec())));
    assert_eq!(typed_bytes("INT32", &[1, 3], ints), Ok(le(&[-1, 2, -128], |x| (x as i32).to_le_bytes().to_vec())));
    let int64 = InferTensorContents { int64_contents: vec![-5, 1 << 40], ..c() };
    assert_eq!(typed_bytes("INT64", &[2], int64), Ok(le(&[-5, 1 << 40], |x| x.to_le_bytes().to_vec())));
    let uints = InferTensorContents { uint_contents: vec![7, 255], ..c() };
    assert_eq!(typed_bytes("UINT8", &[2], uints.clone()), Ok(vec![7, 255]));
    assert_eq!(typed_bytes("UINT16", &[2], uints.clone()), Ok(vec![7, 0, 255, 0]));
    assert_eq!(typed_bytes("UINT32", &[2], uints), Ok(vec![7, 0, 0, 0, 255, 0, 0, 0]));
    let u64s = InferTensorContents { uint64_contents: vec![u64::MAX], ..c() };
    assert_eq!(typed_bytes("UINT64", &[1], u64s), Ok(vec![0xff; 8]));
    let f32s = InferTensorContents { fp32_contents: vec![1.5, -2.0], ..c() };
    assert_eq!(typed_bytes("FP32", &[2], f32s), Ok([1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()));
    let f64s = InferTensorContents { fp64_contents: vec![0.25], ..c() };
    assert_eq!(typed_bytes("FP64", &[1], f64s), Ok(0.25f64.to_le_bytes().to_vec()));
    let strings = InferTensorContents { bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()], ..c() };
    assert_eq!(typed_bytes("BYTES", &[2], strings), Ok(vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]));
}

#[test]
fn typed_contents_that_do_not_fit_are_refused_with_what_is_accepted() {
    let c = InferTensorContents::default;
    // Narrowed, never truncated.
    let e = typed_bytes("INT8", &[1], InferTensorContents { int_contents: vec![300], ..c() }).unwrap_err();
    assert!(e.contains("element 0 is 300, which is not INT8"), "{e}");
    let e = typed_bytes("UINT16", &[1], InferTensorContents { uint_contents: vec![70_000], ..c() }).unwrap_err();
    assert!(e.contains("70000"), "{e}");
    // The field of another type.
    let e = typed_bytes("FP32", &[2], InferTensorContents { fp64_contents: vec![1.0, 2.0], ..c() }).unwrap_err();
    assert!(e.contains("go in fp32_contents") && e.contains("in fp64_contents"), "{e}");
    // Two fields at once.
    let two = InferTensorContents { int_contents: vec![1], int64_contents: vec![1], ..c() };
    let e = typed_bytes("INT32", &[1], two).unwrap_err();
    assert!(e.contains("int_contents, int64_contents"), "{e}");
    // Too few elements for the shape.
    let e = typed_bytes("FP32", &[2, 2], InferTensorContents { fp32_contents: vec![1.0; 3], ..c() }).unwrap_err();
    assert!(e.contains("3 elements in fp32_contents but its shape needs 4"), "{e}");
    // No field for half floats.
    let e = typed_bytes("FP16", &[1], InferTensorContents { fp32_contents: vec![1.0], ..c() }).unwrap_err();
    assert!(e.contains("raw_input_contents"), "{e}");
}

#[test]
fn raw_contents_are_handed_on_without_a_copy() {
    let a = Bytes::from(vec![0u8; 16]);
    let b = Bytes::from(vec![1u8; 8]);
    let msg =
        request(vec![input("a", "FP32", &[1, 4], None), input("b", "INT64", &[1], None)], vec![a.clone(), b.clone()]);
    assert_eq!(held_bytes(&msg), 24);
    let req = infer_request(msg).unwrap();
    let [InputData::Shared(ra), InputData::Shared(rb)] = [&req.inputs[0].data, &req.inputs[1].data] else {
        panic!("{:?}", req.inputs)
    };
    // The same buffers, by address: matched by position.
    assert_eq!((ra.as_ptr(), rb.as_ptr()), (a.as_ptr(), b.as_ptr()));
    assert_eq!((req.inputs[0].datatype, req.inputs[0].shape.as_slice()), (DType::F32, &[1, 4][..]));
    assert_eq!(req.id, None, "the id stays with the adapter");
}

#[test]
fn raw_and_typed_contents_do_not_mix_and_raw_entries_match_inputs() {
    let raw = || vec![Bytes::from(vec![0u8; 4])];
    let typed = || Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() });
    let e = refused(request(vec![input("a", "FP32", &[1], None), input("b", "FP32", &[1], typed())], raw()));
    assert!(e.contains("input `b` has contents but the request also has raw_input_contents"), "{e}");
    // More raw entries than inputs without data.
    let e = refused(request(vec![input("a", "FP32", &[1], None)], [raw(), raw()].concat()));
    assert!(e.contains("2 raw_input_contents entries but 1 of its inputs"), "{e}");
    // Fewer.
    let e = refused(request(vec![input("a", "FP32", &[1], None), input("b", "FP32", &[1], None)], raw()));
    assert!(e.contains("input `b` has no data"), "{e}");
    // A region and contents.
    let mut both = input("a", "FP32", &[1], typed());
    both.parameters.insert("shared_memory_region".into(), param(ParameterChoice::StringParam("r".into())));
    both.parameters.insert("shared_memory_byte_size".into(), param(ParameterChoice::Int64Param(4)));
    let e = refused(request(vec![both], vec![]));
    assert!(e.contains("names shared_memory_region and also has contents"), "{e}");
    // A region alone: no raw entry is taken for it.
    let mut region = input("a", "FP32", &[1], None);
    region.parameters.insert("shared_memory_region".into(), param(ParameterChoice::StringParam("r".into())));
    region.parameters.insert("shared_memory_byte_size".into(), param(ParameterChoice::Int64Param(4)));
    region.parameters.insert("shared_memory_offset".into(), param(ParameterChoice::Int64Param(8)));
    let req = infer_request(request(vec![region, input("b", "FP32", &[1], None)], raw())).unwrap();
    assert_eq!(req.inputs[0].data, InputData::Region(ShmRef { region: "r".into(), offset: 8, byte_size: 4 }));
    assert!(matches!(req.inputs[1].data, InputData::Shared(_)));
    // Nothing to run, a datatype or a shape that is none.
    assert!(refused(request(vec![], vec![])).contains("no inputs"));
    let e = refused(request(vec![input("a", "FLOAT", &[1], typed())], vec![]));
    assert!(e.contains("datatype `FLOAT`; accepted: BOOL"), "{e}");
    let e = refused(request(vec![input("a", "FP32", &[-1], typed())], vec![]));
    assert!(e.contains("shape [-1]"), "{e}");
}

#[test]
fn raw_bytes_tensors_must_hold_length_prefixed_elements() {
    let one = |raw: Vec<u8>, shape: &[i64]| request(vec![input("s", "BYTES", shape, None)], vec![Bytes::from(raw)]);
    let good = [3u32.to_le_bytes().as_slice(), b"abc", &0u32.to_le_bytes()].concat();
    let req = infer_request(one(good.clone(), &[2])).unwrap();
    assert_eq!(req.inputs[0].data.tensor_bytes(&[]), Some(good.as_slice()));
    // Two elements where the shape needs three.
    let e = refused(one(good, &[3]));
    assert!(e.contains("needs 3 elements but its raw_input_contents entry holds 2"), "{e}");
    // A length past the end: the bytes of an image sent without its prefix.
    let e = refused(one(b"\xff\xd8\xff\xe0 a JPEG".to_vec(), &[1]));
    assert!(e.contains("4-byte little-endian length then the bytes"), "{e}");
}

#[test]
fn parameters_become_the_json_values_http_carries() {
    let mut msg = request(
        vec![input("a", "FP32", &[1], Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }))],
        vec![],
    );
    msg.id = "req-1".into();
    let p = &mut msg.parameters;
    // As tritonclient sends them: priority uint64, timeout int64.
    p.insert("priority".into(), param(ParameterChoice::Uint64Param(2)));
    p.insert("timeout".into(), param(ParameterChoice::Int64Param(5000)));
    p.insert("tag".into(), param(ParameterChoice::StringParam("blue".into())));
    p.insert("flag".into(), param(ParameterChoice::BoolParam(true)));
    p.insert("ratio".into(), param(ParameterChoice::DoubleParam(0.5)));
    let mut out = InferRequestedOutputTensor { name: "scores".into(), parameters: HashMap::new() };
    out.parameters.insert("classification".into(), param(ParameterChoice::Int64Param(3)));
    let mut into = InferRequestedOutputTensor { name: "map".into(), parameters: HashMap::new() };
    into.parameters.insert("shared_memory_region".into(), param(ParameterChoice::StringParam("out".into())));
    into.parameters.insert("shared_memory_byte_size".into(), param(ParameterChoice::Int64Param(64)));
    msg.outputs = vec![out, into];
    let req = infer_request(msg).unwrap();
    assert_eq!((req.priority, req.timeout_us), (Some(2), Some(5000)));
    assert_eq!(serde_json::Value::Object(req.parameters), json!({"tag": "blue", "flag": true, "ratio": 0.5}));
    assert_eq!(req.outputs[0].classification, Some(3));
    assert_eq!(req.outputs[1].region, Some(ShmRef { region: "out".into(), offset: 0, byte_size: 64 }));

    let base = || {
        request(
            vec![input(
                "a",
                "FP32",
                &[1],
                Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() }),
            )],
            vec![],
        )
    };
    let mut bad = base();
    bad.parameters.insert("priority".into(), param(ParameterChoice::Int64Param(-1)));
    assert!(refused(bad).contains("request parameter `priority` is -1; accepted: an integer ≥ 0"));
    let mut seq = base();
    seq.parameters.insert("sequence_id".into(), param(ParameterChoice::Int64Param(9)));
    assert!(refused(seq).contains("sequence batching is not supported"));
    let mut twice = base();
    let o = InferRequestedOutputTensor { name: "y".into(), parameters: HashMap::new() };
    twice.outputs = vec![o.clone(), o];
    assert!(refused(twice).contains("output `y` is requested twice"));
    let mut zero = base();
    let mut o = InferRequestedOutputTensor { name: "y".into(), parameters: HashMap::new() };
    o.parameters.insert("classification".into(), param(ParameterChoice::Int64Param(0)));
    zero.outputs = vec![o];
    assert!(refused(zero).contains("a class count, an integer ≥ 1"));
}

#[test]
fn response_has_a_raw_entry_per_output_and_an_empty_one_for_a_region() {
    let at = ShmRef { region: "out".into(), offset: 0, byte_size: 8 };
    let probs = [0.25f32.to_le_bytes(), 0.75f32.to_le_bytes()].concat();
    let selected = |data: &[u8]| Selected {
        name: "probs",
        datatype: DType::F32,
        shape: vec![1, 2],
        data: Cow::Owned(data.to_vec()),
        binary: true,
        region: None,
    };
    let in_region = Selected { name: "map", region: Some(&at), data: Cow::Borrowed(&probs[..]), ..selected(&[]) };
    let labels = Selected { name: "top", datatype: DType::Bytes, shape: vec![1, 1], ..selected(b"\x03\0\0\0a:b") };
    let msg = response("m", 3, "id-7".into(), vec![selected(&probs), in_region, labels]);
    assert_eq!((msg.model_name.as_str(), msg.model_version.as_str(), msg.id.as_str()), ("m", "3", "id-7"));
    let names: Vec<&str> = msg.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probs", "map", "top"]);
    assert_eq!(msg.raw_output_contents.len(), 3, "one entry per output, so indexes line up");
    assert_eq!(msg.raw_output_contents[0], probs);
    assert!(msg.raw_output_contents[1].is_empty(), "written to the region, not sent");
    assert_eq!(msg.raw_output_contents[2].as_ref(), b"\x03\0\0\0a:b");
    assert_eq!((msg.outputs[2].datatype.as_str(), msg.outputs[2].shape.as_slice()), ("BYTES", &[1, 1][..]));
    // Never inline contents: tritonclient reads raw entries first.
    assert!(msg.outputs.iter().all(|o| o.contents.is_none()));
}

#[test]
fn an_empty_request_is_the_default_v2_request() {
    let typed = Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() });
    let req = infer_request(request(vec![input("a", "FP32", &[1], typed)], vec![])).unwrap();
    let expected = InferRequest { inputs: req.inputs.clone(), ..InferRequest::default() };
    assert_eq!(req, expected);
}

#[test]
fn every_datatype_has_its_triton_config_type() {
    for d in DType::ALL {
        let t = data_type(d);
        assert_ne!(t, DataType::TypeInvalid, "{d:?}");
        assert_eq!(t.as_str_name(), crate::v2::config_type(d), "{d:?}");
    }
    assert_eq!(data_type(DType::Bytes), DataType::TypeString);
    assert_eq!(data_type(DType::F32), DataType::TypeFp32);
}
