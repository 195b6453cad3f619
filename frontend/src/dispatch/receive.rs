//! The inbox thread: drains the frontend's inbox, completing requests, and
//! while any request waits for a worker or holds a loan with no connection,
//! sweeps every few milliseconds ([`super::Dispatch::sweep`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use shm::mailbox::{SelfWaker, Wiring};
use shm::{Inbox, ProcId};

use super::Dispatch;

/// How often the unsettled requests are looked at while there are any: a
/// restarted worker is used within this of its being ready.
const SWEEP: Duration = Duration::from_millis(5);

/// The inbox thread; dropping it stops the thread and waits for it.
pub struct Receiver {
    stop: Arc<AtomicBool>,
    waker: SelfWaker,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn spawn(dispatch: Arc<Dispatch>, wiring: &Wiring, spin: Duration) -> std::io::Result<Receiver> {
        let stop = Arc::new(AtomicBool::new(false));
        let inbox = wiring.inbox();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("inbox".into()).spawn(move || receive_loop(dispatch, inbox, spin, stop))?
        };
        Ok(Receiver { stop, waker: wiring.self_waker(), thread: Some(thread) })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drains the inbox on its own OS thread until `stop` is set (and the inbox
/// woken): the blocking wait spins briefly and then sleeps on the eventfd,
/// and completing a oneshot channel wakes the waiting task on the runtime.
fn receive_loop(dispatch: Arc<Dispatch>, mut inbox: Inbox, spin: Duration, stop: Arc<AtomicBool>) {
    let region = dispatch.region().clone();
    let mut next_sweep = 0u64;
    while !stop.load(Ordering::Acquire) {
        region.beat(ProcId::FRONTEND);
        let wait = if dispatch.unsettled() { SWEEP } else { Duration::from_millis(500) };
        if let Some((from, d)) = inbox.recv(Some(wait), spin) {
            dispatch.complete(from, d);
            while let Some((from, d)) = inbox.try_recv() {
                dispatch.complete(from, d);
            }
        }
        let now = shm::now_ns();
        if dispatch.unsettled() && now >= next_sweep {
            next_sweep = now + SWEEP.as_nanos() as u64;
            dispatch.sweep(now);
        }
    }
}
