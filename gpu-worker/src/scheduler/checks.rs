//! The checks a request passes before it is queued: its tensors (or, for
//! GPU preprocessing, its images) against the model's config. Each returns
//! the request's batch rows and the key of the shapes it may share a batch
//! with, or the message its client gets.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use model_repo::Model;
use shm::tensor::{self, TensorMeta};
use shm::{Descriptor, Held};

/// Checks a request of images for GPU preprocessing (the preproc pool read
/// their headers): one to max_batch_size of them. Returns the batch rows and
/// the key of the tensor they become, as `check_inputs` would give it, so
/// they share batches with tensor requests of that shape.
pub fn check_images(model: &Model, slot: &Held, d: &Descriptor) -> Result<(u32, u64), String> {
    let bytes = slot.bytes(d.offset as usize, d.len as usize).map_err(|e| e.to_string())?;
    let n = tensor::bytes_elements(bytes)?.len();
    let cfg = &model.config;
    if n == 0 || n != d.rows as usize || n > cfg.max_batch_size as usize {
        return Err(format!("{n} images for {} rows (1 to {} are accepted)", d.rows, cfg.max_batch_size));
    }
    let Some(pre) = &cfg.preprocess else {
        return Err(format!("model `{}` does not take images", model.name));
    };
    let mut key = DefaultHasher::new();
    pre.image_dims()[..].hash(&mut key);
    Ok((n as u32, key.finish()))
}

/// Checks tensors against the model's config; returns the batch rows and a key
/// that is equal for requests that may share a batch (same non-batch shapes).
pub fn check_inputs(model: &Model, metas: &[TensorMeta]) -> Result<(u32, u64), String> {
    let cfg = &model.config;
    if metas.len() != cfg.inputs.len() {
        return Err(format!("model `{}` takes {} inputs, got {}", model.name, cfg.inputs.len(), metas.len()));
    }
    let batched = cfg.max_batch_size > 0;
    let mut rows = None;
    let mut key = DefaultHasher::new();
    for (m, c) in metas.iter().zip(&cfg.inputs) {
        let dims = if batched { m.dims.get(1..).unwrap_or(&[]) } else { &m.dims[..] };
        let fits = m.dtype == c.datatype
            && dims.len() == c.dims.len()
            && dims.iter().zip(&c.dims).all(|(&d, &want)| want == -1 || d == want)
            && (!batched || !m.dims.is_empty());
        if !fits {
            return Err(format!(
                "input `{}` is {} {:?}; the model takes {} {:?}",
                c.name,
                m.dtype,
                m.dims,
                c.datatype,
                cfg.full_shape(c)
            ));
        }
        let r = if batched { m.dims[0] as u32 } else { 1 };
        if *rows.get_or_insert(r) != r || r == 0 || (batched && r > cfg.max_batch_size) {
            return Err(format!("batch size {r} is not accepted (1 to {} for every input)", cfg.max_batch_size));
        }
        dims.hash(&mut key);
    }
    Ok((rows.unwrap_or(1), key.finish()))
}
