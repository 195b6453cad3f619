//! Shared memory for highserve: it runs in every process (supervisor, frontend,
//! preproc workers, inference workers) and owns the layout of the one memfd
//! region they all map.
//!
//! What lives here:
//! - [`region`]: the memfd mapping, its header (magic + layout version, checked
//!   on attach) and the pure [`layout`] arithmetic that places everything in it;
//! - [`lane`]: single-producer/single-consumer rings of fixed-size
//!   [`Descriptor`]s, one per ordered pair of processes that talk;
//! - [`slots`]: fixed-size data slots in a few size classes, each with an owner
//!   word so that a dead process's slots can be found and reclaimed;
//! - [`wake`] and [`mailbox`]: wake-ups kept outside the rings (a sleeping flag in
//!   shared memory plus an eventfd per receiving process);
//! - [`peers`]: a process's outboxes and the sends every process makes alike
//!   (hand a slot on, fail a request back to the frontend, pick a worker);
//! - [`role`]: what each process is, as logs, metrics and `ps` name it;
//! - [`tensor`]: the table that describes tensors stored in a slot;
//! - [`frame`]: the header of a raw video frame stored in a slot;
//! - [`stats`]: per-model counters that workers bump and the frontend reads.
//!
//! This is the only crate with shared-memory `unsafe`. It must never hand out a
//! pointer; other crates see slices guarded by slot ownership and typed errors
//! (a dead or buggy peer is [`ShmError`], never a panic).
// The one crate whose purpose is shared-memory `unsafe` (each block with a
// `// SAFETY:` line, which the workspace lints enforce).
#![allow(unsafe_code)]

pub mod cancel;
pub mod desc;
pub mod fd;
pub mod frame;
pub mod lane;
pub mod layout;
pub mod mailbox;
pub mod peers;
pub mod region;
pub mod role;
pub mod slots;
pub mod stats;
pub mod tensor;
pub mod wake;

mod error;

pub use desc::{Descriptor, Kind, NO_SLOT, ProcId, Status};
pub use error::ShmError;
pub use layout::{Layout, LayoutParams, SlotClass, Topology};
pub use mailbox::{Inbox, Outbox};
pub use peers::Peers;
pub use region::Region;
pub use role::Role;
pub use slots::{Held, Lent, PoolMemory, Slot, SlotPool};

/// Monotonic clock in nanoseconds, comparable across processes on one host
/// (CLOCK_MONOTONIC), used for deadlines and queue times in descriptors.
pub fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
