//! The batcher's cost per request: queueing requests and cutting batches
//! (`BatchState::push` + `next_batch`), single-threaded, for queue depths
//! the daemon sees (16 to 256 requests waiting), one and several priority
//! levels and shapes, with deadlines set (the common case with timeouts).
//!
//! `cargo bench -p gpu-worker --bench batcher`

use std::hint::black_box;
use std::time::Instant;

use gpu_worker::batcher::{BatchState, Limits, Next, Pending};

fn pending(i: u64, now: u64, levels: u64, shapes: u64) -> Pending<u64> {
    Pending {
        item: i,
        rows: 1,
        shape_key: i % shapes,
        arrived_ns: now,
        deadline_ns: now + 30_000_000_000,
        priority: (i % levels) as u8,
    }
}

/// Keeps `depth` requests queued: each round pushes one batch's worth and
/// cuts one batch, so every batch is cut from a queue of about `depth`.
fn run(depth: u64, max_rows: u32, levels: u64, shapes: u64) {
    let limits = Limits { max_rows, preferred: vec![], max_queue_delay_ns: 0 };
    let mut q = BatchState::new();
    let mut now = 1_000_000_000u64;
    let mut i = 0u64;
    for _ in 0..depth {
        q.push(pending(i, now, levels, shapes));
        i += 1;
    }
    let (mut requests, mut batches) = (0u64, 0u64);
    let start = Instant::now();
    while requests < 2_000_000 {
        now += 1000;
        if let Next::Run(batch) = q.next_batch(&limits, now) {
            let n = batch.len() as u64;
            black_box(&batch);
            requests += n;
            batches += 1;
            for _ in 0..n {
                q.push(pending(i, now, levels, shapes));
                i += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "depth {depth:>3}, max batch {max_rows:>2}, {levels} priority level(s), {shapes} shape(s): \
         {:7.0} ns per request, {:7.0} ns per batch of {:.1}",
        secs * 1e9 / requests as f64,
        secs * 1e9 / batches as f64,
        requests as f64 / batches as f64
    );
}

fn main() {
    println!("BatchState push + next_batch, one thread");
    for depth in [16, 64, 256] {
        run(depth, 32, 1, 1);
    }
    run(256, 8, 1, 1);
    run(256, 32, 3, 1);
    run(256, 32, 1, 4);
}
