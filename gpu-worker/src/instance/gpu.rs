//! An instance's GPU side: the CUDA stream its batches' inputs are staged
//! on, and the model's GPU preprocessing (`decode = "gpu"`) on that stream,
//! which turns a batch's images into rows of the input tensor before the
//! gather.

use shm::Peers;
use shm::Status;
use shm::stats::{Stage, stage_histogram};
use shm::tensor;
use std::time::Instant;

use crate::backend::BackendError;
use crate::cuda::decode::GpuDecode;
use crate::cuda::staging::Staging;
use crate::request::Batch;

pub struct Gpu {
    pub staging: Staging,
    pub decode: Option<GpuDecode>,
}

impl Gpu {
    /// An instance's staging stream, and its GPU preprocessing where the
    /// model decodes on the GPU (`pre`: its preprocessing and input type).
    pub fn open(pre: Option<&(model_repo::Preprocess, model_repo::DType)>) -> Result<Gpu, BackendError> {
        let staging = Staging::new().map_err(|e| BackendError::Run(format!("the instance's CUDA stream: {e}")))?;
        let decode = match pre {
            Some((p, dtype)) => Some(
                GpuDecode::new(p, *dtype, &staging)
                    .map_err(|e| BackendError::Run(format!("GPU preprocessing (decode = \"gpu\"): {e}")))?,
            ),
            None => None,
        };
        Ok(Gpu { staging, decode })
    }
}

/// Which model an instance runs, as its logs and histograms name it.
#[derive(Clone, Copy)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub index: usize,
}

/// Enqueues the decoding and preprocessing of the batch's images on the GPU
/// (each request's rows, `Item::staged`); a request with an image that
/// cannot be decoded fails alone, and the rest of the batch goes on.
pub fn stage_images(decode: &mut GpuDecode, peers: &Peers, model: ModelRef<'_>, mut batch: Batch) -> Batch {
    let started = Instant::now();
    let mut images: Vec<&[u8]> = Vec::new();
    let mut owner = Vec::new();
    let mut bad: Vec<(usize, String)> = Vec::new();
    for (k, p) in batch.iter().enumerate() {
        if !p.item.encoded {
            continue;
        }
        let d = &p.item.desc;
        match p
            .item
            .slot
            .bytes(d.offset as usize, d.len as usize)
            .map_err(|e| e.to_string())
            .and_then(tensor::bytes_elements)
        {
            Ok(elements) => {
                owner.extend(std::iter::repeat_n(k, elements.len()));
                images.extend(elements);
            }
            Err(e) => bad.push((k, e)),
        }
    }
    let results = match decode.stage(&images) {
        Ok(r) => r,
        Err(e) => {
            // CUDA itself failed: every request with images fails.
            let message = format!("GPU preprocessing failed: {e}");
            tracing::error!("{}: {message}", model.name);
            let (encoded, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.item.encoded);
            for p in encoded {
                p.item.fail(peers, Status::Backend, &message);
            }
            return rest;
        }
    };
    let mut first = vec![usize::MAX; batch.len()];
    for (row, (&k, result)) in owner.iter().zip(&results).enumerate() {
        first[k] = first[k].min(row);
        if let Err(e) = result {
            bad.push((k, e.clone()));
        }
    }
    drop(images);
    for (k, p) in batch.iter_mut().enumerate() {
        if p.item.encoded && first[k] != usize::MAX {
            p.item.staged = Some(first[k]..first[k] + p.rows as usize);
        }
    }
    bad.sort_by_key(|(k, _)| *k);
    bad.dedup_by_key(|(k, _)| *k);
    let mut kept = Vec::with_capacity(batch.len());
    let mut bad = bad.into_iter().peekable();
    for (k, p) in batch.into_iter().enumerate() {
        match bad.next_if(|(b, _)| *b == k) {
            Some((_, e)) => p.item.fail(peers, Status::InvalidInput, &e),
            None => kept.push(p),
        }
    }
    if let Some(h) = stage_histogram(peers.region(), model.index as u16, Stage::Decode) {
        h.observe(started.elapsed());
    }
    kept
}
