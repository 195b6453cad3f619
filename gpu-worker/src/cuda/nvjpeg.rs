//! nvJPEG: JPEG decoding on the GPU, loaded at run time like every CUDA
//! library here (the binary links none). Only what decoding to interleaved
//! RGB in device memory needs is bound: one image at a time on a stream
//! (`nvjpegDecode`, the hybrid CPU + GPU path), and whole batches
//! (`nvjpegDecodeBatched`, the path that uses the hardware JPEG engines of
//! an A100/H100 when the handle is created with [`Backend::Hardware`]).
//!
//! libnvjpeg.so carries its own CUDA runtime, so it loads, and reports its
//! version, on machines without a GPU; creating a handle there fails with a
//! status, which is returned as an error.

use std::ffi::{c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, SyncOnDrop};

use super::libs;

type Handle = *mut c_void;
type State = *mut c_void;
type Status = c_int;

/// `nvjpegImage_t`: up to 4 planes; interleaved RGB uses the first.
#[repr(C)]
struct Image {
    channel: [*mut u8; 4],
    pitch: [usize; 4],
}

/// `NVJPEG_OUTPUT_RGBI`: interleaved RGB in `channel[0]`.
const OUTPUT_RGBI: c_int = 5;

/// Which nvJPEG implementation a handle uses (`nvjpegBackend_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// nvJPEG's choice.
    Default = 0,
    /// Huffman decoding on the CPU, the rest on the GPU.
    Hybrid = 1,
    /// Huffman decoding on the GPU too (batched decoding only).
    GpuHybrid = 2,
    /// The GPU's JPEG engines (A100, H100; batched decoding only).
    Hardware = 3,
}

/// What went wrong, with nvJPEG's status named.
#[derive(Debug, thiserror::Error)]
pub enum NvjpegError {
    #[error(transparent)]
    Library(#[from] libs::Missing),
    #[error("cannot load {path}: {message}")]
    Load { path: String, message: String },
    #[error("{call} failed: {}{}", status_name(*status), if *call == "nvjpegCreateEx" {
        " (creating a handle needs a GPU and its driver)"
    } else {
        ""
    })]
    Status { call: &'static str, status: c_int },
    #[error("the output buffer holds {have} bytes; a {width}x{height} RGB image needs {need}")]
    Output { have: usize, need: usize, width: u32, height: u32 },
}

fn status_name(status: c_int) -> String {
    let name = match status {
        1 => "NVJPEG_STATUS_NOT_INITIALIZED (no usable GPU or driver?)",
        2 => "NVJPEG_STATUS_INVALID_PARAMETER",
        3 => "NVJPEG_STATUS_BAD_JPEG",
        4 => "NVJPEG_STATUS_JPEG_NOT_SUPPORTED",
        5 => "NVJPEG_STATUS_ALLOCATOR_FAILURE",
        6 => "NVJPEG_STATUS_EXECUTION_FAILED",
        7 => "NVJPEG_STATUS_ARCH_MISMATCH (this backend needs another GPU)",
        8 => "NVJPEG_STATUS_INTERNAL_ERROR",
        9 => "NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED",
        10 => "NVJPEG_STATUS_INCOMPLETE_BITSTREAM",
        _ => return format!("nvJPEG status {status}"),
    };
    name.to_string()
}

fn check(call: &'static str, status: Status) -> Result<(), NvjpegError> {
    if status == 0 { Ok(()) } else { Err(NvjpegError::Status { call, status }) }
}

/// The loaded library and the entry points used.
pub struct Nvjpeg {
    path: PathBuf,
    get_property: unsafe extern "C" fn(c_int, *mut c_int) -> Status,
    create_ex: unsafe extern "C" fn(c_int, *mut c_void, *mut c_void, c_uint, *mut Handle) -> Status,
    destroy: unsafe extern "C" fn(Handle) -> Status,
    state_create: unsafe extern "C" fn(Handle, *mut State) -> Status,
    state_destroy: unsafe extern "C" fn(State) -> Status,
    image_info:
        unsafe extern "C" fn(Handle, *const u8, usize, *mut c_int, *mut c_int, *mut c_int, *mut c_int) -> Status,
    decode: unsafe extern "C" fn(Handle, State, *const u8, usize, c_int, *mut Image, CUstream) -> Status,
    batched_init: unsafe extern "C" fn(Handle, State, c_int, c_int, c_int) -> Status,
    batched: unsafe extern "C" fn(Handle, State, *const *const u8, *const usize, *mut Image, CUstream) -> Status,
    // Last: the entry points above point into it.
    _lib: libloading::Library,
}

impl Nvjpeg {
    /// Finds libnvjpeg in `dirs` (then by name through the loader) and loads it.
    pub fn find(dirs: &[PathBuf]) -> Result<Arc<Nvjpeg>, NvjpegError> {
        let found = libs::locate(&[&libs::NVJPEG], dirs, &libs::in_loader_cache)?;
        Nvjpeg::open(&found[0].path)
    }

    /// Loads the library at `path` and resolves every entry point.
    pub fn open(path: &Path) -> Result<Arc<Nvjpeg>, NvjpegError> {
        let load = |message: String| NvjpegError::Load { path: path.display().to_string(), message };
        // SAFETY: loading libnvjpeg runs only its own initializers (it
        // carries its CUDA runtime statically and touches no GPU until a
        // handle is created).
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load(e.to_string()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the type each field is declared with is the C
                // signature nvjpeg.h gives this symbol (CUDA 12 and 13 alike);
                // the pointer stays valid while `_lib` is held.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| load(e.to_string()))?
            };
        }
        Ok(Arc::new(Nvjpeg {
            path: path.to_path_buf(),
            get_property: sym!("nvjpegGetProperty"),
            create_ex: sym!("nvjpegCreateEx"),
            destroy: sym!("nvjpegDestroy"),
            state_create: sym!("nvjpegJpegStateCreate"),
            state_destroy: sym!("nvjpegJpegStateDestroy"),
            image_info: sym!("nvjpegGetImageInfo"),
            decode: sym!("nvjpegDecode"),
            batched_init: sym!("nvjpegDecodeBatchedInitialize"),
            batched: sym!("nvjpegDecodeBatched"),
            _lib: lib,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library's version (major, minor, patch); needs no GPU.
    pub fn version(&self) -> Result<(i32, i32, i32), NvjpegError> {
        let mut v = [0 as c_int; 3];
        for (i, slot) in v.iter_mut().enumerate() {
            // SAFETY: libraryPropertyType MAJOR_VERSION = 0, MINOR_VERSION =
            // 1, PATCH_LEVEL = 2; the out-pointer is a live c_int.
            check("nvjpegGetProperty", unsafe { (self.get_property)(i as c_int, slot) })?;
        }
        Ok((v[0], v[1], v[2]))
    }
}

/// A JPEG's size and layout, read from its header by nvJPEG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub width: u32,
    pub height: u32,
    pub components: u32,
    /// `nvjpegChromaSubsampling_t` (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, 6 = grey).
    pub subsampling: i32,
}

/// One handle and decoding state: decodes on the stream it is given, from
/// the thread that owns it (the CUDA context must be current there, as it is
/// on a cudarc stream's thread).
pub struct Decoder {
    api: Arc<Nvjpeg>,
    handle: Handle,
    state: State,
    batch: Option<usize>,
}

impl Decoder {
    pub fn new(api: Arc<Nvjpeg>, backend: Backend) -> Result<Decoder, NvjpegError> {
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: null allocators select nvJPEG's defaults; flags 0; the
        // out-pointer is a live local.
        check("nvjpegCreateEx", unsafe {
            (api.create_ex)(backend as c_int, std::ptr::null_mut(), std::ptr::null_mut(), 0, &mut handle)
        })?;
        let mut state: State = std::ptr::null_mut();
        // SAFETY: `handle` was just created; the out-pointer is a live local.
        if let Err(e) = check("nvjpegJpegStateCreate", unsafe { (api.state_create)(handle, &mut state) }) {
            // SAFETY: the handle is ours and used nowhere else.
            unsafe { (api.destroy)(handle) };
            return Err(e);
        }
        Ok(Decoder { api, handle, state, batch: None })
    }

    /// Reads the JPEG's header.
    pub fn info(&self, jpeg: &[u8]) -> Result<Info, NvjpegError> {
        let (mut n, mut css) = (0 as c_int, 0 as c_int);
        let (mut w, mut h) = ([0 as c_int; 4], [0 as c_int; 4]);
        // SAFETY: `jpeg` is live for the call; widths and heights have room
        // for NVJPEG_MAX_COMPONENT (4) entries.
        check("nvjpegGetImageInfo", unsafe {
            (self.api.image_info)(
                self.handle,
                jpeg.as_ptr(),
                jpeg.len(),
                &mut n,
                &mut css,
                w.as_mut_ptr(),
                h.as_mut_ptr(),
            )
        })?;
        Ok(Info { width: w[0] as u32, height: h[0] as u32, components: n as u32, subsampling: css })
    }

    /// Where `jpeg` goes in `out`, and cudarc's guard for that write: it
    /// records the write on `stream` when dropped, so it must live until the
    /// decode is enqueued.
    fn target<'a>(
        &self,
        jpeg: &[u8],
        out: &'a mut CudaSlice<u8>,
        stream: &'a CudaStream,
    ) -> Result<(Image, Info, SyncOnDrop<'a>), NvjpegError> {
        let info = self.info(jpeg)?;
        let need = info.width as usize * info.height as usize * 3;
        if out.len() < need {
            return Err(NvjpegError::Output { have: out.len(), need, width: info.width, height: info.height });
        }
        let (ptr, sync) = out.device_ptr_mut(stream);
        let image = Image {
            channel: [ptr as *mut u8, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()],
            pitch: [info.width as usize * 3, 0, 0, 0],
        };
        Ok((image, info, sync))
    }

    /// Enqueues one JPEG's decoding into `out` (interleaved RGB, width x
    /// height x 3 bytes) on `stream`. The Huffman stage runs on this thread
    /// before it returns; the rest runs on the stream.
    pub fn decode(&mut self, jpeg: &[u8], out: &mut CudaSlice<u8>, stream: &CudaStream) -> Result<Info, NvjpegError> {
        let (mut image, info, _written) = self.target(jpeg, out, stream)?;
        // SAFETY: handle and state are ours; `jpeg` is live for the call
        // (nvJPEG copies what the GPU stage needs before returning);
        // `image` points at a device buffer of at least width*height*3
        // bytes (checked) that stays allocated while the stream uses it
        // (the caller owns `out` and synchronizes before reading it).
        check("nvjpegDecode", unsafe {
            (self.api.decode)(
                self.handle,
                self.state,
                jpeg.as_ptr(),
                jpeg.len(),
                OUTPUT_RGBI,
                &mut image,
                stream.cu_stream(),
            )
        })?;
        Ok(info)
    }

    /// Enqueues a batch: `jpegs[i]` into `outs[i]`, on `stream`. The state
    /// is (re)initialized when the batch size changes.
    pub fn decode_batch(
        &mut self,
        jpegs: &[&[u8]],
        outs: &mut [CudaSlice<u8>],
        stream: &CudaStream,
    ) -> Result<(), NvjpegError> {
        assert_eq!(jpegs.len(), outs.len(), "one output buffer per JPEG");
        if self.batch != Some(jpegs.len()) {
            // SAFETY: handle and state are ours; one CPU thread (this one).
            check("nvjpegDecodeBatchedInitialize", unsafe {
                (self.api.batched_init)(self.handle, self.state, jpegs.len() as c_int, 1, OUTPUT_RGBI)
            })?;
            self.batch = Some(jpegs.len());
        }
        let mut images = Vec::with_capacity(jpegs.len());
        let mut written = Vec::with_capacity(jpegs.len());
        for (jpeg, out) in jpegs.iter().zip(outs.iter_mut()) {
            let (image, _, sync) = self.target(jpeg, out, stream)?;
            images.push(image);
            written.push(sync);
        }
        let data: Vec<*const u8> = jpegs.iter().map(|j| j.as_ptr()).collect();
        let lengths: Vec<usize> = jpegs.iter().map(|j| j.len()).collect();
        // SAFETY: as in `decode`, for every image: the three arrays have
        // the batch size given to nvjpegDecodeBatchedInitialize.
        check("nvjpegDecodeBatched", unsafe {
            (self.api.batched)(
                self.handle,
                self.state,
                data.as_ptr(),
                lengths.as_ptr(),
                images.as_mut_ptr(),
                stream.cu_stream(),
            )
        })
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: both were created by this decoder and are used nowhere
        // else; the state goes before its handle.
        unsafe {
            (self.api.state_destroy)(self.state);
            (self.api.destroy)(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/cuda/lib")
    }

    /// `./scripts/fetch --test` puts PyPI's libnvjpeg in .cache/cuda/lib:
    /// every entry point resolves and the version is read without a GPU.
    #[test]
    fn the_library_loads_and_reports_its_version() {
        let api = match Nvjpeg::find(&[fetched()]) {
            Ok(api) => api,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let (major, minor, patch) = api.version().expect("nvjpegGetProperty");
        eprintln!("{}: nvJPEG {major}.{minor}.{patch}", api.path().display());
        assert!(major >= 12, "nvJPEG {major}.{minor}.{patch}");
    }

    /// Without a GPU, creating a handle is an error naming the status, not a
    /// crash; with one, the test JPEG decodes to what libjpeg-turbo makes
    /// of it, within the IDCT and colour-conversion differences.
    #[test]
    fn decodes_on_a_gpu_and_fails_cleanly_without_one() {
        let Ok(api) = Nvjpeg::find(&[fetched()]) else {
            eprintln!("skipped: libnvjpeg not found (./scripts/fetch --test puts it in .cache/cuda/lib)");
            return;
        };
        if super::super::device::probe().is_err() {
            let e = Decoder::new(api, Backend::Default).err().expect("no GPU, no handle").to_string();
            assert!(e.contains("nvjpegCreateEx failed"), "{e}");
            eprintln!("no GPU: {e}");
            return;
        }
        let jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata/photo_1280x720.jpg"))
            .expect("./scripts/fetch --test makes the test images");
        let ctx = cudarc::driver::CudaContext::new(0).expect("context");
        let stream = ctx.default_stream();
        let mut dec = Decoder::new(api, Backend::Default).expect("handle");
        let info = dec.info(&jpeg).expect("header");
        assert_eq!((info.width, info.height), (1280, 720));
        let mut out = stream.alloc_zeros::<u8>(1280 * 720 * 3).expect("alloc");
        dec.decode(&jpeg, &mut out, &stream).expect("decode");
        let got = stream.clone_dtoh(&out).expect("download");
        let want = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::RGB).expect("libjpeg-turbo decodes it");
        let diff: Vec<u32> = got.iter().zip(&want.pixels).map(|(a, b)| a.abs_diff(*b) as u32).collect();
        let mean = diff.iter().sum::<u32>() as f64 / diff.len() as f64;
        let worst = diff.iter().max().copied().unwrap_or(0);
        eprintln!("nvJPEG vs libjpeg-turbo: mean difference {mean:.3}, largest {worst} (of 255)");
        assert!(mean < 2.0 && worst <= 40, "mean {mean}, largest {worst}");
    }
}
