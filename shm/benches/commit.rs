//! What committing pages on first use costs the hot path: the time to copy a
//! resnet50 input (3x224x224 FP32, 588 KiB) into a slot whose pages are
//! committed already (the steady state: the pool reuses the lowest free
//! slot) and into one whose pages are not (its first use, or its first use
//! after `release_idle` punched a hole over it: the kernel faults in and
//! zeroes each page). Medians of many copies, in µs.
//!
//! `cargo bench -p shm --bench commit`

use std::sync::Arc;
use std::time::{Duration, Instant};

use shm::{LayoutParams, ProcId, Region, SlotClass, SlotPool, Topology};

const TENSOR: usize = 3 * 224 * 224 * 4;
const ROUNDS: usize = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let classes = [SlotClass { size: 1 << 20, count: 4 }];
    let params = LayoutParams::new(Topology { gpus: 1, preprocs: 1 }, 1, 64, &classes).unwrap();
    let pool = SlotPool::new(Arc::new(Region::create("shm-bench-commit", &params).unwrap()));
    let tensor = vec![7u8; TENSOR];
    let copy = || {
        let mut slot = pool.alloc(TENSOR, ProcId(1), 1).unwrap();
        let started = Instant::now();
        slot.as_mut_slice()[..TENSOR].copy_from_slice(&tensor);
        started.elapsed().as_secs_f64() * 1e6
    };
    let (mut committed, mut fresh) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        pool.release_idle(Duration::ZERO);
        fresh.push(copy());
        committed.push(copy());
    }
    let (c, f) = (median(committed), median(fresh));
    println!("copy of {TENSOR} bytes into a slot, median of {ROUNDS}:");
    println!("  pages committed (the steady state):                      {c:8.1} µs");
    println!("  pages not committed (first use, or after release_idle): {f:8.1} µs ({:.1}x)", f / c);
}
