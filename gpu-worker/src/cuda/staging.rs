//! A model instance's own CUDA stream for getting a batch's inputs onto the
//! GPU: tensors copied by DMA straight from their (page-locked) shared-memory
//! slots into the device memory the backend hands out, and the rows GPU
//! preprocessing made copied device to device beside them. Everything is
//! enqueued; the backend's stream waits for it on the GPU (`run_device`), so
//! the host waits once per batch, at the end of the run. `finish` is the
//! host wait for when the rows go back to the host instead.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, DriverError, result};

/// An address in device memory (a `CUdeviceptr`).
pub type DevicePtr = u64;

pub struct Staging {
    stream: Arc<CudaStream>,
}

impl Staging {
    /// A new stream on the worker's GPU (ordinal 0 under its
    /// CUDA_VISIBLE_DEVICES); an error, not a panic, without a driver.
    pub fn new() -> Result<Staging, String> {
        if !super::device::driver_loadable() {
            return Err("the CUDA driver (libcuda.so.1) cannot be loaded: no GPU here".into());
        }
        let stream = CudaContext::new(0).and_then(|ctx| ctx.new_stream()).map_err(|e| e.to_string())?;
        Ok(Staging { stream })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Enqueues the copy of `src` (host memory: a DMA when it is the pinned
    /// shared-memory region, a staged copy by the driver otherwise) to `dst`.
    /// `src` must stay as it is until the copy is done: the slots it comes
    /// from are held until the batch is answered, after the run that waited
    /// for it.
    pub fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        // SAFETY: `dst` is `src.len()` bytes of device memory that the
        // backend allocated for this batch (checked by the caller against the
        // length it handed out) and keeps until the batch has run; `src` is
        // borrowed host memory that the caller keeps unchanged until the
        // stream's work is done (the run that waits for it has returned).
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
    }

    /// Enqueues a device-to-device copy of `len` bytes.
    pub fn copy(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        // SAFETY: both ranges are `len` bytes of live device memory: `src` in
        // a buffer of this instance's GPU preprocessing (written earlier on
        // this same stream), `dst` in the backend's input for this batch.
        unsafe { result::memcpy_dtod_async(dst, src, len, self.stream.cu_stream()) }
    }

    /// Waits for everything enqueued on the stream.
    pub fn finish(&self) -> Result<(), DriverError> {
        self.stream.synchronize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_it_is_an_error_not_a_crash() {
        if super::super::device::probe().is_ok() {
            eprintln!("skipped: a GPU is present (tract::tests checks the device path)");
            return;
        }
        let e = Staging::new().err().expect("no stream without a GPU");
        assert!(e.contains("libcuda.so.1") || e.contains("CUDA"), "{e}");
    }
}
