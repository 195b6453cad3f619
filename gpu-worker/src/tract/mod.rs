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
//! (`Backend::device_inputs`, in `device.rs`).

mod device;
#[cfg(test)]
mod tests;

use std::path::Path;

use cudarc::driver::CudaStream;
use shm::tensor::DType;
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
        self.stage_device_inputs(inputs)
    }

    fn run_device(&mut self, stream: &CudaStream, sink: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError> {
        self.run_staged(stream, sink)
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
