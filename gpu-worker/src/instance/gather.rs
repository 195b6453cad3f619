//! The gather: a batch's inputs stacked where the backend takes them. It is
//! the only copy of the input bytes on this side (the preproc worker wrote
//! them straight into shared memory): on the CPU into a host buffer; on a
//! GPU, where the backend hands out device memory, by DMA from the pinned
//! slots straight into it (rows made by GPU preprocessing device to
//! device), on the instance's staging stream, which the backend's stream
//! waits for on the GPU: the batch's one host wait is at the end of the run.
//! Where device inputs fail, the caller runs the batch again from host
//! memory.

use std::borrow::Cow;
use std::ops::Range;

use model_repo::ModelConfig;

use super::gpu::Gpu;
use crate::backend::{Backend, DeviceInput, TensorView};
use crate::request::{Item, Request};

/// A reusable, 8-byte aligned byte buffer (backends view it as f32/f64/i64).
#[derive(Default)]
pub struct AlignedBuf(Vec<u64>);

impl AlignedBuf {
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.0.len() < words {
            self.0.resize(words, 0);
        }
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }

    pub fn bytes(&self, len: usize) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..len]
    }
}

/// The batch's inputs: each one's shape and byte length, and each request's
/// part of it.
pub struct Layout {
    /// Per input, the batch's shape (the batch dimension sums the requests'
    /// rows when the model batches).
    pub shapes: Vec<Vec<i64>>,
    /// Per input, the batch's byte length.
    pub lens: Vec<usize>,
    /// Per input, each request's byte length.
    parts: Vec<Vec<usize>>,
}

impl Layout {
    pub fn of(config: &ModelConfig, batch: &[Request]) -> Layout {
        let rows: i64 = batch.iter().map(|p| p.rows as i64).sum();
        let batched = config.max_batch_size > 0;
        let n = config.inputs.len();
        let mut layout =
            Layout { shapes: Vec::with_capacity(n), lens: Vec::with_capacity(n), parts: Vec::with_capacity(n) };
        for i in 0..n {
            let mut shape: Option<Vec<i64>> = None;
            let parts: Vec<usize> = batch
                .iter()
                .map(|p| {
                    let (dims, len) = input_shape(config, &p.item, p.rows, i);
                    shape.get_or_insert_with(|| dims.to_vec());
                    len
                })
                .collect();
            let mut shape = shape.unwrap_or_default();
            if batched {
                shape[0] = rows;
            }
            layout.lens.push(parts.iter().sum());
            layout.shapes.push(shape);
            layout.parts.push(parts);
        }
        layout
    }
}

/// One request's input `i`: its dims (batch dimension first when the model
/// batches) and byte length. Images decoded on the GPU have no tensor table:
/// their shape is the preprocessing's.
fn input_shape<'a>(config: &ModelConfig, item: &'a Item, rows: u32, i: usize) -> (Cow<'a, [i64]>, usize) {
    if item.encoded
        && let Some(pre) = &config.preprocess
    {
        let dims: Vec<i64> = std::iter::once(rows as i64).chain(pre.image_dims()).collect();
        let len = dims.iter().product::<i64>() as usize * config.inputs[i].datatype.size().unwrap_or(4);
        return (dims.into(), len);
    }
    let m = &item.inputs[i];
    (m.dims.as_slice().into(), m.len)
}

/// Where a batch's inputs were gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the host buffers, for `Backend::run`.
    Host,
    /// In device memory the backend handed out, for `Backend::run_device`.
    Device,
}

/// Why a gather failed.
pub enum GatherError {
    /// Copying into device memory failed: the batch can run again from
    /// host memory.
    Device(String),
    /// The batch cannot run; every request fails with this message.
    Failed(String),
}

/// Batches whose inputs in device memory failed, and ran again from host
/// memory.
#[derive(Default)]
pub struct DeviceFailures(u64);

impl DeviceFailures {
    /// Logs a failure of the device inputs (the first at error level) and
    /// counts it.
    pub fn record(&mut self, model: &str, e: &dyn std::fmt::Display) {
        self.0 += 1;
        if self.0 == 1 {
            tracing::error!(
                "{model}: a batch on inputs in device memory failed ({e}); it runs again from host memory, as will \
                 any other batch whose device inputs fail"
            );
        } else {
            tracing::debug!(failures = self.0, "{model}: device inputs failed again: {e}");
        }
    }
}

/// What a gather works with: the instance's buffers and GPU side, and the
/// backend that may hand out device memory.
pub struct Gather<'a> {
    pub model: &'a str,
    pub config: &'a ModelConfig,
    pub backend: &'a mut dyn Backend,
    pub gpu: Option<&'a Gpu>,
    /// One gather buffer per model input, for batches on host inputs.
    pub bufs: &'a mut [AlignedBuf],
    pub failures: &'a mut DeviceFailures,
}

impl Gather<'_> {
    /// Gathers `batch`'s inputs: on a GPU into device memory where the
    /// backend takes them (`try_device`), else into the host buffers.
    pub fn run(&mut self, layout: &Layout, batch: &[Request], try_device: bool) -> Result<Place, GatherError> {
        // On a GPU, device memory from the backend for the batch's inputs.
        let device = match self.gpu {
            Some(_) if try_device => {
                let specs: Vec<TensorView<'_>> = layout
                    .shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| TensorView { dtype: self.config.inputs[i].datatype, shape: s, data: &[] })
                    .collect();
                self.backend.device_inputs(&specs).unwrap_or_else(|e| {
                    self.failures.record(self.model, &e);
                    None
                })
            }
            _ => None,
        };
        // Item inputs are contiguous tensors in their slots (or rows made by
        // GPU preprocessing); stack them.
        let mut copied: Result<(), String> = Ok(());
        for (i, parts) in layout.parts.iter().enumerate() {
            let mut host = match &device {
                None => Some(self.bufs[i].bytes_mut(layout.lens[i])),
                Some(_) => None,
            };
            let mut at = 0;
            for (p, &len) in batch.iter().zip(parts) {
                let slot_bytes = || {
                    let m = &p.item.inputs[i];
                    &p.item.slot.as_slice()[m.offset..m.offset + len]
                };
                let r = match (self.gpu, &device, host.as_deref_mut(), &p.item.staged) {
                    (Some(g), Some(dev), _, staged) => stage_rows(g, dev[i], at..at + len, staged.clone(), slot_bytes),
                    (Some(Gpu { decode: Some(d), .. }), None, Some(dst), Some(rows)) => {
                        d.download(rows.clone(), &mut dst[at..at + len]).map_err(|e| e.to_string())
                    }
                    (_, _, Some(dst), None) => {
                        dst[at..at + len].copy_from_slice(slot_bytes());
                        Ok(())
                    }
                    _ => Err("a request's input has nowhere to go (this is a bug)".to_string()),
                };
                if let Err(e) = r {
                    copied = Err(e);
                }
                at += len;
            }
        }
        // Copies to the device are waited for by the backend's stream, on the
        // GPU (`run_device`); rows copied back to the host for a backend that
        // takes host inputs, here. After a failure, too, before the slots (and
        // the device memory) the copies use are given back.
        if let Some(g) = self.gpu {
            let wait_here = copied.is_err() || (device.is_none() && batch.iter().any(|p| p.item.staged.is_some()));
            let waited = if wait_here { g.staging.finish().map_err(|e| e.to_string()) } else { Ok(()) };
            match copied.and(waited) {
                Ok(()) => {}
                Err(e) if device.is_some() => {
                    return Err(GatherError::Device(format!("copying the inputs to the GPU: {e}")));
                }
                Err(e) => {
                    return Err(GatherError::Failed(format!("copying the batch's inputs from the GPU failed: {e}")));
                }
            }
        }
        Ok(if device.is_some() { Place::Device } else { Place::Host })
    }
}

/// Enqueues one request's rows of one input into the backend's device
/// memory `dst`, at the bytes `to`: GPU-preprocessed rows (`staged`)
/// device to device, tensors by DMA from the request's pinned slot.
fn stage_rows<'a>(
    gpu: &Gpu,
    dst: DeviceInput,
    to: Range<usize>,
    staged: Option<Range<usize>>,
    slot_bytes: impl FnOnce() -> &'a [u8],
) -> Result<(), String> {
    let (at, len) = (to.start, to.len());
    // The copies write through raw device addresses: never past the end.
    if at + len > dst.len {
        return Err(format!("{len} bytes at {at} overrun the device input of {} bytes (this is a bug)", dst.len));
    }
    let to = dst.ptr + at as u64;
    match (staged, &gpu.decode) {
        (Some(rows), Some(d)) => d.copy_rows(rows, to, len, &gpu.staging).map_err(|e| e.to_string()),
        (Some(_), None) => Err("GPU-preprocessed rows without GPU preprocessing (this is a bug)".into()),
        (None, _) => gpu.staging.upload(to, slot_bytes()).map_err(|e| e.to_string()),
    }
}
