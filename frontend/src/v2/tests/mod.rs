//! Fixtures are request bodies produced by tritonclient 2.73.0's
//! `InferenceServerClient.generate_request_body` (exactly what `infer()`
//! sends), embedded so the tests do not need Python.

mod parse;
mod render;
mod validate;

use std::path::PathBuf;

use model_repo::{Model, ModelConfig};

use super::V2Error;

/// A request body: JSON header then binary data, and the
/// Inference-Header-Content-Length tritonclient sends with it.
pub struct Fixture {
    pub header_len: Option<usize>,
    pub json: &'static str,
    pub binary_hex: &'static str,
}

impl Fixture {
    pub fn body(&self) -> Vec<u8> {
        let mut body = self.json.as_bytes().to_vec();
        body.extend(hex(self.binary_hex));
        body
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Every input as JSON; two outputs, one binary; id, priority, timeout and a custom parameter.
pub const JSON_ONLY: Fixture = Fixture {
    header_len: None,
    json: r#"{"id":"req-1","inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1.5,-2.25,2.999999892949745e-08,0.10000000149011612,1.0000000150474662e+30,-0.0]},{"name":"ids","shape":[2],"datatype":"INT64","data":[-9007199254740993,7]},{"name":"mask","shape":[2],"datatype":"BOOL","data":[true,false]},{"name":"text","shape":[2,1],"datatype":"BYTES","data":["hello","w\u00F6rld"]},{"name":"pix","shape":[2,2],"datatype":"UINT8","data":[0,255,17,3]}],"outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z","parameters":{"binary_data":true}}],"parameters":{"priority":3,"timeout":5000,"trace":"abc"}}"#,
    binary_hex: "",
};

/// Every input binary, no outputs named (so binary_data_output).
pub const BINARY: Fixture = Fixture {
    header_len: Some(470),
    json: r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}},{"name":"ids","shape":[2],"datatype":"INT64","parameters":{"binary_data_size":16}},{"name":"mask","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}},{"name":"text","shape":[2,1],"datatype":"BYTES","parameters":{"binary_data_size":10}},{"name":"pix","shape":[2,2],"datatype":"UINT8","parameters":{"binary_data_size":4}}],"parameters":{"binary_data_output":true}}"#,
    binary_hex: "000000000000803e0000003f0000403f0000803f0000a03f0500000000000000faffffffffffffff000102000000ff000000000001020304",
};

/// Binary and JSON inputs; a JSON classification output and a binary one.
pub const MIXED: Fixture = Fixture {
    header_len: Some(381),
    json: r#"{"id":"7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"n","shape":[2],"datatype":"INT32","data":[-1,2147483647]},{"name":"m","shape":[1],"datatype":"UINT16","parameters":{"binary_data_size":2}}],"outputs":[{"name":"probs","parameters":{"classification":2,"binary_data":false}},{"name":"y","parameters":{"binary_data":true}}]}"#,
    binary_hex: "0000803f000000400000404000008040ffff",
};

/// Two encoded images as binary BYTES, top-3 classes as binary.
pub const IMAGES: Fixture = Fixture {
    header_len: Some(179),
    json: r#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":23}}],"outputs":[{"name":"probs","parameters":{"classification":3,"binary_data":true}}]}"#,
    binary_hex: "07000000ffd8ffe06a70670800000089504e470d0a1a0a",
};

/// FP16 as JSON numbers and as binary.
pub const FP16: Fixture = Fixture {
    header_len: Some(214),
    json: r#"{"inputs":[{"name":"h","shape":[3],"datatype":"FP16","data":[0.0999755859375,-65504.0,1.0]},{"name":"hb","shape":[2],"datatype":"FP16","parameters":{"binary_data_size":4}}],"parameters":{"binary_data_output":true}}"#,
    binary_hex: "003800c0",
};

/// A sequence request, which is refused.
pub const SEQUENCE: Fixture = Fixture {
    header_len: None,
    json: r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1]}],"parameters":{"sequence_id":5,"sequence_start":true,"sequence_end":false,"binary_data_output":true}}"#,
    binary_hex: "",
};

/// Batches up to 4; the inputs and outputs of JSON_ONLY and BINARY.
pub const MULTI: &str = r#"
max_batch_size = 4
[[input]]
name = "x"
datatype = "FP32"
dims = [3]
[[input]]
name = "ids"
datatype = "INT64"
dims = []
[[input]]
name = "mask"
datatype = "BOOL"
dims = []
[[input]]
name = "text"
datatype = "BYTES"
dims = [1]
[[input]]
name = "pix"
datatype = "UINT8"
dims = [-1]
[[output]]
name = "y"
datatype = "FP32"
dims = [3]
[[output]]
name = "z"
datatype = "INT64"
dims = [-1]
[[output]]
name = "names"
datatype = "BYTES"
dims = [1]
"#;

/// No batching; the inputs and outputs of MIXED.
pub const PLAIN: &str = r#"
max_batch_size = 0
[[input]]
name = "x"
datatype = "FP32"
dims = [2, 2]
[[input]]
name = "n"
datatype = "INT32"
dims = [2]
[[input]]
name = "m"
datatype = "UINT16"
dims = [1]
[[output]]
name = "probs"
datatype = "FP32"
dims = [4]
[[output]]
name = "y"
datatype = "FP32"
dims = [2, 2]
"#;

/// An image classifier like ppocr_cls: the input of IMAGES.
pub const IMAGE: &str = r#"
max_batch_size = 8
[[input]]
name = "image"
datatype = "FP32"
dims = [3, 48, 192]
[[output]]
name = "probs"
datatype = "FP32"
dims = [2]
[[output]]
name = "logits"
datatype = "FP32"
dims = [2]
[preprocess]
resize = "fit_height_pad_right"
width = 192
height = 48
[postprocess]
kind = "classification"
output = "probs"
labels = ["0", "180"]
"#;

/// An image model with a variable width, like ppocr_rec.
pub const REC: &str = r#"
max_batch_size = 16
[[input]]
name = "x"
datatype = "FP32"
dims = [3, 48, -1]
[[output]]
name = "softmax"
datatype = "FP32"
dims = [-1, 5]
[preprocess]
resize = "fit_height_pad_right"
width = 320
height = 48
"#;

/// One fixed-size input and no batching or preprocessing.
pub const SINGLE: &str = r#"
max_batch_size = 0
[[input]]
name = "h"
datatype = "FP16"
dims = [2, 3]
[[output]]
name = "out"
datatype = "FP16"
dims = [3]
"#;

pub fn model(name: &str, config: &str) -> Model {
    let config = ModelConfig::parse(config, name).unwrap();
    config.validate(name).unwrap();
    Model {
        name: name.into(),
        dir: PathBuf::from("/models").join(name),
        versions: vec![1, 3],
        config,
        state: Default::default(),
    }
}

/// The message of an error the test expects, checked to contain `needles`.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, V2Error>, needles: &[&str]) -> String {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(msg.contains(n), "expected `{n}` in: {msg}");
    }
    msg
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

pub fn le<T: Copy, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| f(v)).collect()
}

/// BYTES tensor layout: u32-LE length then bytes, per element.
pub fn bytes_tensor(elements: &[&[u8]]) -> Vec<u8> {
    elements.iter().flat_map(|e| (e.len() as u32).to_le_bytes().into_iter().chain(e.iter().copied())).collect()
}
