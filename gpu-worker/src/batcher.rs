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
//!   later requests with the same `shape_key`, in order, skipping others,
//!   while the rows sum to at most `max_rows`. It stops at the first
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

    /// Decides the next batch; see the module docs for the rules. Call it when
    /// a backend instance is free, then call `take_expired` to answer the
    /// requests that ran out of time.
    pub fn next_batch(&mut self, limits: &Limits, now_ns: u64) -> Next<T> {
        self.set_aside_expired(now_ns);
        let Some(head) = self.levels.values().find_map(|q| q.front()) else {
            return Next::Idle;
        };
        let (key, head_arrived) = (head.shape_key, head.arrived_ns);
        // A zero limit would never admit the head; treat it as "one at a time".
        let max_rows = u64::from(limits.max_rows.max(1));

        // Same-key requests in order, as far as max_rows allows.
        let mut picks: Vec<(u16, usize, u32)> = Vec::new();
        let mut available = 0u64;
        let mut blocked = false;
        'scan: for (&rank, queue) in &self.levels {
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
mod tests {
    use super::*;

    fn limits(max_rows: u32, preferred: &[u32], delay: u64) -> Limits {
        Limits { max_rows, preferred: preferred.to_vec(), max_queue_delay_ns: delay }
    }

    fn req(id: u32, rows: u32, key: u64, at: u64) -> Pending<u32> {
        Pending { item: id, rows, shape_key: key, arrived_ns: at, deadline_ns: 0, priority: 0 }
    }

    fn ids(next: Next<u32>) -> Vec<u32> {
        match next {
            Next::Run(batch) => batch.into_iter().map(|p| p.item).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn state(reqs: impl IntoIterator<Item = Pending<u32>>) -> BatchState<u32> {
        let mut s = BatchState::new();
        reqs.into_iter().for_each(|r| s.push(r));
        s
    }

    #[test]
    fn empty_is_idle() {
        let mut s = BatchState::<u32>::new();
        assert_eq!(s.next_batch(&limits(8, &[], 0), 0), Next::Idle);
        assert!(s.is_empty());
    }

    #[test]
    fn fifo_within_a_level() {
        let mut s = state((0..5).map(|i| req(i, 1, 0, 10)));
        assert_eq!(ids(s.next_batch(&limits(3, &[], 0), 10)), [0, 1, 2]);
        assert_eq!(ids(s.next_batch(&limits(3, &[], 0), 10)), [3, 4]);
        assert!(s.is_empty());
    }

    #[test]
    fn higher_priority_goes_first_and_zero_goes_last() {
        let mut s = BatchState::new();
        for (id, priority) in [(0, 0), (1, 3), (2, 1), (3, 3), (4, 0), (5, 1)] {
            s.push(Pending { priority, ..req(id, 1, 0, 0) });
        }
        let l = limits(2, &[], 0);
        assert_eq!(ids(s.next_batch(&l, 0)), [2, 5]);
        assert_eq!(ids(s.next_batch(&l, 0)), [1, 3]);
        assert_eq!(ids(s.next_batch(&l, 0)), [0, 4]);
    }

    #[test]
    fn lower_levels_fill_a_batch_after_higher_ones() {
        let mut s = state([req(0, 1, 0, 0), Pending { priority: 1, ..req(1, 1, 0, 0) }]);
        assert_eq!(ids(s.next_batch(&limits(4, &[], 0), 0)), [1, 0]);
    }

    #[test]
    fn only_equal_shape_keys_batch_together() {
        let mut s = state([req(0, 1, 7, 0), req(1, 1, 9, 0), req(2, 1, 7, 0), req(3, 1, 9, 0)]);
        let l = limits(8, &[], 0);
        assert_eq!(ids(s.next_batch(&l, 0)), [0, 2]);
        assert_eq!(ids(s.next_batch(&l, 0)), [1, 3]);
    }

    #[test]
    fn multi_row_requests_sum_up_to_max_rows() {
        let mut s = state([req(0, 3, 0, 0), req(1, 3, 0, 0), req(2, 3, 0, 0), req(3, 1, 0, 0)]);
        let l = limits(8, &[], 0);
        // 3 + 3 = 6; request 2 would make 9, and request 3 may not jump it.
        assert_eq!(ids(s.next_batch(&l, 0)), [0, 1]);
        assert_eq!(ids(s.next_batch(&l, 0)), [2, 3]);
        assert_eq!(s.rows(), 0);
    }

    #[test]
    fn oversize_request_runs_alone() {
        let mut s = state([req(0, 20, 0, 0), req(1, 1, 0, 0)]);
        let l = limits(8, &[], 1_000);
        assert_eq!(ids(s.next_batch(&l, 0)), [0]);
        assert_eq!(s.next_batch(&l, 0), Next::WaitUntil(1_000));
    }

    #[test]
    fn full_batch_runs_without_waiting() {
        let mut s = state((0..5).map(|i| req(i, 1, 0, 100)));
        assert_eq!(ids(s.next_batch(&limits(4, &[], 1_000_000), 100)), [0, 1, 2, 3]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_batch_the_next_request_cannot_join_runs_without_waiting() {
        let mut s = state([req(0, 5, 0, 0), req(1, 5, 0, 0)]);
        assert_eq!(ids(s.next_batch(&limits(8, &[], 1_000_000), 0)), [0]);
    }

    #[test]
    fn largest_fitting_preferred_size_runs_without_waiting() {
        let l = limits(32, &[2, 4, 16], 1_000_000);
        let mut s = state((0..7).map(|i| req(i, 1, 0, 0)));
        assert_eq!(ids(s.next_batch(&l, 0)), [0, 1, 2, 3]);
        assert_eq!(ids(s.next_batch(&l, 0)), [4, 5]);
        assert_eq!(s.next_batch(&l, 0), Next::WaitUntil(1_000_000));
    }

    #[test]
    fn preferred_size_counts_rows_not_requests() {
        let l = limits(32, &[4], 1_000_000);
        let mut s = state([req(0, 3, 0, 0), req(1, 3, 0, 0)]);
        // 6 rows queued: the preferred 4 takes what fits under it.
        assert_eq!(ids(s.next_batch(&l, 0)), [0]);
    }

    #[test]
    fn lone_request_waits_for_the_delay_then_runs() {
        let l = limits(8, &[4], 500);
        let mut s = state([req(0, 1, 0, 1_000), req(1, 1, 0, 1_200)]);
        assert_eq!(s.next_batch(&l, 1_200), Next::WaitUntil(1_500));
        assert_eq!(s.next_batch(&l, 1_499), Next::WaitUntil(1_500));
        assert_eq!(ids(s.next_batch(&l, 1_500)), [0, 1]);
    }

    #[test]
    fn without_a_delay_whatever_is_queued_runs() {
        let mut s = state([req(0, 1, 0, 0), req(1, 1, 0, 0)]);
        assert_eq!(ids(s.next_batch(&limits(8, &[4], 0), 0)), [0, 1]);
    }

    #[test]
    fn expired_requests_never_run_and_are_taken_separately() {
        let mut s = BatchState::new();
        s.push(Pending { deadline_ns: 50, ..req(0, 1, 0, 0) });
        s.push(req(1, 1, 0, 0));
        s.push(Pending { deadline_ns: 500, ..req(2, 1, 0, 0) });
        let l = limits(8, &[], 1_000);
        // The wait ends early so the deadline at 500 is noticed on time.
        assert_eq!(s.next_batch(&l, 100), Next::WaitUntil(500));
        assert_eq!(s.len(), 3, "expired requests are held until taken");
        assert_eq!(s.take_expired(100).into_iter().map(|p| p.item).collect::<Vec<_>>(), [0]);
        assert_eq!(s.next_batch(&l, 500), Next::WaitUntil(1_000));
        assert_eq!(ids(s.next_batch(&l, 1_000)), [1]);
        assert_eq!(s.take_expired(1_000).into_iter().map(|p| p.item).collect::<Vec<_>>(), [2]);
        assert!(s.is_empty());
    }

    #[test]
    fn take_expired_works_without_next_batch() {
        let mut s = state([Pending { deadline_ns: 10, ..req(0, 2, 0, 0) }, req(1, 1, 0, 0)]);
        assert!(s.take_expired(9).is_empty());
        assert_eq!(s.take_expired(10).len(), 1);
        assert_eq!((s.len(), s.rows()), (1, 1));
    }

    #[test]
    fn all_expired_is_idle() {
        let mut s = state([Pending { deadline_ns: 10, ..req(0, 1, 0, 0) }]);
        assert_eq!(s.next_batch(&limits(8, &[], 0), 10), Next::Idle);
        assert_eq!(s.take_expired(10).len(), 1);
    }

    #[test]
    fn remove_takes_cancelled_requests_from_anywhere() {
        // Priorities 0, 1, 2, 0, 1, 2: queue order is 1, 4, 2, 5, 0, 3.
        let mut s = state((0..6).map(|i| Pending { priority: (i % 3) as u8, ..req(i, 1, 0, 0) }));
        s.push(Pending { deadline_ns: 1, ..req(6, 1, 0, 0) });
        let l = limits(1, &[], 0);
        assert_eq!(ids(s.next_batch(&l, 5)), [1], "request 6 is now set aside as expired");
        let mut gone: Vec<u32> = s.remove(|&id| id % 2 == 0).into_iter().map(|p| p.item).collect();
        gone.sort_unstable();
        assert_eq!(gone, [0, 2, 4, 6]);
        assert_eq!((s.len(), s.rows()), (2, 2));
        assert!(s.take_expired(5).is_empty());
        assert_eq!(ids(s.next_batch(&l, 5)), [5]);
        assert_eq!(ids(s.next_batch(&l, 5)), [3]);
        assert_eq!(s.next_batch(&l, 5), Next::Idle);
    }

    fn config(text: &str) -> ModelConfig {
        let base = "[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                    [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";
        ModelConfig::parse(&format!("{text}\n{base}"), "config.toml").expect("test config parses")
    }

    #[test]
    fn limits_from_config() {
        let c = config(
            "max_batch_size = 32\n[dynamic_batching]\nmax_queue_delay_microseconds = 500\n\
             preferred_batch_size = [32, 16, 16]",
        );
        assert_eq!(Limits::from_config(&c), limits(32, &[16, 32], 500_000));
        assert_eq!(Limits::from_config(&config("max_batch_size = 8")), limits(8, &[], 0));
    }

    #[test]
    fn max_batch_size_zero_runs_each_request_alone() {
        let l = Limits::from_config(&config("max_batch_size = 0"));
        assert_eq!(l, limits(1, &[], 0));
        let mut s = state((0..3).map(|i| req(i, 1, 0, 0)));
        assert_eq!(ids(s.next_batch(&l, 0)), [0]);
        assert_eq!(ids(s.next_batch(&l, 0)), [1]);
    }

    /// A small deterministic generator, so failures reproduce.
    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// What a random run exercised, so the test can tell it covered the rules.
    #[derive(Default)]
    struct Seen {
        multi_item_batches: u32,
        waits: u32,
        expired: u32,
        removed: u32,
    }

    #[test]
    fn random_sequences_keep_the_invariants() {
        let mut seen = Seen::default();
        for seed in 1..=40u64 {
            random_run(seed, &mut seen);
        }
        assert!(seen.multi_item_batches > 100 && seen.waits > 100, "too few batches or waits");
        assert!(seen.expired > 100 && seen.removed > 20, "too few expired or removed requests");
    }

    fn random_run(seed: u64, seen: &mut Seen) {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let l = limits(8, [[].as_slice(), &[4], &[2, 6]][(seed % 3) as usize], 300);
        let mut s = BatchState::new();
        // id -> (rank, key, deadline, rows) of requests still held.
        let mut live: BTreeMap<u32, (u16, u64, u64, u32)> = BTreeMap::new();
        let mut out_count: BTreeMap<u32, u32> = BTreeMap::new();
        // Last id run per (rank, key), to check arrival order is kept.
        let mut last_run: BTreeMap<(u16, u64), u32> = BTreeMap::new();
        let mut now = 0u64;
        let mut next_id = 0u32;
        for step in 0..600 {
            now += rng.below(120);
            let finishing = step >= 500;
            match rng.below(10) {
                0..=4 if !finishing => {
                    let rows = if rng.below(20) == 0 { 9 + rng.below(4) as u32 } else { 1 + rng.below(4) as u32 };
                    let deadline = if rng.below(4) == 0 { now + rng.below(800) } else { 0 };
                    let p = Pending {
                        item: next_id,
                        rows,
                        shape_key: rng.below(3),
                        arrived_ns: now,
                        deadline_ns: deadline,
                        priority: rng.below(3) as u8,
                    };
                    live.insert(next_id, (rank(p.priority), p.shape_key, deadline, rows));
                    s.push(p);
                    next_id += 1;
                }
                5 if !finishing => {
                    let m = 1 + rng.below(7) as u32;
                    for p in s.remove(|&id| id % 7 == m % 7 && id % 3 == 0) {
                        seen.removed += 1;
                        assert!(live.remove(&p.item).is_some());
                        *out_count.entry(p.item).or_default() += 1;
                    }
                }
                _ => {
                    let expected_head = live
                        .iter()
                        .filter(|(_, (_, _, d, _))| *d == 0 || *d > now)
                        .min_by_key(|(id, (rank, ..))| (*rank, **id))
                        .map(|(id, _)| *id);
                    match s.next_batch(&l, now) {
                        Next::Run(batch) => {
                            seen.multi_item_batches += u32::from(batch.len() > 1);
                            assert_eq!(Some(batch[0].item), expected_head, "seed {seed}: the head leads the batch");
                            let rows: u64 = batch.iter().map(|p| u64::from(p.rows)).sum();
                            assert!(rows <= 8 || batch.len() == 1, "seed {seed}: {rows} rows in one batch");
                            for p in &batch {
                                assert_eq!(p.shape_key, batch[0].shape_key, "seed {seed}: mixed keys");
                                assert!(!p.expired(now), "seed {seed}: expired request ran");
                                let k = (rank(p.priority), p.shape_key);
                                if let Some(&prev) = last_run.get(&k) {
                                    assert!(prev < p.item, "seed {seed}: order broken within {k:?}");
                                }
                                last_run.insert(k, p.item);
                                assert!(live.remove(&p.item).is_some(), "seed {seed}: unknown request");
                                *out_count.entry(p.item).or_default() += 1;
                            }
                        }
                        Next::WaitUntil(t) => {
                            seen.waits += 1;
                            assert!(t > now, "seed {seed}: asked to wait until the past");
                            assert!(expected_head.is_some());
                        }
                        Next::Idle => assert_eq!(expected_head, None, "seed {seed}: idle with work queued"),
                    }
                    for p in s.take_expired(now) {
                        seen.expired += 1;
                        assert!(p.expired(now));
                        assert!(live.remove(&p.item).is_some());
                        *out_count.entry(p.item).or_default() += 1;
                    }
                }
            }
            assert_eq!(s.len(), live.len(), "seed {seed}: len");
            assert_eq!(s.rows(), live.values().map(|v| u64::from(v.3)).sum::<u64>(), "seed {seed}: rows");
        }
        // Drain: with time moving on, everything leaves one way or another.
        now += 1_000_000;
        while let Next::Run(batch) = s.next_batch(&l, now) {
            for p in batch {
                assert!(live.remove(&p.item).is_some());
                *out_count.entry(p.item).or_default() += 1;
            }
        }
        for p in s.take_expired(now) {
            assert!(live.remove(&p.item).is_some());
            *out_count.entry(p.item).or_default() += 1;
        }
        assert!(s.is_empty() && live.is_empty(), "seed {seed}: requests left behind");
        assert_eq!(out_count.len(), next_id as usize, "seed {seed}: requests lost");
        assert!(out_count.values().all(|&c| c == 1), "seed {seed}: request handed out twice");
    }
}
