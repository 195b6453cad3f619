//! Shared memory: descriptors waiting in each ring, and data slots in use by
//! size class.

use std::sync::Arc;

use shm::{Region, SlotPool};

use super::Out;
use super::process::proc_name;

pub(super) fn render(out: &mut Out, region: &Arc<Region>) {
    let topo = region.layout().topology();
    out.family("highserve_ring_occupancy", "gauge", "Descriptors waiting in each process-to-process ring");
    for (from, to) in topo.lane_pairs() {
        if let Some(lane) = region.layout().lane(from, to) {
            let ring = format!("ring=\"{}->{}\"", proc_name(topo, from), proc_name(topo, to));
            out.sample("highserve_ring_occupancy", &ring, shm::lane::occupancy(region, lane));
        }
    }
    out.family("highserve_shm_slots_in_use", "gauge", "Shared-memory data slots in use, by slot size in bytes");
    out.family("highserve_shm_slots", "gauge", "Shared-memory data slots, by slot size in bytes");
    let pool = SlotPool::new(region.clone());
    for (size, used, count) in pool.occupancy() {
        out.sample("highserve_shm_slots_in_use", &format!("size=\"{size}\""), used);
        out.sample("highserve_shm_slots", &format!("size=\"{size}\""), count);
    }
    let m = pool.memory();
    let families: [(&str, &str, &str, u64); 5] = [
        ("highserve_shm_used_bytes", "gauge", "Bytes of the shared-memory slots held by requests now", m.used),
        (
            "highserve_shm_committed_bytes",
            "gauge",
            "Bytes of the shared-memory slots whose pages hold memory (used once and not released)",
            m.committed,
        ),
        ("highserve_shm_ceiling_bytes", "gauge", "shm.max_bytes: the most the slots may commit (0: none)", m.ceiling),
        ("highserve_shm_slot_bytes", "gauge", "Bytes of all shared-memory slots (address space, not memory)", m.slots),
        (
            "highserve_shm_released_bytes_total",
            "counter",
            "Bytes of idle slots' pages returned to the kernel (shm.release_idle_secs)",
            m.released,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        out.sample(name, "", value);
    }
}
