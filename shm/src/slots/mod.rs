//! Fixed-size data slots in a few size classes.
//!
//! Each slot has an owner word in shared memory: 0 when free, otherwise the
//! owning process's id + 1. Allocation is a CAS from 0; sending a slot to
//! another process stores the receiver as owner before the descriptor is
//! published; freeing stores 0. Only the owner touches a slot's bytes, so a
//! [`Slot`] can hand out plain slices. When a process dies, the supervisor
//! finds everything it owned by scanning the owner words ([`SlotPool::reclaim`]).
//!
//! A slot can also be lent ([`crate::desc::FLAG_LENT`]): the owner keeps it
//! and stops writing it, receivers only read it ([`Lent`]), and the owner
//! frees it once the request's answer has come back, which is after every
//! receiver's last read. A lent slot is therefore never reclaimed with a dead
//! receiver: its owner can send the request again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::layout::SLOT_META;
use crate::{ProcId, Region, ShmError};

/// Allocator view of the region's slots; cheap to clone, one per thread is fine.
#[derive(Clone)]
pub struct SlotPool {
    region: Arc<Region>,
}

/// A slot this process owns. Dropping it frees the slot; [`Slot::send_to`]
/// hands it to another process instead.
pub struct Slot {
    region: Arc<Region>,
    index: u32,
    size: usize,
    data_off: usize,
}

/// The pool's memory, as the metrics show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolMemory {
    /// Bytes of all slots (address space, not memory).
    pub slots: u64,
    /// Bytes of the slots whose pages hold memory.
    pub committed: u64,
    /// Bytes of the slots held now.
    pub used: u64,
    /// `shm.max_bytes`; 0 for none.
    pub ceiling: u64,
    /// Bytes returned to the kernel so far ([`SlotPool::release_idle`]).
    pub released: u64,
}

fn code(p: ProcId) -> u32 {
    p.0 as u32 + 1
}

/// The owner code of a slot whose pages are being returned to the kernel
/// (no process has it; nobody may take it meanwhile).
const RELEASING: u32 = u32::MAX;

/// Seconds of the monotonic clock (shared by every process), plus one so
/// that 0 can mean "never used": a slot's commit stamp.
fn stamp_now() -> u32 {
    (crate::now_ns() / 1_000_000_000) as u32 + 1
}

impl SlotPool {
    pub fn new(region: Arc<Region>) -> SlotPool {
        SlotPool { region }
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn owner_word(&self, index: u32) -> &AtomicU32 {
        self.region.atomic_u32(self.region.layout().slot_meta_offset + index as usize * SLOT_META)
    }

    fn request_word(&self, index: u32) -> &std::sync::atomic::AtomicU64 {
        self.region.atomic_u64(self.region.layout().slot_meta_offset + index as usize * SLOT_META + 8)
    }

    /// The largest payload one slot can hold.
    pub fn largest(&self) -> usize {
        let p = &self.region.layout().params;
        p.class_sizes[p.classes as usize - 1] as usize
    }

    /// 0 for a slot whose pages hold no memory (never used, or released);
    /// else [`stamp_now`] of its last allocation or free.
    fn stamp_word(&self, index: u32) -> &AtomicU32 {
        self.region.atomic_u32(self.region.layout().slot_meta_offset + index as usize * SLOT_META + 4)
    }

    /// Takes a free slot of at least `min_len` bytes for `owner`, trying the
    /// smallest class that fits first and spilling into larger ones.
    ///
    /// Within a class the lowest free slot is taken, so the slots in use
    /// stay the ones used before, whose pages are committed: memory grows
    /// to the peak number of slots held at once, not to the pool, and
    /// after warm-up no allocation touches a new page. A slot never used
    /// commits its pages now, unless that would cross the pool's ceiling
    /// (`max_committed`): then only slots already committed are taken, and
    /// none free is [`ShmError::Ceiling`].
    pub fn alloc(&self, min_len: usize, owner: ProcId, request_id: u64) -> Result<Slot, ShmError> {
        let layout = self.region.layout();
        let mut capped = false;
        for (class, &(first, _)) in layout.class_starts.iter().enumerate() {
            let size = layout.params.class_sizes[class] as usize;
            if size < min_len {
                continue;
            }
            for index in first..first + layout.params.class_counts[class] {
                let word = self.owner_word(index);
                // Relaxed pre-check avoids a CAS (and cache-line steal) on busy slots.
                if word.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                let stamp = self.stamp_word(index);
                if capped && stamp.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                // Acquire: the previous owner's accesses, and a release's reset of
                // the stamp, happen before ours (both end with a Release store of 0).
                if word.compare_exchange(0, code(owner), Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                // Read again now that the slot is ours: a release may have
                // returned its pages between the check above and the exchange.
                let fresh = stamp.load(Ordering::Relaxed) == 0;
                if fresh && !self.commit(size as u64) {
                    word.store(0, Ordering::Release);
                    capped = true;
                    continue;
                }
                stamp.store(stamp_now(), Ordering::Relaxed);
                self.request_word(index).store(request_id, Ordering::Relaxed);
                self.region.pool_counters().used.fetch_add(size as u64, Ordering::Relaxed);
                return Ok(self.slot(index));
            }
        }
        if capped {
            let m = self.memory();
            return Err(ShmError::Ceiling { wanted: min_len, committed: m.committed, ceiling: m.ceiling });
        }
        Err(ShmError::NoSlot { wanted: min_len, largest: self.largest() })
    }

    /// Counts `size` more bytes committed, if the ceiling allows.
    fn commit(&self, size: u64) -> bool {
        let ceiling = self.region.layout().params.max_committed;
        self.region
            .pool_counters()
            .committed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (ceiling == 0 || n + size <= ceiling).then_some(n + size)
            })
            .is_ok()
    }

    /// Returns the pages of every free slot not allocated for `idle` to the
    /// kernel, and the bytes returned. For the supervisor, now and then: a
    /// burst's slots do not hold memory for ever. A slot released costs its
    /// next user the first-touch faults again.
    pub fn release_idle(&self, idle: std::time::Duration) -> u64 {
        let now = stamp_now();
        let idle = u32::try_from(idle.as_secs()).unwrap_or(u32::MAX);
        let counters = self.region.pool_counters();
        let mut total = 0;
        for index in 0..self.region.layout().total_slots {
            let stamp = self.stamp_word(index);
            let idle_now = || {
                let at = stamp.load(Ordering::Relaxed);
                at != 0 && now.saturating_sub(at) >= idle
            };
            if !idle_now() {
                continue;
            }
            let word = self.owner_word(index);
            if word.compare_exchange(0, RELEASING, Ordering::Acquire, Ordering::Relaxed).is_err() {
                continue;
            }
            // Again now that nobody can take it: it may have been used and
            // freed (stamped) between the check above and the exchange.
            if !idle_now() {
                word.store(0, Ordering::Release);
                continue;
            }
            let (_, size, data_off) = self.region.layout().slot(index).expect("index in range; this is a bug");
            match self.region.discard(data_off, size) {
                Ok(()) => {
                    stamp.store(0, Ordering::Relaxed);
                    counters.committed.fetch_sub(size as u64, Ordering::Relaxed);
                    counters.released.fetch_add(size as u64, Ordering::Relaxed);
                    total += size as u64;
                }
                Err(e) => tracing::warn!("returning slot {index}'s pages to the kernel failed: {e}"),
            }
            word.store(0, Ordering::Release);
        }
        total
    }

    /// The pool's memory now.
    pub fn memory(&self) -> PoolMemory {
        let counters = self.region.pool_counters();
        let params = &self.region.layout().params;
        PoolMemory {
            slots: params.slot_bytes(),
            committed: counters.committed.load(Ordering::Relaxed),
            used: counters.used.load(Ordering::Relaxed),
            ceiling: params.max_committed,
            released: counters.released.load(Ordering::Relaxed),
        }
    }

    /// Bytes that requests may still take under the ceiling: free slots
    /// already committed plus the room left to commit (`None`: no ceiling).
    pub fn room(&self) -> Option<u64> {
        let ceiling = self.region.layout().params.max_committed;
        (ceiling > 0).then(|| ceiling.saturating_sub(self.region.pool_counters().used.load(Ordering::Relaxed)))
    }

    fn slot(&self, index: u32) -> Slot {
        let (_, size, data_off) = self.region.layout().slot(index).expect("slot index checked; this is a bug");
        Slot { region: self.region.clone(), index, size, data_off }
    }

    /// Takes ownership of the slot that `from` sent to `me` with descriptor
    /// `d`, checking that the descriptor is consistent with the region: the
    /// slot exists, `me` owns it, it serves `d`'s request (a stale descriptor
    /// that outlived its slot's reuse is caught here), and the payload range
    /// lies inside it.
    pub fn adopt(&self, from: ProcId, me: ProcId, d: &crate::Descriptor) -> Result<Slot, ShmError> {
        let (index, offset, len) = (d.slot, d.offset, d.len);
        let total = self.region.layout().total_slots;
        if index >= total {
            return Err(ShmError::BadSlot { from, slot: index, count: total });
        }
        let slot = self.slot(index);
        // Acquire: pairs with the sender's Release store of us as owner.
        let owner = self.owner_word(index).load(Ordering::Acquire);
        let request = self.request_word(index).load(Ordering::Relaxed);
        if owner != code(me) || request != d.request_id {
            // Not ours, or not this request's: do not free it on drop.
            std::mem::forget(slot);
            return Err(ShmError::BadSlot { from, slot: index, count: total });
        }
        let end = offset as u64 + len as u64;
        if end > slot.size as u64 {
            // The slot is ours but the descriptor is garbage: dropping `slot` frees it.
            return Err(ShmError::BadRange { slot: index, offset: offset as u64, end, capacity: slot.size });
        }
        Ok(slot)
    }

    /// Reads the slot `from` lent to this process with descriptor `d`: the
    /// same checks as [`SlotPool::adopt`], with `lender` as the owner.
    pub fn borrow(&self, from: ProcId, lender: ProcId, d: &crate::Descriptor) -> Result<Lent, ShmError> {
        let total = self.region.layout().total_slots;
        let bad = || ShmError::BadSlot { from, slot: d.slot, count: total };
        if d.slot >= total {
            return Err(bad());
        }
        // Acquire: pairs with the lender's Release when it allocated the slot;
        // the lane's Release/Acquire orders its writes before our reads.
        let owner = self.owner_word(d.slot).load(Ordering::Acquire);
        if owner != code(lender) || self.request_word(d.slot).load(Ordering::Relaxed) != d.request_id {
            return Err(bad());
        }
        let (_, size, data_off) = self.region.layout().slot(d.slot).ok_or_else(bad)?;
        let end = d.offset as u64 + d.len as u64;
        if end > size as u64 {
            return Err(ShmError::BadRange { slot: d.slot, offset: d.offset as u64, end, capacity: size });
        }
        Ok(Lent { region: self.region.clone(), index: d.slot, size, data_off })
    }

    /// What `from` handed this process with `d`: the slot itself, or, with
    /// [`crate::desc::FLAG_LENT`], a loan of the frontend's.
    pub fn take(&self, from: ProcId, me: ProcId, d: &crate::Descriptor) -> Result<Held, ShmError> {
        if d.flags & crate::desc::FLAG_LENT != 0 {
            self.borrow(from, ProcId::FRONTEND, d).map(Held::Lent)
        } else {
            self.adopt(from, me, d).map(Held::Owned)
        }
    }

    /// Frees every slot owned by `dead` and returns the request ids they held
    /// (deduplicated). Only for the supervisor, after `dead` has exited and
    /// before its replacement starts.
    pub fn reclaim(&self, dead: ProcId) -> Vec<u64> {
        let mut ids = Vec::new();
        for index in 0..self.region.layout().total_slots {
            let word = self.owner_word(index);
            if word.compare_exchange(code(dead), 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                ids.push(self.request_word(index).load(Ordering::Relaxed));
                let (_, size, _) = self.region.layout().slot(index).expect("index in range; this is a bug");
                self.region.pool_counters().used.fetch_sub(size as u64, Ordering::Relaxed);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Free and total slot counts per class, smallest class first.
    pub fn occupancy(&self) -> Vec<(usize, u32, u32)> {
        let layout = self.region.layout();
        layout
            .class_starts
            .iter()
            .enumerate()
            .map(|(c, &(first, _))| {
                let count = layout.params.class_counts[c];
                let used = (first..first + count).filter(|&i| self.owner_word(i).load(Ordering::Relaxed) != 0).count();
                (layout.params.class_sizes[c] as usize, used as u32, count)
            })
            .collect()
    }
}

impl Slot {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn capacity(&self) -> usize {
        self.size
    }

    pub fn as_slice(&self) -> &[u8] {
        let p = self.region.ptr_at(self.data_off, self.size);
        // SAFETY: the slot is in bounds; this process owns it (owner word), and by
        // the ownership protocol no other process reads or writes an owned slot.
        unsafe { std::slice::from_raw_parts(p, self.size) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let p = self.region.ptr_at(self.data_off, self.size);
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique within
        // this process.
        unsafe { std::slice::from_raw_parts_mut(p, self.size) }
    }

    /// `len` bytes at `offset`, or an error if that range is outside the slot.
    pub fn bytes(&self, offset: usize, len: usize) -> Result<&[u8], ShmError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.size);
        match end {
            Some(end) => Ok(&self.as_slice()[offset..end]),
            None => Err(ShmError::BadRange {
                slot: self.index,
                offset: offset as u64,
                end: offset as u64 + len as u64,
                capacity: self.size,
            }),
        }
    }

    /// Gives the slot to `to` and returns its index for the descriptor. The
    /// caller must publish the descriptor next; the slot is no longer ours.
    pub fn send_to(self, to: ProcId) -> u32 {
        let index = self.index;
        let word = self.region.atomic_u32(self.region.layout().slot_meta_offset + index as usize * SLOT_META);
        // Release: our writes to the slot happen before the receiver's reads (the
        // lane's Release/Acquire also orders them; this keeps the word honest).
        word.store(code(to), Ordering::Release);
        std::mem::forget(self);
        index
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let meta = self.region.layout().slot_meta_offset + self.index as usize * SLOT_META;
        let word = self.region.atomic_u32(meta);
        self.region.pool_counters().used.fetch_sub(self.size as u64, Ordering::Relaxed);
        // Idle from now: release_idle counts from the last free, not the take.
        self.region.atomic_u32(meta + 4).store(stamp_now(), Ordering::Relaxed);
        // Release: our accesses to the bytes happen before the next owner's.
        word.store(0, Ordering::Release);
    }
}

/// A slot another process lent this one: read only, and not freed here.
pub struct Lent {
    region: Arc<Region>,
    index: u32,
    size: usize,
    data_off: usize,
}

impl Lent {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn as_slice(&self) -> &[u8] {
        let p = self.region.ptr_at(self.data_off, self.size);
        // SAFETY: the slot is in bounds; its owner lent it and writes it no
        // more until the request is answered, after this process's last read
        // (the lending protocol, module docs), and nobody else may write it.
        unsafe { std::slice::from_raw_parts(p, self.size) }
    }
}

/// A slot received with a request: given (`Owned`) or lent (`Lent`).
pub enum Held {
    Owned(Slot),
    Lent(Lent),
}

impl From<Slot> for Held {
    fn from(slot: Slot) -> Held {
        Held::Owned(slot)
    }
}

impl Held {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Held::Owned(s) => s.as_slice(),
            Held::Lent(l) => l.as_slice(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.as_slice().len()
    }

    /// `len` bytes at `offset`, or an error if that range is outside the slot.
    pub fn bytes(&self, offset: usize, len: usize) -> Result<&[u8], ShmError> {
        let all = self.as_slice();
        offset.checked_add(len).and_then(|end| all.get(offset..end)).ok_or(ShmError::BadRange {
            slot: self.index(),
            offset: offset as u64,
            end: offset as u64 + len as u64,
            capacity: all.len(),
        })
    }

    pub fn index(&self) -> u32 {
        match self {
            Held::Owned(s) => s.index(),
            Held::Lent(l) => l.index(),
        }
    }

    /// The slot, if this process owns it (it may write and reuse it).
    pub fn owned(self) -> Option<Slot> {
        match self {
            Held::Owned(s) => Some(s),
            Held::Lent(_) => None,
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({}, {} bytes)", self.index, self.size)
    }
}

#[cfg(test)]
mod tests;
