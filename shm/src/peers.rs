//! A process's outboxes to every peer, and the sends that every process
//! makes the same way: hand a slot on (waiting a moment while the receiver
//! is behind), fail a request back to the frontend, and pick the inference
//! worker to send tensors to.

use std::sync::Arc;

use crate::mailbox::{SEND_PATIENCE, Wiring};
use crate::region::ProcState;
use crate::{Descriptor, Held, Outbox, ProcId, Region, ShmError, Slot, SlotPool, Status};

/// One process's view of the others.
pub struct Peers {
    me: ProcId,
    pool: SlotPool,
    /// Indexed by process id; `None` where the topology has no lane (this
    /// process, and the processes of its own role).
    outboxes: Vec<Option<Outbox>>,
}

impl Peers {
    pub fn new(wiring: &Wiring) -> Peers {
        let region = wiring.region();
        let procs = region.layout().topology().procs();
        Peers {
            me: wiring.me(),
            pool: SlotPool::new(region.clone()),
            outboxes: (0..procs).map(|p| wiring.outbox(ProcId(p as u16))).collect(),
        }
    }

    pub fn me(&self) -> ProcId {
        self.me
    }

    pub fn pool(&self) -> &SlotPool {
        &self.pool
    }

    pub fn region(&self) -> &Arc<Region> {
        self.pool.region()
    }

    /// The lane to `to`; a process there is no lane to counts as gone.
    pub fn outbox(&self, to: ProcId) -> Result<&Outbox, ShmError> {
        self.outboxes.get(to.0 as usize).and_then(Option::as_ref).ok_or(ShmError::PeerGone(to))
    }

    /// Every lane out of this process.
    pub fn outboxes(&self) -> impl Iterator<Item = &Outbox> {
        self.outboxes.iter().flatten()
    }

    /// Whether `p` has reported ready and not died since.
    pub fn is_ready(&self, p: ProcId) -> bool {
        self.region().proc_state(p) == ProcState::Ready
    }

    /// Hands `slot` to `to` with `d`, waiting up to [`SEND_PATIENCE`] while
    /// the lane is full; after that the slot is freed and the error returned.
    pub fn send(&self, to: ProcId, d: Descriptor, slot: Slot) -> Result<(), ShmError> {
        self.outbox(to)?.send_slot_wait(d, slot, SEND_PATIENCE)
    }

    /// Hands on what came with a request: a slot this process owns (given),
    /// or the frontend's loan (lent on, with the same slot), waiting as
    /// [`Peers::send`] does.
    pub fn send_held(&self, to: ProcId, d: Descriptor, held: impl Into<Held>) -> Result<(), ShmError> {
        match held.into() {
            Held::Owned(slot) => self.send(to, d, slot),
            Held::Lent(lent) => self.outbox(to)?.send_wait(
                &Descriptor { slot: lent.index(), flags: d.flags | crate::desc::FLAG_LENT, ..d },
                SEND_PATIENCE,
            ),
        }
    }

    /// Fails the request of `d` towards the frontend, reusing `slot` (when it
    /// is large enough) for the message. A frontend that cannot be told is
    /// logged: it times the request out itself.
    pub fn fail(&self, d: &Descriptor, slot: Option<Slot>, status: Status, message: &str) {
        tracing::debug!(request_id = d.request_id, "request failed: {message}");
        let sent =
            self.outbox(ProcId::FRONTEND).and_then(|o| o.send_error(&self.pool, self.me, d, slot, status, message));
        if let Err(e) = sent {
            tracing::warn!(request_id = d.request_id, "could not report a failure to the frontend: {e}");
        }
    }

    /// The ready inference worker with the fewest descriptors waiting from
    /// this process; `None` while none is ready (all restarting), so that
    /// the caller fails the request rather than leave it in a dead worker's
    /// lane.
    pub fn ready_gpu(&self) -> Option<ProcId> {
        let topo = self.region().layout().topology();
        (0..topo.gpus)
            .map(|i| topo.gpu(i))
            .filter(|&p| self.is_ready(p))
            .filter_map(|p| self.outbox(p).ok())
            .min_by_key(|o| o.backlog())
            .map(Outbox::to)
    }
}
