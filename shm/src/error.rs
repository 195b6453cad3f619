use crate::ProcId;

/// Errors of the shared-memory layer. A peer that misbehaves or dies shows up
/// here as a value, never as a panic in the reader.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shared memory: {0}")]
    Io(#[from] std::io::Error),
    #[error("shared-memory region is not a highserve region (magic {found:#x}, expected {expected:#x})")]
    BadMagic { found: u64, expected: u64 },
    #[error("shared-memory layout version {found} does not match this binary's version {expected}")]
    BadVersion { found: u32, expected: u32 },
    #[error("shared-memory region is {found} bytes but its header describes {expected} bytes")]
    BadSize { found: usize, expected: usize },
    #[error("invalid shared-memory layout: {0}")]
    BadLayout(String),
    #[error(
        "no free shared-memory slot of at least {wanted} bytes (largest slot class is {largest} bytes; raise [shm] slot counts or sizes)"
    )]
    NoSlot { wanted: usize, largest: usize },
    #[error(
        "the shared-memory pool is at its ceiling: {committed} of {ceiling} bytes hold memory and no slot of at least \
         {wanted} bytes that does is free (raise shm.max_bytes, or lower server.max_inflight)"
    )]
    Ceiling { wanted: usize, committed: u64, ceiling: u64 },
    #[error("descriptor from {from:?} refers to slot {slot}, which does not exist (the region has {count} slots)")]
    BadSlot { from: ProcId, slot: u32, count: u32 },
    #[error("descriptor refers to bytes {offset}..{end} of slot {slot}, which holds {capacity} bytes")]
    BadRange { slot: u32, offset: u64, end: u64, capacity: usize },
    #[error("malformed tensor table in slot: {0}")]
    BadTable(String),
    #[error("the lane to {to:?} is full")]
    Full { to: ProcId },
    #[error("peer {0:?} is gone")]
    PeerGone(ProcId),
}

impl ShmError {
    /// The status a request failed by this error is answered with.
    pub fn status(&self) -> crate::Status {
        match self {
            ShmError::NoSlot { .. } | ShmError::Full { .. } | ShmError::PeerGone(_) => crate::Status::Unavailable,
            ShmError::Ceiling { .. } => crate::Status::PoolFull,
            _ => crate::Status::Internal,
        }
    }

    /// No slot is free now but one may be later (busy slots, or the ceiling
    /// with committed slots busy): worth waiting for, unlike a request
    /// larger than any slot.
    pub fn may_free(&self) -> bool {
        match self {
            ShmError::NoSlot { wanted, largest } => wanted <= largest,
            ShmError::Ceiling { .. } => true,
            _ => false,
        }
    }
}
