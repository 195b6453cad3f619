//! The POSIX shared-memory objects behind the regions: checking a key,
//! opening it, and moving bytes with `pread`/`pwrite`, which can fail but
//! never fault.

use std::os::fd::OwnedFd;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::shm::OFlags;

use crate::error::ApiError;

/// The longest name `shm_open` takes (NAME_MAX), without its leading `/`.
const MAX_NAME: usize = 255;

/// Checks that `key` is a POSIX shared-memory name (`/name` or `name`: one
/// component, which `shm_open` looks up in /dev/shm) and not a path.
pub fn check(key: &str) -> Result<&str, ApiError> {
    let name = key.strip_prefix('/').unwrap_or(key);
    let bad = name.is_empty() || name.len() > MAX_NAME || name.contains(['/', '\0']) || name == "." || name == "..";
    if bad {
        return Err(ApiError::BadRequest(format!(
            "key `{}` is not a POSIX shared-memory name; accepted: `/name` or `name`, one component of 1 to \
             {MAX_NAME} bytes without `/` (as passed to shm_open), not a path",
            key.escape_debug()
        )));
    }
    Ok(name)
}

/// Opens the object `key` for reading and writing (outputs are written).
pub fn open(key: &str) -> Result<OwnedFd, ApiError> {
    let name = check(key)?;
    rustix::shm::open(format!("/{name}").as_str(), OFlags::RDWR, Mode::empty()).map_err(|e| {
        let hint = match e {
            Errno::NOENT => {
                "; create it first (shm_open, or tritonclient.utils.shared_memory.create_shared_memory_region)"
            }
            Errno::ACCESS => "; the daemon's user must be able to read and write it",
            _ => "",
        };
        ApiError::BadRequest(format!("shared-memory object `{key}` cannot be opened: {e}{hint}"))
    })
}

/// The object's size now.
pub fn size(fd: &OwnedFd, key: &str) -> Result<usize, ApiError> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| ApiError::BadRequest(format!("shared-memory object `{key}` cannot be examined: {e}")))?;
    Ok(usize::try_from(st.st_size).unwrap_or(0))
}

/// Fills `dst` from `at`; an object that ends before is an error (it
/// shrank since it was registered).
pub fn read_exact(fd: &OwnedFd, mut dst: &mut [u8], mut at: usize) -> Result<(), String> {
    while !dst.is_empty() {
        match rustix::io::pread(fd, &mut *dst, at as u64) {
            Ok(0) => return Err(shrunk(fd, at)),
            Ok(n) => {
                dst = &mut dst[n..];
                at += n;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("reading it failed: {e}")),
        }
    }
    Ok(())
}

/// Writes `src` at `at`, after checking that the object still reaches that
/// far: a write past its end would grow it, out of the client's sight (a
/// check, not a guarantee: a client that shrinks the object between the
/// check and the write has it grown back).
pub fn write_all(fd: &OwnedFd, mut src: &[u8], mut at: usize) -> Result<(), String> {
    let have = rustix::fs::fstat(fd).map_err(|e| format!("examining it failed: {e}"))?.st_size;
    if u64::try_from(have).unwrap_or(0) < (at + src.len()) as u64 {
        return Err(shrunk(fd, at + src.len()));
    }
    while !src.is_empty() {
        match rustix::io::pwrite(fd, src, at as u64) {
            Ok(0) => return Err(shrunk(fd, at)),
            Ok(n) => {
                src = &src[n..];
                at += n;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("writing it failed: {e}")),
        }
    }
    Ok(())
}

fn shrunk(fd: &OwnedFd, needed: usize) -> String {
    let now =
        rustix::fs::fstat(fd).map_or_else(|e| format!("cannot be examined: {e}"), |s| format!("{} bytes", s.st_size));
    format!(
        "the object ends before byte {needed} (now {now}); it shrank since it was registered: keep a region's object \
         at its size until it is unregistered"
    )
}
