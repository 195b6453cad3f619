//! Everything that talks to CUDA, and the only place in this crate allowed
//! `unsafe` (STYLE.md): finding the libraries, probing devices, pinning the
//! shared-memory mapping, staging batches onto the device, GPU decoding and
//! the preprocessing kernel. The binary links no
//! CUDA library: cudarc loads them at run time, so this module builds and its
//! CPU-side tests run on machines without CUDA, and every entry point that
//! needs a library checks for it first and returns an error naming it
//! (cudarc itself would panic).

pub mod decode;
pub mod device;
pub mod kernels;
pub mod libs;
pub mod nvjpeg;
pub mod pinned;
pub mod staging;
