//! The fixed-size record that travels through the lanes. It holds offsets,
//! never pointers, so it means the same thing in every process.

use bytemuck::{Pod, Zeroable};

/// Index of a process in the region's process table.
///
/// Numbering: 0 is the frontend, `1..=gpus` the inference workers, then the
/// preproc workers. The supervisor has no mailbox; it talks to children over
/// their control sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId(pub u16);

impl ProcId {
    pub const FRONTEND: ProcId = ProcId(0);
}

/// `slot` value of a descriptor that carries no slot.
pub const NO_SLOT: u32 = u32::MAX;

/// What a descriptor's payload is. Stored as `u8`; unknown values from a buggy
/// peer decode to `None` and are rejected by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Frontend → preproc: encoded images, BYTES-serialized (u32 length + bytes,
    /// repeated `rows` times).
    Images = 1,
    /// → inference worker: a tensor table with the model's inputs.
    Tensors = 2,
    /// Inference worker → `reply_to`: a tensor table with the model's outputs.
    Outputs = 3,
    /// Preproc → frontend: a finished response body (JSON).
    Response = 4,
    /// Any → frontend: the request failed; payload is a UTF-8 message.
    Error = 5,
    /// Frontend → workers: the client went away (or the request timed out);
    /// drop the request if it has not been computed. No slot.
    Cancel = 6,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Images,
            2 => Kind::Tensors,
            3 => Kind::Outputs,
            4 => Kind::Response,
            5 => Kind::Error,
            6 => Kind::Cancel,
            _ => return None,
        })
    }
}

/// Failure class carried by [`Kind::Error`] descriptors; the frontend maps it
/// to an HTTP status in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// The input was wrong (bad image, wrong shape): 400.
    InvalidInput = 1,
    /// The request's deadline passed before compute: 504-style timeout.
    Timeout = 2,
    /// No capacity (no slot, full lane): 503/429.
    Unavailable = 3,
    /// The backend failed to run the batch: 500.
    Backend = 4,
    /// Anything else: 500.
    Internal = 5,
    /// The slot pool is at its ceiling (`shm.max_bytes`): 429, retry.
    PoolFull = 6,
}

impl Status {
    pub fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Ok,
            1 => Status::InvalidInput,
            2 => Status::Timeout,
            3 => Status::Unavailable,
            4 => Status::Backend,
            6 => Status::PoolFull,
            _ => Status::Internal,
        }
    }
}

/// Descriptor flag: the frontend wants the model's post-processed answer
/// (labels and scores as JSON), not raw output tensors.
pub const FLAG_POSTPROCESS: u8 = 1;

/// Descriptor flag: the slot is lent, not given: its owner (the frontend)
/// keeps it until the request's answer comes back, so that it can send the
/// request again if a worker dies with it. Receivers read it
/// ([`crate::SlotPool::borrow`]) and never write or free it.
pub const FLAG_LENT: u8 = 2;

/// One message between two processes: 64 bytes, one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Descriptor {
    /// Frontend-assigned id, unique for the daemon's life; every process logs it.
    pub request_id: u64,
    /// CLOCK_MONOTONIC nanoseconds after which the work is useless; 0 = none.
    pub deadline_ns: u64,
    /// When the sender queued this descriptor (for queue-time statistics).
    pub sent_ns: u64,
    /// Slot holding the payload, or [`NO_SLOT`].
    pub slot: u32,
    /// Payload offset within the slot.
    pub offset: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Model index in the repository's sorted order.
    pub model: u16,
    /// [`Kind`] as `u8`.
    pub kind: u8,
    /// [`Status`] as `u8`.
    pub status: u8,
    /// Batch rows carried (images, or the first dimension of the tensors).
    pub rows: u32,
    /// Process that receives the model's outputs.
    pub reply_to: u16,
    /// The level the request waits at everywhere: 1 is served first. The
    /// frontend resolves it from the request's priority and the model's
    /// config (`ModelConfig::level`); pipeline sub-requests inherit it.
    pub priority: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Kind-specific word (reserved for pipeline steps).
    pub aux: u64,
    /// The model the client asked for (a pipeline's sub-requests keep their
    /// pipeline's): whose share of the workers this request's work counts
    /// against when models are served by weight.
    pub tenant: u16,
    /// Which sending of the request this is (1, then 2 when the frontend
    /// sends it again after a worker died with it); every reply carries it,
    /// so an error of a superseded copy is told from the live one's.
    pub attempt: u16,
    pub _reserved: [u16; 2],
}

const _: () = assert!(std::mem::size_of::<Descriptor>() == 64);

impl Descriptor {
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.status)
    }

    pub fn has_slot(&self) -> bool {
        self.slot != NO_SLOT
    }
}
