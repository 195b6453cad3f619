//! The preprocessing kernel (`preprocess.cu`): compiled by NVRTC when the
//! inference worker starts (no CUDA at build time), launched on the stream of
//! the batch it fills. `crate::frame` holds its CPU reference.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use half::f16;

use crate::frame::{Normalize, PixelFormat};

pub const SOURCE: &str = include_str!("preprocess.cu");

/// The kernel's `Frame` argument (layout kept in step with preprocess.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FrameArg {
    data: u64,
    width: i32,
    height: i32,
    stride: i32,
    format: i32,
}

/// The kernel's `Norm` argument.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct NormArg {
    scale: [f32; 3],
    bias: [f32; 3],
    bgr: i32,
}

// SAFETY: both are #[repr(C)] plain data matching the CUDA structs field for
// field (the device pointer is a 64-bit integer on every CUDA target).
unsafe impl DeviceRepr for FrameArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for NormArg {}

/// Why the kernels could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Library(#[from] super::libs::Missing),
    #[error("NVRTC could not compile preprocess.cu: {0}")]
    Compile(String),
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// True when NVRTC can be loaded by name.
pub fn nvrtc_loadable() -> bool {
    // SAFETY: probes dlopen with NVRTC's library names; NVRTC's initializers
    // touch nothing of ours, and the handle is dropped.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the kernels to PTX for `arch` (e.g. `compute_90`). Needs only
/// NVRTC, not a GPU.
pub fn compile(arch: &'static str) -> Result<Ptx, KernelError> {
    if !nvrtc_loadable() {
        return Err(super::libs::Missing {
            missing: vec![&super::libs::NVRTC],
            searched: super::libs::search_dirs(&[]),
        }
        .into());
    }
    let opts = CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into()],
        name: Some("preprocess.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| KernelError::Compile(e.to_string()))
}

/// The loaded kernels of one context.
pub struct Preprocess {
    f32_fn: CudaFunction,
    f16_fn: CudaFunction,
}

/// A frame already in device memory.
pub struct DeviceFrame<'a> {
    pub data: &'a CudaSlice<u8>,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

impl Preprocess {
    /// Compiles for the context's device and loads the module.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Preprocess, KernelError> {
        let (major, minor) = ctx.compute_capability()?;
        // NVRTC wants a 'static arch name; the few that exist are listed.
        let arch = match (major, minor) {
            (9, _) => "compute_90",
            (8, 9) => "compute_89",
            (8, 6) => "compute_86",
            (8, _) => "compute_80",
            (7, 5) => "compute_75",
            (10, _) => "compute_100",
            (12, _) => "compute_120",
            _ => "compute_75",
        };
        let module = ctx.load_module(compile(arch)?)?;
        Ok(Preprocess {
            f32_fn: module.load_function("resize_normalize_f32")?,
            f16_fn: module.load_function("resize_normalize_f16")?,
        })
    }

    fn args(frame: &DeviceFrame<'_>, norm: &Normalize, stream: &CudaStream) -> (FrameArg, NormArg) {
        let (scale, bias) = norm.scale_bias();
        let width_bytes = match frame.format {
            PixelFormat::Nv12 => frame.width,
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => frame.width * 3,
        };
        use cudarc::driver::DevicePtr;
        let (ptr, _sync) = frame.data.device_ptr(stream);
        let f = FrameArg {
            data: ptr,
            width: frame.width as i32,
            height: frame.height as i32,
            stride: width_bytes as i32,
            format: frame.format as i32,
        };
        (f, NormArg { scale, bias, bgr: i32::from(norm.bgr) })
    }

    fn config(out_w: usize, out_h: usize) -> LaunchConfig {
        let block = (32u32, 8u32, 1u32);
        LaunchConfig {
            grid_dim: ((out_w as u32).div_ceil(block.0), (out_h as u32).div_ceil(block.1), 1),
            block_dim: block,
            shared_mem_bytes: 0,
        }
    }

    /// Enqueues one frame's conversion into `out` (3 x out_h x out_w FP32) on
    /// `stream`; returns at once.
    pub fn run_f32(
        &self,
        stream: &CudaStream,
        frame: &DeviceFrame<'_>,
        norm: &Normalize,
        out: &mut CudaViewMut<'_, f32>,
        out_w: usize,
        out_h: usize,
    ) -> Result<(), KernelError> {
        self.launch(&self.f32_fn, stream, frame, norm, out, (out_w, out_h))
    }

    /// As `run_f32`, into an FP16 tensor.
    pub fn run_f16(
        &self,
        stream: &CudaStream,
        frame: &DeviceFrame<'_>,
        norm: &Normalize,
        out: &mut CudaViewMut<'_, f16>,
        out_w: usize,
        out_h: usize,
    ) -> Result<(), KernelError> {
        self.launch(&self.f16_fn, stream, frame, norm, out, (out_w, out_h))
    }

    fn launch<T: DeviceRepr>(
        &self,
        func: &CudaFunction,
        stream: &CudaStream,
        frame: &DeviceFrame<'_>,
        norm: &Normalize,
        out: &mut CudaViewMut<'_, T>,
        (out_w, out_h): (usize, usize),
    ) -> Result<(), KernelError> {
        assert!(out.len() >= 3 * out_w * out_h, "output buffer too small");
        let (f, n) = Self::args(frame, norm, stream);
        let (w, h) = (out_w as i32, out_h as i32);
        let mut launch = stream.launch_builder(func);
        launch.arg(&f).arg(&n).arg(out).arg(&w).arg(&h);
        // SAFETY: the argument list matches resize_normalize_f32's and _f16's
        // signature (`func` is one of them, with T its element type), `out`
        // holds 3*out_w*out_h elements (checked above) and the frame's buffer
        // holds the frame (its length was checked by its creator).
        unsafe { launch.launch(Self::config(out_w, out_h)) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, Frame};

    /// NVRTC is fetched by `./scripts/fetch --test` into .cache/cuda/lib; the
    /// test loads it from there (or from wherever the loader finds one).
    fn nvrtc_available() -> bool {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/cuda/lib");
        if !nvrtc_loadable() {
            for f in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
                let p = dir.join(f);
                if p.exists() {
                    // SAFETY: loading NVRTC from the checked-in fetch location
                    // runs only its initializers; the handle is leaked on
                    // purpose so the soname stays resolvable for cudarc.
                    if let Ok(lib) = unsafe { libloading::Library::new(&p) } {
                        std::mem::forget(lib);
                    }
                }
            }
        }
        nvrtc_loadable()
    }

    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_available() {
            eprintln!("skipped: NVRTC not found (./scripts/fetch --test puts it in .cache/cuda/lib)");
            return;
        }
        for arch in ["compute_75", "compute_90"] {
            let ptx = compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
            let text = ptx.to_src();
            for entry in ["resize_normalize_f32", "resize_normalize_f16"] {
                assert!(text.contains(&format!(".entry {entry}")), "{arch}: no {entry} in the PTX");
            }
        }
    }

    /// On a GPU host: the kernel's output equals the CPU reference's.
    #[test]
    fn kernel_matches_the_cpu_reference_on_a_gpu() {
        if !nvrtc_available() || super::super::device::probe().is_err() {
            eprintln!("skipped: needs a GPU and NVRTC");
            return;
        }
        let ctx = CudaContext::new(0).expect("context");
        let stream = ctx.default_stream();
        let pre = Preprocess::load(&ctx).expect("kernels load");
        let norm = Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], bgr: false };
        let (w, h) = (1280u32, 720u32);
        for format in [PixelFormat::Rgb24, PixelFormat::Bgr24, PixelFormat::Nv12] {
            let len = format.frame_len(w, h).expect("size");
            let data: Vec<u8> = (0..len).map(|i| ((i * 7919) % 251) as u8).collect();
            let host = Frame { data: &data, width: w, height: h, format };
            let want = frame::resize_normalize(&host, &norm, 224, 224);
            let dev = stream.clone_htod(&data).expect("upload");
            let df = DeviceFrame { data: &dev, width: w, height: h, format };
            let mut out = stream.alloc_zeros::<f32>(3 * 224 * 224).expect("alloc");
            pre.run_f32(&stream, &df, &norm, &mut out.as_view_mut(), 224, 224).expect("launch");
            let got = stream.clone_dtoh(&out).expect("download");
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{format:?}: largest difference from the CPU reference {worst:e}");
            assert!(worst < 1e-4, "{format:?}: {worst}");
        }
    }
}
