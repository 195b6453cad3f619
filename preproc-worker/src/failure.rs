//! Why a request failed here, and the two moves every job makes that can
//! fail it for a reason of the daemon's rather than the request's: handing a
//! slot on to a peer that is not keeping up, and finding no inference worker
//! ready. The failure itself goes back to the frontend through
//! [`shm::Peers::fail`].

use shm::{Descriptor, Held, Peers, ProcId, ShmError, Status};

/// Why one request failed: its status class and a message for the client.
pub(crate) struct Failure {
    pub status: Status,
    pub message: String,
    /// No shared-memory slot was free (though one of the size exists): the
    /// pipeline engine parks the request until one is, instead of failing it.
    pub no_slot: bool,
    /// No inference worker was ready (one is restarting): the worker sets the
    /// job aside until one is, within the request's deadline.
    pub no_worker: bool,
}

impl Failure {
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into(), no_slot: false, no_worker: false }
    }

    pub fn input(message: impl Into<String>) -> Failure {
        Failure::new(Status::InvalidInput, message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(Status::Internal, message)
    }
}

impl From<ShmError> for Failure {
    fn from(e: ShmError) -> Failure {
        let status = e.status();
        // NoSlot for more than the largest slot can never succeed: not worth waiting for.
        let no_slot = e.may_free();
        Failure { status, message: e.to_string(), no_slot, no_worker: false }
    }
}

/// Hands `slot` to `to` with `d`, waiting up to [`shm::mailbox::SEND_PATIENCE`]
/// while its lane is full; a peer still behind after that fails the request.
pub(crate) fn send(peers: &Peers, to: ProcId, d: Descriptor, slot: impl Into<Held>) -> Result<(), Failure> {
    peers
        .send_held(to, d, slot)
        .map_err(|e| Failure::new(Status::Unavailable, format!("the {to:?} process is not keeping up: {e}")))
}

/// The inference worker to send tensors to: the ready one with the shortest
/// queue from us. With none ready (restarting) the job waits for one rather
/// than go to a dead worker's queue (`Failure::no_worker`).
pub(crate) fn ready_gpu(peers: &Peers) -> Result<ProcId, Failure> {
    peers.ready_gpu().ok_or_else(|| Failure {
        no_worker: true,
        ..Failure::new(Status::Unavailable, "no inference worker came back ready before the request's deadline")
    })
}
