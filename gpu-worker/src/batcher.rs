//! The dynamic batcher's pure state. It holds queued requests and decides,
//! when asked, which of them form the next batch. It reads no clock and does
//! no I/O: the caller passes `now` in and acts on the answer, so every rule
//! below is unit-tested with made-up times.
//!
//! The rules follow Triton's dynamic batcher, cut as late as possible: the
//! caller asks for a batch only when a backend instance is free, so requests
//! accumulate while the model is busy and a busy model gets big batches
//! without any waiting.
//!
//! - Order: priority level first (1 is the highest; larger numbers are lower),
//!   then arrival (the order of `push`). Priority 0 means "no level asked for"
//!   and ranks after every explicit level: the model config has no default
//!   level (Triton's `default_priority_level`), and a client that names a
//!   level should not queue behind untagged bulk traffic.
//! - A batch starts with the first request in that order (the head) and adds
//!   later requests of the head's level with the same `shape_key`, in order,
//!   skipping others, while the rows sum to at most `max_rows`. Levels never
//!   share a batch: a live request's batch carries no bulk rows to compute
//!   before its answer can leave. It stops at the first
//!   same-key request that would overflow, so requests of one key and
//!   priority always leave in arrival order. A head whose rows alone exceed
//!   `max_rows` runs alone.
//! - Expired requests (`deadline_ns != 0 && deadline_ns <= now`) never join a
//!   batch; `next_batch` sets them aside and `take_expired` hands them over.
//! - When `next_batch` is called: if the head's key has `max_rows` rows
//!   queued (or the next one would not fit), run a full batch; else if some
//!   preferred size fits in what is queued, run the largest such size; else
//!   if the head has waited `max_queue_delay_ns`, run what is queued; else
//!   wait.

use std::collections::{BTreeMap, VecDeque};

use model_repo::ModelConfig;

/// A queued request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending<T> {
    pub item: T,
    /// Rows this request adds to the batch dimension, at least 1. For a model
    /// with `max_batch_size = 0` the caller pushes 1.
    pub rows: u32,
    /// Identifies the non-batch dimensions; only equal keys batch together.
    pub shape_key: u64,
    pub arrived_ns: u64,
    /// When the request stops being worth running; 0 means never.
    pub deadline_ns: u64,
    /// 1 is the highest level, larger is lower; 0 ranks after every level.
    pub priority: u8,
}

impl<T> Pending<T> {
    fn expired(&self, now_ns: u64) -> bool {
        self.deadline_ns != 0 && self.deadline_ns <= now_ns
    }
}

/// How batches are cut for one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: u32,
    /// Preferred batch sizes in rows, ascending, each at most `max_rows`.
    pub preferred: Vec<u32>,
    pub max_queue_delay_ns: u64,
}

impl Limits {
    /// The limits a model config asks for.
    ///
    /// `max_batch_size = 0` means the model has no batch dimension, so each
    /// request must run alone: `max_rows` is 1 and every request is pushed
    /// with `rows = 1`. Without `[dynamic_batching]` nothing waits: a batch is
    /// whatever is queued when the model is free.
    pub fn from_config(cfg: &ModelConfig) -> Limits {
        if cfg.max_batch_size == 0 {
            return Limits { max_rows: 1, preferred: Vec::new(), max_queue_delay_ns: 0 };
        }
        let max_rows = cfg.max_batch_size;
        let (mut preferred, delay_us) = match &cfg.dynamic_batching {
            Some(db) => (db.preferred_batch_size.clone(), db.max_queue_delay_microseconds),
            None => (Vec::new(), 0),
        };
        // Config validation already rejects these; filtering keeps the cut
        // rule's assumptions true for configs built in code.
        preferred.retain(|&p| p > 0 && p <= max_rows);
        preferred.sort_unstable();
        preferred.dedup();
        Limits { max_rows, preferred, max_queue_delay_ns: delay_us.saturating_mul(1000) }
    }
}

/// What the caller should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Run these requests as one batch, in this order.
    Run(Vec<Pending<T>>),
    /// Nothing to run yet; ask again at this time (always later than `now`),
    /// or sooner if a request arrives.
    WaitUntil(u64),
    /// No request is queued (expired ones may still await `take_expired`).
    Idle,
}

/// Sorts priority 0 after every explicit level (see the module docs).
fn rank(priority: u8) -> u16 {
    if priority == 0 { 256 } else { u16::from(priority) }
}

/// The queue of one model.
#[derive(Debug)]
pub struct BatchState<T> {
    /// One FIFO per priority rank; a rank with no requests has no entry, so
    /// the head is the front of the first entry.
    levels: BTreeMap<u16, VecDeque<Pending<T>>>,
    /// Expired requests set aside by `next_batch`, awaiting `take_expired`.
    expired: Vec<Pending<T>>,
    len: usize,
    rows: u64,
    /// No queued request expires before this; `u64::MAX` when none can. It
    /// may be too early (the request may have left), which costs one scan.
    next_deadline: u64,
}

impl<T> Default for BatchState<T> {
    fn default() -> Self {
        BatchState::new()
    }
}

impl<T> BatchState<T> {
    pub fn new() -> BatchState<T> {
        BatchState { levels: BTreeMap::new(), expired: Vec::new(), len: 0, rows: 0, next_deadline: u64::MAX }
    }

    pub fn push(&mut self, p: Pending<T>) {
        debug_assert!(p.rows > 0, "a request has at least one row; this is a bug");
        self.len += 1;
        self.rows += u64::from(p.rows);
        if p.deadline_ns != 0 {
            self.next_deadline = self.next_deadline.min(p.deadline_ns);
        }
        self.levels.entry(rank(p.priority)).or_default().push_back(p);
    }

    /// Requests held, including expired ones not yet taken.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Rows held, including those of expired requests not yet taken.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The request a batch would start with (expired ones included until
    /// `next_batch` or `take_expired` sets them aside).
    pub fn head(&self) -> Option<&Pending<T>> {
        self.levels.values().find_map(|q| q.front())
    }

    /// Decides the next batch; see the module docs for the rules. Call it when
    /// a backend instance is free, then call `take_expired` to answer the
    /// requests that ran out of time.
    pub fn next_batch(&mut self, limits: &Limits, now_ns: u64) -> Next<T> {
        self.set_aside_expired(now_ns);
        let Some((&head_rank, head)) = self.levels.iter().find_map(|(r, q)| q.front().map(|p| (r, p))) else {
            return Next::Idle;
        };
        let (key, head_arrived) = (head.shape_key, head.arrived_ns);
        // A zero limit would never admit the head; treat it as "one at a time".
        let max_rows = u64::from(limits.max_rows.max(1));

        // Same-key requests in order, as far as max_rows allows.
        let mut picks: Vec<(u16, usize, u32)> = Vec::new();
        let mut available = 0u64;
        let mut blocked = false;
        'scan: for (&rank, queue) in self.levels.range(head_rank..=head_rank) {
            for (index, p) in queue.iter().enumerate() {
                if p.shape_key != key {
                    continue;
                }
                if !picks.is_empty() && available + u64::from(p.rows) > max_rows {
                    blocked = true;
                    break 'scan;
                }
                picks.push((rank, index, p.rows));
                available += u64::from(p.rows);
                if available >= max_rows {
                    break 'scan;
                }
            }
        }

        // Waiting cannot grow a batch that is full or whose next request
        // does not fit, so those run now.
        let cap = if available >= max_rows || blocked {
            max_rows
        } else if let Some(&p) = limits.preferred.iter().rev().find(|&&p| u64::from(p) <= available) {
            u64::from(p)
        } else if now_ns.saturating_sub(head_arrived) >= limits.max_queue_delay_ns {
            max_rows
        } else {
            // Also wake for the next deadline, so expired requests are
            // answered on time rather than when the head's delay ends.
            let wake = head_arrived.saturating_add(limits.max_queue_delay_ns).min(self.next_deadline);
            return Next::WaitUntil(wake);
        };

        let mut total = 0u64;
        let take = picks
            .iter()
            .position(|&(_, _, rows)| {
                total += u64::from(rows);
                total > cap
            })
            .unwrap_or(picks.len())
            .max(1);
        picks.truncate(take);
        Next::Run(self.remove_picks(&picks))
    }

    /// Removes and returns the requests whose deadline has passed, including
    /// those `next_batch` set aside.
    pub fn take_expired(&mut self, now_ns: u64) -> Vec<Pending<T>> {
        self.set_aside_expired(now_ns);
        let out = std::mem::take(&mut self.expired);
        self.forget(&out);
        out
    }

    /// Removes and returns the requests `pred` selects (e.g. those whose
    /// client went away), wherever they are queued.
    pub fn remove(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<Pending<T>> {
        let mut out = Vec::new();
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.expired).into_iter().partition(|p| pred(&p.item));
        self.expired = kept;
        out.extend(gone);
        for queue in self.levels.values_mut() {
            if queue.iter().any(|p| pred(&p.item)) {
                // Rebuilding keeps the order of the requests that stay.
                for p in std::mem::take(queue) {
                    if pred(&p.item) { out.push(p) } else { queue.push_back(p) }
                }
            }
        }
        self.levels.retain(|_, q| !q.is_empty());
        self.forget(&out);
        out
    }

    fn forget(&mut self, gone: &[Pending<T>]) {
        self.len -= gone.len();
        self.rows -= gone.iter().map(|p| u64::from(p.rows)).sum::<u64>();
    }

    /// Moves expired requests out of the queues. Cheap unless a deadline has
    /// been reached: only then does it scan everything.
    fn set_aside_expired(&mut self, now_ns: u64) {
        if now_ns < self.next_deadline {
            return;
        }
        let mut next = u64::MAX;
        for queue in self.levels.values_mut() {
            for p in std::mem::take(queue) {
                if p.expired(now_ns) {
                    self.expired.push(p);
                } else {
                    if p.deadline_ns != 0 {
                        next = next.min(p.deadline_ns);
                    }
                    queue.push_back(p);
                }
            }
        }
        self.levels.retain(|_, q| !q.is_empty());
        self.next_deadline = next;
    }

    /// Removes the picked requests; `picks` are in queue order.
    fn remove_picks(&mut self, picks: &[(u16, usize, u32)]) -> Vec<Pending<T>> {
        let mut out = Vec::with_capacity(picks.len());
        let mut start = 0;
        while start < picks.len() {
            let rank = picks[start].0;
            let end = start + picks[start..].iter().take_while(|p| p.0 == rank).count();
            let indices = picks[start..end].iter().map(|p| p.1);
            let queue = self.levels.get_mut(&rank).expect("picked from an existing level; this is a bug");
            if indices.clone().eq(0..end - start) {
                // The common case: the picks are the front of the queue.
                out.extend(queue.drain(..end - start));
            } else {
                let mut wanted = indices.peekable();
                for (index, p) in std::mem::take(queue).into_iter().enumerate() {
                    if wanted.next_if_eq(&index).is_some() { out.push(p) } else { queue.push_back(p) }
                }
            }
            if queue.is_empty() {
                self.levels.remove(&rank);
            }
            start = end;
        }
        self.forget(&out);
        out
    }
}

#[cfg(test)]
mod tests;
