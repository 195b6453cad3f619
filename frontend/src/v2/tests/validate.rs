use model_repo::DType;

use super::*;
use crate::v2::{InferRequest, InputData, parse_infer, parse_raw, validate};

fn parsed(f: &Fixture) -> InferRequest {
    parse_infer(&f.body(), f.header_len).unwrap()
}

/// A JSON request with one INT32/FP32/... input per `(name, datatype, shape)`,
/// zero-filled.
fn request(inputs: &[(&str, &str, &[i64])], outputs: &str) -> InferRequest {
    let inputs: Vec<String> = inputs
        .iter()
        .map(|(name, dt, shape)| {
            let n: i64 = shape.iter().product();
            let zero = match *dt {
                "BYTES" => "\"\"",
                "BOOL" => "false",
                _ => "0",
            };
            let data = vec![zero; n.max(0) as usize].join(",");
            format!(r#"{{"name":"{name}","datatype":"{dt}","shape":{shape:?},"data":[{data}]}}"#)
        })
        .collect();
    let json = format!(r#"{{"inputs":[{}],"outputs":[{outputs}]}}"#, inputs.join(","));
    parse_infer(json.as_bytes(), None).unwrap()
}

const MULTI_OK: [(&str, &str, &[i64]); 5] = [
    ("x", "FP32", &[2, 3]),
    ("ids", "INT64", &[2]),
    ("mask", "BOOL", &[2]),
    ("text", "BYTES", &[2, 1]),
    ("pix", "UINT8", &[2, 7]),
];

#[test]
fn fixtures_validate_and_report_their_batch() {
    let multi = model("multi", MULTI);
    assert_eq!(validate(&parsed(&JSON_ONLY), &multi).unwrap(), 2);
    assert_eq!(validate(&parsed(&BINARY), &multi).unwrap(), 2);
    assert_eq!(validate(&parsed(&MIXED), &model("plain", PLAIN)).unwrap(), 1, "no batching: one unit");
    assert_eq!(validate(&parsed(&IMAGES), &model("cls", IMAGE)).unwrap(), 2, "two images, two batch rows");
    assert_eq!(validate(&request(&MULTI_OK, ""), &multi).unwrap(), 2, "-1 dims take any size");
}

#[test]
fn input_names_must_match_the_model() {
    let multi = model("multi", MULTI);
    let mut inputs = MULTI_OK.to_vec();
    inputs.push(("extra", "FP32", &[2]));
    expect_err(
        validate(&request(&inputs, ""), &multi),
        &["model `multi` has no input `extra`", "`x` (FP32 [-1, 3])", "`pix` (UINT8 [-1, -1])"],
    );
    expect_err(validate(&request(&MULTI_OK[..4], ""), &multi), &["input `pix` is missing", "`text` (BYTES [-1, 1])"]);
    let mut twice = MULTI_OK.to_vec();
    twice[4] = ("x", "FP32", &[2, 3]);
    expect_err(validate(&request(&twice, ""), &multi), &["input `x` is given twice"]);
}

#[test]
fn datatype_and_shape_must_match_the_config() {
    let multi = model("multi", MULTI);
    let with = |i: usize, dt: &'static str, shape: &'static [i64]| {
        let mut inputs = MULTI_OK.to_vec();
        inputs[i] = (inputs[i].0, dt, shape);
        validate(&request(&inputs, ""), &multi)
    };
    expect_err(with(0, "FP64", &[2, 3]), &["input `x` is FP64; the model expects FP32"]);
    expect_err(with(0, "FP32", &[2, 4]), &["`x` has shape [2, 4]", "accepts [-1, 3]", "batch, 1 to 4"]);
    expect_err(with(0, "FP32", &[6]), &["`x` has shape [6]"]);
    expect_err(with(1, "INT64", &[0]), &["`ids` has shape [0]", "1 to 4"]);
    expect_err(with(1, "INT64", &[5]), &["`ids` has shape [5]"]);
    expect_err(with(2, "BOOL", &[3]), &["`mask` has batch size 3 but input `x` has 2", "same first (batch) dimension"]);

    let plain = model("plain", PLAIN);
    let req = request(&[("x", "FP32", &[2, 2]), ("n", "INT32", &[3]), ("m", "UINT16", &[1])], "");
    expect_err(validate(&req, &plain), &["`n` has shape [3]; the model accepts [2] (-1: any size)"]);
}

#[test]
fn image_inputs_also_take_encoded_images() {
    let cls = model("cls", IMAGE);
    let images = |shape: &'static [i64]| validate(&request(&[("image", "BYTES", shape)], ""), &cls);
    assert_eq!(images(&[3]).unwrap(), 3);
    assert_eq!(images(&[8, 1]).unwrap(), 8);
    expect_err(images(&[9]), &["`image` is BYTES (encoded images) with shape [9]", "[N] or [N, 1]", "1 to 8"]);
    expect_err(images(&[2, 2]), &["shape [2, 2]"]);
    expect_err(images(&[0]), &["shape [0]"]);
    let wrong = validate(&request(&[("image", "UINT8", &[1, 3, 48, 192])], ""), &cls);
    expect_err(wrong, &["`image` is UINT8; the model expects FP32 (or BYTES: encoded JPEG or PNG images)"]);
    // BYTES is only for the image input, and only when the model preprocesses.
    let multi = model("multi", MULTI);
    let mut inputs = MULTI_OK.to_vec();
    inputs[0] = ("x", "BYTES", &[2, 3]);
    expect_err(validate(&request(&inputs, ""), &multi), &["`x` is BYTES; the model expects FP32"]);
}

#[test]
fn requested_outputs_must_exist() {
    let multi = model("multi", MULTI);
    expect_err(
        validate(&request(&MULTI_OK, r#"{"name":"y"},{"name":"nope"}"#), &multi),
        &["model `multi` has no output `nope`", "`y` (FP32 [-1, 3]), `z` (INT64 [-1, -1]), `names` (BYTES [-1, 1])"],
    );
    expect_err(
        validate(&request(&MULTI_OK, r#"{"name":"names","parameters":{"classification":2}}"#), &multi),
        &["`names` is BYTES; classification needs a numeric output"],
    );
    validate(&request(&MULTI_OK, r#"{"name":"z","parameters":{"classification":2}}"#), &multi).unwrap();
}

#[test]
fn data_length_is_checked_for_requests_built_by_hand() {
    let plain = model("plain", PLAIN);
    let mut req = parsed(&MIXED);
    req.inputs[1].data = InputData::Json(vec![0; 7]);
    expect_err(validate(&req, &plain), &["`n` (INT32 [2]) needs 8 bytes of data, has 7"]);
}

#[test]
fn raw_body_with_an_image_is_one_encoded_image() {
    let cls = model("cls", IMAGE);
    for body in [&b"\xff\xd8\xff\xe0 jpeg"[..], b"\x89PNG\r\n\x1a\n png"] {
        let req = parse_raw(body, &cls).unwrap();
        let input = &req.inputs[0];
        assert_eq!((input.name.as_str(), input.datatype, input.shape.clone()), ("image", DType::Bytes, vec![1]));
        assert_eq!(input.data, InputData::Json(bytes_tensor(&[body])), "the BYTES length prefix is added");
        assert_eq!(validate(&req, &cls).unwrap(), 1);
        assert!(req.outputs.is_empty() && !req.binary_data_output, "outputs come back as JSON");
    }
}

#[test]
fn raw_body_of_fixed_dims_is_one_tensor() {
    let cls = model("cls", IMAGE);
    let tensor = vec![0u8; 3 * 48 * 192 * 4];
    let req = parse_raw(&tensor, &cls).unwrap();
    assert_eq!(req.inputs[0].shape, [1, 3, 48, 192], "batch dim of 1 first");
    assert_eq!(req.inputs[0].data, InputData::Binary(0..tensor.len()));
    validate(&req, &cls).unwrap();

    let single = model("single", SINGLE);
    let req = parse_raw(&[0; 12], &single).unwrap();
    assert_eq!((req.inputs[0].datatype, req.inputs[0].shape.clone()), (DType::F16, vec![2, 3]), "no batching");
    validate(&req, &single).unwrap();
    expect_err(
        parse_raw(&[0; 10], &single),
        &["raw binary body has 10 bytes", "one FP16 [2, 3] tensor for input `h` is 12 bytes", "JSON header"],
    );
    expect_err(
        parse_raw(&[1; 100], &cls),
        &["100 bytes and does not start like a JPEG or PNG file", "is 110592 bytes"],
    );
}

#[test]
fn raw_body_shape_that_cannot_be_deduced_is_explained() {
    expect_err(
        parse_raw(&[0; 64], &model("rec", REC)),
        &["cannot be given a shape", "`x` is FP32 [-1, 3, 48, -1]", "JSON header with the shape", "JPEG or PNG image"],
    );
    expect_err(
        parse_raw(b"\xff\xd8\xff", &model("multi", MULTI)),
        &["model `multi` has 5 inputs (`x`, `ids`, `mask`, `text`, `pix`)", "JSON header describing each input"],
    );
}
