//! A buggy or hostile peer writing garbage into shared memory: arbitrary
//! descriptors (slot index, range, request id, kind), arbitrary lane
//! counters, arbitrary tensor tables. The reader must answer with errors and
//! never crash or read outside the region.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use shm::lane::{Consumer, Producer};
use shm::tensor::read_table;
use shm::{Descriptor, LayoutParams, ProcId, Region, SlotClass, SlotPool, Topology};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static REGION: Arc<Region> = {
            let p = LayoutParams::new(
                Topology { gpus: 1, preprocs: 1 },
                2,
                8,
                &[SlotClass { size: 4096, count: 4 }, SlotClass { size: 16384, count: 2 }],
            )
            .unwrap();
            Arc::new(Region::heap(&p).unwrap())
        };
    }
    if data.len() < 64 {
        return;
    }
    let (desc_bytes, payload) = data.split_at(64);
    let d: Descriptor = bytemuck::pod_read_unaligned(desc_bytes);
    REGION.with(|region| {
        let pool = SlotPool::new(region.clone());
        let (sender, me) = (ProcId(2), ProcId(1));
        // A real slot the sender hands over, filled with the fuzzer's bytes;
        // the descriptor may or may not point at it.
        let Ok(mut slot) = pool.alloc(payload.len().max(1), sender, d.request_id) else { return };
        let n = payload.len().min(slot.capacity());
        slot.as_mut_slice()[..n].copy_from_slice(&payload[..n]);
        let _ = slot.send_to(me);
        let lane = region.layout().lane(sender, me).unwrap();
        let mut producer = Producer::new(region.clone(), lane);
        let mut consumer = Consumer::new(region.clone(), lane);
        let _ = producer.push(&d);
        while let Some(got) = consumer.pop() {
            if let Ok(s) = pool.adopt(sender, me, &got) {
                if let Ok(metas) = read_table(s.as_slice(), got.offset as usize, got.len as usize) {
                    for m in metas {
                        // Touch every byte a reader would: it must be inside the slot.
                        let sum: u64 = s.as_slice()[m.offset..m.offset + m.len].iter().map(|&b| b as u64).sum();
                        std::hint::black_box(sum);
                    }
                }
            }
        }
        // Whatever happened, the sender's slot is freed for the next run.
        pool.reclaim(me);
        pool.reclaim(sender);
    });
});
