//! The tract backend's device inputs, on the GPU: tract allocates a batch's
//! inputs on its own stream (one per instance thread), the instance fills
//! them on its staging stream (from the pinned slots, or from GPU
//! preprocessing), and the run takes them wrapped in tract-gpu's
//! `LazyHostStorage`, which its host-to-device step passes through without a
//! copy.

use cudarc::driver::CudaStream;
use tract_gpu::tensor::{DeviceTensor, LazyHostStorage};
use tract_onnx::prelude::*;

use super::{Target, TractBackend, datum_of, plan_for};
use crate::backend::{BackendError, DeviceInput, TensorView};

impl TractBackend {
    /// [`Backend::device_inputs`]: device memory from tract's allocator,
    /// kept wrapped for the run.
    pub(super) fn stage_device_inputs(
        &mut self,
        inputs: &[TensorView<'_>],
    ) -> Result<Option<Vec<DeviceInput>>, BackendError> {
        self.staged = None;
        if self.opts.target != Target::Cuda {
            return Ok(None);
        }
        crate::backend::check_input_shapes(inputs, &self.inputs)?;
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|v| v.shape.iter().map(|&d| d as usize).collect()).collect();
        let plan = plan_for(&mut self.plans, &self.model, self.opts, &shapes)?;
        // An input the plan takes in another type (FP16) is cast on the host.
        if inputs.iter().zip(&plan.input_types).any(|(v, &want)| datum_of(v.dtype) != Some(want)) {
            return Ok(None);
        }
        let run = |e: TractError| BackendError::Run(format!("device memory for the batch's inputs: {e:#}"));
        let tensors = inputs
            .iter()
            .zip(&shapes)
            .map(|(v, shape)| DeviceTensor::uninitialized_dt(datum_of(v.dtype).expect("checked above"), shape))
            .collect::<TractResult<Vec<_>>>()
            .map_err(run)?;
        let handed = tensors
            .iter()
            .map(|t| DeviceInput {
                ptr: t.device_buffer_ptr() as usize as u64,
                len: t.len() * t.datum_type().size_of(),
            })
            .collect();
        // Host tensors as far as the plan's input facts go; the plan's first
        // step (DeviceSync to the device) takes the device tensor back out.
        // Wrapping waits for tract's own stream, which holds nothing but
        // these allocations (tract allocates in stream order), so the caller
        // may write them from any stream once this returns.
        let values = tensors
            .into_iter()
            .map(|t| LazyHostStorage::new(t).map(|s| s.into_tensor().into_tvalue()))
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(run)?;
        self.staged = Some((shapes, values));
        Ok(Some(handed))
    }

    /// [`Backend::run_device`]: runs what `stage_device_inputs` handed out,
    /// once `stream`'s copies into it are done.
    pub(super) fn run_staged(
        &mut self,
        stream: &CudaStream,
        sink: &mut dyn FnMut(&[TensorView<'_>]),
    ) -> Result<(), BackendError> {
        let (shapes, values) = self
            .staged
            .take()
            .ok_or_else(|| BackendError::Run("no device inputs were staged (this is a bug)".into()))?;
        // tract's stream waits (on the GPU) for the caller's copies: the
        // batch's one host wait is tract's own, at the end of the run. First
        // of all, so that whatever happens next, the inputs' memory is freed
        // (in tract's stream order) only after the copies into it; where
        // even that fails, the host waits for them.
        if let Err(e) = tract_cuda::with_cuda_stream(|own| Ok(own.join(stream)?)) {
            let _ = stream.synchronize();
            return Err(BackendError::Run(format!("{e:#}")));
        }
        let plan = plan_for(&mut self.plans, &self.model, self.opts, &shapes)?;
        let results = plan.state.run(values).map_err(|e| BackendError::Run(format!("{e:#}")))?;
        self.answer(results, sink)
    }
}
