//! The background thread: image jobs of a level below the highest active
//! one, or of a tenant ahead of its share while one behind it is active,
//! run here at a lower OS priority (nice [`NICE`]), while the worker's main
//! thread stays free for the others. When a live image arrives while a bulk
//! one is being decoded, both run, and the kernel gives the live one the
//! core: the bulk decode in hand no longer delays it, and bulk work still
//! gets every cycle live work leaves.
//!
//! Priority by niceness is the one way an unprivileged process can tell the
//! kernel which of its work matters more; a thread can lower its own
//! priority but never raise it again, so the lower-priority work has a
//! thread of its own rather than the main thread switching back and forth.
//! Measured (ppocr_cls, 1280x720, 2-core VM, docs/performance.md): the live
//! class's p99 beside a saturating bulk load, not its place in the queue,
//! was what stayed high once the queues were ordered by level.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use model_repo::control::Live;
use shm::mailbox::SelfWaker;
use shm::{Descriptor, Peers, ProcId};

use crate::tensorize::Tensorize;

/// The background thread's niceness: its share of a core against a thread
/// at nice 0 is about 1 to 9 (the kernel's weights 110 and 1024).
pub const NICE: i32 = 10;

/// One image job for the background thread.
struct Job {
    from: ProcId,
    desc: Descriptor,
    tenant: usize,
}

/// Jobs the thread holds at most: the one in hand and the next, so that it
/// never waits for the main thread (two wake-ups, 20-55 µs each on the
/// reference VM) between jobs.
const DEPTH: usize = 2;

/// A job the thread finished: its tenant, what it cost, and the job itself
/// when it must wait for an inference worker to be ready (the main thread
/// keeps those).
pub type Done = (usize, f64, Option<(ProcId, Descriptor)>);

/// The handle the main thread keeps.
pub struct Background {
    jobs: mpsc::SyncSender<Job>,
    done: mpsc::Receiver<Done>,
    held: usize,
}

impl Background {
    /// Starts the thread; it fails requests itself, through `peers`, and
    /// wakes the main thread's inbox when a job is done.
    pub fn start(
        peers: Arc<Peers>,
        models: Arc<Live>,
        mut tensorize: Tensorize,
        waker: SelfWaker,
    ) -> std::io::Result<Background> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(DEPTH);
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new().name("background".into()).spawn(move || {
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
                // It still works, only without the kernel's help.
                tracing::warn!("cannot lower the background thread's priority: {e}");
            }
            for job in rx {
                let _span = tracing::debug_span!("request", request_id = job.desc.request_id).entered();
                let started = Instant::now();
                let wait = match tensorize.run(&peers, &models.get(), job.from, &job.desc) {
                    Err(f) if f.no_worker => Some((job.from, job.desc)),
                    Err(f) => {
                        peers.fail(&job.desc, None, f.status, &f.message);
                        None
                    }
                    Ok(()) => None,
                };
                if done_tx.send((job.tenant, started.elapsed().as_nanos() as f64, wait)).is_err() {
                    break;
                }
                waker.wake();
            }
        })?;
        Ok(Background { jobs, done, held: 0 })
    }

    /// Whether the thread holds all the jobs it takes.
    pub fn is_busy(&self) -> bool {
        self.held >= DEPTH
    }

    /// Hands an image job of `tenant` over (the thread must not be busy),
    /// or gives it back if the thread is gone, for the caller to run.
    pub fn run(&mut self, from: ProcId, desc: Descriptor, tenant: usize) -> Result<(), (ProcId, Descriptor)> {
        debug_assert!(!self.is_busy(), "the background thread holds {DEPTH} jobs at most; this is a bug");
        match self.jobs.try_send(Job { from, desc, tenant }) {
            Ok(()) => {
                self.held += 1;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(j) | mpsc::TrySendError::Disconnected(j)) => Err((j.from, j.desc)),
        }
    }

    /// The job that finished, if one did.
    pub fn finished(&mut self) -> Option<Done> {
        let done = self.done.try_recv().ok()?;
        self.held -= 1;
        Some(done)
    }
}
