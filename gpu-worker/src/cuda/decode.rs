//! GPU preprocessing for models with `decode = "gpu"`: a batch's images, as
//! the client sent them (JPEGs, or raw frames behind their `shm::frame`
//! header, in pinned shared memory), become rows of the model's input tensor
//! in device memory. nvJPEG decodes the JPEGs in one batched call (on the
//! GPU's JPEG engines where it has them, else the hybrid backend), raw frames
//! are copied straight from their slot, and the preprocessing kernel resizes
//! and normalizes each image into its row. Everything is enqueued on the
//! instance's staging stream ([`Staging`]), and the rows are then copied
//! device to device into the backend's input, which the backend's stream
//! waits for on the GPU (or to the host, for a backend that takes host
//! inputs, and the host waits).

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr as _, DriverError};
use half::f16;
use model_repo::{ChannelOrder, DType};

use super::kernels::{DeviceFrame, KernelError, Preprocess};
use super::nvjpeg::{Backend, Decoder, Nvjpeg, NvjpegError};
use super::staging::{DevicePtr, Staging};
use crate::frame::{Normalize, PixelFormat};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Nvjpeg(#[from] NvjpegError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("CUDA: {0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Config(String),
}

/// The device tensor the rows are written into.
enum Out {
    F32(Option<CudaSlice<f32>>),
    F16(Option<CudaSlice<f16>>),
}

impl Out {
    fn for_input(dtype: DType) -> Result<Out, DecodeError> {
        match dtype {
            DType::F32 => Ok(Out::F32(None)),
            DType::F16 => Ok(Out::F16(None)),
            other => Err(DecodeError::Config(format!("the GPU kernel writes FP32 or FP16, not {other}"))),
        }
    }
}

/// One model instance's GPU preprocessing (made and used on its thread).
pub struct GpuDecode {
    stream: Arc<CudaStream>,
    kernels: Preprocess,
    api: Arc<Nvjpeg>,
    batched: Decoder,
    backend: &'static str,
    /// For JPEGs the batched decoder refuses: one at a time, default backend.
    single: Option<Decoder>,
    /// Decoded or uploaded pixels, one buffer per image of a batch, reused.
    frames: Vec<Option<CudaSlice<u8>>>,
    out: Out,
    width: usize,
    height: usize,
    norm: Normalize,
}

impl GpuDecode {
    /// For a model whose preprocessing is `pre` into a `dtype` input, on the
    /// staging stream of the instance (the worker's GPU).
    pub fn new(pre: &model_repo::Preprocess, dtype: DType, staging: &Staging) -> Result<GpuDecode, DecodeError> {
        let out = Out::for_input(dtype)?;
        let stream = staging.stream().clone();
        let kernels = Preprocess::load(stream.context())?;
        let api = Nvjpeg::find(&super::libs::search_dirs(&[]))?;
        // The hardware backend exists on GPUs with JPEG engines (A100, H100);
        // elsewhere creating it fails and the hybrid one does the work.
        let (batched, backend) = match Decoder::new(api.clone(), Backend::Hardware) {
            Ok(d) => (d, "hardware"),
            Err(_) => (Decoder::new(api.clone(), Backend::Default)?, "default"),
        };
        Ok(GpuDecode {
            stream,
            kernels,
            api,
            batched,
            backend,
            single: None,
            frames: Vec::new(),
            out,
            width: pre.width as usize,
            height: pre.height as usize,
            norm: normalize(pre),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "GPU preprocessing: nvJPEG ({} backend, {}), kernel to {}x{}",
            self.backend,
            self.api.path().display(),
            self.width,
            self.height
        )
    }

    fn per_image(&self) -> usize {
        3 * self.width * self.height
    }

    /// Enqueues every image's decoding and preprocessing: `images[i]` becomes
    /// row `i` of the device tensor. Per image, `Ok` or why it cannot be
    /// done (its row is then left as it was). Errors of the whole batch (CUDA
    /// itself failing) come as `Err`.
    pub fn stage(&mut self, images: &[&[u8]]) -> Result<Vec<Result<(), String>>, DecodeError> {
        let n = images.len();
        let need = n * self.per_image();
        match &mut self.out {
            Out::F32(o) if o.as_ref().is_none_or(|s| s.len() < need) => *o = Some(self.stream.alloc_zeros(need)?),
            Out::F16(o) if o.as_ref().is_none_or(|s| s.len() < need) => *o = Some(self.stream.alloc_zeros(need)?),
            _ => {}
        }
        if self.frames.len() < n {
            self.frames.resize_with(n, || None);
        }
        let mut results: Vec<Result<(), String>> = vec![Ok(()); n];
        let mut layout = vec![(0u32, 0u32, PixelFormat::Rgb24); n];
        let mut jpegs = Vec::new();
        for (i, image) in images.iter().enumerate() {
            if shm::frame::is_frame(image) {
                match shm::frame::parse(image) {
                    Ok((info, pixels)) => {
                        let buf = buffer(&self.stream, &mut self.frames[i], pixels.len())?;
                        // The slot is page-locked: a DMA straight from shared memory.
                        self.stream.memcpy_htod(pixels, buf)?;
                        layout[i] = (info.width, info.height, info.format);
                    }
                    Err(e) => results[i] = Err(e),
                }
                continue;
            }
            match self.batched.info(image) {
                Ok(info) => {
                    buffer(&self.stream, &mut self.frames[i], info.width as usize * info.height as usize * 3)?;
                    layout[i] = (info.width, info.height, PixelFormat::Rgb24);
                    jpegs.push(i);
                }
                Err(e) => results[i] = Err(format!("nvJPEG cannot read the JPEG: {e}")),
            }
        }
        if !jpegs.is_empty() {
            self.decode_jpegs(images, &jpegs, &mut results)?;
        }
        let (w, h, per) = (self.width, self.height, self.per_image());
        for (i, result) in results.iter().enumerate() {
            if result.is_err() {
                continue;
            }
            let (width, height, format) = layout[i];
            let data = self.frames[i].as_ref().expect("every staged image has a buffer");
            let frame = DeviceFrame { data, width, height, format };
            let rows = i * per..(i + 1) * per;
            match &mut self.out {
                Out::F32(Some(o)) => {
                    self.kernels.run_f32(&self.stream, &frame, &self.norm, &mut o.slice_mut(rows), w, h)?
                }
                Out::F16(Some(o)) => {
                    self.kernels.run_f16(&self.stream, &frame, &self.norm, &mut o.slice_mut(rows), w, h)?
                }
                _ => unreachable!("the output was allocated above"),
            }
        }
        Ok(results)
    }

    /// Decodes `jpegs` (indices into `images`) into their buffers: in one
    /// batched call, or one by one where the batch is refused (the hardware
    /// backend takes baseline JPEGs only), marking those that still fail.
    fn decode_jpegs(
        &mut self,
        images: &[&[u8]],
        jpegs: &[usize],
        results: &mut [Result<(), String>],
    ) -> Result<(), DecodeError> {
        let data: Vec<&[u8]> = jpegs.iter().map(|&i| images[i]).collect();
        let mut outs: Vec<CudaSlice<u8>> =
            jpegs.iter().map(|&i| self.frames[i].take().expect("sized in stage")).collect();
        let batched = self.batched.decode_batch(&data, &mut outs, &self.stream);
        for (&i, buf) in jpegs.iter().zip(outs) {
            self.frames[i] = Some(buf);
        }
        if batched.is_ok() {
            return Ok(());
        }
        if self.single.is_none() {
            self.single = Some(Decoder::new(self.api.clone(), Backend::Default)?);
        }
        let single = self.single.as_mut().expect("made above");
        for &i in jpegs {
            let buf = self.frames[i].as_mut().expect("sized in stage");
            if let Err(e) = single.decode(images[i], buf, &self.stream) {
                results[i] = Err(format!("nvJPEG cannot decode the JPEG: {e}"));
            }
        }
        Ok(())
    }

    /// Enqueues the copy of rows `rows` of the device tensor into `dst`
    /// (host memory, the model input's bytes for those rows).
    pub fn download(&self, rows: Range<usize>, dst: &mut [u8]) -> Result<(), DecodeError> {
        let per = self.per_image();
        let range = rows.start * per..rows.end * per;
        let bad = |e: bytemuck::PodCastError| DecodeError::Config(format!("input buffer: {e}"));
        match &self.out {
            Out::F32(Some(o)) => {
                let dst: &mut [f32] = bytemuck::try_cast_slice_mut(dst).map_err(bad)?;
                self.stream.memcpy_dtoh(&o.slice(range), dst)?;
            }
            Out::F16(Some(o)) => {
                let dst: &mut [f16] = bytemuck::try_cast_slice_mut(dst).map_err(bad)?;
                self.stream.memcpy_dtoh(&o.slice(range), dst)?;
            }
            _ => return Err(DecodeError::Config("nothing was staged".into())),
        }
        Ok(())
    }

    /// Enqueues the copy of rows `rows` of the device tensor to `dst`
    /// (device memory: the backend's input for those rows, `len` bytes), on
    /// `staging`, the stream the rows were made on.
    pub fn copy_rows(
        &self,
        rows: Range<usize>,
        dst: DevicePtr,
        len: usize,
        staging: &Staging,
    ) -> Result<(), DecodeError> {
        let per = self.per_image();
        let range = rows.start * per..rows.end * per;
        let (src, size) = match &self.out {
            Out::F32(Some(o)) => (o.slice(range.clone()).device_ptr(&self.stream).0, size_of::<f32>()),
            Out::F16(Some(o)) => (o.slice(range.clone()).device_ptr(&self.stream).0, size_of::<f16>()),
            _ => return Err(DecodeError::Config("nothing was staged".into())),
        };
        if range.len() * size != len {
            return Err(DecodeError::Config(format!(
                "{} rows are {} bytes, not the {len} of their place in the batch (this is a bug)",
                rows.len(),
                range.len() * size
            )));
        }
        // The address outlives its view: it is the live `out` buffer's, and
        // the copy is on the stream that wrote the rows.
        Ok(staging.copy(dst, src, len)?)
    }
}

/// The buffer in `slot`, (re)allocated to at least `len` bytes.
fn buffer<'a>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<u8>>,
    len: usize,
) -> Result<&'a mut CudaSlice<u8>, DecodeError> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = Some(stream.alloc_zeros(len)?);
    }
    Ok(slot.as_mut().expect("just made"))
}

/// The kernel's `(pixel / 255 - mean) / std` for the config's
/// `(pixel * scale - mean) / std`, in the config's channel order.
fn normalize(pre: &model_repo::Preprocess) -> Normalize {
    let k = pre.scale * 255.0;
    Normalize {
        mean: pre.mean.map(|m| m / k),
        std: pre.std.map(|s| s / k),
        bgr: pre.channel_order == ChannelOrder::BGR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configs_scale_folds_into_the_kernels_normalization() {
        let mut pre: model_repo::Preprocess = toml::from_str(
            "resize = \"stretch\"\nwidth = 4\nheight = 2\nmean = [0.5, 1.0, 2.0]\nstd = [0.25, 0.5, 1.0]\nscale = 0.00784313725490196",
        )
        .unwrap();
        let n = normalize(&pre);
        for (c, pixel) in [(0usize, 0.0f32), (1, 128.0), (2, 255.0)] {
            let want = (pixel * pre.scale - pre.mean[c]) / pre.std[c];
            let got = (pixel / 255.0 - n.mean[c]) / n.std[c];
            assert!((want - got).abs() < 1e-5, "channel {c}: {want} vs {got}");
        }
        pre.channel_order = ChannelOrder::BGR;
        assert!(normalize(&pre).bgr);
    }

    #[test]
    fn the_kernel_writes_fp32_or_fp16_only() {
        assert!(matches!(Out::for_input(DType::F32), Ok(Out::F32(None))));
        assert!(matches!(Out::for_input(DType::F16), Ok(Out::F16(None))));
        let e = Out::for_input(DType::U8).err().expect("UINT8 is refused").to_string();
        assert!(e.contains("FP32 or FP16"), "{e}");
    }
}
