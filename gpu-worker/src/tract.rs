//! The tract backend: the same ONNX files run by tract, on the GPU through
//! `tract-cuda` (kernels compiled at start-up by NVRTC, convolutions by cuDNN,
//! matrix products by cuBLAS) or on the CPU through tract's own runtime. The
//! two share every line here but the runtime's name, so the CPU runtime's
//! agreement with ONNX Runtime (tested on every machine) checks the loading,
//! input and output handling the GPU path uses.
//!
//! Each instance is one OS thread; tract-cuda gives each thread its own CUDA
//! stream, so `instances` is the number of streams a model runs on, and
//! batches on different instances overlap (copies of one with kernels of
//! another). FP16 (`precision = "fp16"`) converts the model's float weights
//! and activations with tract's `f32_to_f16` transform; the model's inputs
//! and outputs stay as the config declares them, cast on the way in and out.
//!
//! On the GPU a batch's inputs can also be handed over in device memory
//! (`Backend::device_inputs`): tract allocates them on its own stream (one
//! per instance thread), the instance fills them on its staging stream
//! (from the pinned slots, or from GPU preprocessing), and the run takes
//! them wrapped in tract-gpu's `LazyHostStorage`, which its host-to-device
//! step passes through without a copy.

use std::path::Path;

use cudarc::driver::CudaStream;
use shm::tensor::DType;
use tract_gpu::tensor::{DeviceTensor, LazyHostStorage};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::{Runnable, Runtime, State, runtime_for_name};
use tract_onnx::tract_hir::infer::Factoid;

use crate::backend::{Backend, BackendError, DeviceInput, IoInfo, TensorView};

/// Where tract runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Cuda,
}

impl Target {
    fn runtime_name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        }
    }
}

/// Per-instance settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TractOptions {
    pub target: Target,
    pub fp16: bool,
}

/// Input shapes as the model's config declares them (full shapes, -1 for a
/// dynamic dimension). tract plans better, and some exports only load at
/// all, when the fixed dimensions are known.
pub type InputShapes<'a> = Option<&'a [Vec<i64>]>;

pub struct TractBackend {
    /// The model with its input facts set (dynamic dimensions symbolic).
    model: InferenceModel,
    opts: TractOptions,
    plans: Plans,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    description: String,
    /// The next batch's inputs in device memory, with their shapes, handed
    /// out by `device_inputs` and taken by `run_device`.
    staged: Option<(Vec<Vec<usize>>, TVec<TValue>)>,
}

/// A prepared model and the datum type it takes for each input (FP16 when
/// converted).
struct Plan {
    state: Box<dyn State>,
    input_types: Vec<DatumType>,
}

enum Plans {
    /// One plan for every shape (the usual case).
    Symbolic(Plan),
    /// Some exports compute shapes in ways tract cannot keep symbolic (a
    /// Shape cast to INT32, say); those get one plan per input shape, made
    /// on first use and kept (the most recent `PER_SHAPE_PLANS`), as
    /// TensorRT keeps one engine per optimization profile.
    PerShape(Vec<(Vec<Vec<usize>>, Plan)>),
}

const PER_SHAPE_PLANS: usize = 64;

impl TractBackend {
    pub fn load(model_file: &Path, opts: TractOptions, shapes: InputShapes<'_>) -> Result<TractBackend, BackendError> {
        let path = model_file.display().to_string();
        let fail = |message: String| BackendError::ModelLoad { path: path.clone(), message };
        if !model_file.is_file() {
            return Err(fail("no such file; `./scripts/fetch` downloads the bundled models".into()));
        }
        // Checked first: a missing GPU is the likeliest failure.
        runtime(opts.target).map_err(&fail)?;
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(model_file).map_err(|e| fail(format!("{e:#}")))?;
        let mut model = onnx.model_for_proto_model(&proto).map_err(|e| fail(format!("{e:#}")))?;
        name_dynamic_dims(&mut model, shapes).map_err(&fail)?;
        let inputs = io_list(&model, &model.inputs, true).map_err(&fail)?;
        // Output shapes are known only after shape inference; run it on a
        // copy (best effort: a dimension it cannot tell stays -1).
        let mut analysed = model.clone();
        let _ = analysed.analyse(true);
        let mut outputs = io_list(&analysed, &analysed.outputs, false).map_err(&fail)?;
        // Where inference cannot tell (exports tract keeps per-shape), the
        // shapes the ONNX file declares for its outputs.
        if let Some(graph) = &proto.graph {
            for (o, declared) in outputs.iter_mut().zip(&graph.output) {
                if o.shape.is_empty()
                    && let Some(shape) = declared_shape(declared)
                {
                    o.shape = shape;
                }
            }
        }
        let (plans, mode) = match prepare(&model, opts, None) {
            Ok(plan) => (Plans::Symbolic(plan), "one plan for all shapes"),
            Err(e) => {
                tracing::debug!("{path}: no symbolic plan ({e}); planning per input shape");
                (Plans::PerShape(Vec::new()), "one plan per input shape")
            }
        };
        let precision = if opts.fp16 { "FP16" } else { "FP32" };
        let description =
            format!("tract {} {precision}: {} ({mode})", opts.target.runtime_name(), model_file.display());
        Ok(TractBackend { model, opts, plans, inputs, outputs, description, staged: None })
    }
}

/// The plan for inputs of these shapes: the symbolic one, or the per-shape
/// one (made now if new).
fn plan_for<'a>(
    plans: &'a mut Plans,
    model: &InferenceModel,
    opts: TractOptions,
    shapes: &[Vec<usize>],
) -> Result<&'a mut Plan, BackendError> {
    match plans {
        Plans::Symbolic(plan) => Ok(plan),
        Plans::PerShape(cache) => {
            let at = match cache.iter().position(|(k, _)| k == shapes) {
                Some(at) => at,
                None => {
                    let plan = prepare(model, opts, Some(shapes)).map_err(BackendError::Run)?;
                    if cache.len() >= PER_SHAPE_PLANS {
                        cache.remove(0);
                    }
                    cache.push((shapes.to_vec(), plan));
                    cache.len() - 1
                }
            };
            Ok(&mut cache[at].1)
        }
    }
}

/// An ONNX value's declared shape, -1 for a dynamic dimension.
fn declared_shape(v: &tract_onnx::pb::ValueInfoProto) -> Option<Vec<i64>> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
    use tract_onnx::pb::type_proto::Value as Type;
    let Some(Type::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else { return None };
    let dims = &t.shape.as_ref()?.dim;
    Some(
        dims.iter()
            .map(|d| match d.value {
                Some(Dim::DimValue(n)) if n >= 0 => n,
                _ => -1,
            })
            .collect(),
    )
}

fn runtime(target: Target) -> Result<&'static dyn Runtime, String> {
    // tract-cuda registers its runtime through `inventory`; naming one of its
    // items keeps the linker from dropping the crate, registration and all.
    std::hint::black_box(tract_cuda::CudaTransform);
    runtime_for_name(target.runtime_name())
        .map_err(|e| format!("the tract {} runtime is not usable: {e:#}", target.runtime_name()))?
        .ok_or_else(|| format!("this build has no tract {} runtime", target.runtime_name()))
}

/// Types, optimizes and prepares `model` for the target, with the inputs
/// fixed to `shapes` when given.
fn prepare(model: &InferenceModel, opts: TractOptions, shapes: Option<&[Vec<usize>]>) -> Result<Plan, String> {
    let e = |e: TractError| format!("{e:#}");
    let mut model = model.clone();
    if let Some(shapes) = shapes {
        for (i, shape) in shapes.iter().enumerate() {
            let dt = model.input_fact(i).map_err(e)?.datum_type.concretize().unwrap_or(DatumType::F32);
            model.set_input_fact(i, InferenceFact::dt_shape(dt, shape.clone())).map_err(e)?;
        }
    }
    let mut typed = model.into_typed().and_then(|m| m.into_decluttered()).map_err(e)?;
    if opts.fp16 {
        let transform = tract_onnx::tract_core::transform::get_transform("f32_to_f16")
            .map_err(e)?
            .ok_or_else(|| "this tract has no f32_to_f16 transform".to_string())?;
        transform.transform(&mut typed).map_err(|x| format!("converting to FP16: {x:#}"))?;
    }
    let runnable: Box<dyn Runnable> = runtime(opts.target)?.prepare(typed).map_err(e)?;
    let input_types =
        (0..runnable.input_count()).map(|i| runnable.input_fact(i).map(|f| f.datum_type)).collect::<TractResult<_>>();
    let input_types = input_types.map_err(e)?;
    Ok(Plan { state: runnable.spawn().map_err(e)?, input_types })
}

/// Models exported with dynamic dimensions (-1, or unnamed) leave tract's
/// input facts open; give each such dimension its own symbol, so one prepared
/// model runs every batch size and image size.
fn name_dynamic_dims(model: &mut InferenceModel, shapes: InputShapes<'_>) -> Result<(), String> {
    for i in 0..model.inputs.len() {
        let declared = shapes.and_then(|s| s.get(i));
        let fact = model.input_fact(i).map_err(|e| format!("{e:#}"))?.clone();
        let name = model.node(model.inputs[i].node).name.clone();
        let dt = fact.datum_type.concretize().unwrap_or(DatumType::F32);
        let from_file: Vec<Option<TDim>> = if fact.shape.is_open() {
            let Some(d) = declared else {
                return Err(format!("input `{name}` has no known rank; export the model with its input shapes"));
            };
            vec![None; d.len()]
        } else {
            fact.shape.dims().map(|d| d.concretize().filter(|d| d.to_i64().map_or(true, |v| v >= 0))).collect()
        };
        let dims: TVec<TDim> = from_file
            .into_iter()
            .enumerate()
            .map(|(j, d)| match (declared.and_then(|s| s.get(j)).copied(), d) {
                (Some(v), _) if v >= 0 => TDim::Val(v),
                (_, Some(d)) => d,
                _ => model.sym(&format!("{name}_{j}")).into(),
            })
            .collect();
        model.set_input_fact(i, InferenceFact::dt_shape(dt, dims)).map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

fn io_list(model: &InferenceModel, outlets: &[OutletId], inputs: bool) -> Result<Vec<IoInfo>, String> {
    outlets
        .iter()
        .map(|&o| {
            let name = match inputs {
                true => model.node(o.node).name.clone(),
                // ONNX names outputs by their value, which tract keeps as the
                // outlet's label.
                false => model.outlet_label(o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()),
            };
            let fact = model.outlet_fact(o).map_err(|e| format!("{e:#}"))?;
            let dt = fact.datum_type.concretize().unwrap_or(DatumType::F32);
            let dtype =
                dtype_of(dt).ok_or_else(|| format!("`{name}` has element type {dt:?}, which is not supported"))?;
            let shape = match fact.shape.is_open() {
                true => Vec::new(),
                false => {
                    fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok()).unwrap_or(-1)).collect()
                }
            };
            Ok(IoInfo { name, dtype, shape })
        })
        .collect()
}

fn dtype_of(t: DatumType) -> Option<DType> {
    Some(match t {
        DatumType::Bool => DType::Bool,
        DatumType::U8 => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::I8 => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        _ => return None,
    })
}

fn datum_of(t: DType) -> Option<DatumType> {
    Some(match t {
        DType::Bool => DatumType::Bool,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::Bytes | DType::BF16 => return None,
    })
}

/// Copies `view` (checked by `backend::check_inputs`) into a tract tensor of
/// the type the prepared model takes: one copy of the bytes (tract owns its
/// tensors), cast only under FP16.
fn input_tensor(view: &TensorView<'_>, want: DatumType) -> Result<Tensor, String> {
    let shape: Vec<usize> = view.shape.iter().map(|&d| d as usize).collect();
    let e = |e: TractError| format!("{e:#}");
    let t = match view.dtype {
        DType::F32 => from_bytes::<f32>(&shape, view.data),
        DType::F64 => from_bytes::<f64>(&shape, view.data),
        DType::I64 => from_bytes::<i64>(&shape, view.data),
        DType::I32 => from_bytes::<i32>(&shape, view.data),
        DType::U8 => from_bytes::<u8>(&shape, view.data),
        other => {
            // The rest are rare as model inputs: fill a zeroed tensor.
            let dt = datum_of(other).ok_or_else(|| format!("{other} tensors are not supported by tract"))?;
            Tensor::zero_dt(dt, &shape).map(|mut t| {
                t.as_bytes_mut().copy_from_slice(view.data);
                t
            })
        }
    }
    .map_err(e)?;
    if t.datum_type() == want { Ok(t) } else { t.cast_to_dt(want).map(|c| c.into_owned()).map_err(e) }
}

fn from_bytes<T: Datum + Copy + bytemuck::Pod>(shape: &[usize], data: &[u8]) -> TractResult<Tensor> {
    match bytemuck::try_cast_slice::<u8, T>(data) {
        Ok(elements) => Tensor::from_shape(shape, elements),
        // Unaligned (batch buffers are aligned, so not on the serving path).
        Err(_) => {
            let elements: Vec<T> = data.chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned).collect();
            Tensor::from_shape(shape, &elements)
        }
    }
}

impl Backend for TractBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[TensorView<'_>], sink: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError> {
        crate::backend::check_inputs(inputs, &self.inputs)?;
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|v| v.shape.iter().map(|&d| d as usize).collect()).collect();
        let plan = plan_for(&mut self.plans, &self.model, self.opts, &shapes)?;
        let values = inputs
            .iter()
            .zip(&self.inputs)
            .zip(&plan.input_types)
            .map(|((view, info), &want)| {
                input_tensor(view, want)
                    .map(|t| t.into_tvalue())
                    .map_err(|message| BackendError::Input { name: info.name.clone(), message })
            })
            .collect::<Result<TVec<TValue>, _>>()?;
        let results = plan.state.run(values).map_err(|e| BackendError::Run(format!("{e:#}")))?;
        self.answer(results, sink)
    }

    fn device_inputs(&mut self, inputs: &[TensorView<'_>]) -> Result<Option<Vec<DeviceInput>>, BackendError> {
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

    fn run_device(&mut self, stream: &CudaStream, sink: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError> {
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

impl TractBackend {
    /// Hands a run's outputs to `sink`: those computed in another type
    /// (FP16) go back as declared; the others are moved out of the run's
    /// values, not copied.
    fn answer(&self, results: TVec<TValue>, sink: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError> {
        let mut cast: Vec<Tensor> = Vec::with_capacity(results.len());
        for (r, info) in results.into_iter().zip(&self.outputs) {
            let want = datum_of(info.dtype).unwrap_or(r.datum_type());
            let t = if r.datum_type() == want {
                r.into_tensor()
            } else {
                r.cast_to_dt(want)
                    .map(|c| c.into_owned())
                    .map_err(|e| BackendError::Output { name: info.name.clone(), message: format!("{e:#}") })?
            };
            cast.push(t);
        }
        let shapes: Vec<Vec<i64>> = cast.iter().map(|t| t.shape().iter().map(|&d| d as i64).collect()).collect();
        let views: Vec<TensorView<'_>> = cast
            .iter()
            .zip(&shapes)
            .zip(&self.outputs)
            .map(|((t, s), info)| TensorView { dtype: info.dtype, shape: s, data: t.as_bytes() })
            .collect();
        sink(&views);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{OnnxBackend, OnnxOptions, init_runtime};
    use crate::test_util::{need, noise, outputs_f32, repo_path, run_f32};

    fn model(name: &str) -> std::path::PathBuf {
        repo_path(&format!("models/{name}/1/model.onnx"))
    }

    fn ort(name: &str) -> OnnxBackend {
        init_runtime(need(&repo_path(".cache/onnxruntime/libonnxruntime.so"))).expect("ONNX Runtime loads");
        OnnxBackend::load(need(&model(name)), &OnnxOptions::default()).expect("model loads")
    }

    fn shapes(name: &str) -> Vec<Vec<i64>> {
        let path = repo_path(&format!("models/{name}/config.toml"));
        let text = std::fs::read_to_string(need(&path)).expect("config is readable");
        let cfg = model_repo::ModelConfig::parse(&text, "config.toml").expect("config parses");
        cfg.inputs.iter().map(|t| cfg.full_shape(t)).collect()
    }

    fn tract(name: &str, fp16: bool) -> TractBackend {
        let opts = TractOptions { target: Target::Cpu, fp16 };
        TractBackend::load(need(&model(name)), opts, Some(&shapes(name))).expect("tract loads")
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The tract path (what the GPU runs, here on tract's CPU runtime)
    /// describes the model as ONNX Runtime does and computes the same
    /// outputs, batched, at the model's dynamic sizes.
    #[test]
    fn tract_agrees_with_onnx_runtime() {
        for (name, shape, tol) in [
            ("ppocr_cls", vec![4i64, 3, 48, 192], 1e-4f32),
            ("ppocr_rec", vec![2, 3, 48, 320], 1e-3),
            ("ppocr_det", vec![1, 3, 160, 224], 1e-3),
        ] {
            let mut reference = ort(name);
            let mut t = tract(name, false);
            assert_eq!(t.inputs().len(), reference.inputs().len(), "{name}");
            for (a, b) in t.inputs().iter().zip(reference.inputs()) {
                assert_eq!((&a.name, a.dtype), (&b.name, b.dtype), "{name}");
            }
            for (a, b) in t.outputs().iter().zip(reference.outputs()) {
                assert_eq!((&a.name, a.dtype), (&b.name, b.dtype), "{name}");
            }
            let data = noise(shape.iter().product::<i64>() as usize, 7);
            let want = run_f32(&mut reference, &shape, &data);
            let got = run_f32(&mut t, &shape, &data);
            for ((gs, g), (ws, w)) in got.iter().zip(&want) {
                assert_eq!(gs, ws, "{name}");
                let d = max_abs_diff(g, w);
                eprintln!("{name} {shape:?}: largest difference from ONNX Runtime {d:e}");
                assert!(d <= tol, "{name}: {d} > {tol}");
            }
        }
    }

    /// FP16 keeps the declared FP32 interface and the classifier's answer.
    #[test]
    fn fp16_keeps_fp32_inputs_and_outputs() {
        let mut reference = ort("ppocr_cls");
        let mut t = tract("ppocr_cls", true);
        assert_eq!(t.inputs()[0].dtype, DType::F32);
        let shape = [3i64, 3, 48, 192];
        let data = noise(3 * 3 * 48 * 192, 11);
        let want = run_f32(&mut reference, &shape, &data);
        let got = run_f32(&mut t, &shape, &data);
        let d = max_abs_diff(&got[0].1, &want[0].1);
        eprintln!("ppocr_cls FP16: largest difference from ONNX Runtime FP32 {d:e}");
        assert!(d < 2e-2, "{d}");
    }

    #[test]
    fn wrong_inputs_are_errors_naming_the_tensor() {
        let mut t = tract("ppocr_cls", false);
        let data = vec![0u8; 4 * 3 * 48 * 192];
        let bad_shape = TensorView { dtype: DType::F32, shape: &[1, 4, 48, 192], data: &data };
        let err = t.run(&[bad_shape], &mut |_| {}).expect_err("4 channels are refused").to_string();
        assert!(err.contains("input `x`") && err.contains("does not fit"), "{err}");
        let bad_type = TensorView { dtype: DType::I32, shape: &[1, 3, 48, 192], data: &data };
        let err = t.run(&[bad_type], &mut |_| {}).expect_err("INT32 is refused").to_string();
        assert!(err.contains("given as INT32 but the model takes FP32"), "{err}");
    }

    #[test]
    fn the_cuda_runtime_loads_or_says_why_not() {
        let opts = TractOptions { target: Target::Cuda, fp16: false };
        match TractBackend::load(need(&model("ppocr_cls")), opts, Some(&shapes("ppocr_cls"))) {
            Ok(b) => eprintln!("CUDA available: {}", b.describe()),
            Err(e) => {
                let e = e.to_string();
                eprintln!("skipped (no GPU): {e}");
                assert!(e.contains("libcuda.so.1"), "a missing driver is named: {e}");
            }
        }
    }

    /// Off the GPU, tract takes host inputs only: the instance gathers into a
    /// host buffer and calls `run`.
    #[test]
    fn the_cpu_runtime_takes_host_inputs_only() {
        let mut t = tract("ppocr_cls", false);
        let view = TensorView { dtype: DType::F32, shape: &[2, 3, 48, 192], data: &[] };
        assert!(t.device_inputs(&[view]).expect("no error").is_none());
    }

    /// On a GPU, a batch handed over in device memory (filled by the
    /// instance's staging stream, as from a pinned slot) gives the outputs
    /// the same batch gives from host memory; wrong shapes are refused
    /// before any device memory is handed out.
    #[test]
    fn device_inputs_give_the_outputs_of_host_inputs() {
        let opts = TractOptions { target: Target::Cuda, fp16: false };
        let mut t = match TractBackend::load(need(&model("ppocr_cls")), opts, Some(&shapes("ppocr_cls"))) {
            Ok(t) => t,
            Err(e) => return eprintln!("skipped (no GPU): {e}"),
        };
        let shape = [4i64, 3, 48, 192];
        let data = noise(4 * 3 * 48 * 192, 5);
        let want = run_f32(&mut t, &shape, &data);
        let bad = TensorView { dtype: DType::F32, shape: &[4, 4, 48, 192], data: &[] };
        let err = t.device_inputs(&[bad]).expect_err("4 channels are refused").to_string();
        assert!(err.contains("does not fit"), "{err}");
        let view = TensorView { dtype: DType::F32, shape: &shape, data: &[] };
        let dev = t.device_inputs(&[view]).expect("device memory").expect("tract-cuda takes device inputs");
        assert_eq!(dev[0].len, data.len() * 4);
        let staging = crate::cuda::staging::Staging::new().expect("a stream");
        staging.upload(dev[0].ptr, bytemuck::cast_slice(&data)).expect("copy");
        // No host wait: the run's stream waits for the copy.
        let got = outputs_f32(&mut t, |b, sink| b.run_device(staging.stream(), sink));
        for ((gs, g), (ws, w)) in got.iter().zip(&want) {
            assert_eq!(gs, ws);
            let d = max_abs_diff(g, w);
            eprintln!("ppocr_cls on the GPU: device inputs against host inputs, largest difference {d:e}");
            assert!(d <= 1e-6, "{d}");
        }
    }
}
