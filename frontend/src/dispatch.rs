//! Routing work to the workers and results back to the waiting connection.
//!
//! Each request gets an id and a oneshot channel in `pending`. The receive
//! loop (one thread) drains the frontend's inbox and completes the channel of
//! each descriptor's request. A [`Ticket`] removes its entry when dropped, so a
//! client that goes away leaves nothing behind: its late result finds no entry
//! and its slot is freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use shm::mailbox::{SelfWaker, Wiring};
use shm::{Descriptor, Inbox, Kind, Peers, ProcId, Slot, SlotPool, Status, Topology};
use tokio::sync::oneshot;

use crate::error::ApiError;

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

struct Entry {
    tx: oneshot::Sender<Completion>,
    /// Preproc worker the request was given to (for least-loaded routing).
    preproc: Option<usize>,
}

pub struct Dispatch {
    peers: Peers,
    topology: Topology,
    /// Requests given to each preproc worker and not yet answered.
    outstanding: Vec<AtomicUsize>,
    pending: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
}

/// Which kind of worker takes the request first.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Images: decode and preprocess first.
    Preproc,
    /// Tensors: straight to an inference worker.
    Gpu,
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
        if self.dispatch.take(self.id).is_some() && !self.answered {
            self.dispatch.cancel(self.id);
        }
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

    /// Sends `slot` with `d` to a worker of `target` and registers the request.
    pub fn submit(self: &Arc<Self>, target: Target, d: Descriptor, slot: Slot) -> Result<Ticket, ApiError> {
        let (tx, rx) = oneshot::channel();
        let (to, preproc) = match target {
            Target::Preproc => {
                let t = self.topology;
                let i = (0..t.preprocs)
                    .filter(|&i| self.peers.is_ready(t.preproc(i)))
                    .min_by_key(|&i| self.outstanding[i as usize].load(Ordering::Relaxed))
                    .ok_or_else(|| ApiError::Unavailable("no preproc worker is running; retry shortly".into()))?;
                (t.preproc(i), Some(i as usize))
            }
            Target::Gpu => (
                self.peers
                    .ready_gpu()
                    .ok_or_else(|| ApiError::Unavailable("no inference worker is ready; retry shortly".into()))?,
                None,
            ),
        };
        let outbox = self.peers.outbox(to)?;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(d.request_id, Entry { tx, preproc });
        if let Some(i) = preproc {
            self.outstanding[i].fetch_add(1, Ordering::Relaxed);
        }
        let ticket = Ticket { dispatch: self.clone(), id: d.request_id, rx: Some(rx), answered: false };
        // Not `Peers::send`: a full lane is answered at once (503) rather
        // than waited on, as a runtime thread must not sleep.
        match outbox.send_slot(d, slot) {
            Ok(()) => Ok(ticket),
            // Dropping the ticket unregisters the request; the slot comes back
            // to us and is freed here.
            Err((e, _slot)) => Err(ApiError::from(e)),
        }
    }

    fn take(&self, id: u64) -> Option<Entry> {
        let entry = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(Entry { preproc: Some(i), .. }) = &entry {
            self.outstanding[*i].fetch_sub(1, Ordering::Relaxed);
        }
        entry
    }

    /// Tells every worker to drop request `id` if it still holds it uncomputed
    /// (best effort: a full lane just means that worker finds out later, when
    /// the answer is discarded here). The frontend's lanes lead to workers only.
    fn cancel(&self, id: u64) {
        let d = Descriptor { request_id: id, kind: Kind::Cancel as u8, slot: shm::NO_SLOT, ..Default::default() };
        for o in self.peers.outboxes() {
            let _ = o.send(&d);
        }
    }

    /// Fails requests that were lost with a crashed worker.
    pub fn fail(&self, ids: &[u64], message: &str) {
        for &id in ids {
            if let Some(e) = self.take(id) {
                let _ = e.tx.send(Completion::Failed(ApiError::Unavailable(message.to_string())));
            }
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
        let Some(entry) = self.take(d.request_id) else {
            // The client left or timed out; dropping the slot frees it.
            return;
        };
        let completion = match (d.kind(), slot) {
            (Some(Kind::Error), slot) => {
                let message = slot
                    .as_ref()
                    .and_then(|s| s.bytes(d.offset as usize, d.len as usize).ok())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_else(|| "the server is overloaded (no room to report the error)".into());
                let status = d.status();
                Completion::Failed(ApiError::from_worker(
                    if status == Status::Ok { Status::Internal } else { status },
                    message,
                ))
            }
            (Some(Kind::Response | Kind::Outputs), Some(slot)) => Completion::Done { desc: d, slot },
            (kind, _) => Completion::Failed(ApiError::Internal(format!("a worker answered with {kind:?}"))),
        };
        let _ = entry.tx.send(completion);
    }
}

/// The inbox thread: drains the inbox until stopped, completing requests.
/// Dropping it stops the thread and waits for it.
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
    while !stop.load(Ordering::Acquire) {
        region.beat(ProcId::FRONTEND);
        if let Some((from, d)) = inbox.recv(Some(Duration::from_millis(500)), spin) {
            dispatch.complete(from, d);
            while let Some((from, d)) = inbox.try_recv() {
                dispatch.complete(from, d);
            }
        }
    }
}
