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
use std::time::Duration;

use shm::mailbox::Wiring;
use shm::region::ProcState;
use shm::{Descriptor, Inbox, Kind, Outbox, ProcId, Slot, SlotPool, Status};
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
    pub pool: SlotPool,
    region: Arc<shm::Region>,
    preprocs: Vec<Outbox>,
    gpus: Vec<Outbox>,
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
        let region = wiring.region().clone();
        let topo = region.layout().topology();
        let lane = |to| wiring.outbox(to).expect("the frontend has a lane to every worker; this is a bug");
        Dispatch {
            pool: SlotPool::new(region.clone()),
            preprocs: (0..topo.preprocs).map(|i| lane(topo.preproc(i))).collect(),
            gpus: (0..topo.gpus).map(|i| lane(topo.gpu(i))).collect(),
            outstanding: (0..topo.preprocs).map(|_| AtomicUsize::new(0)).collect(),
            region,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn region(&self) -> &Arc<shm::Region> {
        &self.region
    }

    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn ready(&self, p: ProcId) -> bool {
        self.region.proc_state(p) == ProcState::Ready
    }

    /// Whether every inference worker and at least one preproc worker is ready.
    pub fn all_ready(&self) -> bool {
        self.gpus.iter().all(|o| self.ready(o.to())) && self.preprocs.iter().any(|o| self.ready(o.to()))
    }

    /// Sends `slot` with `d` to a worker of `target` and registers the request.
    pub fn submit(self: &Arc<Self>, target: Target, d: Descriptor, slot: Slot) -> Result<Ticket, ApiError> {
        let (tx, rx) = oneshot::channel();
        let (outbox, preproc) =
            match target {
                Target::Preproc => {
                    let i = (0..self.preprocs.len())
                        .filter(|&i| self.ready(self.preprocs[i].to()))
                        .min_by_key(|&i| self.outstanding[i].load(Ordering::Relaxed))
                        .ok_or_else(|| ApiError::Unavailable("no preproc worker is running; retry shortly".into()))?;
                    (&self.preprocs[i], Some(i))
                }
                Target::Gpu => {
                    let o =
                        self.gpus.iter().filter(|o| self.ready(o.to())).min_by_key(|o| o.backlog()).ok_or_else(
                            || ApiError::Unavailable("no inference worker is ready; retry shortly".into()),
                        )?;
                    (o, None)
                }
            };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(d.request_id, Entry { tx, preproc });
        if let Some(i) = preproc {
            self.outstanding[i].fetch_add(1, Ordering::Relaxed);
        }
        let ticket = Ticket { dispatch: self.clone(), id: d.request_id, rx: Some(rx), answered: false };
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
    /// the answer is discarded here).
    fn cancel(&self, id: u64) {
        let d = Descriptor { request_id: id, kind: Kind::Cancel as u8, slot: shm::NO_SLOT, ..Default::default() };
        for o in self.preprocs.iter().chain(&self.gpus) {
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
            match self.pool.adopt(from, ProcId::FRONTEND, &d) {
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

/// Drains the inbox on its own OS thread until `stop` is set (and the inbox
/// woken): the blocking wait spins briefly and then sleeps on the eventfd,
/// and completing a oneshot channel wakes the waiting task on the runtime.
pub fn receive_loop(dispatch: Arc<Dispatch>, mut inbox: Inbox, spin: Duration, stop: Arc<AtomicBool>) {
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
