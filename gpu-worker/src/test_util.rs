//! Helpers shared by the backends' tests.

use std::path::{Path, PathBuf};

use shm::tensor::DType;

use crate::backend::{Backend, TensorView};

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub fn need(path: &Path) -> &Path {
    assert!(path.is_file(), "{} is missing; run `./scripts/fetch` from the repository root", path.display());
    path
}

/// Deterministic values in [-1, 1].
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Runs one FP32 input and returns each output's shape and values.
pub fn run_f32(b: &mut dyn Backend, shape: &[i64], data: &[f32]) -> Vec<(Vec<i64>, Vec<f32>)> {
    let input = TensorView { dtype: DType::F32, shape, data: bytemuck::cast_slice(data) };
    outputs_f32(b, |b, sink| b.run(&[input], sink))
}

/// Each FP32 output's shape and values, from `run` (a backend's `run` or
/// `run_device`).
pub fn outputs_f32(
    b: &mut dyn Backend,
    run: impl FnOnce(&mut dyn Backend, &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), crate::backend::BackendError>,
) -> Vec<(Vec<i64>, Vec<f32>)> {
    let mut out = vec![(Vec::new(), Vec::new()); b.outputs().len()];
    run(b, &mut |views| {
        for (i, v) in views.iter().enumerate() {
            assert_eq!(v.dtype, DType::F32);
            out[i] = (
                v.shape.to_vec(),
                v.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            );
        }
    })
    .expect("inference runs");
    out
}
