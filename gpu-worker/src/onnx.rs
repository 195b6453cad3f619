//! The ONNX Runtime backend, through `ort` with the runtime library loaded at
//! start-up from a path the operator controls (`./scripts/fetch` puts it in
//! `.cache/onnxruntime/`), so the binary builds without it. Inputs are handed
//! to the runtime as views over the caller's batch buffer and outputs are
//! passed to the sink as views over the runtime's memory: nothing is copied
//! here.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Mutex;

use bytemuck::{NoUninit, Pod};
use half::{bf16, f16};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};
use shm::tensor::DType;

use crate::backend::{self, Backend, BackendError, IoInfo, TensorView};

/// The process's one ONNX Runtime environment (`ort` allows only one) and
/// the library it came from, for error messages.
static ENVIRONMENT: Mutex<Option<(Environment, String)>> = Mutex::new(None);

/// Loads the ONNX Runtime shared library and creates the environment. Later
/// calls only check that `library` exists: the first library loaded stays
/// for the process's life.
pub fn init_runtime(library: &Path) -> Result<(), BackendError> {
    let path = library.display().to_string();
    // Checked even when already initialized, so a wrong path in a later
    // call is reported rather than silently ignored.
    if !library.is_file() {
        return Err(BackendError::RuntimeMissing { path });
    }
    // A panic while holding the lock cannot leave the Option half-written.
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if env.is_some() {
        return Ok(());
    }
    let load_error = |message: String| BackendError::RuntimeLoad { path: path.clone(), message };
    let builder = ort::init_from(library).map_err(|e| load_error(e.to_string()))?;
    let built = builder.with_name("highserve").with_telemetry(false).build().map_err(|e| load_error(e.to_string()))?;
    *env = Some((built, path));
    Ok(())
}

fn environment() -> Result<(Environment, String), BackendError> {
    ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(BackendError::RuntimeNotInitialized)
}

/// Per-instance session settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxOptions {
    /// Threads one run may use; 0 lets ONNX Runtime use one per core.
    pub intra_op_threads: usize,
    /// Keep idle intra-op threads spinning between runs. Off by default: on a
    /// small machine spinning threads steal the cores the preproc workers
    /// need, for a latency gain only a saturated dedicated host notices.
    pub spinning: bool,
    /// Run on this CUDA device through ONNX Runtime's CUDA execution provider
    /// (`inference.gpu_backend = "onnxruntime-cuda"`); None: the CPU.
    pub cuda_device: Option<i32>,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions { intra_op_threads: 1, spinning: false, cuda_device: None }
    }
}

/// The CUDA execution provider for `device`, or an error naming what the
/// loaded library has instead.
fn cuda_provider(device: i32, library: &str) -> Result<ort::ep::ExecutionProviderDispatch, BackendError> {
    use ort::ep::ExecutionProvider;
    // The providers a library lists are those it was built with: the
    // `onnxruntime` wheel's has only the CPU one.
    if !ort::ep::CUDA::is_available().map_err(|e| BackendError::Run(e.to_string()))? {
        return Err(BackendError::ProviderMissing { path: library.to_string(), provider: ort::ep::CUDA::NAME });
    }
    // error_on_failure: a provider that cannot start (its CUDA or cuDNN
    // libraries missing) is an error, not a silent fall-back to the CPU.
    Ok(ort::ep::CUDA::default().with_device_id(device).build().error_on_failure())
}

/// One ONNX Runtime session: one backend instance.
pub struct OnnxBackend {
    session: Session,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    description: String,
}

impl OnnxBackend {
    /// Loads `model_file`; `init_runtime` must have succeeded first.
    pub fn load(model_file: &Path, opts: &OnnxOptions) -> Result<OnnxBackend, BackendError> {
        let (env, library) = environment()?;
        let fail = |message: String| BackendError::ModelLoad { path: model_file.display().to_string(), message };
        if !model_file.is_file() {
            return Err(fail("no such file; `./scripts/fetch` downloads the bundled models".into()));
        }
        let step = |e: ort::Error<ort::session::builder::SessionBuilder>| fail(e.to_string());
        let providers = match opts.cuda_device {
            Some(device) => vec![cuda_provider(device, &library)?],
            None => Vec::new(),
        };
        let session = Session::builder(&env)
            .map_err(|e| fail(e.to_string()))?
            .with_execution_providers(providers)
            .map_err(step)?
            // Batches already give a model all the parallelism one instance
            // can use; parallel graph branches would only add threads.
            .with_inter_threads(1)
            .map_err(step)?
            .with_intra_threads(opts.intra_op_threads)
            .map_err(step)?
            .with_intra_op_spinning(opts.spinning)
            .map_err(step)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(step)?
            // ONNX Runtime's memory pattern plans and keeps the allocations of
            // each input shape it sees: a help when every run has one shape,
            // but batches of varying size and the OCR models' image-sized
            // inputs make a new plan nearly every run. Off, the OCR test set at
            // c=16 ran 5.9-6.1 instead of 5.0-5.3 images/s with 804 instead of
            // 1650-1756 MiB in the inference worker; ppocr_cls (1071-1087 vs
            // 1082-1088 req/s) and resnet50 (35.1-35.3 vs 34.9-35.1) did not
            // change (alternated runs).
            .with_memory_pattern(false)
            .map_err(step)?
            .commit_from_file(model_file)
            .map_err(|e| fail(e.to_string()))?;
        let describe = |outlets: &[ort::value::Outlet]| -> Result<Vec<IoInfo>, BackendError> {
            outlets.iter().map(|o| io_info(o.name(), o.dtype()).map_err(&fail)).collect()
        };
        let inputs = describe(session.inputs())?;
        let outputs = describe(session.outputs())?;
        let threads = match opts.intra_op_threads {
            0 => "one intra-op thread per core".to_string(),
            n => format!("{n} intra-op thread{}", if n == 1 { "" } else { "s" }),
        };
        let spinning = if opts.spinning { ", spinning" } else { "" };
        let description = match opts.cuda_device {
            Some(d) => format!("onnxruntime CUDA execution provider, device {d}: {}", model_file.display()),
            None => format!("onnxruntime CPU: {} ({threads}{spinning})", model_file.display()),
        };
        Ok(OnnxBackend { session, inputs, outputs, description })
    }

    /// A value from the model file's custom metadata (the PP-OCR recognizer
    /// keeps its character list under `character`).
    pub fn custom_metadata(&self, key: &str) -> Option<String> {
        self.session.metadata().ok()?.custom(key)
    }
}

fn io_info(name: &str, ty: &ValueType) -> Result<IoInfo, String> {
    let ValueType::Tensor { ty: element, shape, .. } = ty else {
        return Err(format!("`{name}` is a {ty:?}; only tensors are supported"));
    };
    let dtype =
        dtype_of(*element).ok_or_else(|| format!("`{name}` has element type {element}, which is not supported"))?;
    Ok(IoInfo { name: name.into(), dtype, shape: shape.iter().copied().collect() })
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    use TensorElementType as E;
    Some(match t {
        E::Bool => DType::Bool,
        E::Uint8 => DType::U8,
        E::Uint16 => DType::U16,
        E::Uint32 => DType::U32,
        E::Uint64 => DType::U64,
        E::Int8 => DType::I8,
        E::Int16 => DType::I16,
        E::Int32 => DType::I32,
        E::Int64 => DType::I64,
        E::Float16 => DType::F16,
        E::Float32 => DType::F32,
        E::Float64 => DType::F64,
        E::Bfloat16 => DType::BF16,
        E::String => DType::Bytes,
        _ => return None,
    })
}

impl Backend for OnnxBackend {
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
        backend::check_inputs(inputs, &self.inputs)?;
        let values = inputs
            .iter()
            .zip(&self.inputs)
            .map(|(view, info)| {
                input_value(view).map_err(|message| BackendError::Input { name: info.name.clone(), message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = self.session.run(values.as_slice()).map_err(|e| BackendError::Run(e.to_string()))?;
        let views = self
            .outputs
            .iter()
            .enumerate()
            .map(|(index, info)| {
                let (shape, data) = output_bytes(&outputs[index], info.dtype)
                    .map_err(|message| BackendError::Output { name: info.name.clone(), message })?;
                Ok(TensorView { dtype: info.dtype, shape, data })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        sink(&views);
        Ok(())
    }
}

/// Wraps `view` (already checked by `backend::check_inputs`) for the
/// runtime without copying.
fn input_value<'a>(view: &TensorView<'a>) -> Result<SessionInputValue<'a>, String> {
    match view.dtype {
        DType::F32 => typed::<f32>(view),
        DType::F16 => typed::<f16>(view),
        DType::BF16 => typed::<bf16>(view),
        DType::F64 => typed::<f64>(view),
        DType::U8 => typed::<u8>(view),
        DType::U16 => typed::<u16>(view),
        DType::U32 => typed::<u32>(view),
        DType::U64 => typed::<u64>(view),
        DType::I8 => typed::<i8>(view),
        DType::I16 => typed::<i16>(view),
        DType::I32 => typed::<i32>(view),
        DType::I64 => typed::<i64>(view),
        DType::Bool => {
            // bool is not plain old data: only bytes 0 and 1 are valid, so
            // this cast checks every element.
            let data: &[bool] = bytemuck::checked::try_cast_slice(view.data)
                .map_err(|e| format!("BOOL elements must be 0 or 1 ({e})"))?;
            wrap(view.shape, data)
        }
        DType::Bytes => Err("BYTES tensors are not supported by this backend".into()),
    }
}

fn typed<'a, T: PrimitiveTensorElementType + Pod + Debug>(
    view: &TensorView<'a>,
) -> Result<SessionInputValue<'a>, String> {
    let data: &'a [T] = bytemuck::try_cast_slice(view.data).map_err(|e| {
        format!(
            "data at address {:p} is not aligned to {} bytes for {} ({e}); batch buffers must be allocated aligned",
            view.data.as_ptr(),
            align_of::<T>(),
            view.dtype
        )
    })?;
    wrap(view.shape, data)
}

fn wrap<'a, T: PrimitiveTensorElementType + Debug + Clone + 'static>(
    shape: &'a [i64],
    data: &'a [T],
) -> Result<SessionInputValue<'a>, String> {
    TensorRef::from_array_view((shape, data)).map(Into::into).map_err(|e| e.to_string())
}

/// The output's shape and its bytes, borrowed from the runtime's memory.
fn output_bytes(value: &DynValue, dtype: DType) -> Result<(&[i64], &[u8]), String> {
    match dtype {
        DType::F32 => bytes_of::<f32>(value),
        DType::F16 => bytes_of::<f16>(value),
        DType::BF16 => bytes_of::<bf16>(value),
        DType::F64 => bytes_of::<f64>(value),
        DType::U8 => bytes_of::<u8>(value),
        DType::U16 => bytes_of::<u16>(value),
        DType::U32 => bytes_of::<u32>(value),
        DType::U64 => bytes_of::<u64>(value),
        DType::I8 => bytes_of::<i8>(value),
        DType::I16 => bytes_of::<i16>(value),
        DType::I32 => bytes_of::<i32>(value),
        DType::I64 => bytes_of::<i64>(value),
        DType::Bool => bytes_of::<bool>(value),
        DType::Bytes => Err("BYTES outputs are not supported by this backend".into()),
    }
}

fn bytes_of<T: PrimitiveTensorElementType + NoUninit>(value: &DynValue) -> Result<(&[i64], &[u8]), String> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
    Ok((shape, bytemuck::cast_slice(data)))
}

#[cfg(test)]
mod tests {

    use model_repo::ModelConfig;

    use super::*;
    use crate::backend::check_config;
    use crate::test_util::{need, noise, repo_path, run_f32};

    fn runtime() {
        init_runtime(need(&repo_path(".cache/onnxruntime/libonnxruntime.so"))).expect("ONNX Runtime loads");
    }

    fn load(model: &str) -> OnnxBackend {
        runtime();
        let file = repo_path(&format!("models/{model}/1/model.onnx"));
        OnnxBackend::load(need(&file), &OnnxOptions::default()).expect("model loads")
    }

    fn config(model: &str) -> ModelConfig {
        let path = repo_path(&format!("models/{model}/config.toml"));
        let text = std::fs::read_to_string(need(&path)).expect("config is readable");
        ModelConfig::parse(&text, &path.display().to_string()).expect("config parses")
    }

    const CLS_ROW: usize = 3 * 48 * 192;

    #[test]
    fn cls_matches_its_config_and_rejects_a_wrong_one() {
        let b = load("ppocr_cls");
        assert_eq!(
            b.inputs(),
            [IoInfo { name: "x".into(), dtype: DType::F32, shape: vec![-1, 3, -1, -1] }],
            "{}",
            b.describe()
        );
        assert_eq!(b.outputs()[0].name, "save_infer_model/scale_0.tmp_1");
        assert_eq!(b.outputs()[0].shape, [-1, 2]);
        let cfg = config("ppocr_cls");
        check_config(&b, &cfg).expect("the bundled config matches the model file");

        let mut wrong = cfg.clone();
        wrong.inputs[0].datatype = DType::F16;
        let e = check_config(&b, &wrong).expect_err("FP16 is wrong").to_string();
        assert!(e.contains("config declares input `x` as FP16 but the model file has FP32"), "{e}");
        let mut wrong = cfg;
        wrong.outputs[0].dims = vec![3];
        let e = check_config(&b, &wrong).expect_err("3 classes is wrong").to_string();
        assert!(e.contains("output `save_infer_model/scale_0.tmp_1`") && e.contains("[-1, 2]"), "{e}");
    }

    #[test]
    fn every_bundled_model_matches_its_config() {
        runtime();
        for model in ["ppocr_cls", "ppocr_det", "ppocr_rec"] {
            let b = load(model);
            check_config(&b, &config(model)).unwrap_or_else(|e| panic!("{model}: {e}"));
        }
    }

    #[test]
    fn cls_batch_rows_equal_single_runs() {
        let mut b = load("ppocr_cls");
        let batch = noise(4 * CLS_ROW, 7);
        let out = run_f32(&mut b, &[4, 3, 48, 192], &batch);
        let (shape, scores) = &out[0];
        assert_eq!(shape, &[4, 2]);
        for row in 0..4 {
            let one = run_f32(&mut b, &[1, 3, 48, 192], &batch[row * CLS_ROW..(row + 1) * CLS_ROW]);
            assert_eq!(one[0].0, [1, 2]);
            let (single, batched) = (&one[0].1[..], &scores[row * 2..row * 2 + 2]);
            for (s, t) in single.iter().zip(batched) {
                assert!((s - t).abs() <= 1e-5, "row {row}: alone {single:?}, in a batch {batched:?}");
            }
            let sum: f32 = batched.iter().sum();
            assert!((sum - 1.0).abs() <= 1e-5, "row {row}: softmax sums to {sum}");
        }
    }

    #[test]
    fn cuda_provider_missing_is_a_clear_error() {
        runtime();
        // `./scripts/fetch` installs the `onnxruntime` wheel's library, a CPU
        // build: asking it for the CUDA provider must fail, naming the library
        // and the ways out, not fall back to the CPU unannounced.
        let file = repo_path("models/ppocr_cls/1/model.onnx");
        let opts = OnnxOptions { cuda_device: Some(0), ..OnnxOptions::default() };
        let e = OnnxBackend::load(need(&file), &opts).err().expect("a CPU build has no CUDA provider").to_string();
        for part in ["libonnxruntime.so", "CUDAExecutionProvider", "onnxruntime-gpu", "\"tract-cuda\""] {
            assert!(e.contains(part), "`{part}` missing from: {e}");
        }
    }

    #[test]
    fn rec_has_its_character_list() {
        let b = load("ppocr_rec");
        let chars = b.custom_metadata("character").expect("`character` metadata");
        assert!(chars.lines().count() > 1000, "{} characters", chars.lines().count());
        assert_eq!(b.custom_metadata("no such key"), None);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut b = load("ppocr_cls");
        let mut sink = |_: &[TensorView<'_>]| panic!("no output expected");
        let data = noise(CLS_ROW + 1, 3);
        let bytes: &[u8] = bytemuck::cast_slice(&data);
        let shape = [1, 3, 48, 192];

        let misaligned = TensorView { dtype: DType::F32, shape: &shape, data: &bytes[1..1 + 4 * CLS_ROW] };
        let e = b.run(&[misaligned], &mut sink).expect_err("misaligned").to_string();
        assert!(e.contains("input `x`") && e.contains("not aligned to 4 bytes"), "{e}");

        let short = TensorView { dtype: DType::F32, shape: &shape, data: &bytes[..4 * CLS_ROW - 4] };
        let e = b.run(&[short], &mut sink).expect_err("short").to_string();
        assert!(e.contains("bytes"), "{e}");

        let f16 = TensorView { dtype: DType::F16, shape: &shape, data: &bytes[..2 * CLS_ROW] };
        let e = b.run(&[f16], &mut sink).expect_err("wrong dtype").to_string();
        assert!(e.contains("given as FP16 but the model takes FP32"), "{e}");

        let channels = [1, 4, 48, 144];
        let wrong = TensorView { dtype: DType::F32, shape: &channels, data: &bytes[..4 * CLS_ROW] };
        let e = b.run(&[wrong], &mut sink).expect_err("wrong shape").to_string();
        assert!(e.contains("[1, 4, 48, 144] does not fit the model's [-1, 3, -1, -1]"), "{e}");

        let e = b.run(&[], &mut sink).expect_err("no inputs").to_string();
        assert!(e.contains("takes 1 inputs; 0 were given"), "{e}");
    }

    #[test]
    fn missing_files_say_how_to_get_them() {
        let e = init_runtime(Path::new("/nonexistent/libonnxruntime.so")).expect_err("missing library");
        assert!(e.to_string().contains("/nonexistent/libonnxruntime.so") && e.to_string().contains("./scripts/fetch"));
        runtime();
        let e = OnnxBackend::load(Path::new("/nonexistent/model.onnx"), &OnnxOptions::default())
            .err()
            .expect("missing model");
        assert!(e.to_string().contains("/nonexistent/model.onnx"), "{e}");
    }

    /// Informative only: `cargo test -p gpu-worker --release -- --ignored --nocapture cls_timing`.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn cls_timing() {
        let mut b = load("ppocr_cls");
        for n in [1usize, 8] {
            let data = noise(n * CLS_ROW, 1);
            let shape = [n as i64, 3, 48, 192];
            run_f32(&mut b, &shape, &data);
            let runs = 20;
            let start = std::time::Instant::now();
            for _ in 0..runs {
                run_f32(&mut b, &shape, &data);
            }
            let per = start.elapsed() / runs;
            println!("ppocr_cls batch {n}: {per:?} per run, {:?} per image", per / n as u32);
        }
    }
}
