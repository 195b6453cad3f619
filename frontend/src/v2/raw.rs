//! Raw binary requests (Triton's extension: `Inference-Header-Content-Length:
//! 0`, the whole body is the data of the model's single input). With no JSON
//! to say the datatype and shape, they are deduced from the model's config.

use model_repo::{DType, Model};

use super::{InferRequest, InputData, InputTensor, V2Error, element_count, shape_str};

const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Builds the request a raw binary body stands for: one encoded image (BYTES,
/// shape `[1]`) when the model takes images and the body starts like a JPEG or
/// PNG file; otherwise one tensor of the input's datatype, whose size must
/// match the config's fixed dims exactly (shape `[1, dims...]` when the model
/// batches). Outputs are all returned as JSON, as for a request naming none.
/// It takes the body, not just its length, to look at the first bytes.
pub fn parse_raw(body: &[u8], model: &Model) -> Result<InferRequest, V2Error> {
    let config = &model.config;
    let [declared] = &config.inputs[..] else {
        let names: Vec<String> = config.inputs.iter().map(|t| format!("`{}`", t.name)).collect();
        return Err(V2Error::Request(format!(
            "a raw binary request (Inference-Header-Content-Length: 0) is the data of a model's only input, but \
             model `{}` has {} inputs ({}); send a JSON header describing each input instead",
            model.name,
            names.len(),
            names.join(", ")
        )));
    };
    let is_image = config.image_input().is_some();
    let looks_encoded = body.starts_with(JPEG_MAGIC) || body.starts_with(PNG_MAGIC);
    let batch: &[i64] = if config.max_batch_size > 0 { &[1] } else { &[] };
    let shape: Vec<i64> = batch.iter().chain(&declared.dims).copied().collect();
    // The body is one BYTES element; the tensor layout needs its length
    // first, so this is the one input that is copied out of the body.
    let single = |shape: Vec<i64>| -> Result<InputTensor, V2Error> {
        let len = u32::try_from(body.len()).map_err(|_| {
            V2Error::Request(format!("the raw binary body has {} bytes; at most 4 GiB is accepted", body.len()))
        })?;
        let mut data = Vec::with_capacity(4 + body.len());
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(body);
        Ok(InputTensor { name: declared.name.clone(), datatype: DType::Bytes, shape, data: InputData::Json(data) })
    };
    let input = if is_image && looks_encoded {
        single(vec![1])?
    } else if declared.datatype == DType::Bytes && element_count(&declared.dims) == Some(1) {
        single(shape)?
    } else {
        let image_note = if is_image { " and does not start like a JPEG or PNG file" } else { "" };
        let fixed_len = element_count(&declared.dims).zip(declared.datatype.size()).and_then(|(n, s)| n.checked_mul(s));
        let Some(want) = fixed_len else {
            return Err(V2Error::Request(format!(
                "the raw binary body ({} bytes{image_note}) cannot be given a shape: input `{}` is {} {} and \
                 -1 dims or BYTES elements can be any size; send a JSON header with the shape \
                 (Inference-Header-Content-Length: its length){}",
                body.len(),
                declared.name,
                declared.datatype,
                shape_str(&config.full_shape(declared)),
                if is_image { ", or one JPEG or PNG image as the body" } else { "" }
            )));
        };
        if body.len() != want {
            return Err(V2Error::Request(format!(
                "the raw binary body has {} bytes{image_note}, but one {} {} tensor for input `{}` is {want} \
                 bytes; send exactly one tensor's bytes, or a JSON header with the shape{}",
                body.len(),
                declared.datatype,
                shape_str(&shape),
                declared.name,
                if is_image { ", or one JPEG or PNG image" } else { "" }
            )));
        }
        InputTensor {
            name: declared.name.clone(),
            datatype: declared.datatype,
            shape,
            data: InputData::Binary(0..body.len()),
        }
    };
    Ok(InferRequest { inputs: vec![input], ..InferRequest::default() })
}
