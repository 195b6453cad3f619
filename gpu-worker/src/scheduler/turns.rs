//! Whose turn it is: which model's queue gets the next free instance, under
//! the budget of batches computing at once. Pure state, like `BatchState`:
//! no clock reads and no I/O. The scheduler tells it what happened (a batch
//! started, an instance is free) and asks it whom to serve, so the rule is
//! unit-tested here with made-up queues.
//!
//! The rule: among models with queued work and an idle instance, the one
//! whose head request is the most urgent (its deadline, or its arrival when
//! it has none) goes first; on a tie, the lower model index. At most
//! `budget` batches compute at once. A model whose batcher says wait (or has
//! nothing after all) is passed over until the next round.
//!
//! Priority levels and per-model weights (deficit round robin) go here too:
//! [`Head`] is what the rule sees of a queue, and [`Turns::start`] is where
//! a model is charged for the batch it starts.

use crate::batcher::Pending;

/// What the rule sees of one model's queue: its head request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its deadline, or its arrival when it has none; lower goes first. A
    /// pipeline's later steps (whose requests started earlier) so finish
    /// before new requests start, which keeps latency and memory down.
    pub urgency_ns: u64,
}

impl Head {
    pub fn of<T>(p: &Pending<T>) -> Head {
        Head { urgency_ns: if p.deadline_ns != 0 { p.deadline_ns } else { p.arrived_ns } }
    }
}

/// The instances that are idle, the batches computing, and the models
/// passed over in this round.
#[derive(Debug)]
pub struct Turns {
    budget: usize,
    running: usize,
    /// Per model, its idle instances; the last one is handed out first.
    idle: Vec<Vec<usize>>,
    /// Per model, whether it is passed over until the next round.
    passed: Vec<bool>,
}

impl Turns {
    /// `instances`: each model's instance count, all idle at first.
    pub fn new(budget: usize, instances: impl IntoIterator<Item = usize>) -> Turns {
        let idle: Vec<Vec<usize>> = instances.into_iter().map(|n| (0..n).collect()).collect();
        Turns { budget, running: 0, passed: vec![false; idle.len()], idle }
    }

    /// Batches computing now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.running
    }

    /// Starts a round: every model may be served again.
    pub fn begin_round(&mut self) {
        self.passed.fill(false);
    }

    /// The model whose queue gets the next free instance, given each model's
    /// head (`None`: nothing queued); `None` when the budget is spent or no
    /// model with work has an idle instance.
    pub fn next(&self, head: impl Fn(usize) -> Option<Head>) -> Option<usize> {
        if self.running >= self.budget {
            return None;
        }
        (0..self.idle.len())
            .filter(|&m| !self.passed[m] && !self.idle[m].is_empty())
            .filter_map(|m| head(m).map(|h| (h.urgency_ns, m)))
            .min()
            .map(|(_, m)| m)
    }

    /// `model`'s batcher has no batch to run yet: pass it over this round.
    pub fn pass(&mut self, model: usize) {
        self.passed[model] = true;
    }

    /// A batch of `model` starts; returns the idle instance that runs it.
    pub fn start(&mut self, model: usize) -> usize {
        let instance = self.idle[model].pop().expect("`next` chose a model with an idle instance; this is a bug");
        self.running += 1;
        instance
    }

    /// The batch just started could not be handed over (its instance's thread
    /// has stopped): it does not compute, and the instance stays out.
    pub fn lost(&mut self) {
        self.running -= 1;
    }

    /// `instance` of `model` finished its batch.
    pub fn free(&mut self, model: usize, instance: usize) {
        self.idle[model].push(instance);
        self.running = self.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(urgency_ns: u64) -> Option<Head> {
        Some(Head { urgency_ns })
    }

    #[test]
    fn the_earliest_deadline_goes_first() {
        let t = Turns::new(4, [1, 1, 1]);
        let heads = [head(30), head(10), head(20)];
        assert_eq!(t.next(|m| heads[m]), Some(1));
    }

    #[test]
    fn a_head_without_a_deadline_counts_from_its_arrival() {
        let p =
            |deadline_ns, arrived_ns| Pending { item: (), rows: 1, shape_key: 0, arrived_ns, deadline_ns, priority: 0 };
        assert_eq!(Head::of(&p(0, 7)), Head { urgency_ns: 7 });
        assert_eq!(Head::of(&p(50, 7)), Head { urgency_ns: 50 });
        // An old request without a deadline goes before a newer one with a
        // far deadline.
        let t = Turns::new(4, [1, 1]);
        let heads = [Some(Head::of(&p(1_000, 100))), Some(Head::of(&p(0, 5)))];
        assert_eq!(t.next(|m| heads[m]), Some(1));
    }

    #[test]
    fn ties_go_to_the_lower_model() {
        let t = Turns::new(4, [1, 1, 1]);
        let heads = [None, head(5), head(5)];
        assert_eq!(t.next(|m| heads[m]), Some(1));
    }

    #[test]
    fn models_without_work_or_an_idle_instance_wait() {
        let mut t = Turns::new(4, [1, 1, 0]);
        let heads = [None, head(20), head(10)];
        // Model 2 has no instance (a pipeline's), model 0 nothing queued.
        assert_eq!(t.next(|m| heads[m]), Some(1));
        assert_eq!(t.start(1), 0);
        assert_eq!(t.next(|m| heads[m]), None, "model 1's only instance is busy");
        t.free(1, 0);
        assert_eq!(t.next(|m| heads[m]), Some(1));
    }

    #[test]
    fn idle_instances_are_handed_out_last_freed_first() {
        let mut t = Turns::new(4, [3]);
        assert_eq!((t.start(0), t.start(0)), (2, 1));
        t.free(0, 2);
        assert_eq!(t.start(0), 2);
    }

    #[test]
    fn at_most_budget_batches_compute_at_once() {
        let mut t = Turns::new(2, [2, 2]);
        let heads = [head(1), head(2)];
        for _ in 0..2 {
            let m = t.next(|m| heads[m]).expect("within the budget");
            t.start(m);
        }
        assert_eq!(t.running(), 2);
        assert_eq!(t.next(|m| heads[m]), None, "the budget is spent, though instances are idle");
        t.free(0, 1);
        assert_eq!(t.next(|m| heads[m]), Some(0));
    }

    #[test]
    fn a_model_passed_over_waits_for_the_next_round() {
        let mut t = Turns::new(4, [1, 1]);
        let heads = [head(1), head(2)];
        assert_eq!(t.next(|m| heads[m]), Some(0));
        t.pass(0); // its batcher waits for more requests
        assert_eq!(t.next(|m| heads[m]), Some(1));
        t.pass(1);
        assert_eq!(t.next(|m| heads[m]), None);
        t.begin_round();
        assert_eq!(t.next(|m| heads[m]), Some(0));
    }

    #[test]
    fn a_lost_batch_gives_its_budget_back_but_not_its_instance() {
        let mut t = Turns::new(1, [1, 1]);
        let heads = [head(1), head(2)];
        assert_eq!(t.start(0), 0);
        t.lost();
        assert_eq!(t.running(), 0);
        assert_eq!(t.next(|m| heads[m]), Some(1), "model 0 has no instance left");
    }
}
