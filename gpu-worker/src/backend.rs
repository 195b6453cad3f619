//! The contract between the scheduler and whatever runs a batch. A backend is
//! synchronous and owns its device context: it is moved into one OS thread
//! and called only from there, so it needs `Send` but not `Sync`, and the
//! trait stays object-safe so the scheduler can hold `Box<dyn Backend>`.

use cudarc::driver::CudaStream;
use model_repo::{ModelConfig, TensorConfig};
use shm::tensor::DType;

/// A tensor passed to or from a backend, borrowed, never copied: contiguous,
/// row-major, little-endian elements.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: &'a [i64],
    pub data: &'a [u8],
}

/// A model input or output as the model file declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoInfo {
    pub name: String,
    pub dtype: DType,
    /// Includes the batch dimension if the model has one; -1 marks a dynamic
    /// (or symbolic) dimension.
    pub shape: Vec<i64>,
}

/// Everything a backend can report.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("ONNX Runtime library not found at {path}; `./scripts/fetch` downloads it")]
    RuntimeMissing { path: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    RuntimeLoad { path: String, message: String },
    #[error(
        "the ONNX Runtime library {path} was built without the {provider} (the `onnxruntime` package's \
         library has only the CPU one; `onnxruntime-gpu`'s has it), so inference.gpu_backend = \
         \"onnxruntime-cuda\" cannot run; set it to \"tract-cuda\" or point inference.onnxruntime_library \
         at a CUDA build"
    )]
    ProviderMissing { path: String, provider: &'static str },
    #[error("ONNX Runtime is not initialized; call onnx::init_runtime before loading a model (this is a bug)")]
    RuntimeNotInitialized,
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: String, message: String },
    #[error("model file does not match config.toml: {0}")]
    ConfigMismatch(String),
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("output `{name}`: {message}")]
    Output { name: String, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("warm-up on one batch of zeros (input shapes {shapes}) failed: {source}")]
    Warmup { shapes: String, source: Box<BackendError> },
}

/// Device memory a GPU backend handed out for one input of the next batch
/// ([`Backend::device_inputs`]): `len` bytes at `ptr`, a `CUdeviceptr` on
/// the worker's GPU, to be filled with the input's contiguous row-major
/// bytes before [`Backend::run_device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInput {
    pub ptr: u64,
    pub len: usize,
}

/// Runs batches of one model on one device.
pub trait Backend: Send {
    /// One line for logs: the runtime, the model file and the settings.
    fn describe(&self) -> String;
    /// The model's inputs, in the order `run` takes them.
    fn inputs(&self) -> &[IoInfo];
    /// The model's outputs, in the order `run` reports them.
    fn outputs(&self) -> &[IoInfo];
    /// Runs one batch; `inputs` are in `self.inputs()` order. Calls `sink`
    /// once with every output (in `self.outputs()` order) while the output
    /// memory is alive, so the caller copies straight to where each request's
    /// answer goes: all outputs at once, because one request's answer needs
    /// its rows of every output.
    fn run(&mut self, inputs: &[TensorView<'_>], sink: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError>;

    /// For a backend on a GPU: device memory for the next batch's inputs,
    /// of these types and shapes (`data` is ignored), ready to be written by
    /// any stream; the caller fills it by work enqueued on one stream, then
    /// calls [`Backend::run_device`] with that stream. So a batch goes from
    /// the pinned shared-memory slots (or from GPU preprocessing) straight
    /// to the device, with no host buffer between. `None`: this backend (or
    /// this batch, say one it would have to cast) takes host inputs through
    /// [`Backend::run`].
    fn device_inputs(&mut self, _inputs: &[TensorView<'_>]) -> Result<Option<Vec<DeviceInput>>, BackendError> {
        Ok(None)
    }

    /// Runs the batch whose inputs [`Backend::device_inputs`] handed out,
    /// once the work enqueued on `stream` is done (a wait on the GPU, not on
    /// the host), and calls `sink` as [`Backend::run`] does.
    fn run_device(
        &mut self,
        _stream: &CudaStream,
        _sink: &mut dyn FnMut(&[TensorView<'_>]),
    ) -> Result<(), BackendError> {
        Err(BackendError::Run("this backend takes host inputs only (this is a bug)".into()))
    }
}

/// Checks a batch's inputs against what the model declares (count,
/// datatype, shape, byte length), so every backend refuses the same inputs
/// with the same messages before handing anything to its runtime.
pub fn check_inputs(inputs: &[TensorView<'_>], declared: &[IoInfo]) -> Result<(), BackendError> {
    check_all(inputs, declared, true)
}

/// [`check_inputs`] for inputs yet to be written (types and shapes only).
pub fn check_input_shapes(inputs: &[TensorView<'_>], declared: &[IoInfo]) -> Result<(), BackendError> {
    check_all(inputs, declared, false)
}

fn check_all(inputs: &[TensorView<'_>], declared: &[IoInfo], with_data: bool) -> Result<(), BackendError> {
    if inputs.len() != declared.len() {
        let names: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
        return Err(BackendError::Input {
            name: names.join("`, `"),
            message: format!("the model takes {} inputs; {} were given", names.len(), inputs.len()),
        });
    }
    for (view, info) in inputs.iter().zip(declared) {
        check_input(view, info, with_data)
            .map_err(|message| BackendError::Input { name: info.name.clone(), message })?;
    }
    Ok(())
}

fn check_input(view: &TensorView<'_>, info: &IoInfo, with_data: bool) -> Result<(), String> {
    if view.dtype != info.dtype {
        return Err(format!("given as {} but the model takes {}", view.dtype, info.dtype));
    }
    let fits = view.shape.len() == info.shape.len()
        && view.shape.iter().zip(&info.shape).all(|(&d, &m)| d >= 0 && (m < 0 || d == m));
    if !fits {
        return Err(format!("shape {:?} does not fit the model's {:?} (-1 = any size)", view.shape, info.shape));
    }
    let size = view.dtype.size().ok_or_else(|| format!("{} tensors are not supported by this backend", view.dtype))?;
    let bytes = view.shape.iter().try_fold(size, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    if bytes.is_none() || (with_data && bytes != Some(view.data.len())) {
        return Err(format!(
            "shape {:?} of {} needs {bytes:?} bytes; {} were given",
            view.shape,
            view.dtype,
            view.data.len()
        ));
    }
    Ok(())
}

/// Checks that `cfg` describes the model file `backend` loaded: the same
/// inputs and outputs, in the same order (the scheduler indexes both by
/// position), with the same datatypes and compatible dims.
pub fn check_config(backend: &dyn Backend, cfg: &ModelConfig) -> Result<(), BackendError> {
    check_list("input", &cfg.inputs, backend.inputs(), cfg)?;
    check_list("output", &cfg.outputs, backend.outputs(), cfg)
}

fn check_list(what: &str, declared: &[TensorConfig], file: &[IoInfo], cfg: &ModelConfig) -> Result<(), BackendError> {
    let mismatch = |m: String| Err(BackendError::ConfigMismatch(m));
    let names = |list: &mut dyn Iterator<Item = &str>| list.map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let declared_names = names(&mut declared.iter().map(|t| t.name.as_str()));
    let file_names = names(&mut file.iter().map(|t| t.name.as_str()));
    if declared.len() != file.len() {
        return mismatch(format!(
            "config declares {} {what}s ({declared_names}) but the model file has {} ({file_names})",
            declared.len(),
            file.len()
        ));
    }
    for (t, f) in declared.iter().zip(file) {
        if t.name != f.name {
            let hint = if file.iter().any(|f| f.name == t.name) { "; list them in the model file's order" } else { "" };
            return mismatch(format!(
                "config declares {what}s {declared_names} but the model file has {file_names}{hint}"
            ));
        }
        if t.datatype != f.dtype {
            return mismatch(format!(
                "config declares {what} `{}` as {} but the model file has {}",
                t.name, t.datatype, f.dtype
            ));
        }
        check_dims(what, t, f, cfg)?;
    }
    Ok(())
}

fn check_dims(what: &str, t: &TensorConfig, f: &IoInfo, cfg: &ModelConfig) -> Result<(), BackendError> {
    let full = cfg.full_shape(t);
    let batched = cfg.max_batch_size > 0;
    let shapes = format!("config dims {:?} (full shape {full:?}), model file shape {:?}", t.dims, f.shape);
    if full.len() != f.shape.len() {
        let hint = match (batched, f.shape.len() as isize - full.len() as isize) {
            (true, -1) => "; the model has no batch dimension, so set max_batch_size = 0 and give the full shape",
            (false, 1) => "; the model has a batch dimension, so set max_batch_size > 0 and leave it out of dims",
            _ => "",
        };
        return Err(BackendError::ConfigMismatch(format!(
            "{what} `{}` has {} dimensions in the config but {} in the model file: {shapes}{hint}",
            t.name,
            full.len(),
            f.shape.len()
        )));
    }
    if batched && f.shape[0] >= 0 {
        return Err(BackendError::ConfigMismatch(format!(
            "{what} `{}`: the model file fixes the batch dimension to {}, so it cannot take batches of up to \
             max_batch_size = {}: {shapes}; export the model with a dynamic batch dimension or set max_batch_size = 0",
            t.name, f.shape[0], cfg.max_batch_size
        )));
    }
    // A dynamic file dim accepts anything; a fixed one must be declared as
    // exactly that size, since the runtime would reject any other size the
    // config lets through (Triton's rule too).
    let skip = usize::from(batched);
    if let Some(i) = (skip..full.len()).find(|&i| f.shape[i] >= 0 && full[i] != f.shape[i]) {
        return Err(BackendError::ConfigMismatch(format!(
            "{what} `{}`: dimension {i} is {} in the config but {} in the model file: {shapes}",
            t.name, full[i], f.shape[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        inputs: Vec<IoInfo>,
        outputs: Vec<IoInfo>,
    }

    impl Backend for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn inputs(&self) -> &[IoInfo] {
            &self.inputs
        }
        fn outputs(&self) -> &[IoInfo] {
            &self.outputs
        }
        fn run(&mut self, _: &[TensorView<'_>], _: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn io(name: &str, dtype: DType, shape: &[i64]) -> IoInfo {
        IoInfo { name: name.into(), dtype, shape: shape.to_vec() }
    }

    fn cls_like() -> Fake {
        Fake { inputs: vec![io("x", DType::F32, &[-1, 3, -1, -1])], outputs: vec![io("y", DType::F32, &[-1, 2])] }
    }

    fn config(mbs: u32, input: &str, output: &str) -> ModelConfig {
        let text = format!(
            "max_batch_size = {mbs}\n[[input]]\n{input}\n[[output]]\nname = \"y\"\ndatatype = \"FP32\"\n{output}\n"
        );
        ModelConfig::parse(&text, "config.toml").expect("test config parses")
    }

    fn error(b: &Fake, cfg: &ModelConfig) -> String {
        check_config(b, cfg).expect_err("the config should be rejected").to_string()
    }

    #[test]
    fn matching_config_passes() {
        let cfg = config(32, "name = \"x\"\ndatatype = \"FP32\"\ndims = [3, 48, 192]", "dims = [2]");
        check_config(&cls_like(), &cfg).expect("config matches");
        let cfg = config(32, "name = \"x\"\ndatatype = \"FP32\"\ndims = [3, -1, -1]", "dims = [2]");
        check_config(&cls_like(), &cfg).expect("dynamic dims in both are fine");
    }

    #[test]
    fn datatype_mismatch_names_both() {
        let cfg = config(32, "name = \"x\"\ndatatype = \"FP16\"\ndims = [3, 48, 192]", "dims = [2]");
        let e = error(&cls_like(), &cfg);
        assert!(e.contains("config declares input `x` as FP16 but the model file has FP32"), "{e}");
    }

    #[test]
    fn name_and_count_mismatches() {
        let cfg = config(32, "name = \"image\"\ndatatype = \"FP32\"\ndims = [3, 48, 192]", "dims = [2]");
        let e = error(&cls_like(), &cfg);
        assert!(e.contains("config declares inputs `image` but the model file has `x`"), "{e}");

        let mut two = cls_like();
        two.outputs.push(io("z", DType::F32, &[-1]));
        let cfg = config(32, "name = \"x\"\ndatatype = \"FP32\"\ndims = [3, 48, 192]", "dims = [2]");
        let e = error(&two, &cfg);
        assert!(e.contains("config declares 1 outputs (`y`) but the model file has 2 (`y`, `z`)"), "{e}");
    }

    #[test]
    fn order_must_match() {
        let mut b = cls_like();
        b.inputs.push(io("w", DType::I64, &[-1]));
        let text = "max_batch_size = 4\n[[input]]\nname = \"w\"\ndatatype = \"INT64\"\ndims = []\n\
                    [[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [3, 4, 4]\n\
                    [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";
        let cfg = ModelConfig::parse(text, "config.toml").expect("parses");
        let e = error(&b, &cfg);
        assert!(e.contains("`w`, `x` but the model file has `x`, `w`; list them in the model file's order"), "{e}");
    }

    #[test]
    fn fixed_dim_conflicts_name_tensor_and_shapes() {
        let cfg = config(32, "name = \"x\"\ndatatype = \"FP32\"\ndims = [4, 48, 192]", "dims = [2]");
        let e = error(&cls_like(), &cfg);
        assert!(e.contains("input `x`: dimension 1 is 4 in the config but 3 in the model file"), "{e}");
        assert!(e.contains("[4, 48, 192]") && e.contains("[-1, 3, -1, -1]"), "{e}");

        let cfg = config(32, "name = \"x\"\ndatatype = \"FP32\"\ndims = [3, 48, 192]", "dims = [-1]");
        let e = error(&cls_like(), &cfg);
        assert!(e.contains("output `y`: dimension 1 is -1 in the config but 2 in the model file"), "{e}");
    }

    #[test]
    fn batch_dimension_mismatches_explain_max_batch_size() {
        let cfg = config(0, "name = \"x\"\ndatatype = \"FP32\"\ndims = [3, 48, 192]", "dims = [2]");
        let e = error(&cls_like(), &cfg);
        assert!(e.contains("set max_batch_size > 0"), "{e}");

        let fixed =
            Fake { inputs: vec![io("x", DType::F32, &[1, 3, 8, 8])], outputs: vec![io("y", DType::F32, &[1, 2])] };
        let cfg = config(8, "name = \"x\"\ndatatype = \"FP32\"\ndims = [3, 8, 8]", "dims = [2]");
        let e = error(&fixed, &cfg);
        assert!(e.contains("fixes the batch dimension to 1"), "{e}");
        let cfg = config(0, "name = \"x\"\ndatatype = \"FP32\"\ndims = [1, 3, 8, 8]", "dims = [1, 2]");
        check_config(&fixed, &cfg).expect("an unbatched model with full dims matches");
        let cfg = config(8, "name = \"x\"\ndatatype = \"FP32\"\ndims = [1, 3, 8, 8]", "dims = [1, 2]");
        assert!(error(&cls_like(), &cfg).contains("5 dimensions in the config but 4"));
    }
}
