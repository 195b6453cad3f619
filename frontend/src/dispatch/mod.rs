//! Routing work to the workers and results back to the waiting connection,
//! losing no request to a worker that dies.
//!
//! Each request gets an id and an entry in `pending` with a oneshot channel;
//! the receive loop ([`receive`]) completes the channel of each answer. The
//! request's input slot is lent, not given (`shm::desc::FLAG_LENT`): the
//! entry keeps it, unwritten, until the answer, so that when the supervisor
//! reports a worker dead ([`Dispatch::lost`]) every request that was there
//! is sent again, once, as it was. A request finds no ready worker (one is
//! restarting)? It waits in `pending` and goes as soon as one is ready,
//! within its deadline. A kind of worker that cannot come back
//! ([`Dispatch::unavailable`]) fails what waits for it, with the reason.
//!
//! The loan is freed when it is safe: at the answer, which comes after every
//! reader's last read; or, when a copy of the request may still read it (its
//! client left before the answer, or it was sent twice), once its deadline
//! plus [`LINGER`] has passed, workers dropping expired work unstarted.

mod receive;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shm::mailbox::{SelfWaker, Wiring};
use shm::{Descriptor, Kind, Peers, ProcId, Slot, SlotPool, Status, Topology};
use tokio::sync::oneshot;

pub use self::receive::Receiver;
use crate::error::ApiError;

/// How long a loan outlives its request's deadline when a copy of the
/// request may still read it: workers drop expired work before starting it,
/// and finish what they started well within this.
const LINGER: Duration = Duration::from_secs(5);

/// What came back for a request.
pub enum Completion {
    /// `desc.kind` is Response (a finished body) or Outputs (a tensor table);
    /// the slot holds the payload and is now ours.
    Done {
        desc: Descriptor,
        slot: Slot,
    },
    Failed(ApiError),
}

/// Which kind of worker takes the request first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Images: decode and preprocess first.
    Preproc,
    /// Tensors: straight to an inference worker.
    Gpu,
}

/// A request in flight.
struct Entry {
    /// The waiting connection; `None` once it left (the entry then only
    /// keeps the loan until that is safe to free).
    tx: Option<oneshot::Sender<Completion>>,
    /// The request as it is sent (its slot lent).
    desc: Descriptor,
    target: Target,
    lent: Slot,
    /// The worker it was last handed to; `None` while it waits for one.
    at: Option<ProcId>,
    /// Times it was sent.
    attempt: u16,
    /// With no connection waiting: when the loan may be freed without an
    /// answer.
    linger_until_ns: u64,
}

impl Entry {
    /// Whether the receive loop must look at it: waiting for a worker, or
    /// holding a loan with no connection.
    fn unsettled(&self) -> bool {
        self.at.is_none() || self.tx.is_none()
    }
}

pub struct Dispatch {
    peers: Peers,
    topology: Topology,
    /// Requests given to each preproc worker and not yet answered.
    outstanding: Vec<AtomicUsize>,
    pending: Mutex<HashMap<u64, Entry>>,
    /// Loans of requests answered after being sent twice (the other copy
    /// may still read them), with when they may be freed.
    lingering: Mutex<Vec<(u64, Slot)>>,
    /// Entries the receive loop must look at, and lingering loans.
    unsettled: AtomicUsize,
    /// Per target, why its workers cannot come back.
    gone: Mutex<[Option<String>; 2]>,
    /// Wakes the receive loop (a request now waits for a worker).
    waker: SelfWaker,
    next_id: AtomicU64,
}

/// The pending result of one request. Dropping it before the answer came
/// (the client disconnected, or the wait timed out) cancels the request.
pub struct Ticket {
    dispatch: Arc<Dispatch>,
    id: u64,
    rx: Option<oneshot::Receiver<Completion>>,
    answered: bool,
}

impl Ticket {
    pub async fn wait(mut self) -> Completion {
        let rx = self.rx.take().expect("a ticket is awaited once; this is a bug");
        let completion = rx.await.unwrap_or_else(|_| {
            Completion::Failed(ApiError::Internal("the request was dropped without an answer".into()))
        });
        self.answered = true;
        completion
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.dispatch.cancel(self.id);
        }
    }
}

fn index(t: Target) -> usize {
    match t {
        Target::Preproc => 0,
        Target::Gpu => 1,
    }
}

impl Dispatch {
    pub fn new(wiring: &Wiring) -> Dispatch {
        let topology = wiring.region().layout().topology();
        Dispatch {
            peers: Peers::new(wiring),
            topology,
            outstanding: (0..topology.preprocs).map(|_| AtomicUsize::new(0)).collect(),
            pending: Mutex::new(HashMap::new()),
            lingering: Mutex::new(Vec::new()),
            unsettled: AtomicUsize::new(0),
            gone: Mutex::new([None, None]),
            waker: wiring.self_waker(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn region(&self) -> &Arc<shm::Region> {
        self.peers.region()
    }

    pub fn pool(&self) -> &SlotPool {
        self.peers.pool()
    }

    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether every inference worker and at least one preproc worker is ready.
    pub fn all_ready(&self) -> bool {
        let t = self.topology;
        (0..t.gpus).all(|i| self.peers.is_ready(t.gpu(i))) && (0..t.preprocs).any(|i| self.peers.is_ready(t.preproc(i)))
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ready worker of `target` to send to: the preproc worker with the
    /// fewest requests outstanding, the inference worker with the least
    /// backlog.
    fn pick(&self, target: Target) -> Option<ProcId> {
        let t = self.topology;
        match target {
            Target::Preproc => (0..t.preprocs)
                .filter(|&i| self.peers.is_ready(t.preproc(i)))
                .min_by_key(|&i| self.outstanding[i as usize].load(Ordering::Relaxed))
                .map(|i| t.preproc(i)),
            Target::Gpu => self.peers.ready_gpu(),
        }
    }

    fn outstanding(&self, at: Option<ProcId>) -> Option<&AtomicUsize> {
        match self.topology.role(at?) {
            Some(shm::Role::Preproc(i)) => self.outstanding.get(i as usize),
            _ => None,
        }
    }

    /// Lends the entry's request to a ready worker; `Ok(false)` when none is
    /// ready. Never waits: a full lane is an error (a runtime thread must
    /// not sleep).
    fn send(&self, entry: &mut Entry) -> Result<bool, ApiError> {
        let Some(to) = self.pick(entry.target) else { return Ok(false) };
        let d = Descriptor { attempt: entry.attempt + 1, sent_ns: shm::now_ns(), ..entry.desc };
        self.peers.outbox(to)?.lend(d, &entry.lent)?;
        entry.attempt += 1;
        entry.at = Some(to);
        if let Some(n) = self.outstanding(entry.at) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Leaves the worker it was at (answered, lost, or the client left).
    fn leave(&self, entry: &mut Entry) {
        if let Some(n) = self.outstanding(entry.at.take()) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sends the request of `d`, lending it `slot`, to a worker of `target`,
    /// or registers it to go when one is ready.
    pub fn submit(self: &Arc<Self>, target: Target, d: Descriptor, slot: Slot) -> Result<Ticket, ApiError> {
        if let Some(why) = &self.gone.lock().unwrap_or_else(|e| e.into_inner())[index(target)] {
            return Err(ApiError::Unavailable(why.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let mut entry = Entry { tx: Some(tx), desc: d, target, lent: slot, at: None, attempt: 0, linger_until_ns: 0 };
        // Sent under the lock, and entered before it is released: an answer
        // that comes back at once waits for the entry in `complete` instead
        // of finding none (which lost the request to its timeout).
        let mut pending = self.pending();
        // Dropping `entry` on an error frees the slot: nobody was lent it.
        if !self.send(&mut entry)? {
            self.unsettled.fetch_add(1, Ordering::Relaxed);
            self.waker.wake();
        }
        pending.insert(d.request_id, entry);
        drop(pending);
        Ok(Ticket { dispatch: self.clone(), id: d.request_id, rx: Some(rx), answered: false })
    }

    /// The client of `id` left before its answer: workers are told to drop
    /// it (best effort), and its loan is freed when no copy can read it.
    fn cancel(&self, id: u64) {
        let mut pending = self.pending();
        let Some(entry) = pending.get_mut(&id) else { return };
        if entry.attempt == 0 {
            pending.remove(&id);
            self.unsettled.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if !entry.unsettled() {
            self.unsettled.fetch_add(1, Ordering::Relaxed);
        }
        entry.tx = None;
        entry.linger_until_ns = linger_until(&entry.desc);
        drop(pending);
        let d = Descriptor { request_id: id, kind: Kind::Cancel as u8, slot: shm::NO_SLOT, ..Default::default() };
        for o in self.peers.outboxes() {
            let _ = o.send(&d);
        }
    }

    /// Worker `dead` died (the supervisor saw it), with `ids` in the slots
    /// and lanes it held. Every request that was there is sent again; one
    /// lost a second time fails with `message`.
    pub fn lost(&self, dead: ProcId, ids: &[u64], message: &str) {
        let mut pending = self.pending();
        let mut resent = 0usize;
        for (id, entry) in pending.iter_mut() {
            if entry.at != Some(dead) && !ids.contains(id) {
                continue;
            }
            let was_settled = !entry.unsettled();
            self.leave(entry);
            match &entry.tx {
                None if entry.attempt == 1 => entry.linger_until_ns = 0, // the dead one was its only reader
                None => {}
                Some(_) if entry.attempt >= 2 => {
                    let why = format!("{message}; it was already sent again once after a worker died with it");
                    if let Some(tx) = entry.tx.take() {
                        let _ = tx.send(Completion::Failed(ApiError::Unavailable(why)));
                    }
                    entry.linger_until_ns = linger_until(&entry.desc);
                }
                Some(_) => match self.send(entry) {
                    Ok(true) => resent += 1,
                    Ok(false) => {}
                    Err(e) => {
                        if let Some(tx) = entry.tx.take() {
                            let _ = tx.send(Completion::Failed(e));
                        }
                        entry.linger_until_ns = linger_until(&entry.desc);
                    }
                },
            }
            if was_settled && entry.unsettled() {
                self.unsettled.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(pending);
        if resent > 0 {
            tracing::info!("{resent} request(s) sent again after {dead:?} died");
        }
        self.waker.wake();
    }

    /// Workers of `target` cannot come back: what waits for one fails, and
    /// so will every new request for them, with `message`.
    pub fn unavailable(&self, target: Target, message: &str) {
        self.gone.lock().unwrap_or_else(|e| e.into_inner())[index(target)] = Some(message.to_string());
        let mut pending = self.pending();
        for entry in pending.values_mut().filter(|e| e.target == target && e.at.is_none()) {
            if let Some(tx) = entry.tx.take() {
                let _ = tx.send(Completion::Failed(ApiError::Unavailable(message.to_string())));
            }
            entry.linger_until_ns = 0;
        }
    }

    /// Completes the request a descriptor from `from` answers.
    fn complete(&self, from: ProcId, d: Descriptor) {
        let slot = if d.has_slot() {
            match self.pool().adopt(from, ProcId::FRONTEND, &d) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(request_id = d.request_id, "bad descriptor from {from:?}: {e}");
                    None
                }
            }
        } else {
            None
        };
        let mut pending = self.pending();
        let Some(entry) = pending.get(&d.request_id) else {
            // Answered already; dropping the slot frees it.
            return;
        };
        if d.kind() == Some(Kind::Error) && d.attempt < entry.attempt {
            // A copy superseded by the request's sending again failed (say, a
            // pipeline that waited for a dead worker); the live copy goes on.
            return;
        }
        let mut entry = pending.remove(&d.request_id).expect("looked up above");
        drop(pending);
        self.leave(&mut entry);
        if entry.unsettled() {
            self.unsettled.fetch_sub(1, Ordering::Relaxed);
        }
        let Entry { tx, lent, attempt, desc, .. } = entry;
        if attempt > 1 {
            // Sent twice: the other copy may still be reading the loan.
            self.lingering.lock().unwrap_or_else(|e| e.into_inner()).push((linger_until(&desc), lent));
            self.unsettled.fetch_add(1, Ordering::Relaxed);
        }
        let Some(tx) = tx else { return };
        let completion = match (d.kind(), slot) {
            (Some(Kind::Error), slot) => {
                let message = slot
                    .as_ref()
                    .and_then(|s| s.bytes(d.offset as usize, d.len as usize).ok())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_else(|| match d.status() {
                        Status::PoolFull => "the shared-memory pool is at its ceiling (no room to report more); \
                                             retry, or raise shm.max_bytes"
                            .into(),
                        _ => "the server is overloaded (no room to report the error)".into(),
                    });
                let status = d.status();
                Completion::Failed(ApiError::from_worker(
                    if status == Status::Ok { Status::Internal } else { status },
                    message,
                ))
            }
            (Some(Kind::Response | Kind::Outputs), Some(slot)) => Completion::Done { desc: d, slot },
            (kind, _) => Completion::Failed(ApiError::Internal(format!("a worker answered with {kind:?}"))),
        };
        let _ = tx.send(completion);
    }

    /// Whether the receive loop must sweep.
    fn unsettled(&self) -> bool {
        self.unsettled.load(Ordering::Relaxed) > 0
    }

    /// Sends what waits for a worker now ready, and frees the loans no copy
    /// can read any more.
    pub(crate) fn sweep(&self, now_ns: u64) {
        let mut pending = self.pending();
        let mut gone = Vec::new();
        for (&id, entry) in pending.iter_mut() {
            if entry.tx.is_none() {
                if entry.linger_until_ns <= now_ns {
                    gone.push(id);
                }
            } else if entry.at.is_none() {
                match self.send(entry) {
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = entry.tx.take() {
                            let _ = tx.send(Completion::Failed(e));
                        }
                        entry.linger_until_ns = linger_until(&entry.desc);
                    }
                }
            }
        }
        for id in gone {
            pending.remove(&id);
        }
        let waiting = pending.values().filter(|e| e.unsettled()).count();
        drop(pending);
        let mut lingering = self.lingering.lock().unwrap_or_else(|e| e.into_inner());
        lingering.retain(|(until, _)| *until > now_ns);
        self.unsettled.store(waiting + lingering.len(), Ordering::Relaxed);
    }
}

/// When a loan of the request of `d` may be freed without its answer.
fn linger_until(d: &Descriptor) -> u64 {
    let deadline = if d.deadline_ns == 0 { shm::now_ns() } else { d.deadline_ns };
    deadline.saturating_add(LINGER.as_nanos() as u64)
}
