//! Warming an instance up before it takes requests (Triton's
//! `model_warmup`, in its synthetic form): one batch of one row of zeros per
//! input through the backend, outputs discarded, on the instance's thread
//! right after its backend loads. A runtime's first run is its slowest (it
//! plans, allocates, and on a GPU compiles kernels), and would otherwise
//! fall on the first requests a new version takes; a model that cannot run
//! at all fails its load here, while the version it replaces still serves.

use std::time::{Duration, Instant};

use model_repo::ModelConfig;

use crate::backend::{Backend, BackendError, TensorView};

/// What came of a warm-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warmed {
    Took(Duration),
    /// Zeros cannot stand for an input of this model (a BYTES input).
    Skipped(String),
}

/// The warm-up batch's input shapes: one row of each input at its config
/// dims (a dynamic `-1` taken as 1), or for the image input of a model that
/// decodes on the GPU, the preprocessed tensor's shape (what its batches
/// carry). Inputs whose elements have no fixed size cannot be zeros: `Err`
/// names the first.
pub fn shapes(config: &ModelConfig, gpu_decode: bool) -> Result<Vec<Vec<i64>>, String> {
    let image = config.image_input().map(|(i, _)| i);
    let mut out = Vec::with_capacity(config.inputs.len());
    for (i, t) in config.inputs.iter().enumerate() {
        if t.datatype.size().is_none() {
            return Err(format!("input `{}` is {}", t.name, t.datatype));
        }
        let shape = match &config.preprocess {
            Some(pre) if gpu_decode && image == Some(i) => std::iter::once(1).chain(pre.image_dims()).collect(),
            _ => config.full_shape(t).iter().map(|&d| if d < 0 { 1 } else { d }).collect(),
        };
        out.push(shape);
    }
    Ok(out)
}

/// Runs the warm-up batch through `backend`; a failure is the load's.
pub fn run(backend: &mut dyn Backend, config: &ModelConfig, gpu_decode: bool) -> Result<Warmed, BackendError> {
    let shapes = match shapes(config, gpu_decode) {
        Ok(s) => s,
        Err(why) => return Ok(Warmed::Skipped(why)),
    };
    let lens: Vec<usize> = config
        .inputs
        .iter()
        .zip(&shapes)
        .map(|(t, s)| s.iter().product::<i64>().max(0) as usize * t.datatype.size().unwrap_or(0))
        .collect();
    // 8-byte aligned zeros: backends view inputs as f32, f64 or i64.
    let zeros = vec![0u64; lens.iter().max().copied().unwrap_or(0).div_ceil(8)];
    let bytes: &[u8] = bytemuck::cast_slice(&zeros);
    let views: Vec<TensorView<'_>> = config
        .inputs
        .iter()
        .zip(&shapes)
        .zip(&lens)
        .map(|((t, shape), &len)| TensorView { dtype: t.datatype, shape, data: &bytes[..len] })
        .collect();
    let started = Instant::now();
    backend
        .run(&views, &mut |_| {})
        .map_err(|e| BackendError::Warmup { shapes: format!("{shapes:?}"), source: Box::new(e) })?;
    Ok(Warmed::Took(started.elapsed()))
}

#[cfg(test)]
mod tests {
    use shm::tensor::DType;

    use super::*;
    use crate::backend::IoInfo;

    fn config(text: &str) -> ModelConfig {
        ModelConfig::parse(text, "config.toml").expect("test config parses")
    }

    const DET: &str = "max_batch_size = 1\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [3, -1, -1]\n\
                       [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1, -1, -1]\n";

    const CLS_GPU: &str = "max_batch_size = 8\n[[input]]\nname = \"x\"\ndatatype = \"FP16\"\ndims = [3, -1, -1]\n\
                           [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n\
                           [preprocess]\nresize = \"fit_height_pad_right\"\nwidth = 192\nheight = 48\n\
                           decode = \"gpu\"\n";

    #[test]
    fn one_row_with_dynamic_dims_taken_as_one() {
        assert_eq!(shapes(&config(DET), false), Ok(vec![vec![1, 3, 1, 1]]));
        let unbatched = "max_batch_size = 0\n[[input]]\nname = \"a\"\ndatatype = \"INT64\"\ndims = [-1, 4]\n\
                         [[input]]\nname = \"b\"\ndatatype = \"FP32\"\ndims = [2]\n\
                         [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";
        assert_eq!(shapes(&config(unbatched), false), Ok(vec![vec![1, 4], vec![2]]), "no batch dimension added");
    }

    #[test]
    fn a_model_decoding_on_the_gpu_warms_up_at_its_preprocessed_shape() {
        let c = config(CLS_GPU);
        assert_eq!(shapes(&c, true), Ok(vec![vec![1, 3, 48, 192]]));
        assert_eq!(shapes(&c, false), Ok(vec![vec![1, 3, 1, 1]]), "decoded by the preproc pool: the config's dims");
    }

    #[test]
    fn a_bytes_input_skips_the_warm_up() {
        let c = config(
            "max_batch_size = 4\n[[input]]\nname = \"s\"\ndatatype = \"BYTES\"\ndims = [1]\n\
             [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n",
        );
        assert_eq!(shapes(&c, false), Err("input `s` is BYTES".into()));
    }

    /// Records what it was given; fails when told to.
    struct Fake {
        inputs: Vec<IoInfo>,
        seen: Vec<(Vec<i64>, usize, bool)>,
        fail: bool,
    }

    impl Backend for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn inputs(&self) -> &[IoInfo] {
            &self.inputs
        }
        fn outputs(&self) -> &[IoInfo] {
            &[]
        }
        fn run(&mut self, inputs: &[TensorView<'_>], _: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), BackendError> {
            for v in inputs {
                self.seen.push((v.shape.to_vec(), v.data.len(), v.data.iter().all(|&b| b == 0)));
            }
            if self.fail { Err(BackendError::Run("out of memory".into())) } else { Ok(()) }
        }
    }

    #[test]
    fn the_backend_gets_zeros_and_a_failure_names_the_shapes() {
        let inputs = vec![IoInfo { name: "x".into(), dtype: DType::F32, shape: vec![-1, 3, -1, -1] }];
        let mut b = Fake { inputs: inputs.clone(), seen: Vec::new(), fail: false };
        assert!(matches!(run(&mut b, &config(DET), false), Ok(Warmed::Took(_))));
        assert_eq!(b.seen, [(vec![1, 3, 1, 1], 12, true)]);
        let mut b = Fake { inputs, seen: Vec::new(), fail: true };
        let e = run(&mut b, &config(DET), false).unwrap_err().to_string();
        assert_eq!(
            e,
            "warm-up on one batch of zeros (input shapes [[1, 3, 1, 1]]) failed: inference failed: out of memory"
        );
    }
}
