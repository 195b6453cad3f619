//! The one shared region: a memfd mapped in every process. Its pages are
//! committed when first touched, not at start-up: the slots only as they
//! are used ([`crate::slots`]), and the rest (header, lanes, statistics)
//! within the first requests.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytemuck::{Pod, Zeroable};
use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{HEADER_LEN, Layout, LayoutParams, POOL_COUNTERS, PROC_ENTRY};
use crate::{ProcId, ShmError};

/// "HSERVE" plus two format bytes, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"HSERVE\x00\x01");
/// Bumped whenever the layout or a cross-process record changes shape.
pub const LAYOUT_VERSION: u32 = 6;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Header {
    magic: u64,
    version: u32,
    _pad: u32,
    total_len: u64,
    params: LayoutParams,
}

const _: () = assert!(std::mem::size_of::<Header>() <= POOL_COUNTERS && POOL_COUNTERS + 24 <= HEADER_LEN);

/// A process's entry in the region's process table: its wake flag and the
/// lifecycle state the supervisor publishes for the others to read.
#[repr(C)]
pub struct ProcEntry {
    /// 1 while the process is (about to be) asleep on its eventfd.
    pub sleeping: AtomicU32,
    /// [`ProcState`] as `u32`, written by the supervisor.
    pub state: AtomicU32,
    pub pid: AtomicU32,
    /// Bumped by the supervisor each time the process is replaced.
    pub generation: AtomicU32,
    pub restarts: AtomicU32,
    /// [`crate::now_ns`] of the process's last main-loop turn (see
    /// [`Region::beat`]); the supervisor's watchdog reads it.
    pub heartbeat_ns: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<ProcEntry>() <= PROC_ENTRY);

/// Lifecycle of a child as published in the process table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ProcState {
    Starting = 0,
    Ready = 1,
    Down = 2,
    Stopping = 3,
}

impl ProcState {
    pub fn from_u32(v: u32) -> ProcState {
        match v {
            1 => ProcState::Ready,
            2 => ProcState::Down,
            3 => ProcState::Stopping,
            _ => ProcState::Starting,
        }
    }
}

/// The slot pool's counters in the header (relaxed: for accounting and
/// admission, not for ordering).
pub(crate) struct PoolCounters<'a> {
    pub committed: &'a AtomicU64,
    pub used: &'a AtomicU64,
    pub released: &'a AtomicU64,
}

enum Mapping {
    Mmap { _map: MmapRaw, fd: OwnedFd },
    Heap { layout: std::alloc::Layout },
}

/// The mapped region. Everything else in this crate borrows memory from it
/// through an `Arc<Region>`, so the mapping outlives every view into it.
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    layout: Layout,
    mapping: Mapping,
}

// SAFETY: the region is plain shared memory; every access from this crate goes
// through atomics or through a slot whose ownership protocol gives one holder
// exclusive use, so sharing the base pointer between threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only yields atomics and ownership-guarded slices.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a memfd region for `params`, maps it (no page committed yet), and
    /// writes the header. The fd is close-on-exec; the supervisor marks it
    /// inheritable for its children (see [`crate::fd`]).
    pub fn create(name: &str, params: &LayoutParams) -> Result<Region, ShmError> {
        let layout = Layout::new(params)?;
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).map_err(std::io::Error::from)?;
        rustix::fs::ftruncate(&fd, layout.total_len as u64).map_err(std::io::Error::from)?;
        let region = Region::map(fd, layout)?;
        let header =
            Header { magic: MAGIC, version: LAYOUT_VERSION, _pad: 0, total_len: region.len as u64, params: *params };
        // SAFETY: the header area is HEADER_LEN bytes at the start of a mapping
        // of at least that size; no other process has the fd yet, so nothing
        // else reads or writes it concurrently.
        let dst = unsafe { std::slice::from_raw_parts_mut(region.base.as_ptr(), HEADER_LEN) };
        dst[..std::mem::size_of::<Header>()].copy_from_slice(bytemuck::bytes_of(&header));
        Ok(region)
    }

    /// Maps a region created by [`Region::create`] in another process, checking
    /// its magic, layout version and size.
    pub fn attach(fd: OwnedFd) -> Result<Region, ShmError> {
        let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
        let file_len = stat.st_size as usize;
        if file_len < HEADER_LEN {
            return Err(ShmError::BadSize { found: file_len, expected: HEADER_LEN });
        }
        let map = MmapOptions::new().len(HEADER_LEN).map_raw_read_only(&fd)?;
        let mut header = Header::zeroed();
        // SAFETY: the mapping is HEADER_LEN bytes long and readable; the header
        // was written once by the creator before the fd was shared.
        let src = unsafe { std::slice::from_raw_parts(map.as_ptr(), std::mem::size_of::<Header>()) };
        bytemuck::bytes_of_mut(&mut header).copy_from_slice(src);
        drop(map);
        if header.magic != MAGIC {
            return Err(ShmError::BadMagic { found: header.magic, expected: MAGIC });
        }
        if header.version != LAYOUT_VERSION {
            return Err(ShmError::BadVersion { found: header.version, expected: LAYOUT_VERSION });
        }
        let layout = Layout::new(&header.params)?;
        if header.total_len as usize != layout.total_len || file_len != layout.total_len {
            return Err(ShmError::BadSize { found: file_len, expected: layout.total_len });
        }
        Region::map(fd, layout)
    }

    fn map(fd: OwnedFd, layout: Layout) -> Result<Region, ShmError> {
        // Not pre-faulted: a page costs memory once touched. A first touch
        // costs a fault (a 588 KiB copy: 400-504 µs into fresh pages, 14-16
        // µs into touched ones; benches/commit.rs), so
        // the slot pool hands out the slots used before first
        // ([`crate::SlotPool::alloc`]): after warm-up the hot path touches
        // only pages it has touched before.
        let map = MmapOptions::new().len(layout.total_len).map_raw(&fd)?;
        let base =
            NonNull::new(map.as_mut_ptr()).ok_or_else(|| ShmError::BadLayout("mmap returned a null pointer".into()))?;
        Ok(Region { base, len: layout.total_len, layout, mapping: Mapping::Mmap { _map: map, fd } })
    }

    /// A region in ordinary heap memory with the same layout, for tests of the
    /// ring and slot algorithms within one process.
    pub fn heap(params: &LayoutParams) -> Result<Region, ShmError> {
        let layout = Layout::new(params)?;
        let alloc = std::alloc::Layout::from_size_align(layout.total_len, crate::layout::SLOT_ALIGN)
            .map_err(|e| ShmError::BadLayout(e.to_string()))?;
        // SAFETY: `alloc` has a non-zero size (the header alone is 4 KiB).
        let ptr = unsafe { std::alloc::alloc_zeroed(alloc) };
        let base = NonNull::new(ptr).ok_or_else(|| ShmError::BadLayout("out of memory".into()))?;
        Ok(Region { base, len: layout.total_len, layout, mapping: Mapping::Heap { layout: alloc } })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Returns the pages of `len` bytes at `offset` to the kernel (a hole
    /// punched in the memfd, so every process's mapping of them goes): the
    /// next touch finds zeroed pages, committed anew. A heap region keeps
    /// its memory.
    pub(crate) fn discard(&self, offset: usize, len: usize) -> Result<(), ShmError> {
        match &self.mapping {
            Mapping::Mmap { fd, .. } => {
                let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
                rustix::fs::fallocate(fd, flags, offset as u64, len as u64).map_err(std::io::Error::from)?;
                Ok(())
            }
            Mapping::Heap { .. } => Ok(()),
        }
    }

    /// The pool's counters: bytes of slots committed now, held now, and
    /// returned to the kernel so far.
    pub(crate) fn pool_counters(&self) -> PoolCounters<'_> {
        PoolCounters {
            committed: self.atomic_u64(POOL_COUNTERS),
            used: self.atomic_u64(POOL_COUNTERS + 8),
            released: self.atomic_u64(POOL_COUNTERS + 16),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of the mapping, for registering the whole region with
    /// a device driver (CUDA pins it so copies go straight from the slots).
    /// The address is valid for `len()` bytes while this `Region` lives.
    pub fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The memfd behind the region (`None` for a heap region).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.mapping {
            Mapping::Mmap { fd, .. } => Some(fd.as_fd()),
            Mapping::Heap { .. } => None,
        }
    }

    /// Pointer to byte `offset`; callers keep `offset + len` inside the region.
    pub(crate) fn ptr_at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "region access {offset}+{len} beyond {}; this is a bug",
            self.len
        );
        // SAFETY: `offset` is within the mapping, as just checked.
        unsafe { self.base.as_ptr().add(offset) }
    }

    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert_eq!(offset % 4, 0, "unaligned atomic; this is a bug");
        let p = self.ptr_at(offset, 4);
        // SAFETY: in bounds and 4-byte aligned (the base is page aligned); the
        // memory lives as long as `self`; all cross-process access to these words
        // is atomic, and zeroed memory is a valid AtomicU32.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert_eq!(offset % 8, 0, "unaligned atomic; this is a bug");
        let p = self.ptr_at(offset, 8);
        // SAFETY: in bounds and 8-byte aligned; see `atomic_u32`.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// The process-table entry of `p`.
    pub fn proc(&self, p: ProcId) -> Option<&ProcEntry> {
        if p.0 as usize >= self.layout.topology().procs() {
            return None;
        }
        let ptr = self.ptr_at(self.layout.proc_offset(p), PROC_ENTRY);
        // SAFETY: the entry is in bounds, 64-byte aligned, made only of atomics
        // (valid when zeroed), and lives as long as `self`.
        Some(unsafe { &*(ptr as *const ProcEntry) })
    }

    pub fn proc_state(&self, p: ProcId) -> ProcState {
        self.proc(p).map(|e| ProcState::from_u32(e.state.load(Ordering::Acquire))).unwrap_or(ProcState::Down)
    }

    /// Records that `p`'s main loop is turning. Each worker calls it at least
    /// twice a second, so a stale heartbeat means a hung (or stopped) process.
    pub fn beat(&self, p: ProcId) {
        if let Some(e) = self.proc(p) {
            // Relaxed: an independent timestamp, read only by the watchdog.
            e.heartbeat_ns.store(crate::now_ns(), Ordering::Relaxed);
        }
    }

    /// Nanoseconds since `p` last called [`Region::beat`] (`None` if it never did).
    pub fn heartbeat_age_ns(&self, p: ProcId) -> Option<u64> {
        let last = self.proc(p)?.heartbeat_ns.load(Ordering::Relaxed);
        (last != 0).then(|| crate::now_ns().saturating_sub(last))
    }

    pub fn set_proc_state(&self, p: ProcId, state: ProcState) {
        if let Some(e) = self.proc(p) {
            e.state.store(state as u32, Ordering::Release);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Mapping::Heap { layout } = &self.mapping {
            // SAFETY: `base` came from `alloc_zeroed` with this exact layout and is
            // freed once, here.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), *layout) };
        }
        // The mmap variant unmaps in MmapRaw's own Drop; the fd closes after it.
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("len", &self.len).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SlotClass, Topology};

    fn params() -> LayoutParams {
        LayoutParams::new(Topology { gpus: 1, preprocs: 2 }, 1, 16, &[SlotClass { size: 8192, count: 4 }]).unwrap()
    }

    #[test]
    fn attach_checks_the_header() {
        let r = Region::create("test", &params()).unwrap();
        let fd = r.fd().unwrap().try_clone_to_owned().unwrap();
        let a = Region::attach(fd).unwrap();
        assert_eq!(a.layout().params, params());
        a.set_proc_state(ProcId(1), ProcState::Ready);
        assert_eq!(r.proc_state(ProcId(1)), ProcState::Ready, "both mappings see one memory");

        let junk = rustix::fs::memfd_create("junk", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&junk, 8192).unwrap();
        assert!(matches!(Region::attach(junk), Err(ShmError::BadMagic { .. })));
        let tiny = rustix::fs::memfd_create("tiny", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(matches!(Region::attach(tiny), Err(ShmError::BadSize { .. })));
    }
}
