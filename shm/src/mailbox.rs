//! A process's inbox (all lanes addressed to it, one eventfd) and its outboxes
//! (one lane to each peer plus that peer's wake-up).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lane::{Consumer, Producer};
use crate::wake::{self, Sleeper, WakeTarget};
use crate::{Descriptor, Kind, ProcId, Region, ShmError, Slot, SlotPool, Status};

/// How long a send waits while the receiver's lane is full before it gives
/// up: a receiver that is merely behind drains a lane in far less; one that
/// is stuck must not wedge its senders.
pub const SEND_PATIENCE: Duration = Duration::from_secs(1);

/// Builds the inbox and outboxes of one process from the region and the
/// eventfds of every process (indexed by [`ProcId`]).
#[derive(Clone)]
pub struct Wiring {
    region: Arc<Region>,
    me: ProcId,
    efds: Vec<Arc<OwnedFd>>,
}

impl Wiring {
    pub fn new(region: Arc<Region>, me: ProcId, efds: Vec<Arc<OwnedFd>>) -> Result<Wiring, ShmError> {
        let procs = region.layout().topology().procs();
        if efds.len() != procs {
            return Err(ShmError::BadLayout(format!("{} eventfds for {procs} processes", efds.len())));
        }
        if me.0 as usize >= procs {
            return Err(ShmError::BadLayout(format!("process {me:?} is not in a region of {procs}")));
        }
        Ok(Wiring { region, me, efds })
    }

    pub fn me(&self) -> ProcId {
        self.me
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub fn inbox(&self) -> Inbox {
        let layout = self.region.layout();
        let lanes = layout
            .topology()
            .lane_pairs()
            .filter(|&(_, to)| to == self.me)
            .map(|(from, to)| {
                let lane = layout.lane(from, to).expect("pair comes from the topology; this is a bug");
                (from, Consumer::new(self.region.clone(), lane))
            })
            .collect();
        Inbox {
            sleeper: Sleeper::new(self.region.clone(), self.me),
            efd: self.efds[self.me.0 as usize].clone(),
            lanes,
            next: 0,
        }
    }

    /// The outbox to `to`, or `None` if the topology has no lane there.
    pub fn outbox(&self, to: ProcId) -> Option<Outbox> {
        let lane = self.region.layout().lane(self.me, to)?;
        Some(Outbox {
            to,
            producer: Mutex::new(Producer::new(self.region.clone(), lane)),
            target: WakeTarget::new(self.region.clone(), to, self.efds[to.0 as usize].clone()),
        })
    }

    /// A handle that wakes this process's own inbox from another thread.
    pub fn self_waker(&self) -> SelfWaker {
        SelfWaker(self.efds[self.me.0 as usize].clone())
    }
}

/// Wakes the owning process's inbox wait unconditionally (for local threads:
/// a finished batch, a shutdown request).
#[derive(Clone)]
pub struct SelfWaker(Arc<OwnedFd>);

impl SelfWaker {
    pub fn wake(&self) {
        wake::signal(&*self.0);
    }
}

/// Sends to one peer. Several threads may share it; the lock makes them one
/// producer, as the lane requires.
pub struct Outbox {
    to: ProcId,
    producer: Mutex<Producer>,
    target: WakeTarget,
}

impl Outbox {
    pub fn to(&self) -> ProcId {
        self.to
    }

    /// Publishes `d` and wakes the peer if it sleeps.
    pub fn send(&self, d: &Descriptor) -> Result<(), ShmError> {
        let pushed = {
            let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
            p.push(d)
        };
        match pushed {
            Ok(()) => {
                self.target.notify();
                Ok(())
            }
            Err(_) => Err(ShmError::Full { to: self.to }),
        }
    }

    /// Hands `slot` to the peer with `d` (whose `slot` field is filled in).
    /// The ownership transfer happens only once the lane is known to have
    /// room, so a full lane gives the slot back instead of leaking it.
    pub fn send_slot(&self, mut d: Descriptor, slot: Slot) -> Result<(), (ShmError, Slot)> {
        {
            let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
            // We are the lane's only producer and hold its lock, so room seen here
            // cannot disappear before the push below.
            if !p.has_room() {
                return Err((ShmError::Full { to: self.to }, slot));
            }
            d.slot = slot.send_to(self.to);
            // Given, not lent, whatever the request's first descriptor said.
            d.flags &= !crate::desc::FLAG_LENT;
            p.push(&d).expect("room was checked under the producer lock; this is a bug");
        }
        self.target.notify();
        Ok(())
    }

    /// Lends `slot` to the peer with `d`: the descriptor names it (with
    /// [`crate::desc::FLAG_LENT`]) and the slot stays ours, unwritten until
    /// the request is answered (`crate::slots`).
    pub fn lend(&self, d: Descriptor, slot: &Slot) -> Result<(), ShmError> {
        self.send(&Descriptor { slot: slot.index(), flags: d.flags | crate::desc::FLAG_LENT, ..d })
    }

    /// [`Outbox::send`], waiting while the lane is full for up to `patience`.
    pub fn send_wait(&self, d: &Descriptor, patience: Duration) -> Result<(), ShmError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.send(d) {
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_micros(100)),
                done => return done,
            }
        }
    }

    /// [`Outbox::send_slot`], waiting while the lane is full (the peer is
    /// behind) for up to `patience`; after that the slot is freed and the
    /// error returned, so a stuck peer cannot wedge the sender.
    pub fn send_slot_wait(&self, d: Descriptor, slot: Slot, patience: Duration) -> Result<(), ShmError> {
        let deadline = Instant::now() + patience;
        let mut slot = slot;
        loop {
            match self.send_slot(d, slot) {
                Ok(()) => return Ok(()),
                Err((e, back)) if Instant::now() >= deadline => {
                    drop(back);
                    return Err(e);
                }
                Err((_, back)) => slot = back,
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Reports that request `d` failed: the message goes in `slot` if it is
    /// large enough, else in a new one; with no slot free, the error is sent
    /// bare (the receiver then only knows the status).
    pub fn send_error(
        &self,
        pool: &SlotPool,
        me: ProcId,
        d: &Descriptor,
        slot: Option<Slot>,
        status: Status,
        message: &str,
    ) -> Result<(), ShmError> {
        let msg = message.as_bytes();
        let slot = match slot {
            Some(s) if s.capacity() >= msg.len() => Some(s),
            _ => pool.alloc(msg.len(), me, d.request_id).ok(),
        };
        let mut reply = Descriptor {
            kind: Kind::Error as u8,
            status: status as u8,
            slot: crate::NO_SLOT,
            offset: 0,
            len: 0,
            sent_ns: crate::now_ns(),
            ..*d
        };
        match slot {
            Some(mut s) => {
                s.as_mut_slice()[..msg.len()].copy_from_slice(msg);
                reply.len = msg.len() as u32;
                self.send_slot_wait(reply, s, SEND_PATIENCE)
            }
            None => self.send(&reply),
        }
    }

    /// Entries waiting in the lane (the peer's backlog from us).
    pub fn backlog(&self) -> usize {
        self.producer.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Everything addressed to one process.
pub struct Inbox {
    sleeper: Sleeper,
    efd: Arc<OwnedFd>,
    lanes: Vec<(ProcId, Consumer)>,
    next: usize,
}

impl Inbox {
    /// Takes one entry, visiting lanes round-robin so that no sender starves.
    pub fn try_recv(&mut self) -> Option<(ProcId, Descriptor)> {
        let n = self.lanes.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let (from, lane) = &mut self.lanes[i];
            if let Some(d) = lane.pop() {
                self.next = (i + 1) % n;
                return Some((*from, d));
            }
        }
        None
    }

    fn all_empty(&self) -> bool {
        self.lanes.iter().all(|(_, l)| l.is_empty())
    }

    /// Waits for an entry: spins for `spin` first (a wake-up from sleep costs
    /// 20–55 µs on the reference VM, a spinning peer sees it in ~0.1 µs), then
    /// sleeps on the eventfd. Returns `None` when `timeout` passes or another
    /// thread calls [`SelfWaker::wake`].
    pub fn recv(&mut self, timeout: Option<Duration>, spin: Duration) -> Option<(ProcId, Descriptor)> {
        if let Some(x) = self.try_recv() {
            return Some(x);
        }
        let start = Instant::now();
        while start.elapsed() < spin {
            std::hint::spin_loop();
            if let Some(x) = self.try_recv() {
                return Some(x);
            }
        }
        if self.arm() {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            wake::wait(&*self.efd, left);
            wake::drain(&*self.efd);
        }
        self.disarm();
        self.try_recv()
    }

    /// Announces sleep and re-checks the lanes: `true` means nothing arrived
    /// and the caller may block on [`Inbox::fd`]; `false` means work arrived
    /// (the flag is already cleared). For callers with their own event loop.
    pub fn arm(&self) -> bool {
        self.sleeper.arm();
        if self.all_empty() {
            true
        } else {
            self.sleeper.disarm();
            false
        }
    }

    pub fn disarm(&self) {
        self.sleeper.disarm();
    }

    /// Resets the eventfd after a wake-up (for callers with their own loop).
    pub fn clear(&self) {
        wake::drain(&*self.efd);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Entries waiting in all lanes.
    pub fn backlog(&self) -> usize {
        self.lanes.iter().map(|(_, l)| l.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LayoutParams, SlotClass, Topology};

    fn wiring(me: ProcId) -> (Wiring, Vec<Arc<OwnedFd>>) {
        let p =
            LayoutParams::new(Topology { gpus: 1, preprocs: 2 }, 1, 8, &[SlotClass { size: 4096, count: 1 }]).unwrap();
        let region = Arc::new(Region::heap(&p).unwrap());
        let efds: Vec<Arc<OwnedFd>> = (0..4)
            .map(|_| Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()))
            .collect();
        (Wiring::new(region, me, efds.clone()).unwrap(), efds)
    }

    #[test]
    fn sleeping_receiver_is_woken_by_a_sender_in_another_thread() {
        let (w, _) = wiring(ProcId(1));
        let mut inbox = w.inbox();
        let region = w.region().clone();
        let efds: Vec<_> = (0..4).map(|i| w.efds[i].clone()).collect();
        let sender = Wiring::new(region, ProcId(2), efds).unwrap();
        let out = sender.outbox(ProcId(1)).unwrap();
        let t = std::thread::spawn(move || {
            for i in 0..1000u64 {
                let d = Descriptor { request_id: i, ..Default::default() };
                while out.send(&d).is_err() {
                    std::thread::yield_now();
                }
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2)); // let the receiver fall asleep
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 1000 {
            // A generous timeout: a lost wake-up would show up as this test taking
            // minutes, and the order check below still holds.
            if let Some((from, d)) = inbox.recv(Some(Duration::from_secs(60)), Duration::ZERO) {
                assert_eq!(from, ProcId(2));
                got.push(d.request_id);
            }
        }
        t.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn no_lane_between_preproc_workers() {
        let (w, _) = wiring(ProcId(2));
        assert!(w.outbox(ProcId(3)).is_none());
        assert!(w.outbox(ProcId(0)).is_some());
    }

    #[test]
    fn self_waker_interrupts_a_wait() {
        let (w, _) = wiring(ProcId(0));
        let mut inbox = w.inbox();
        let waker = w.self_waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake();
        });
        let start = Instant::now();
        assert!(inbox.recv(Some(Duration::from_secs(30)), Duration::ZERO).is_none());
        assert!(start.elapsed() < Duration::from_secs(30), "woken before the timeout");
        t.join().unwrap();
    }
}
