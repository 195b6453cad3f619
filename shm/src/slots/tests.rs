//! The allocator's protocol: classes, ownership hand-offs, reclaim, and
//! which slots hold memory.

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
    let d =
        Descriptor { request_id: 7, slot: slot.index(), len: 3, flags: crate::desc::FLAG_LENT, ..Default::default() };
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

/// A memfd region (as the supervisor makes it) with four 4 KiB slots and
/// one of 16 KiB, and `ceiling` committed bytes at most.
fn memfd_pool(ceiling: u64) -> SlotPool {
    let p = LayoutParams::new(
        Topology { gpus: 1, preprocs: 1 },
        1,
        4,
        &[SlotClass { size: 4096, count: 4 }, SlotClass { size: 16384, count: 1 }],
    )
    .unwrap()
    .with_ceiling(ceiling);
    SlotPool::new(Arc::new(Region::create("highserve-slots-test", &p).unwrap()))
}

#[test]
fn the_lowest_free_slot_is_taken_so_memory_follows_the_peak_in_use() {
    let pool = memfd_pool(0);
    let me = ProcId(0);
    for round in 0..5 {
        let a = pool.alloc(10, me, round).unwrap();
        let b = pool.alloc(10, me, round).unwrap();
        assert_eq!((a.index(), b.index()), (0, 1), "round {round}");
    }
    let m = pool.memory();
    assert_eq!((m.committed, m.slots, m.ceiling), (2 * 4096, 4 * 4096 + 16384, 0));
}

#[test]
fn the_ceiling_keeps_slots_never_used_untouched() {
    let pool = memfd_pool(3 * 4096);
    let me = ProcId(0);
    let held: Vec<Slot> = (0..3).map(|i| pool.alloc(10, me, i).unwrap()).collect();
    // A fourth small slot, or the large one, would cross the ceiling.
    match pool.alloc(10, me, 9) {
        Err(ShmError::Ceiling { wanted: 10, committed, ceiling }) => assert_eq!((committed, ceiling), (12288, 12288)),
        other => panic!("expected the ceiling, got {other:?}"),
    }
    let text = pool.alloc(10, me, 9).unwrap_err().to_string();
    assert!(text.contains("shm.max_bytes"), "{text}");
    drop(held);
    // Committed slots are reused under the ceiling.
    let again: Vec<Slot> = (0..3).map(|i| pool.alloc(10, me, i).unwrap()).collect();
    assert_eq!(pool.memory().committed, 3 * 4096);
    drop(again);
}

#[test]
fn idle_slots_return_their_pages_and_commit_again_when_used() {
    let pool = memfd_pool(0);
    let me = ProcId(0);
    let mut a = pool.alloc(10, me, 1).unwrap();
    a.as_mut_slice()[..4].copy_from_slice(b"data");
    let busy = pool.alloc(10, me, 2).unwrap();
    drop(a);
    // Nothing has been idle for an hour; everything free has been idle for 0 s.
    assert_eq!(pool.release_idle(std::time::Duration::from_secs(3600)), 0);
    assert_eq!(pool.release_idle(std::time::Duration::ZERO), 4096, "the free slot only, not the busy one");
    let m = pool.memory();
    assert_eq!((m.committed, m.released), (4096, 4096));
    let a = pool.alloc(10, me, 3).unwrap();
    assert_eq!(a.index(), 0);
    assert_eq!(&a.as_slice()[..4], &[0; 4], "a released slot's pages come back zeroed");
    assert_eq!(pool.memory().committed, 2 * 4096);
    drop((a, busy));
}

#[test]
fn releasing_while_others_allocate_keeps_the_committed_count_true() {
    // The committed count must stay the bytes of the slots that hold pages,
    // however allocations and releases interleave (each side checks the
    // stamp again once the slot is its own). A heap region: releasing is
    // only the bookkeeping, so the two sides meet far more often.
    let pool = pool();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..3u16 {
            let pool = pool.clone();
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut slot) = pool.alloc(10, ProcId(t), 1) {
                        slot.as_mut_slice()[0] = 1;
                    }
                }
            });
        }
        let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < end {
            pool.release_idle(std::time::Duration::ZERO);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let layout = pool.region.layout();
    let holding: u64 = (0..layout.total_slots)
        .filter(|&i| pool.stamp_word(i).load(Ordering::Relaxed) != 0)
        .map(|i| layout.slot(i).unwrap().1 as u64)
        .sum();
    let m = pool.memory();
    assert_eq!(m.committed, holding, "{m:?}");
    assert_eq!(m.used, 0, "{m:?}");
}
