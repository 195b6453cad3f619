//! A single-producer/single-consumer ring of [`Descriptor`]s in the region.
//!
//! Head and tail are free-running `u64` counters on separate cache lines (so
//! the producer and consumer do not false-share); the slot of counter `n` is
//! `n & mask`. Because each lane has exactly one writer of each counter, a
//! process that dies leaves the lane consistent: everything before the tail is
//! published, nothing after it is visible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout::LANE_HEADER;
use crate::{Descriptor, Region};

const DESC: usize = std::mem::size_of::<Descriptor>();

struct LaneRef {
    region: Arc<Region>,
    head_off: usize,
    tail_off: usize,
    buf_off: usize,
    cap: u64,
}

impl LaneRef {
    fn new(region: Arc<Region>, lane: usize) -> LaneRef {
        let layout = region.layout();
        assert!(lane < layout.lanes, "lane {lane} out of range; this is a bug");
        let base = layout.lane_offset(lane);
        let cap = layout.params.lane_capacity as u64;
        LaneRef { head_off: base, tail_off: base + 64, buf_off: base + LANE_HEADER, cap, region }
    }

    fn head(&self) -> &AtomicU64 {
        self.region.atomic_u64(self.head_off)
    }

    fn tail(&self) -> &AtomicU64 {
        self.region.atomic_u64(self.tail_off)
    }

    fn entry(&self, n: u64) -> *mut Descriptor {
        let off = self.buf_off + (n & (self.cap - 1)) as usize * DESC;
        self.region.ptr_at(off, DESC).cast()
    }

    /// Number of published, unconsumed entries, or `None` if the counters are
    /// inconsistent (a corrupt peer).
    fn occupancy(&self) -> Option<u64> {
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        tail.checked_sub(head).filter(|&n| n <= self.cap)
    }
}

/// Entries waiting in `lane` (published, not yet consumed), read by an
/// observer that is neither end: for metrics. A corrupt lane reads as 0.
pub fn occupancy(region: &Arc<Region>, lane: usize) -> usize {
    LaneRef::new(region.clone(), lane).occupancy().unwrap_or(0) as usize
}

/// The sending end of a lane. Exactly one per lane may exist at a time across
/// all processes (the lane's owner, by topology).
pub struct Producer {
    lane: LaneRef,
    cached_head: u64,
}

impl Producer {
    pub fn new(region: Arc<Region>, lane: usize) -> Producer {
        let lane = LaneRef::new(region, lane);
        // Acquire: pairs with the consumer's Release store of head.
        let cached_head = lane.head().load(Ordering::Acquire);
        Producer { lane, cached_head }
    }

    /// Appends `d`; gives it back if the lane is full.
    pub fn push(&mut self, d: &Descriptor) -> Result<(), Descriptor> {
        // Relaxed: only this producer writes the tail.
        let tail = self.lane.tail().load(Ordering::Relaxed);
        if tail.wrapping_sub(self.cached_head) >= self.lane.cap {
            // Acquire: the consumer has finished reading every entry before head.
            self.cached_head = self.lane.head().load(Ordering::Acquire);
            if tail.wrapping_sub(self.cached_head) >= self.lane.cap {
                return Err(*d);
            }
        }
        // SAFETY: entry `tail` is in bounds and aligned; the consumer reads it only
        // after it observes the Release store of `tail + 1` below, and it finished
        // with the previous use of this entry before publishing head > tail - cap.
        unsafe { self.lane.entry(tail).write_volatile(*d) };
        // Release: publishes the entry written above to the consumer.
        self.lane.tail().store(tail + 1, Ordering::Release);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lane.occupancy().unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a push would succeed now; it stays true until we push, since
    /// only the consumer moves the head (and only forward).
    pub fn has_room(&mut self) -> bool {
        let tail = self.lane.tail().load(Ordering::Relaxed);
        if tail.wrapping_sub(self.cached_head) < self.lane.cap {
            return true;
        }
        // Acquire: as in `push`.
        self.cached_head = self.lane.head().load(Ordering::Acquire);
        tail.wrapping_sub(self.cached_head) < self.lane.cap
    }

    pub fn capacity(&self) -> usize {
        self.lane.cap as usize
    }
}

/// The receiving end of a lane.
pub struct Consumer {
    lane: LaneRef,
    cached_tail: u64,
    corrupt: u64,
}

impl Consumer {
    pub fn new(region: Arc<Region>, lane: usize) -> Consumer {
        let lane = LaneRef::new(region, lane);
        let cached_tail = lane.tail().load(Ordering::Acquire);
        Consumer { lane, cached_tail, corrupt: 0 }
    }

    /// Takes the oldest entry, if any.
    pub fn pop(&mut self) -> Option<Descriptor> {
        // Relaxed: only this consumer writes the head.
        let head = self.lane.head().load(Ordering::Relaxed);
        if head == self.cached_tail {
            // Acquire: makes the producer's entry writes before `tail` visible.
            self.cached_tail = self.lane.tail().load(Ordering::Acquire);
            if head == self.cached_tail {
                return None;
            }
        }
        if self.cached_tail.wrapping_sub(head) > self.lane.cap {
            // A buggy peer moved the tail beyond what the ring can hold: nothing in
            // it can be trusted, so skip to the tail instead of reading garbage.
            self.corrupt += 1;
            self.lane.head().store(self.cached_tail, Ordering::Release);
            return None;
        }
        // SAFETY: entry `head` is in bounds and aligned, and was published by the
        // producer's Release store of a tail beyond it (observed above); the
        // producer will not overwrite it until we publish head + 1 below.
        let d = unsafe { self.lane.entry(head).read_volatile() };
        // Release: tells the producer we are done reading this entry.
        self.lane.head().store(head + 1, Ordering::Release);
        Some(d)
    }

    /// Whether a pop would find nothing right now.
    pub fn is_empty(&self) -> bool {
        let head = self.lane.head().load(Ordering::Relaxed);
        head == self.lane.tail().load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.lane.occupancy().unwrap_or(0) as usize
    }

    /// How many times the lane was found corrupt and skipped.
    pub fn corrupt_count(&self) -> u64 {
        self.corrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LayoutParams, ProcId, SlotClass, Topology};

    fn region(cap: usize) -> Arc<Region> {
        let p = LayoutParams::new(Topology { gpus: 1, preprocs: 1 }, 1, cap, &[SlotClass { size: 4096, count: 1 }])
            .unwrap();
        Arc::new(Region::heap(&p).unwrap())
    }

    fn d(i: u64) -> Descriptor {
        Descriptor { request_id: i, ..Default::default() }
    }

    #[test]
    fn fifo_and_full() {
        let r = region(4);
        let lane = r.layout().lane(ProcId(0), ProcId(1)).unwrap();
        let mut p = Producer::new(r.clone(), lane);
        let mut c = Consumer::new(r.clone(), lane);
        assert!(c.pop().is_none());
        for i in 0..4 {
            p.push(&d(i)).unwrap();
        }
        assert_eq!(p.push(&d(99)).unwrap_err().request_id, 99, "full lane gives the entry back");
        assert_eq!(c.len(), 4);
        assert_eq!(c.pop().unwrap().request_id, 0);
        p.push(&d(4)).unwrap();
        let rest: Vec<u64> = std::iter::from_fn(|| c.pop()).map(|d| d.request_id).collect();
        assert_eq!(rest, vec![1, 2, 3, 4]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_new_consumer_resumes_where_the_old_one_stopped() {
        let r = region(8);
        let lane = r.layout().lane(ProcId(1), ProcId(0)).unwrap();
        let mut p = Producer::new(r.clone(), lane);
        for i in 0..5 {
            p.push(&d(i)).unwrap();
        }
        let mut c = Consumer::new(r.clone(), lane);
        assert_eq!(c.pop().unwrap().request_id, 0);
        drop(c); // the "process" dies after one entry
        let mut c = Consumer::new(r.clone(), lane);
        assert_eq!(c.pop().unwrap().request_id, 1);
    }

    #[test]
    fn corrupt_tail_is_skipped_not_read() {
        let r = region(4);
        let lane = r.layout().lane(ProcId(0), ProcId(1)).unwrap();
        let mut c = Consumer::new(r.clone(), lane);
        let tail_off = r.layout().lane_offset(lane) + 64;
        r.atomic_u64(tail_off).store(1_000, Ordering::Release);
        assert!(c.pop().is_none());
        assert_eq!(c.corrupt_count(), 1);
        let mut p = Producer::new(r.clone(), lane);
        p.push(&d(7)).unwrap();
        assert_eq!(c.pop().unwrap().request_id, 7, "the lane works again after the skip");
    }

    #[test]
    fn threads_transfer_every_entry_in_order() {
        let r = region(64);
        let lane = r.layout().lane(ProcId(0), ProcId(1)).unwrap();
        let mut p = Producer::new(r.clone(), lane);
        let mut c = Consumer::new(r.clone(), lane);
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            for i in 0..N {
                let mut x = d(i);
                x.aux = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while let Err(back) = p.push(&x) {
                    x = back;
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0;
        while next < N {
            if let Some(x) = c.pop() {
                assert_eq!(x.request_id, next);
                assert_eq!(x.aux, next.wrapping_mul(0x9E37_79B9_7F4A_7C15), "torn entry");
                next += 1;
            }
        }
        t.join().unwrap();
    }
}
