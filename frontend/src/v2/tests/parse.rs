use half::f16;
use model_repo::DType;
use serde_json::json;

use super::*;
use crate::v2::{InputData, RequestedOutput, ShmRef, parse_infer};

#[test]
fn json_only_request_from_tritonclient() {
    let body = JSON_ONLY.body();
    let req = parse_infer(&body, JSON_ONLY.header_len).unwrap();
    assert_eq!(req.id.as_deref(), Some("req-1"));
    assert_eq!((req.priority, req.timeout_us, req.binary_data_output), (Some(3), Some(5000), false));
    assert_eq!(req.parameters.get("trace"), Some(&json!("abc")), "custom parameters are kept");
    let names: Vec<&str> = req.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["x", "ids", "mask", "text", "pix"]);

    let x = &req.inputs[0];
    assert_eq!((x.datatype, x.shape.clone()), (DType::F32, vec![2, 3]));
    let InputData::Json(bytes) = &x.data else { panic!("x is JSON") };
    assert_eq!(f32s(bytes), [1.5, -2.25, 3e-8, 0.1, 1e30, -0.0], "the client's f64 text rounds back to its f32s");
    let data = |i: usize| req.inputs[i].data.tensor_bytes(&body).unwrap().to_vec();
    assert_eq!(data(1), le(&[-9007199254740993i64, 7], i64::to_le_bytes), "INT64 beyond 2^53 stays exact");
    assert_eq!(data(2), [1, 0]);
    assert_eq!(data(3), bytes_tensor(&["hello".as_bytes(), "wörld".as_bytes()]), "\\u00F6 becomes UTF-8");
    assert_eq!(data(4), [0, 255, 17, 3]);

    assert_eq!(
        req.outputs,
        [
            RequestedOutput { name: "y".into(), binary_data: Some(false), classification: None, region: None },
            RequestedOutput { name: "z".into(), binary_data: Some(true), classification: None, region: None },
        ]
    );
}

#[test]
fn binary_inputs_point_into_the_body() {
    let body = BINARY.body();
    let req = parse_infer(&body, BINARY.header_len).unwrap();
    assert!(req.binary_data_output && req.outputs.is_empty() && req.id.is_none());
    let start = BINARY.header_len.unwrap();
    let ranges: Vec<_> = req
        .inputs
        .iter()
        .map(|i| match &i.data {
            InputData::Binary(r) => r.clone(),
            other => panic!("{} is {other:?}", i.name),
        })
        .collect();
    let sizes = [24, 16, 2, 10, 4];
    let mut at = start;
    for (r, n) in ranges.iter().zip(sizes) {
        assert_eq!(*r, at..at + n, "in input order, right after the header");
        at += n;
    }
    assert_eq!(at, body.len());
    assert_eq!(f32s(&body[ranges[0].clone()]), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    assert_eq!(body[ranges[3].clone()], bytes_tensor(&[b"\xff\x00", b""]), "BYTES need not be UTF-8 in binary");
}

#[test]
fn mixed_binary_and_json_with_classification() {
    let body = MIXED.body();
    let req = parse_infer(&body, MIXED.header_len).unwrap();
    assert_eq!(req.id.as_deref(), Some("7"));
    let hl = MIXED.header_len.unwrap();
    assert_eq!(req.inputs[0].data, InputData::Binary(hl..hl + 16));
    assert_eq!(req.inputs[1].data, InputData::Json(le(&[-1i32, i32::MAX], i32::to_le_bytes)));
    assert_eq!(req.inputs[2].data, InputData::Binary(hl + 16..hl + 18), "binary after a JSON input continues");
    assert_eq!(req.outputs[0].classification, Some(2));
    assert_eq!(req.outputs[0].binary_data, Some(false));
    assert_eq!(
        req.outputs[1],
        RequestedOutput { name: "y".into(), binary_data: Some(true), classification: None, region: None }
    );
}

#[test]
fn images_and_fp16() {
    let body = IMAGES.body();
    let req = parse_infer(&body, IMAGES.header_len).unwrap();
    assert_eq!((req.inputs[0].datatype, req.inputs[0].shape.clone()), (DType::Bytes, vec![2]));
    assert_eq!(req.outputs[0].classification, Some(3));

    let body = FP16.body();
    let req = parse_infer(&body, FP16.header_len).unwrap();
    let halves = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(2).map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
    };
    assert_eq!(halves(req.inputs[0].data.tensor_bytes(&body).unwrap()), [f16::from_f32(0.1).to_f32(), -65504.0, 1.0]);
    assert_eq!(halves(req.inputs[1].data.tensor_bytes(&body).unwrap()), [0.5, -2.0]);
}

#[test]
fn nested_json_data_is_flattened_row_major() {
    let body = br#"{"inputs":[{"name":"a","datatype":"INT16","shape":[2,2],"data":[[1,-2],[3,4]]},
        {"name":"b","datatype":"FP64","shape":[1],"data":7}]}"#;
    let req = parse_infer(body, None).unwrap();
    assert_eq!(req.inputs[0].data, InputData::Json(le(&[1i16, -2, 3, 4], i16::to_le_bytes)));
    assert_eq!(req.inputs[1].data, InputData::Json(7f64.to_le_bytes().to_vec()), "a scalar is one element");
}

#[test]
fn sequences_are_refused_but_no_sequence_is_fine() {
    let body = SEQUENCE.body();
    expect_err(parse_infer(&body, None), &["sequence_id 5", "sequence batching is not supported"]);
    expect_err(parse_infer(&body.replace_str("5", "\"abc\""), None), &["sequence batching is not supported"]);
    let req = parse_infer(&body.replace_str("5", "0"), None).unwrap();
    assert!(req.binary_data_output && req.parameters.is_empty(), "sequence_* are not kept: {:?}", req.parameters);
}

trait ReplaceStr {
    fn replace_str(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceStr for Vec<u8> {
    fn replace_str(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self.clone()).unwrap().replacen(from, to, 1).into_bytes()
    }
}

fn json_err(json: &str, needles: &[&str]) -> String {
    expect_err(parse_infer(json.as_bytes(), None), needles)
}

fn input(datatype: &str, shape: &str, data: &str) -> String {
    format!(r#"{{"inputs":[{{"name":"in0","datatype":"{datatype}","shape":{shape},"data":{data}}}]}}"#)
}

#[test]
fn malformed_json_quotes_serde() {
    json_err(r#"{"inputs":[{"name":"x""#, &["malformed inference request JSON", "EOF while parsing"]);
    json_err("{}", &["missing field `inputs`"]);
    json_err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1.5],"data":[1]}]}"#, &["invalid type", "1.5"]);
    json_err(r#"{"inputs":[]}"#, &["no inputs"]);
}

#[test]
fn json_values_must_fit_the_datatype() {
    json_err(&input("UINT8", "[3]", "[1, 300, 2]"), &["`in0`", "element 1 is 300", "UINT8", "0 to 255"]);
    json_err(&input("INT8", "[1]", "[-129]"), &["-129", "-128 to 127"]);
    json_err(&input("UINT64", "[1]", "[-1]"), &["-1", "UINT64"]);
    json_err(&input("INT32", "[1]", "[1.5]"), &["1.5", "INT32"]);
    json_err(&input("FP16", "[2]", "[1, 70000]"), &["70000", "FP16", "65504"]);
    json_err(&input("FP32", "[1]", "[1e39]"), &["FP32"]);
    json_err(&input("FP32", "[1]", r#"["1"]"#), &[r#""1""#, "numbers"]);
    json_err(&input("BOOL", "[1]", "[1]"), &["BOOL", "true or false"]);
    json_err(&input("BYTES", "[1]", "[3]"), &["BYTES", "strings"]);
    let ok = parse_infer(input("UINT64", "[1]", "[18446744073709551615]").as_bytes(), None).unwrap();
    assert_eq!(ok.inputs[0].data, InputData::Json(u64::MAX.to_le_bytes().to_vec()));
}

#[test]
fn json_element_count_must_match_the_shape() {
    json_err(&input("FP32", "[2,2]", "[[1,2],[3]]"), &["`in0`", "3 data elements", "[2, 2]", "needs 4"]);
    json_err(&input("FP32", "[2,-1]", "[1]"), &["`in0`", "[2, -1]", "integers ≥ 0"]);
    json_err(&input("FLOAT", "[1]", "[1]"), &["datatype `FLOAT`", "FP32", "BYTES"]);
}

#[test]
fn each_input_needs_exactly_one_kind_of_data() {
    json_err(r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}"#, &["`x` has no data", "binary_data_size"]);
    let both = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],
        "parameters":{"binary_data_size":4}}]}"#;
    let mut body = both.as_bytes().to_vec();
    let hl = body.len();
    body.extend([0; 4]);
    expect_err(parse_infer(&body, Some(hl)), &["both `data` and parameters.binary_data_size"]);
    let shm = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],
        "parameters":{"shared_memory_region":"r","shared_memory_byte_size":4}}]}"#;
    json_err(shm, &["`x` names shared_memory_region and also has `data`"]);
}

#[test]
fn shared_memory_inputs_and_outputs_name_a_region_and_a_size() {
    let shm = |params: &str| {
        format!(
            r#"{{"inputs":[{{"name":"x","datatype":"FP32","shape":[2],"parameters":{params}}}],
            "outputs":[{{"name":"y","parameters":{{"shared_memory_region":"out","shared_memory_byte_size":64}}}}]}}"#
        )
    };
    let req = parse_infer(
        shm(r#"{"shared_memory_region":"in","shared_memory_offset":16,"shared_memory_byte_size":8}"#).as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(req.inputs[0].data, InputData::Region(ShmRef { region: "in".into(), offset: 16, byte_size: 8 }));
    assert_eq!(req.outputs[0].region, Some(ShmRef { region: "out".into(), offset: 0, byte_size: 64 }));
    json_err(
        &shm(r#"{"shared_memory_region":"in"}"#),
        &["`x` names shared_memory_region `in` without shared_memory_byte_size"],
    );
    json_err(
        &shm(r#"{"shared_memory_region":"in","shared_memory_byte_size":7}"#),
        &["`x`", "8 bytes", "shared_memory_byte_size is 7"],
    );
    json_err(
        &shm(r#"{"shared_memory_region":5,"shared_memory_byte_size":8}"#),
        &["shared_memory_region is 5", "a registered region's name"],
    );
    json_err(
        &shm(r#"{"shared_memory_region":"in","shared_memory_byte_size":8,"shared_memory_offset":-1}"#),
        &["shared_memory_offset is -1", "≥ 0"],
    );
}

#[test]
fn binary_sizes_must_add_up_to_the_body() {
    let body = BINARY.body();
    let hl = BINARY.header_len;
    expect_err(
        parse_infer(&body[..body.len() - 1], hl),
        &["declare 56 bytes of binary data", "`x`: 24", "`pix`: 4", "but 55 bytes follow the 470-byte JSON header"],
    );
    let mut longer = body.clone();
    longer.push(0);
    expect_err(parse_infer(&longer, hl), &["56 bytes", "57 bytes follow"]);
    expect_err(parse_infer(BINARY.json.as_bytes(), None), &["0 bytes follow", "Inference-Header-Content-Length"]);
    expect_err(parse_infer(&body, Some(body.len() + 1)), &["Inference-Header-Content-Length is 527", "526 bytes"]);
    let mut trailing = JSON_ONLY.body();
    let hl = trailing.len();
    trailing.extend([1, 2, 3]);
    expect_err(parse_infer(&trailing, Some(hl)), &["no input declares binary data", "3 bytes follow"]);
}

#[test]
fn binary_data_must_match_shape_and_layout() {
    let one = |datatype: &str, shape: &str, data: &[u8]| {
        let json = format!(
            r#"{{"inputs":[{{"name":"b","datatype":"{datatype}","shape":{shape},"parameters":{{"binary_data_size":{}}}}}]}}"#,
            data.len()
        );
        let mut body = json.into_bytes();
        let hl = body.len();
        body.extend_from_slice(data);
        parse_infer(&body, Some(hl))
    };
    expect_err(one("FP32", "[2]", &[0; 7]), &["`b` (FP32 [2]) is 8 bytes", "binary_data_size is 7"]);
    expect_err(one("BYTES", "[1]", &[9, 0, 0, 0, b'a']), &["`b` (BYTES [1])", "says 9 bytes but only 1 remain"]);
    expect_err(one("BYTES", "[1]", &[1, 0, 0, 0, b'a', 0]), &["1 bytes left, too few for its 4-byte length"]);
    expect_err(one("BYTES", "[3]", &bytes_tensor(&[b"a", b"b"])), &["needs 3 elements", "holds 2"]);
    one("BYTES", "[2]", &bytes_tensor(&[b"a", b""])).unwrap();
}

#[test]
fn parameters_must_have_the_right_types() {
    let with =
        |params: &str| format!(r#"{{"inputs":[{{"name":"x","datatype":"INT32","shape":[1],"data":[1]}}],{params}}}"#);
    json_err(&with(r#""parameters":{"priority":-1}"#), &["`priority` is -1", "≥ 0"]);
    json_err(&with(r#""parameters":{"timeout":"1s"}"#), &["`timeout`", "microseconds"]);
    json_err(&with(r#""parameters":{"binary_data_output":1}"#), &["`binary_data_output` is 1"]);
    json_err(&with(r#""outputs":[{"name":"y","parameters":{"classification":0}}]"#), &["`y`", "classification", "≥ 1"]);
    json_err(&with(r#""outputs":[{"name":"y","parameters":{"binary_data":"yes"}}]"#), &["`y`", "binary_data"]);
    json_err(&with(r#""outputs":[{"name":"y"},{"name":"y"}]"#), &["`y` is requested twice"]);
    json_err(
        &with(r#""outputs":[{"name":"y","parameters":{"shared_memory_region":"r"}}]"#),
        &["without shared_memory_byte_size"],
    );
    json_err(
        &with(
            r#""outputs":[{"name":"y","parameters":{"classification":2,"shared_memory_region":"r","shared_memory_byte_size":8}}]"#,
        ),
        &["classification into shared_memory_region"],
    );
    let req = parse_infer(with(r#""outputs":[{"name":"y"}],"id":"q""#).as_bytes(), None).unwrap();
    assert_eq!(
        req.outputs[0],
        RequestedOutput { name: "y".into(), binary_data: None, classification: None, region: None }
    );
}
