//! Passing file descriptors to children across `exec`.
//!
//! The supervisor creates the memfd and the eventfds close-on-exec, marks the
//! ones a child needs inheritable just before spawning it, and tells the child
//! their numbers in its environment; the child adopts each number once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::FdFlags;

/// Clears or sets close-on-exec on `fd`.
pub fn set_inheritable(fd: impl AsFd, inheritable: bool) -> io::Result<()> {
    let flags = if inheritable { FdFlags::empty() } else { FdFlags::CLOEXEC };
    rustix::io::fcntl_setfd(fd, flags).map_err(io::Error::from)
}

/// Takes ownership of an inherited descriptor number and marks it
/// close-on-exec again so it does not leak into this process's own children.
///
/// Call it at most once per number, at start-up, for numbers the parent
/// passed; a number that is not open is an error.
pub fn adopt(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {raw} is a standard stream")));
    }
    // SAFETY: the borrow lives only for this check; fcntl(F_GETFD) on a closed
    // number fails with EBADF rather than touching anything.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(borrowed)
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("inherited fd {raw} is not open: {e}")))?;
    // SAFETY: the number is open (checked above) and was handed to this process
    // by its parent for it to own; callers adopt each number once, so no other
    // owner will close it.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    set_inheritable(&owned, false)?;
    Ok(owned)
}
