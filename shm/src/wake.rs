//! Wake-ups, kept outside the rings: each receiving process has a `sleeping`
//! flag in its process-table entry and an eventfd. A sender writes the eventfd
//! only when the receiver said it is going to sleep, so a busy receiver costs
//! senders no system call.
//!
//! The protocol is Dekker-style: the receiver stores `sleeping = 1`, fences, and
//! checks its lanes once more before blocking; the sender publishes its entry,
//! fences, and reads the flag. With a SeqCst fence on both sides at least one of
//! them sees the other's write, so a wake-up is never lost.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use crate::{ProcId, Region};

/// Writes 1 to an eventfd; a full counter (EAGAIN) already means "wake up".
pub fn signal(efd: impl AsFd) {
    let _ = rustix::io::write(efd, &1u64.to_ne_bytes());
}

/// Resets an eventfd's counter (non-blocking).
pub fn drain(efd: impl AsFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(efd, &mut buf);
}

/// Blocks until the eventfd is readable or `timeout` passes.
pub fn wait(efd: impl AsFd, timeout: Option<Duration>) {
    let mut fds = [rustix::event::PollFd::new(&efd, rustix::event::PollFlags::IN)];
    let ts = timeout.map(|t| rustix::time::Timespec { tv_sec: t.as_secs() as i64, tv_nsec: t.subsec_nanos() as i64 });
    // EINTR and friends just end the wait early; callers loop.
    let _ = rustix::event::poll(&mut fds, ts.as_ref());
}

/// The sending side's view of one receiver's wake-up.
#[derive(Clone)]
pub struct WakeTarget {
    region: Arc<Region>,
    proc: ProcId,
    efd: Arc<OwnedFd>,
}

impl WakeTarget {
    pub fn new(region: Arc<Region>, proc: ProcId, efd: Arc<OwnedFd>) -> WakeTarget {
        WakeTarget { region, proc, efd }
    }

    /// Call after publishing an entry to `proc`.
    pub fn notify(&self) {
        // SeqCst fence: orders our Release store of the lane tail before the flag
        // read below (the store→load pair a plain Release/Acquire cannot order).
        fence(Ordering::SeqCst);
        let Some(entry) = self.region.proc(self.proc) else {
            return;
        };
        // Relaxed read first: the common case (receiver awake) stays write-free.
        if entry.sleeping.load(Ordering::Relaxed) != 0 && entry.sleeping.swap(0, Ordering::AcqRel) != 0 {
            signal(&*self.efd);
        }
    }
}

/// The receiving side's flag.
pub(crate) struct Sleeper {
    region: Arc<Region>,
    proc: ProcId,
}

impl Sleeper {
    pub(crate) fn new(region: Arc<Region>, proc: ProcId) -> Sleeper {
        Sleeper { region, proc }
    }

    /// Announces the intent to sleep; the caller must re-check its lanes after.
    pub(crate) fn arm(&self) {
        if let Some(e) = self.region.proc(self.proc) {
            e.sleeping.store(1, Ordering::Relaxed);
        }
        // SeqCst fence: our flag store is ordered before the lane re-check loads.
        fence(Ordering::SeqCst);
    }

    pub(crate) fn disarm(&self) {
        if let Some(e) = self.region.proc(self.proc) {
            e.sleeping.store(0, Ordering::Relaxed);
        }
    }
}
