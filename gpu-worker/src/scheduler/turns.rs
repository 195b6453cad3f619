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
//!
//! Models come and go while the worker serves: a model's instances are
//! [`Turns::add`]ed when its load completes and [`Turns::remove`]d when it
//! is unloaded (with no batch of it computing); an index without instances
//! is never served.

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
    /// Per model, its batches computing.
    busy: Vec<usize>,
    /// Per model, whether it is passed over until the next round.
    passed: Vec<bool>,
    /// Every tenant's weight is 1 here: [`Turns::free`] divides a batch's
    /// cost by the tenant's weight itself, so that a weight can change when
    /// another model takes the tenant's index.
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
        let mut t = Turns {
            budget,
            running: 0,
            idle: Vec::new(),
            busy: Vec::new(),
            passed: Vec::new(),
            computing: Vec::new(),
            seen: Vec::new(),
            fair: sched::Fairness::new(&[]),
            tenants: weights.iter().map(|&w| Tenant { weight: w.max(1), ..Tenant::default() }).collect(),
        };
        for (model, n) in instances.into_iter().enumerate() {
            t.add(model, n);
        }
        t
    }

    /// Model `model` has `instances` instances from now on, all idle (its
    /// load completed).
    pub fn add(&mut self, model: usize, instances: usize) {
        if model >= self.idle.len() {
            let n = model + 1;
            self.idle.resize_with(n, Vec::new);
            self.busy.resize(n, 0);
            self.passed.resize(n, false);
            self.computing.resize_with(n, Vec::new);
            self.seen.resize_with(n, Active::default);
        }
        self.idle[model] = (0..instances).collect();
        self.busy[model] = 0;
        self.computing[model] = vec![Vec::new(); instances];
        self.seen[model] = Active::default();
    }

    /// Model `model` has no instance any more (it is unloaded); none of its
    /// batches may be computing.
    pub fn remove(&mut self, model: usize) {
        debug_assert_eq!(self.busy(model), 0, "a model is removed while it computes; this is a bug");
        if model < self.idle.len() {
            self.idle[model].clear();
            self.busy[model] = 0;
            self.computing[model].clear();
            self.seen[model] = Active::default();
        }
    }

    /// Batches of `model` computing now.
    pub fn busy(&self, model: usize) -> usize {
        self.busy.get(model).copied().unwrap_or(0)
    }

    /// At most `budget` batches compute at once from now on.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }

    /// `tenant`'s share from now on (0 counts as 1).
    pub fn set_weight(&mut self, tenant: usize, weight: u32) {
        self.tenant(tenant).weight = weight.max(1);
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
        if let Some(seen) = self.seen.get_mut(model) {
            seen.note(level, now_ns);
        }
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
        self.busy[model] += 1;
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
        self.busy[model] -= 1;
        self.running -= 1;
    }

    /// `instance` of `model` finished its batch after `busy_ns`, which is
    /// charged to the batch's tenants by their rows.
    /// An instance this does not know of (none can report after its model
    /// is removed) is ignored.
    pub fn free(&mut self, model: usize, instance: usize, busy_ns: u64) {
        let Some(slot) = self.computing.get_mut(model).and_then(|m| m.get_mut(instance)) else {
            return;
        };
        let tenants = std::mem::take(slot);
        if let Some(&(first, _)) = tenants.first() {
            let t = self.tenant(first);
            t.running = t.running.saturating_sub(1);
        }
        let rows: u32 = tenants.iter().map(|&(_, r)| r).sum();
        for (tenant, r) in tenants {
            let weight = f64::from(self.tenant(tenant).weight);
            self.fair.charge(tenant, busy_ns as f64 * f64::from(r) / f64::from(rows.max(1)) / weight);
        }
        self.idle[model].push(instance);
        self.busy[model] = self.busy[model].saturating_sub(1);
        self.running = self.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests;
