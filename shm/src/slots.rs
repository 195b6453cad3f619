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
    /// Per class, where the next scan starts (process-local, a hint only).
    hints: Arc<[AtomicU32]>,
}

/// A slot this process owns. Dropping it frees the slot; [`Slot::send_to`]
/// hands it to another process instead.
pub struct Slot {
    region: Arc<Region>,
    index: u32,
    size: usize,
    data_off: usize,
}

fn code(p: ProcId) -> u32 {
    p.0 as u32 + 1
}

impl SlotPool {
    pub fn new(region: Arc<Region>) -> SlotPool {
        let classes = region.layout().params.classes as usize;
        let hints = (0..classes).map(|_| AtomicU32::new(0)).collect();
        SlotPool { region, hints }
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

    /// Takes a free slot of at least `min_len` bytes for `owner`, trying the
    /// smallest class that fits first and spilling into larger ones.
    pub fn alloc(&self, min_len: usize, owner: ProcId, request_id: u64) -> Result<Slot, ShmError> {
        let layout = self.region.layout();
        for (class, &(first, _)) in layout.class_starts.iter().enumerate() {
            let size = layout.params.class_sizes[class] as usize;
            if size < min_len {
                continue;
            }
            let count = layout.params.class_counts[class];
            let start = self.hints[class].load(Ordering::Relaxed) % count;
            for k in 0..count {
                let i = (start + k) % count;
                let index = first + i;
                let word = self.owner_word(index);
                // Relaxed pre-check avoids a CAS (and cache-line steal) on busy slots.
                if word.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                // Acquire: the previous owner's accesses happen before ours (it freed
                // with a Release store).
                if word.compare_exchange(0, code(owner), Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    self.hints[class].store(i + 1, Ordering::Relaxed);
                    self.request_word(index).store(request_id, Ordering::Relaxed);
                    return Ok(self.slot(index));
                }
            }
        }
        Err(ShmError::NoSlot { wanted: min_len, largest: self.largest() })
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
        let word = self.region.atomic_u32(self.region.layout().slot_meta_offset + self.index as usize * SLOT_META);
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
mod tests {
    use super::*;
    use crate::{Descriptor, LayoutParams, SlotClass, Topology};

    fn pool() -> SlotPool {
        let p = LayoutParams::new(
            Topology { gpus: 1, preprocs: 1 },
            1,
            4,
            &[SlotClass { size: 4096, count: 2 }, SlotClass { size: 16384, count: 1 }],
        )
        .unwrap();
        SlotPool::new(Arc::new(Region::heap(&p).unwrap()))
    }

    #[test]
    fn smallest_fitting_class_then_spill_then_exhaustion() {
        let pool = pool();
        let me = ProcId(0);
        let a = pool.alloc(100, me, 1).unwrap();
        let b = pool.alloc(4096, me, 2).unwrap();
        assert_eq!((a.capacity(), b.capacity()), (4096, 4096));
        let c = pool.alloc(1, me, 3).unwrap();
        assert_eq!(c.capacity(), 16384, "spills into the larger class");
        assert!(matches!(pool.alloc(1, me, 4), Err(ShmError::NoSlot { .. })));
        assert!(matches!(pool.alloc(20000, me, 4), Err(ShmError::NoSlot { largest: 16384, .. })));
        drop(a);
        assert_eq!(pool.alloc(10, me, 5).unwrap().capacity(), 4096, "freed slot is reused");
        drop((b, c));
    }

    #[test]
    fn send_adopt_and_reject_foreign_descriptors() {
        let pool = pool();
        let (a, b) = (ProcId(0), ProcId(1));
        let mut s = pool.alloc(10, a, 42).unwrap();
        s.as_mut_slice()[..3].copy_from_slice(b"abc");
        let idx = s.send_to(b);
        let d = |slot, offset, len| Descriptor { request_id: 42, slot, offset, len, ..Default::default() };
        assert!(pool.adopt(a, a, &d(idx, 0, 3)).is_err(), "the sender no longer owns it");
        assert!(pool.adopt(a, b, &d(999, 0, 1)).is_err(), "no such slot");
        let stale = Descriptor { request_id: 41, ..d(idx, 0, 3) };
        assert!(pool.adopt(a, b, &stale).is_err(), "a descriptor of another request");
        let got = pool.adopt(a, b, &d(idx, 0, 3)).unwrap();
        assert_eq!(got.bytes(0, 3).unwrap(), b"abc");
        assert!(got.bytes(4095, 2).is_err());
        let idx = got.send_to(b);
        // A descriptor whose range is wrong frees the slot: it is ours and useless.
        assert!(pool.adopt(a, b, &d(idx, 4090, 100)).is_err(), "range beyond the slot");
        assert!(pool.occupancy().iter().all(|&(_, used, _)| used == 0));
    }

    #[test]
    fn reclaim_frees_a_dead_owners_slots_and_names_their_requests() {
        let pool = pool();
        let (a, dead) = (ProcId(0), ProcId(1));
        let s1 = pool.alloc(10, a, 7).unwrap().send_to(dead);
        let s2 = pool.alloc(10, a, 7).unwrap().send_to(dead);
        let keep = pool.alloc(10, a, 9).unwrap();
        assert_ne!(s1, s2);
        assert_eq!(pool.reclaim(dead), vec![7]);
        assert_eq!(pool.occupancy()[0].1, 0, "both small slots are free again; `keep` took the large one");
        drop(keep);
        assert!(pool.occupancy().iter().all(|&(_, used, _)| used == 0));
    }

    #[test]
    fn a_lent_slot_is_read_not_owned_and_outlives_its_reader() {
        let pool = pool();
        let (frontend, worker) = (ProcId::FRONTEND, ProcId(1));
        let mut slot = pool.alloc(100, frontend, 7).unwrap();
        slot.as_mut_slice()[..3].copy_from_slice(b"abc");
        let d = Descriptor {
            request_id: 7,
            slot: slot.index(),
            len: 3,
            flags: crate::desc::FLAG_LENT,
            ..Default::default()
        };
        let held = pool.take(frontend, worker, &d).unwrap();
        assert!(matches!(held, Held::Lent(_)));
        assert_eq!(held.bytes(0, 3).unwrap(), b"abc");
        assert!(held.bytes(4090, 10).is_err(), "the slot's bounds hold for a loan too");
        drop(held);
        assert_eq!(pool.reclaim(worker), Vec::<u64>::new(), "a dead reader frees nothing it was lent");
        // A loan for another request, or of a slot its owner no longer has,
        // is refused.
        assert!(pool.borrow(frontend, frontend, &Descriptor { request_id: 8, ..d }).is_err());
        drop(slot);
        assert!(pool.borrow(frontend, frontend, &d).is_err());
    }
}
