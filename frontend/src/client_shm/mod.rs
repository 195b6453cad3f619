//! Triton's system shared-memory extension: regions that clients on this
//! host register (a POSIX shared-memory object, an offset and a size) so
//! that input tensors are read from them and outputs written to them instead
//! of crossing the socket. Off unless the daemon runs with
//! `--allow-client-shm`. Protocol-neutral: the HTTP and gRPC adapters call
//! [`Regions`]; the request core reads inputs and writes outputs through it.
//!
//! A region is opened once, at register, and closed at unregister (or when
//! the last request using it ends). It is never mapped: tensors move with
//! `pread`/`pwrite` on the object's descriptor, one copy each way (region →
//! slot, slot → region), the same count a mapping would give, since the
//! slot is where the workers read. A mapping could fault (SIGBUS) if the
//! client shrank or removed its object under the daemon; a read past the
//! object's end returns short instead, which fails that request only.

mod key;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::error::ApiError;
use crate::v2::ShmRef;

/// The registered regions.
pub struct Regions {
    enabled: bool,
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
}

/// One registered region: `byte_size` bytes of the object `key`, from
/// `offset`.
struct Region {
    key: String,
    offset: usize,
    byte_size: usize,
    fd: OwnedFd,
}

/// A region as the status calls show it (Triton's fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub name: String,
    pub key: String,
    pub offset: usize,
    pub byte_size: usize,
}

const OFF: &str = "client shared memory is off; start highserve with --allow-client-shm (or \
                   HIGHSERVE_ALLOW_CLIENT_SHM=true, or server.allow_client_shm) to let clients on this host register \
                   regions";

impl Regions {
    /// `enabled`: `server.allow_client_shm`.
    pub fn new(enabled: bool) -> Regions {
        Regions { enabled, regions: RwLock::new(BTreeMap::new()) }
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `byte_size` bytes of the POSIX shared-memory object `key`
    /// from `offset` under `name`.
    pub fn register(&self, name: &str, key: &str, offset: usize, byte_size: usize) -> Result<(), ApiError> {
        if !self.enabled {
            return Err(ApiError::Forbidden(OFF.into()));
        }
        if name.is_empty() {
            return Err(ApiError::BadRequest("a region needs a name; accepted: any non-empty name".into()));
        }
        if byte_size == 0 {
            return Err(ApiError::BadRequest(format!("region `{name}` has byte_size 0; accepted: 1 or more bytes")));
        }
        let fd = key::open(key)?;
        let have = key::size(&fd, key)?;
        let end = offset.checked_add(byte_size);
        if end.is_none_or(|e| e > have) {
            return Err(ApiError::BadRequest(format!(
                "region `{name}`: offset {offset} + byte_size {byte_size} is past the end of shared-memory object \
                 `{key}`, which is {have} bytes"
            )));
        }
        let mut map = self.write_map();
        if let Some(old) = map.get(name) {
            return Err(ApiError::BadRequest(format!(
                "region `{name}` is already registered (key `{}`); unregister it first, or register under another \
                 name",
                old.key
            )));
        }
        map.insert(name.to_string(), Arc::new(Region { key: key.to_string(), offset, byte_size, fd }));
        tracing::debug!("registered client shared-memory region `{name}` ({key}, {byte_size} bytes at {offset})");
        Ok(())
    }

    /// Unregisters `name`, or every region. As in Triton, a name that is
    /// not registered is no error: the region is not there either way. A
    /// request still using the region keeps it open until it ends.
    pub fn unregister(&self, name: Option<&str>) {
        let mut map = self.write_map();
        match name {
            Some(n) => {
                map.remove(n);
            }
            None => map.clear(),
        }
    }

    /// The regions, or the one named.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<Status>, ApiError> {
        let map = self.read_map();
        let show = |(name, r): (&String, &Arc<Region>)| Status {
            name: name.clone(),
            key: r.key.clone(),
            offset: r.offset,
            byte_size: r.byte_size,
        };
        match name {
            None => Ok(map.iter().map(show).collect()),
            Some(n) => match map.get_key_value(n) {
                Some(entry) => Ok(vec![show(entry)]),
                None => Err(unknown(n, &map)),
            },
        }
    }

    /// The region `at` names, after checking that `at` lies inside it.
    /// `what` names the tensor for the messages.
    fn find(&self, at: &ShmRef, what: &Tensor<'_>) -> Result<Arc<Region>, ApiError> {
        let map = self.read_map();
        let region = map.get(&at.region).ok_or_else(|| {
            let e = unknown(&at.region, &map);
            ApiError::BadRequest(format!("{what}: {}", e.message()))
        })?;
        let end = at.offset.checked_add(at.byte_size);
        if end.is_none_or(|e| e > region.byte_size) {
            return Err(ApiError::BadRequest(format!(
                "{what}: shared_memory_offset {} + shared_memory_byte_size {} is past the end of region `{}` ({} \
                 bytes registered)",
                at.offset, at.byte_size, at.region, region.byte_size
            )));
        }
        Ok(Arc::clone(region))
    }

    /// Reads input `name` from its region into `dst`, which has the
    /// tensor's size.
    pub fn read(&self, at: &ShmRef, dst: &mut [u8], name: &str) -> Result<(), ApiError> {
        let what = Tensor("input", name);
        let region = self.find(at, &what)?;
        if dst.len() != at.byte_size {
            return Err(ApiError::BadRequest(format!(
                "{what} is {} bytes but its shared_memory_byte_size is {}",
                dst.len(),
                at.byte_size
            )));
        }
        key::read_exact(&region.fd, dst, region.offset + at.offset)
            .map_err(|e| ApiError::BadRequest(format!("{what}: region `{}` ({}): {e}", at.region, region.key)))
    }

    /// The region output `name` goes to, looked up (and `at` checked
    /// against it) when its request starts, so that a wrong name fails
    /// before the model runs and the region stays open until the output
    /// is written, whatever unregister does meanwhile.
    pub fn output(&self, at: &ShmRef, name: &str) -> Result<OutputRegion, ApiError> {
        Ok(OutputRegion(self.find(at, &Tensor("output", name))?))
    }
}

/// An output's region, held by its request ([`Regions::output`]).
pub struct OutputRegion(Arc<Region>);

impl OutputRegion {
    /// Writes output `name` at `at`; it must fit the size the request gave.
    pub fn write(&self, at: &ShmRef, src: &[u8], name: &str) -> Result<(), ApiError> {
        let (what, region) = (Tensor("output", name), &self.0);
        if src.len() > at.byte_size {
            return Err(ApiError::BadRequest(format!(
                "{what} is {} bytes, more than its shared_memory_byte_size {}; give a region of at least its size",
                src.len(),
                at.byte_size
            )));
        }
        key::write_all(&region.fd, src, region.offset + at.offset)
            .map_err(|e| ApiError::BadRequest(format!("{what}: region `{}` ({}): {e}", at.region, region.key)))
    }
}

/// The answer to registering a CUDA region, over either protocol: no
/// client memory on a GPU is taken here.
pub fn cuda_unsupported(name: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "cannot register CUDA shared-memory region `{name}`: highserve takes no CUDA IPC regions; register a \
         system shared-memory region instead (with --allow-client-shm)"
    ))
}

/// "input `x`", for messages, formatted only when one is made.
struct Tensor<'a>(&'static str, &'a str);

impl std::fmt::Display for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.0, self.1)
    }
}

fn unknown(name: &str, map: &BTreeMap<String, Arc<Region>>) -> ApiError {
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    let registered = if names.is_empty() { "none".to_string() } else { names.join(", ") };
    ApiError::NotFound(format!("no shared-memory region `{name}` is registered (registered: {registered})"))
}
