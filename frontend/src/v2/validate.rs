//! Checking a parsed request against the model's config.

use std::collections::HashSet;

use model_repo::{DType, Model, TensorConfig};

use super::{InferRequest, InputTensor, V2Error, element_count, shape_str};

/// Checks `req` against `model` and returns its batch size: the common first
/// dimension of the inputs when the model batches (`max_batch_size > 0`),
/// else 1.
///
/// The model's image input (when it has `[preprocess]`) also accepts BYTES of
/// shape `[N]` or `[N, 1]`: N encoded JPEG or PNG images, which the preproc
/// worker decodes into the configured tensor.
pub fn validate(req: &InferRequest, model: &Model) -> Result<usize, V2Error> {
    let config = &model.config;
    let mut seen = HashSet::new();
    let mut batch: Option<(usize, &str)> = None;
    for input in &req.inputs {
        let Some((_, declared)) = config.input(&input.name) else {
            return Err(V2Error::Request(format!(
                "model `{}` has no input `{}`; its inputs are: {}",
                model.name,
                input.name,
                tensor_list(model, &config.inputs)
            )));
        };
        if !seen.insert(input.name.as_str()) {
            return Err(V2Error::Request(format!("input `{}` is given twice; give each input once", input.name)));
        }
        let n = check_input(model, input, declared)?;
        if config.max_batch_size > 0 {
            match batch {
                Some((b, other)) if b != n => {
                    return Err(V2Error::Request(format!(
                        "input `{}` has batch size {n} but input `{other}` has {b}; all inputs must have the same \
                         first (batch) dimension",
                        input.name
                    )));
                }
                Some(_) => {}
                None => batch = Some((n, &input.name)),
            }
        }
    }
    if let Some(missing) = config.inputs.iter().find(|t| !seen.contains(t.name.as_str())) {
        return Err(V2Error::Request(format!(
            "input `{}` is missing; model `{}` needs: {}",
            missing.name,
            model.name,
            tensor_list(model, &config.inputs)
        )));
    }
    for out in &req.outputs {
        let Some((_, declared)) = config.output(&out.name) else {
            return Err(V2Error::Request(format!(
                "model `{}` has no output `{}`; its outputs are: {}",
                model.name,
                out.name,
                tensor_list(model, &config.outputs)
            )));
        };
        if out.classification.is_some() && matches!(declared.datatype, DType::Bytes | DType::Bool) {
            return Err(V2Error::Request(format!(
                "output `{}` is {}; classification needs a numeric output",
                out.name, declared.datatype
            )));
        }
    }
    Ok(batch.map_or(1, |(b, _)| b))
}

/// Checks one input; returns its batch size (its first dimension; 1 when the
/// model does not batch).
fn check_input(model: &Model, input: &InputTensor, declared: &TensorConfig) -> Result<usize, V2Error> {
    let config = &model.config;
    let max_batch = config.max_batch_size as usize;
    let is_image = config.image_input().is_some_and(|(_, t)| t.name == input.name);
    // A preprocessed image input also takes a batch of encoded images; a
    // pipeline's input is declared BYTES and checked as declared below.
    if is_image && input.datatype == DType::Bytes && declared.datatype != DType::Bytes {
        // One encoded image per batch row.
        let n = match input.shape[..] {
            [n] | [n, 1] => usize::try_from(n).unwrap_or(0),
            _ => 0,
        };
        if n == 0 || n > max_batch {
            return Err(V2Error::Request(format!(
                "input `{}` is BYTES (encoded images) with shape {}; accepted: [N] or [N, 1] for N images, \
                 N from 1 to {max_batch}",
                input.name,
                shape_str(&input.shape)
            )));
        }
        return Ok(n);
    }
    if input.datatype != declared.datatype {
        let or_images = if is_image { " (or BYTES: encoded JPEG or PNG images)" } else { "" };
        return Err(V2Error::Request(format!(
            "input `{}` is {}; the model expects {}{or_images}",
            input.name, input.datatype, declared.datatype
        )));
    }
    let full = config.full_shape(declared);
    let batch_ok = max_batch == 0 || (1..=max_batch as i64).contains(&input.shape.first().copied().unwrap_or(0));
    let dims_ok = input.shape.len() == full.len()
        && input
            .shape
            .iter()
            .zip(&full)
            .skip(usize::from(max_batch > 0))
            .all(|(&got, &want)| want == -1 || got == want);
    if !batch_ok || !dims_ok {
        let batch_note =
            if max_batch > 0 { format!("; the first dimension is the batch, 1 to {max_batch}") } else { String::new() };
        return Err(V2Error::Request(format!(
            "input `{}` has shape {}; the model accepts {} (-1: any size{batch_note})",
            input.name,
            shape_str(&input.shape),
            shape_str(&full)
        )));
    }
    // parse_infer already matched binary sizes to the shape; this also holds
    // requests built by other means to the same rule.
    if let Some(size) = input.datatype.size() {
        let want = element_count(&input.shape).and_then(|n| n.checked_mul(size));
        if want != Some(input.data.len()) {
            return Err(V2Error::Request(format!(
                "input `{}` ({} {}) needs {} bytes of data, has {}",
                input.name,
                input.datatype,
                shape_str(&input.shape),
                want.map_or("more than fits in memory".into(), |n| n.to_string()),
                input.data.len()
            )));
        }
    }
    Ok(if max_batch > 0 { input.shape[0] as usize } else { 1 })
}

/// `x (FP32 [-1, 3, 48, 192]), y (INT64 [-1])`, for messages.
fn tensor_list(model: &Model, tensors: &[TensorConfig]) -> String {
    let items: Vec<String> = tensors
        .iter()
        .map(|t| format!("`{}` ({} {})", t.name, t.datatype, shape_str(&model.config.full_shape(t))))
        .collect();
    items.join(", ")
}
