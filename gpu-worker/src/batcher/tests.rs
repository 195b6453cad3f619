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
fn levels_never_share_a_batch() {
    let mut s = state([req(0, 1, 0, 0), Pending { priority: 1, ..req(1, 1, 0, 0) }, req(2, 1, 0, 0)]);
    let l = limits(4, &[], 0);
    assert_eq!(ids(s.next_batch(&l, 0)), [1], "the live request runs without the bulk ones");
    assert_eq!(ids(s.next_batch(&l, 0)), [0, 2]);
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
                            assert_eq!(rank(p.priority), rank(batch[0].priority), "seed {seed}: mixed levels");
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
