//! Whose turn it is: which model's queue gets the next free instance, under
//! the budget of batches computing at once. Pure state, like `BatchState`:
//! no clock reads and no I/O. The scheduler tells it what happened (a
//! request arrived, a batch started, an instance is free after so long) and
//! asks it whom to serve, so the rules are unit-tested here with made-up
//! queues and times.
//!
//! The rules, among models with queued work and an idle instance:
//! 1. the head request of the highest level goes first (1 is the highest);
//! 2. within a level, the tenant furthest behind its weighted share of
//!    compute time (`sched::Fairness`: each batch's busy time is charged to
//!    the tenants of its rows), so one model's flood cannot starve another;
//! 3. then the most urgent head (its deadline, or its arrival when it has
//!    none): a pipeline's later steps, whose requests started earlier,
//!    finish before new requests start, which keeps latency and memory down;
//!    on a tie, the lower model index.
//!
//! At most `budget` batches compute at once, and a model whose batcher says
//! wait is passed over until the next round. Capacity is kept for those who
//! would otherwise wait for a whole batch of someone else's (each rule holds
//! only while they have had requests within `sched::ACTIVE_NS`, so a lone
//! client still gets everything):
//! - while a higher level is active, a batch of a lower level may not take
//!   the last budget slot, nor its model's last idle instance if the higher
//!   level uses that model: a live request finds an instance free instead of
//!   waiting for a bulk batch to finish;
//! - while another tenant is active, a tenant already computing its
//!   weighted share of the budget may not take the last slot: a model sent
//!   a modest rate finds one free beside another model's flood.
//!
//! With a budget of one there is nothing to keep, and these only order the
//! queue.

use sched::Active;

use crate::batcher::Pending;

/// What the rules see of one model's queue: its head request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its level; lower goes first.
    pub level: u8,
    /// Whose share it counts against (the model the client asked for).
    pub tenant: usize,
    /// Its deadline, or its arrival when it has none; lower goes first.
    pub urgency_ns: u64,
}

impl Head {
    pub fn of<T>(p: &Pending<T>, tenant: usize) -> Head {
        Head {
            level: sched::level(p.priority, None),
            tenant,
            urgency_ns: if p.deadline_ns != 0 { p.deadline_ns } else { p.arrived_ns },
        }
    }
}

/// The instances that are idle, the batches computing, the models passed
/// over in this round, the tenants' shares and the levels seen lately.
#[derive(Debug)]
pub struct Turns {
    budget: usize,
    running: usize,
    /// Per model, its idle instances; the last one is handed out first.
    idle: Vec<Vec<usize>>,
    /// Per model, whether it is passed over until the next round.
    passed: Vec<bool>,
    fair: sched::Fairness,
    /// Per model and instance, the tenants and rows of the batch it computes.
    computing: Vec<Vec<Vec<(usize, u32)>>>,
    /// Per model, which levels had requests lately.
    seen: Vec<Active>,
    /// Per tenant, its weight, when it last had a request, and the batches
    /// computing that it leads.
    tenants: Vec<Tenant>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Tenant {
    weight: u32,
    seen_ns: Option<u64>,
    running: usize,
}

impl Turns {
    /// `instances`: each model's instance count, all idle at first;
    /// `weights`: each tenant's share.
    pub fn new(budget: usize, instances: impl IntoIterator<Item = usize>, weights: &[u32]) -> Turns {
        let idle: Vec<Vec<usize>> = instances.into_iter().map(|n| (0..n).collect()).collect();
        Turns {
            budget,
            running: 0,
            passed: vec![false; idle.len()],
            computing: idle.iter().map(|i| vec![Vec::new(); i.len()]).collect(),
            seen: vec![Active::default(); idle.len()],
            idle,
            fair: sched::Fairness::new(weights),
            tenants: weights.iter().map(|&w| Tenant { weight: w.max(1), ..Tenant::default() }).collect(),
        }
    }

    fn tenant(&mut self, t: usize) -> &mut Tenant {
        if t >= self.tenants.len() {
            self.tenants.resize(t + 1, Tenant { weight: 1, ..Tenant::default() });
        }
        &mut self.tenants[t]
    }

    /// Batches computing now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.running
    }

    /// A request of `tenant` at `level` arrived for `model` at `now_ns`.
    pub fn arrived(&mut self, model: usize, level: u8, tenant: usize, now_ns: u64) {
        self.seen[model].note(level, now_ns);
        self.tenant(tenant).seen_ns = Some(now_ns);
        self.fair.activate(tenant);
    }

    /// Starts a round: every model may be served again.
    pub fn begin_round(&mut self) {
        self.passed.fill(false);
    }

    /// Whether a batch of `model` led by `head` may start now.
    fn may_start(&self, model: usize, head: Head, now_ns: u64) -> bool {
        if self.budget < 2 {
            return true;
        }
        let last_slot = self.running + 1 >= self.budget;
        let kept_for_higher = last_slot && self.seen.iter().any(|s| s.above(head.level, now_ns));
        let last_instance_kept = self.idle[model].len() < 2 && self.seen[model].above(head.level, now_ns);
        let kept_for_tenant = last_slot && self.over_share(head.tenant, now_ns);
        !(kept_for_higher || last_instance_kept || kept_for_tenant)
    }

    /// Whether `tenant` computes at least its weighted share of the budget
    /// while another tenant is active.
    fn over_share(&self, tenant: usize, now_ns: u64) -> bool {
        let active = |t: &Tenant| t.seen_ns.is_some_and(|at| now_ns.saturating_sub(at) < sched::ACTIVE_NS);
        let mine = self.tenants.get(tenant).copied().unwrap_or(Tenant { weight: 1, ..Tenant::default() });
        let others: u32 =
            self.tenants.iter().enumerate().filter(|&(t, x)| t != tenant && active(x)).map(|(_, x)| x.weight).sum();
        others > 0
            && mine.running as f64 >= self.budget as f64 * f64::from(mine.weight) / f64::from(mine.weight + others)
    }

    /// The model whose queue gets the next free instance, given each model's
    /// head (`None`: nothing queued); `None` when the budget is spent or no
    /// model with work may start a batch.
    pub fn next(&self, now_ns: u64, head: impl Fn(usize) -> Option<Head>) -> Option<usize> {
        if self.running >= self.budget {
            return None;
        }
        (0..self.idle.len())
            .filter(|&m| !self.passed[m] && !self.idle[m].is_empty())
            .filter_map(|m| head(m).map(|h| (h, m)))
            .filter(|&(h, m)| self.may_start(m, h, now_ns))
            .min_by(|(a, m), (b, n)| {
                a.level
                    .cmp(&b.level)
                    .then(self.fair.key(a.tenant).total_cmp(&self.fair.key(b.tenant)))
                    .then(a.urgency_ns.cmp(&b.urgency_ns))
                    .then(m.cmp(n))
            })
            .map(|(_, m)| m)
    }

    /// `model`'s batcher has no batch to run yet: pass it over this round.
    pub fn pass(&mut self, model: usize) {
        self.passed[model] = true;
    }

    /// A batch of `model` starts, holding `rows` rows of each tenant;
    /// returns the idle instance that runs it.
    pub fn start(&mut self, model: usize, tenants: Vec<(usize, u32)>) -> usize {
        let instance = self.idle[model].pop().expect("`next` chose a model with an idle instance; this is a bug");
        if let Some(&(first, _)) = tenants.first() {
            self.fair.serve(first);
            self.tenant(first).running += 1;
        }
        self.computing[model][instance] = tenants;
        self.running += 1;
        instance
    }

    /// The batch just started on `instance` of `model` could not be handed
    /// over (its thread has stopped): it does not compute, and the instance
    /// stays out.
    pub fn lost(&mut self, model: usize, instance: usize) {
        if let Some(&(first, _)) = self.computing[model][instance].first() {
            let t = self.tenant(first);
            t.running = t.running.saturating_sub(1);
        }
        self.computing[model][instance].clear();
        self.running -= 1;
    }

    /// `instance` of `model` finished its batch after `busy_ns`, which is
    /// charged to the batch's tenants by their rows.
    pub fn free(&mut self, model: usize, instance: usize, busy_ns: u64) {
        let tenants = std::mem::take(&mut self.computing[model][instance]);
        if let Some(&(first, _)) = tenants.first() {
            let t = self.tenant(first);
            t.running = t.running.saturating_sub(1);
        }
        let rows: u32 = tenants.iter().map(|&(_, r)| r).sum();
        for (tenant, r) in tenants {
            self.fair.charge(tenant, busy_ns as f64 * f64::from(r) / f64::from(rows.max(1)));
        }
        self.idle[model].push(instance);
        self.running = self.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head of level 2 (tenant: its model) with this urgency.
    fn head(urgency_ns: u64) -> Option<Head> {
        Some(Head { level: 2, tenant: 0, urgency_ns })
    }

    fn turns(budget: usize, instances: &[usize]) -> Turns {
        Turns::new(budget, instances.iter().copied(), &[])
    }

    #[test]
    fn the_earliest_deadline_goes_first() {
        let t = turns(4, &[1, 1, 1]);
        let heads = [head(30), head(10), head(20)];
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
    }

    #[test]
    fn a_head_without_a_deadline_counts_from_its_arrival() {
        let p =
            |deadline_ns, arrived_ns| Pending { item: (), rows: 1, shape_key: 0, arrived_ns, deadline_ns, priority: 2 };
        assert_eq!(Head::of(&p(0, 7), 3), Head { level: 2, tenant: 3, urgency_ns: 7 });
        assert_eq!(Head::of(&p(50, 7), 3).urgency_ns, 50);
        // An old request without a deadline goes before a newer one with a
        // far deadline.
        let t = turns(4, &[1, 1]);
        let heads = [Some(Head::of(&p(1_000, 100), 0)), Some(Head::of(&p(0, 5), 0))];
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
    }

    #[test]
    fn ties_go_to_the_lower_model() {
        let t = turns(4, &[1, 1, 1]);
        let heads = [None, head(5), head(5)];
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
    }

    #[test]
    fn models_without_work_or_an_idle_instance_wait() {
        let mut t = turns(4, &[1, 1, 0]);
        let heads = [None, head(20), head(10)];
        // Model 2 has no instance (a pipeline's), model 0 nothing queued.
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
        assert_eq!(t.start(1, vec![(0, 1)]), 0);
        assert_eq!(t.next(0, |m| heads[m]), None, "model 1's only instance is busy");
        t.free(1, 0, 1000);
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
    }

    #[test]
    fn idle_instances_are_handed_out_last_freed_first() {
        let mut t = turns(4, &[3]);
        assert_eq!((t.start(0, vec![]), t.start(0, vec![])), (2, 1));
        t.free(0, 2, 0);
        assert_eq!(t.start(0, vec![]), 2);
    }

    #[test]
    fn at_most_budget_batches_compute_at_once() {
        let mut t = turns(2, &[2, 2]);
        let heads = [head(1), head(2)];
        for _ in 0..2 {
            let m = t.next(0, |m| heads[m]).expect("within the budget");
            t.start(m, vec![(m, 1)]);
        }
        assert_eq!(t.running(), 2);
        assert_eq!(t.next(0, |m| heads[m]), None, "the budget is spent, though instances are idle");
        t.free(0, 1, 0);
        assert_eq!(t.next(0, |m| heads[m]), Some(0));
    }

    #[test]
    fn a_model_passed_over_waits_for_the_next_round() {
        let mut t = turns(4, &[1, 1]);
        let heads = [head(1), head(2)];
        assert_eq!(t.next(0, |m| heads[m]), Some(0));
        t.pass(0); // its batcher waits for more requests
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
        t.pass(1);
        assert_eq!(t.next(0, |m| heads[m]), None);
        t.begin_round();
        assert_eq!(t.next(0, |m| heads[m]), Some(0));
    }

    #[test]
    fn a_lost_batch_gives_its_budget_back_but_not_its_instance() {
        let mut t = turns(1, &[1, 1]);
        let heads = [head(1), head(2)];
        assert_eq!(t.start(0, vec![(0, 1)]), 0);
        t.lost(0, 0);
        assert_eq!(t.running(), 0);
        assert_eq!(t.next(0, |m| heads[m]), Some(1), "model 0 has no instance left");
    }

    #[test]
    fn a_higher_level_goes_first_whatever_its_deadline() {
        let t = turns(4, &[1, 1]);
        let heads = [head(1), Some(Head { level: 1, tenant: 1, urgency_ns: 500 })];
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
    }

    #[test]
    fn within_a_level_the_tenant_behind_its_share_goes_first() {
        // Tenant 0 has had 10 ms of compute, tenant 1 none: tenant 1's
        // request goes first although tenant 0's head is older.
        let mut t = Turns::new(4, [1, 1], &[1, 1]);
        t.arrived(0, 2, 0, 0);
        t.start(0, vec![(0, 4)]);
        t.free(0, 0, 10_000_000);
        t.arrived(1, 2, 1, 0);
        let heads =
            [Some(Head { level: 2, tenant: 0, urgency_ns: 1 }), Some(Head { level: 2, tenant: 1, urgency_ns: 9 })];
        assert_eq!(t.next(0, |m| heads[m]), Some(1));
        // With weight 4 against 1, tenant 0's 10 ms count as 2.5 ms: still
        // ahead of tenant 1's 5 ms.
        let mut t = Turns::new(4, [1, 1], &[4, 1]);
        t.start(0, vec![(0, 1)]);
        t.free(0, 0, 10_000_000);
        t.start(1, vec![(1, 1)]);
        t.free(1, 0, 5_000_000);
        assert_eq!(t.next(0, |m| heads[m]), Some(0));
    }

    #[test]
    fn a_batch_is_charged_to_its_tenants_by_rows() {
        let mut t = Turns::new(4, [1], &[1, 1, 1]);
        t.start(0, vec![(1, 3), (2, 1)]);
        t.free(0, 0, 4_000);
        assert_eq!((t.fair.key(1), t.fair.key(2)), (3_000.0, 1_000.0));
    }

    #[test]
    fn while_a_higher_level_is_active_a_lower_one_leaves_an_instance_free() {
        // One model, two instances, a budget of two: bulk (level 2) may use
        // one instance while live (level 1) had a request in the last second.
        let mut t = turns(2, &[2]);
        t.arrived(0, 1, 0, 0);
        let bulk = [head(5)];
        let now = 500_000_000;
        assert_eq!(t.next(now, |m| bulk[m]), Some(0));
        t.start(0, vec![(0, 8)]);
        assert_eq!(t.next(now, |m| bulk[m]), None, "the last instance is kept for live");
        let live = [Some(Head { level: 1, tenant: 0, urgency_ns: 9 })];
        assert_eq!(t.next(now, |m| live[m]), Some(0), "live takes it");
        // A second after live's last request, bulk has everything again.
        assert_eq!(t.next(sched::ACTIVE_NS, |m| bulk[m]), Some(0));
    }

    #[test]
    fn the_slot_kept_for_live_elsewhere_is_a_budget_slot_not_this_models_instance() {
        // Live uses model 1; bulk on model 0 (three instances) runs in the
        // budget left over, down to its last idle instance, but not in the
        // last budget slot.
        let mut t = turns(3, &[3, 1]);
        t.arrived(1, 1, 1, 0);
        let heads = [head(5), None];
        for _ in 0..2 {
            assert_eq!(t.next(10, |m| heads[m]), Some(0));
            t.start(0, vec![(0, 1)]);
        }
        assert_eq!(t.next(10, |m| heads[m]), None, "the last budget slot is kept for live");
        // With a budget of one there is nothing to keep.
        let mut t = turns(1, &[1]);
        t.arrived(0, 1, 0, 0);
        assert_eq!(t.next(10, |m| [head(5)][m]), Some(0));
    }

    #[test]
    fn beside_another_active_tenant_one_at_its_share_leaves_the_last_slot() {
        // Tenants 0 (the flood, model 0) and 1 (model 1), weights 1:1, a
        // budget of two: tenant 0 computes one batch, its share.
        let mut t = Turns::new(2, [2, 1], &[1, 1]);
        t.arrived(0, 2, 0, 0);
        t.arrived(1, 2, 1, 0);
        let flood = [Some(Head { level: 2, tenant: 0, urgency_ns: 1 }), None];
        assert_eq!(t.next(10, |m| flood[m]), Some(0));
        t.start(0, vec![(0, 8)]);
        assert_eq!(t.next(10, |m| flood[m]), None, "the last slot is kept for tenant 1");
        let both = [flood[0], Some(Head { level: 2, tenant: 1, urgency_ns: 5 })];
        assert_eq!(t.next(10, |m| both[m]), Some(1), "tenant 1 takes it");
        // A second after tenant 1's last request, the flood has it all.
        assert_eq!(t.next(sched::ACTIVE_NS, |m| flood[m]), Some(0));
        // With weights 3:1 tenant 0's share is one and a half of the two.
        let mut t = Turns::new(2, [2, 1], &[3, 1]);
        t.arrived(0, 2, 0, 0);
        t.arrived(1, 2, 1, 0);
        t.start(0, vec![(0, 8)]);
        assert_eq!(t.next(10, |m| flood[m]), Some(0));
    }
}
