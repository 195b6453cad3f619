use half::f16;
use model_repo::DType;
use serde_json::{Value, json};

use super::*;
use crate::v2::{
    InferRequest, InferResponse, OutputTensor, Rendered, RequestedOutput, error_body, model_metadata, parse_infer,
    render_infer, server_metadata,
};

/// One output as `InferResult.as_numpy` sees it, in the binary layout.
#[derive(Debug, PartialEq)]
struct Parsed {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    data: Vec<u8>,
}

/// tritonclient's `InferResult`, in Rust: the JSON is the first
/// `header_len` bytes (all of the body without one); walking `outputs` in
/// order, each with `parameters.binary_data_size` takes the next that many
/// bytes after the JSON, the others carry `data`. Returns each output's
/// datatype, shape and data in the binary layout, decoded from JSON the way
/// `np.array(data, dtype)` would.
fn infer_result(r: &Rendered) -> (Value, Vec<Parsed>) {
    let json_len = r.header_len.unwrap_or(r.body.len());
    let header: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    let mut rest = &r.body[json_len..];
    let mut outputs = Vec::new();
    for out in header["outputs"].as_array().unwrap() {
        let datatype = out["datatype"].as_str().unwrap().to_string();
        let shape: Vec<i64> = serde_json::from_value(out["shape"].clone()).unwrap();
        let data = match out.pointer("/parameters/binary_data_size") {
            Some(n) => {
                let (data, tail) = rest.split_at(n.as_u64().unwrap() as usize);
                rest = tail;
                data.to_vec()
            }
            None => numpy_from_json(&datatype, out["data"].as_array().unwrap()),
        };
        outputs.push(Parsed { name: out["name"].as_str().unwrap().to_string(), datatype, shape, data });
    }
    assert!(rest.is_empty(), "bytes no output accounts for");
    (header, outputs)
}

fn numpy_from_json(datatype: &str, data: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in data {
        match datatype {
            "FP32" => out.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            "FP16" => out.extend(f16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            "INT64" => out.extend(v.as_i64().unwrap().to_le_bytes()),
            "BOOL" => out.push(u8::from(v.as_bool().unwrap())),
            "BYTES" => out.extend(bytes_tensor(&[v.as_str().unwrap().as_bytes()])),
            other => panic!("no decoder for {other}"),
        }
    }
    out
}

fn request(outputs: &[(&str, Option<bool>, Option<u32>)], binary_data_output: bool) -> InferRequest {
    InferRequest {
        id: None,
        priority: None,
        timeout_us: None,
        binary_data_output,
        parameters: Default::default(),
        inputs: Vec::new(),
        outputs: outputs
            .iter()
            .map(|&(name, binary_data, classification)| RequestedOutput {
                name: name.into(),
                binary_data,
                classification,
                region: None,
            })
            .collect(),
    }
}

fn tricky_f32s() -> Vec<u8> {
    le(&[0.1f32, -0.0, 1e-45, f32::MAX, 1.0 / 3.0, 16777217.0], f32::to_le_bytes)
}

/// The MULTI model's three outputs for a batch of 2.
fn multi_outputs<'a>(y: &'a [u8], z: &'a [u8], names: &'a [u8]) -> [OutputTensor<'a>; 3] {
    [
        OutputTensor { name: "y", datatype: DType::F32, shape: vec![2, 3], data: y },
        OutputTensor { name: "z", datatype: DType::I64, shape: vec![2, 2], data: z },
        OutputTensor { name: "names", datatype: DType::Bytes, shape: vec![2, 1], data: names },
    ]
}

#[test]
fn all_outputs_as_json_when_none_are_named() {
    let multi = model("multi", MULTI);
    let (y, z, names) =
        (tricky_f32s(), le(&[1i64, -2, i64::MAX, 4], i64::to_le_bytes), bytes_tensor(&[b"a", "é".as_bytes()]));
    let outputs = multi_outputs(&y, &z, &names);
    let resp = InferResponse { model: &multi, version: 3, id: Some("req-1"), outputs: &outputs };
    let r = render_infer(&resp, &request(&[], false)).unwrap();
    assert_eq!(r.header_len, None, "all JSON: no Inference-Header-Content-Length");
    let (header, parsed) = infer_result(&r);
    assert_eq!(header["model_name"], "multi");
    assert_eq!(header["model_version"], "3");
    assert_eq!(header["id"], "req-1");
    // The text itself: serde_json's default parser is not exact for 1e-45.
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.contains(r#""data":[0.1,-0.0,1e-45,3.4028235e+38,0.33333334,16777216.0]"#), "{text}");
    assert_eq!(header["outputs"][1]["data"], json!([1, -2, i64::MAX, 4]), "INT64 stays exact");
    assert_eq!(header["outputs"][2]["data"], json!(["a", "é"]));
    let got: Vec<_> =
        parsed.iter().map(|p| (p.name.as_str(), p.datatype.as_str(), p.shape.clone(), p.data.clone())).collect();
    assert_eq!(
        got,
        [
            ("y", "FP32", vec![2, 3], y.clone()),
            ("z", "INT64", vec![2, 2], z.clone()),
            ("names", "BYTES", vec![2, 1], names.clone())
        ],
        "JSON floats round-trip to the same f32 bits"
    );
    let no_id = InferResponse { id: None, ..resp };
    let r = render_infer(&no_id, &request(&[], false)).unwrap();
    assert!(infer_result(&r).0.get("id").is_none(), "no id key without an id");
}

#[test]
fn requested_outputs_in_request_order_binary_or_json() {
    let multi = model("multi", MULTI);
    let (y, z, names) = (tricky_f32s(), le(&[5i64, 6, 7, 8], i64::to_le_bytes), bytes_tensor(&[b"\xff", b"ok"]));
    let outputs = multi_outputs(&y, &z, &names);
    let resp = InferResponse { model: &multi, version: 1, id: None, outputs: &outputs };
    // names: binary_data unset, so the request's binary_data_output decides.
    let req = request(&[("names", None, None), ("y", Some(false), None), ("z", Some(true), None)], true);
    let r = render_infer(&resp, &req).unwrap();
    let hl = r.header_len.expect("binary outputs follow the JSON");
    assert_eq!(r.body[hl..], [names.clone(), z.clone()].concat(), "binary data in output order");
    let (header, parsed) = infer_result(&r);
    let order: Vec<&str> = parsed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(order, ["names", "y", "z"]);
    assert_eq!(header["outputs"][0]["parameters"], json!({"binary_data_size": names.len()}));
    assert!(header["outputs"][0].get("data").is_none());
    assert_eq!((&parsed[1].data, &parsed[2].data), (&y, &z));

    // All binary: what tritonclient asks for when it names no outputs.
    let r = render_infer(&resp, &request(&[], true)).unwrap();
    assert_eq!(infer_result(&r).1.iter().map(|p| p.data.len()).sum::<usize>(), r.body.len() - r.header_len.unwrap());
}

#[test]
fn non_utf8_bytes_need_binary_data() {
    let multi = model("multi", MULTI);
    let (y, z, names) = (tricky_f32s(), vec![0; 32], bytes_tensor(&[b"ok", b"\xff\xfe"]));
    let outputs = multi_outputs(&y, &z, &names);
    let resp = InferResponse { model: &multi, version: 1, id: None, outputs: &outputs };
    expect_err(render_infer(&resp, &request(&[], false)), &["`names`", "element 1 is not UTF-8", "binary_data = true"]);
    render_infer(&resp, &request(&[("names", Some(true), None)], false)).unwrap();
}

#[test]
fn outputs_that_do_not_match_their_shape_are_bugs_not_garbage() {
    let multi = model("multi", MULTI);
    let (y, z, names) = (vec![0; 20], vec![0; 32], bytes_tensor(&[b"a", b"b"]));
    let outputs = multi_outputs(&y, &z, &names);
    let resp = InferResponse { model: &multi, version: 1, id: None, outputs: &outputs };
    expect_err(render_infer(&resp, &request(&[("y", None, None)], false)), &["`y` (FP32 [2, 3]) has 20 bytes"]);
    expect_err(render_infer(&resp, &request(&[("nope", None, None)], false)), &["no output `nope`", "y, z, names"]);
    let short_names = bytes_tensor(&[b"a"]);
    let outputs = multi_outputs(&y, &z, &short_names);
    let resp = InferResponse { outputs: &outputs, ..resp };
    expect_err(render_infer(&resp, &request(&[("names", None, None)], false)), &["has 1 elements, not 2"]);
}

#[test]
fn classification_per_batch_row_with_labels() {
    let cls = model("cls", IMAGE);
    let probs = le(&[0.001953125f32, 1.0 - 0.001953125, 0.75, 0.25], f32::to_le_bytes);
    let outputs = [
        OutputTensor { name: "probs", datatype: DType::F32, shape: vec![2, 2], data: &probs },
        OutputTensor { name: "logits", datatype: DType::F32, shape: vec![2, 2], data: &probs },
    ];
    let resp = InferResponse { model: &cls, version: 1, id: None, outputs: &outputs };
    // k = 3 is capped at the 2 classes; only the postprocess output has labels.
    let req = request(&[("probs", Some(false), Some(3)), ("logits", Some(true), Some(1))], false);
    let r = render_infer(&resp, &req).unwrap();
    let (header, parsed) = infer_result(&r);
    assert_eq!(header["outputs"][0]["datatype"], "BYTES");
    assert_eq!(header["outputs"][0]["shape"], json!([2, 2]));
    assert_eq!(
        header["outputs"][0]["data"],
        json!(["0.998047:1:180", "0.001953:0:0", "0.750000:0:0", "0.250000:1:180"])
    );
    assert_eq!(parsed[1].shape, [2, 1]);
    assert_eq!(parsed[1].data, bytes_tensor(&[b"0.998047:1", b"0.750000:0"]), "no labels: score:index");
}

#[test]
fn classification_without_batching_and_of_other_types() {
    let plain = model("plain", PLAIN);
    let probs = le(&[0.5f32, 0.0078125, 0.5, f32::NAN], f32::to_le_bytes);
    let y = vec![0; 16];
    let outputs = [
        OutputTensor { name: "probs", datatype: DType::F32, shape: vec![4], data: &probs },
        OutputTensor { name: "y", datatype: DType::F32, shape: vec![2, 2], data: &y },
    ];
    let resp = InferResponse { model: &plain, version: 1, id: None, outputs: &outputs };
    let r = render_infer(&resp, &request(&[("probs", Some(false), Some(4))], false)).unwrap();
    let (header, _) = infer_result(&r);
    assert_eq!(header["outputs"][0]["shape"], json!([4]), "no batch dimension without batching");
    // Ties keep index order; NaN is nobody's top class; %f-style rounding.
    assert_eq!(header["outputs"][0]["data"], json!(["0.500000:0", "0.500000:2", "0.007812:1", "nan:3"]));
    let r = render_infer(&resp, &request(&[("y", Some(false), Some(2))], false)).unwrap();
    assert_eq!(infer_result(&r).0["outputs"][0]["shape"], json!([2]), "a [2, 2] output is 4 classes, not 2 rows");

    let multi = model("multi", MULTI);
    let (f, z, names) = (vec![0; 24], le(&[5i64, 9, -3, -7], i64::to_le_bytes), bytes_tensor(&[b"a", b"b"]));
    let outputs = multi_outputs(&f, &z, &names);
    let resp = InferResponse { model: &multi, version: 1, id: None, outputs: &outputs };
    let r = render_infer(&resp, &request(&[("z", Some(false), Some(1))], false)).unwrap();
    assert_eq!(infer_result(&r).0["outputs"][0]["data"], json!(["9:1", "-3:0"]), "integers print as integers");
    expect_err(render_infer(&resp, &request(&[("names", None, Some(1))], false)), &["classification needs a numeric"]);
}

#[test]
fn fp16_outputs_round_trip_through_json() {
    let single = model("single", SINGLE);
    let halves: Vec<f16> = [0.1f32, -65504.0, 6e-8].iter().map(|&x| f16::from_f32(x)).collect();
    let data = le(&halves, f16::to_le_bytes);
    let outputs = [OutputTensor { name: "out", datatype: DType::F16, shape: vec![3], data: &data }];
    let resp = InferResponse { model: &single, version: 1, id: None, outputs: &outputs };
    let r = render_infer(&resp, &request(&[], false)).unwrap();
    let (header, parsed) = infer_result(&r);
    assert!(header["outputs"][0]["data"][0].is_number(), "FP16 as numbers: {header}");
    assert_eq!(parsed[0].data, data);
}

#[test]
fn a_parsed_tritonclient_request_renders_what_it_asked_for() {
    let plain = model("plain", PLAIN);
    let req = parse_infer(&MIXED.body(), MIXED.header_len).unwrap();
    let (probs, y) = (le(&[0.1f32, 0.7, 0.2, 0.0], f32::to_le_bytes), le(&[1f32, 2.0, 3.0, 4.0], f32::to_le_bytes));
    let outputs = [
        OutputTensor { name: "y", datatype: DType::F32, shape: vec![2, 2], data: &y },
        OutputTensor { name: "probs", datatype: DType::F32, shape: vec![4], data: &probs },
    ];
    let resp = InferResponse { model: &plain, version: 1, id: req.id.as_deref(), outputs: &outputs };
    let r = render_infer(&resp, &req).unwrap();
    let (header, parsed) = infer_result(&r);
    assert_eq!(header["id"], "7");
    assert_eq!(header["outputs"][0]["data"], json!(["0.700000:1", "0.200000:2"]));
    assert_eq!((parsed[1].name.as_str(), parsed[1].data.clone()), ("y", y));
}

#[test]
fn metadata_has_what_tritonclient_returns() {
    let meta: Value = serde_json::from_slice(&server_metadata()).unwrap();
    assert_eq!(meta["name"], "highserve");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        meta["extensions"],
        json!([
            "classification",
            "binary_tensor_data",
            "model_configuration",
            "statistics",
            "model_repository",
            "system_shared_memory"
        ])
    );

    // Every ready version of the model, as the table lists them.
    let meta: Value = serde_json::from_slice(&model_metadata(&model("cls", IMAGE), &[1, 3])).unwrap();
    assert_eq!(
        meta,
        json!({
            "name": "cls",
            "versions": ["1", "3"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 48, 192]}],
            "outputs": [
                {"name": "probs", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "logits", "datatype": "FP32", "shape": [-1, 2]},
            ],
        })
    );
    let err: Value = serde_json::from_slice(&error_body("input `x` is \"bad\"")).unwrap();
    assert_eq!(err, json!({"error": "input `x` is \"bad\""}));
}
