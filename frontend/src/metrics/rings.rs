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
    for (size, used, count) in SlotPool::new(region.clone()).occupancy() {
        out.sample("highserve_shm_slots_in_use", &format!("size=\"{size}\""), used);
        out.sample("highserve_shm_slots", &format!("size=\"{size}\""), count);
    }
}
