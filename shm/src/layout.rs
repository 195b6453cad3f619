//! Where everything sits in the region. Pure arithmetic: every process
//! computes the same [`Layout`] from the [`LayoutParams`] stored in the header.

use bytemuck::{Pod, Zeroable};

use crate::{ProcId, Role, ShmError};

/// The most slot size classes a region can have.
pub const MAX_CLASSES: usize = 8;
/// Slots are page-aligned so a CUDA worker can register them as pinned memory.
pub const SLOT_ALIGN: usize = 4096;
/// Bytes of one lane's head and tail (each on its own cache line).
pub const LANE_HEADER: usize = 128;
/// Bytes of one process-table entry (one cache line).
pub const PROC_ENTRY: usize = 64;
/// Bytes of one slot's metadata: owner word, commit stamp
/// ([`crate::slots`]), request id.
pub const SLOT_META: usize = 16;
/// Bytes reserved for the region header.
pub const HEADER_LEN: usize = 4096;
/// Where in the header the pool's counters sit: bytes committed now, held
/// now, and returned to the kernel so far (three `u64`s, after the
/// header's fixed part).
pub const POOL_COUNTERS: usize = 2048;

/// How many processes of each kind share the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub gpus: u16,
    pub preprocs: u16,
}

impl Topology {
    pub fn procs(&self) -> usize {
        1 + self.gpus as usize + self.preprocs as usize
    }

    pub fn gpu(&self, index: u16) -> ProcId {
        debug_assert!(index < self.gpus, "gpu index out of range; this is a bug");
        ProcId(1 + index)
    }

    pub fn preproc(&self, index: u16) -> ProcId {
        debug_assert!(index < self.preprocs, "preproc index out of range; this is a bug");
        ProcId(1 + self.gpus + index)
    }

    pub fn role(&self, p: ProcId) -> Option<Role> {
        let i = p.0;
        if i == 0 {
            Some(Role::Frontend)
        } else if i <= self.gpus {
            Some(Role::Gpu(i - 1))
        } else if (i as usize) < self.procs() {
            Some(Role::Preproc(i - 1 - self.gpus))
        } else {
            None
        }
    }

    /// The process that plays `role`, if the topology has it.
    pub fn proc_of(&self, role: Role) -> Option<ProcId> {
        match role {
            Role::Frontend => Some(ProcId::FRONTEND),
            Role::Gpu(i) if i < self.gpus => Some(self.gpu(i)),
            Role::Preproc(i) if i < self.preprocs => Some(self.preproc(i)),
            _ => None,
        }
    }

    /// Lanes connect processes of different roles only: preproc workers never
    /// talk to each other, nor inference workers.
    fn connected(&self, from: ProcId, to: ProcId) -> bool {
        match (self.role(from), self.role(to)) {
            (Some(a), Some(b)) => std::mem::discriminant(&a) != std::mem::discriminant(&b),
            _ => false,
        }
    }

    /// Every ordered pair that has a lane, in lane-index order.
    pub fn lane_pairs(&self) -> impl Iterator<Item = (ProcId, ProcId)> + '_ {
        let n = self.procs() as u16;
        (0..n).flat_map(move |f| (0..n).map(move |t| (ProcId(f), ProcId(t))).filter(|&(a, b)| self.connected(a, b)))
    }
}

/// One size class of data slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotClass {
    pub size: usize,
    pub count: u32,
}

/// The parameters a region is built from; stored in its header so that
/// children attach without being told them again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LayoutParams {
    pub gpus: u32,
    pub preprocs: u32,
    pub models: u32,
    pub lane_capacity: u32,
    pub classes: u32,
    pub _pad: u32,
    pub class_sizes: [u64; MAX_CLASSES],
    pub class_counts: [u32; MAX_CLASSES],
    /// The most bytes of slots that may hold memory at once (0: no
    /// ceiling). Slots commit their pages on first use
    /// ([`crate::SlotPool::alloc`]); one whose pages would cross this is
    /// not used.
    pub max_committed: u64,
}

impl LayoutParams {
    pub fn new(
        topology: Topology,
        models: usize,
        lane_capacity: usize,
        classes: &[SlotClass],
    ) -> Result<LayoutParams, ShmError> {
        if classes.is_empty() || classes.len() > MAX_CLASSES {
            return Err(ShmError::BadLayout(format!(
                "{} slot classes given; 1 to {MAX_CLASSES} are accepted",
                classes.len()
            )));
        }
        let mut p = LayoutParams {
            gpus: topology.gpus as u32,
            preprocs: topology.preprocs as u32,
            models: models as u32,
            lane_capacity: lane_capacity as u32,
            classes: classes.len() as u32,
            ..Zeroable::zeroed()
        };
        let mut sorted = classes.to_vec();
        sorted.sort_by_key(|c| c.size);
        for (i, c) in sorted.iter().enumerate() {
            p.class_sizes[i] = c.size as u64;
            p.class_counts[i] = c.count;
        }
        Layout::new(&p)?;
        Ok(p)
    }

    /// The same layout with a ceiling on committed slot bytes (0: none).
    pub fn with_ceiling(self, bytes: u64) -> LayoutParams {
        LayoutParams { max_committed: bytes, ..self }
    }

    pub fn topology(&self) -> Topology {
        Topology { gpus: self.gpus as u16, preprocs: self.preprocs as u16 }
    }

    /// Bytes of all slots together.
    pub fn slot_bytes(&self) -> u64 {
        (0..self.classes as usize).map(|i| self.class_sizes[i] * self.class_counts[i] as u64).sum()
    }

    pub fn slot_classes(&self) -> Vec<SlotClass> {
        (0..self.classes as usize)
            .map(|i| SlotClass { size: self.class_sizes[i] as usize, count: self.class_counts[i] })
            .collect()
    }
}

/// Byte offsets of every part of the region.
#[derive(Clone, Debug)]
pub struct Layout {
    pub params: LayoutParams,
    pub procs_offset: usize,
    pub lanes_offset: usize,
    pub lane_stride: usize,
    /// `lane_index[from * procs + to]`, `u32::MAX` where there is no lane.
    lane_index: Vec<u32>,
    pub lanes: usize,
    pub stats_offset: usize,
    pub step_stats_offset: usize,
    /// Stage histograms: `models x STAGES` of them.
    pub hist_offset: usize,
    pub slot_meta_offset: usize,
    /// Per class: (first global slot index, data offset of its first slot).
    pub class_starts: Vec<(u32, usize)>,
    pub total_slots: u32,
    pub total_len: usize,
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

impl Layout {
    pub fn new(p: &LayoutParams) -> Result<Layout, ShmError> {
        let bad = |m: String| Err(ShmError::BadLayout(m));
        let cap = p.lane_capacity as usize;
        if !cap.is_power_of_two() || !(2..=1 << 20).contains(&cap) {
            return bad(format!("lane capacity {cap} must be a power of two between 2 and 1048576"));
        }
        if p.classes == 0 || p.classes as usize > MAX_CLASSES {
            return bad(format!("{} slot classes; 1 to {MAX_CLASSES} are accepted", p.classes));
        }
        if p.gpus == 0 || p.preprocs == 0 || p.gpus + p.preprocs > 4096 {
            return bad(format!(
                "{} inference and {} preproc workers; at least one of each and at most 4096 in all",
                p.gpus, p.preprocs
            ));
        }
        let topo = p.topology();
        let procs = topo.procs();
        let procs_offset = HEADER_LEN;
        let lanes_offset = align_up(procs_offset + procs * PROC_ENTRY, 64);
        let lane_stride = LANE_HEADER + cap * std::mem::size_of::<crate::Descriptor>();
        let mut lane_index = vec![u32::MAX; procs * procs];
        let mut lanes = 0usize;
        for (f, t) in topo.lane_pairs() {
            lane_index[f.0 as usize * procs + t.0 as usize] = lanes as u32;
            lanes += 1;
        }
        let stats_offset = align_up(lanes_offset + lanes * lane_stride, 64);
        let stats_len = p.gpus as usize * p.models as usize * crate::stats::MODEL_STATS_LEN;
        let step_stats_offset = align_up(stats_offset + stats_len, 64);
        let step_stats_len = p.models as usize * crate::stats::STEP_STATS_LEN;
        let hist_offset = align_up(step_stats_offset + step_stats_len, 64);
        let hist_len = p.models as usize * crate::stats::STAGE_HIST_LEN;
        let slot_meta_offset = align_up(hist_offset + hist_len, 64);
        let mut total_slots: u64 = 0;
        for i in 0..p.classes as usize {
            let size = p.class_sizes[i] as usize;
            if size == 0 || !size.is_multiple_of(SLOT_ALIGN) {
                return bad(format!("slot size {size} must be a positive multiple of {SLOT_ALIGN} bytes"));
            }
            if size > u32::MAX as usize {
                return bad(format!("slot size {size} is over the 4 GiB limit"));
            }
            if i > 0 && p.class_sizes[i - 1] >= p.class_sizes[i] {
                return bad("slot classes must have distinct sizes".into());
            }
            if p.class_counts[i] == 0 {
                return bad(format!("slot class of {size} bytes has no slots"));
            }
            total_slots += p.class_counts[i] as u64;
        }
        if total_slots >= u32::MAX as u64 {
            return bad(format!("{total_slots} slots; fewer than 2^32 are accepted"));
        }
        let mut off = align_up(slot_meta_offset + total_slots as usize * SLOT_META, SLOT_ALIGN);
        let mut first = 0u32;
        let mut class_starts = Vec::new();
        for i in 0..p.classes as usize {
            class_starts.push((first, off));
            first += p.class_counts[i];
            off = off
                .checked_add(p.class_sizes[i] as usize * p.class_counts[i] as usize)
                .ok_or_else(|| ShmError::BadLayout("region size overflows".into()))?;
        }
        Ok(Layout {
            params: *p,
            procs_offset,
            lanes_offset,
            lane_stride,
            lane_index,
            lanes,
            stats_offset,
            step_stats_offset,
            hist_offset,
            slot_meta_offset,
            class_starts,
            total_slots: total_slots as u32,
            total_len: off,
        })
    }

    pub fn topology(&self) -> Topology {
        self.params.topology()
    }

    pub fn lane(&self, from: ProcId, to: ProcId) -> Option<usize> {
        let procs = self.topology().procs();
        if from.0 as usize >= procs || to.0 as usize >= procs {
            return None;
        }
        match self.lane_index[from.0 as usize * procs + to.0 as usize] {
            u32::MAX => None,
            i => Some(i as usize),
        }
    }

    pub fn lane_offset(&self, lane: usize) -> usize {
        self.lanes_offset + lane * self.lane_stride
    }

    pub fn proc_offset(&self, p: ProcId) -> usize {
        self.procs_offset + p.0 as usize * PROC_ENTRY
    }

    pub fn stats_offset_of(&self, gpu: u16, model: u16) -> usize {
        self.stats_offset
            + (gpu as usize * self.params.models as usize + model as usize) * crate::stats::MODEL_STATS_LEN
    }

    /// Class index, size and data offset of a global slot index.
    pub fn slot(&self, index: u32) -> Option<(usize, usize, usize)> {
        for (c, &(first, off)) in self.class_starts.iter().enumerate() {
            let count = self.params.class_counts[c];
            if index >= first && index < first + count {
                let size = self.params.class_sizes[c] as usize;
                return Some((c, size, off + (index - first) as usize * size));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> LayoutParams {
        LayoutParams::new(
            Topology { gpus: 1, preprocs: 3 },
            2,
            64,
            &[SlotClass { size: 1 << 20, count: 4 }, SlotClass { size: 64 << 10, count: 10 }],
        )
        .unwrap()
    }

    #[test]
    fn lanes_join_different_roles_only() {
        let l = Layout::new(&params()).unwrap();
        let t = l.topology();
        // frontend<->gpu (2) + frontend<->preproc (6) + gpu<->preproc (6)
        assert_eq!(l.lanes, 14);
        assert!(l.lane(ProcId::FRONTEND, t.gpu(0)).is_some());
        assert!(l.lane(t.preproc(0), t.preproc(1)).is_none());
        assert!(l.lane(ProcId::FRONTEND, ProcId::FRONTEND).is_none());
        assert!(l.lane(ProcId(99), ProcId::FRONTEND).is_none());
        let mut seen: Vec<usize> = t.lane_pairs().map(|(a, b)| l.lane(a, b).unwrap()).collect();
        seen.dedup();
        assert_eq!(seen, (0..14).collect::<Vec<_>>());
    }

    #[test]
    fn classes_are_sorted_aligned_and_disjoint() {
        let l = Layout::new(&params()).unwrap();
        assert_eq!(l.params.class_sizes[0], 64 << 10, "smallest class first");
        assert_eq!(l.total_slots, 14);
        let mut prev_end = l.slot_meta_offset + 14 * SLOT_META;
        for i in 0..l.total_slots {
            let (_, size, off) = l.slot(i).unwrap();
            assert_eq!(off % SLOT_ALIGN, 0);
            assert!(off >= prev_end, "slot {i} overlaps its predecessor");
            prev_end = off + size;
        }
        assert_eq!(prev_end, l.total_len);
        assert!(l.slot(14).is_none());
    }

    #[test]
    fn rejects_bad_parameters() {
        let topo = Topology { gpus: 1, preprocs: 1 };
        let one = [SlotClass { size: 4096, count: 1 }];
        assert!(LayoutParams::new(topo, 1, 100, &one).is_err(), "capacity not a power of two");
        assert!(LayoutParams::new(topo, 1, 64, &[SlotClass { size: 1000, count: 1 }]).is_err());
        assert!(LayoutParams::new(topo, 1, 64, &[SlotClass { size: 4096, count: 0 }]).is_err());
        assert!(LayoutParams::new(topo, 1, 64, &[]).is_err());
        let dup = [SlotClass { size: 4096, count: 1 }, SlotClass { size: 4096, count: 2 }];
        assert!(LayoutParams::new(topo, 1, 64, &dup).is_err());
        assert!(LayoutParams::new(Topology { gpus: 0, preprocs: 1 }, 1, 64, &one).is_err());
    }
}
