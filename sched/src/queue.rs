//! A queue of work items served by level, then fairly between tenants, then
//! in arrival order: what a worker that takes one piece of work at a time
//! (a preproc worker) keeps its inbox in.

use std::collections::{BTreeMap, VecDeque};

use crate::Fairness;

/// Items waiting, by level (lower first), then tenant.
#[derive(Debug, Default)]
pub struct FairQueue<T> {
    levels: BTreeMap<u8, BTreeMap<usize, VecDeque<T>>>,
    /// Items queued per tenant, over all levels.
    queued: Vec<usize>,
    fair: Fairness,
    len: usize,
}

impl<T> FairQueue<T> {
    /// `weights[t]` is tenant `t`'s share within a level.
    pub fn new(weights: &[u32]) -> FairQueue<T> {
        FairQueue { levels: BTreeMap::new(), queued: Vec::new(), fair: Fairness::new(weights), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items waiting at `level`.
    pub fn len_at(&self, level: u8) -> usize {
        self.levels.get(&level).map_or(0, |ts| ts.values().map(VecDeque::len).sum())
    }

    pub fn push(&mut self, level: u8, tenant: usize, item: T) {
        if tenant >= self.queued.len() {
            self.queued.resize(tenant + 1, 0);
        }
        if self.queued[tenant] == 0 {
            self.fair.activate(tenant);
        }
        self.queued[tenant] += 1;
        self.len += 1;
        self.levels.entry(level).or_default().entry(tenant).or_default().push_back(item);
    }

    /// The tenant served next at a level: the one furthest behind its share.
    fn tenant_at(&self, tenants: &BTreeMap<usize, VecDeque<T>>) -> usize {
        *tenants
            .keys()
            .min_by(|a, b| self.fair.key(**a).total_cmp(&self.fair.key(**b)).then(a.cmp(b)))
            .expect("a level with no tenants is removed; this is a bug")
    }

    /// What [`FairQueue::pop`] would return, left in place.
    pub fn peek(&self) -> Option<(u8, usize, &T)> {
        let (&level, tenants) = self.levels.first_key_value()?;
        let tenant = self.tenant_at(tenants);
        Some((level, tenant, tenants[&tenant].front().expect("an empty tenant queue is removed; this is a bug")))
    }

    /// The next item: from the highest level with any, the tenant furthest
    /// behind its share, its oldest. The caller reports what serving it cost
    /// with [`FairQueue::charge`].
    pub fn pop(&mut self) -> Option<(u8, usize, T)> {
        let (&level, tenants) = self.levels.first_key_value()?;
        let tenant = self.tenant_at(tenants);
        let mut entry = self.levels.first_entry().expect("looked at above");
        let tenants = entry.get_mut();
        let fifo = tenants.get_mut(&tenant).expect("key just found");
        let item = fifo.pop_front().expect("an empty tenant queue is removed; this is a bug");
        if fifo.is_empty() {
            tenants.remove(&tenant);
        }
        if tenants.is_empty() {
            entry.remove();
        }
        self.queued[tenant] -= 1;
        self.len -= 1;
        self.fair.serve(tenant);
        Some((level, tenant, item))
    }

    /// Whether `tenant` has had more than its share: one of `others` (the
    /// other tenants with work lately) is behind it.
    pub fn ahead(&self, tenant: usize, others: impl IntoIterator<Item = usize>) -> bool {
        let mine = self.fair.key(tenant);
        others.into_iter().any(|t| t != tenant && self.fair.key(t) < mine)
    }

    /// New shares, as models are loaded and unloaded.
    pub fn set_weights(&mut self, weights: &[u32]) {
        self.fair.set_weights(weights);
    }

    /// What serving one of the tenant's items cost.
    pub fn charge(&mut self, tenant: usize, cost: f64) {
        self.fair.charge(tenant, cost);
    }

    /// Takes out every item `gone` picks (a cancelled request's work).
    pub fn remove(&mut self, mut gone: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for tenants in self.levels.values_mut() {
            for (&tenant, fifo) in tenants.iter_mut() {
                let before = fifo.len();
                let (take, keep): (VecDeque<T>, VecDeque<T>) = fifo.drain(..).partition(|item| gone(item));
                *fifo = keep;
                self.queued[tenant] -= before - fifo.len();
                out.extend(take);
            }
            tenants.retain(|_, fifo| !fifo.is_empty());
        }
        self.levels.retain(|_, tenants| !tenants.is_empty());
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut FairQueue<u32>) -> Vec<u32> {
        std::iter::from_fn(|| {
            let peeked = q.peek().map(|(l, t, &i)| (l, t, i));
            let popped = q.pop();
            assert_eq!(peeked, popped, "peek shows what pop takes");
            popped.map(|(_, t, item)| {
                q.charge(t, 1.0);
                item
            })
        })
        .collect()
    }

    #[test]
    fn higher_levels_first_then_arrival_order() {
        let mut q = FairQueue::new(&[1]);
        q.push(2, 0, 20);
        q.push(2, 0, 21);
        q.push(1, 0, 10);
        q.push(u8::MAX, 0, 99);
        assert_eq!((q.len(), q.len_at(2)), (4, 2));
        assert_eq!(drain(&mut q), [10, 20, 21, 99]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_flooding_tenant_shares_by_weight() {
        // Tenant 0 queued 100 items before tenant 1's 10 arrived; with
        // weights 1:1 they alternate, so tenant 1 is not behind the flood.
        let mut q = FairQueue::new(&[1, 1]);
        for i in 0..100 {
            q.push(1, 0, i);
        }
        for i in 0..10 {
            q.push(1, 1, 1000 + i);
        }
        let order = drain(&mut q);
        let last_of_1 = order.iter().position(|&i| i == 1009).unwrap();
        assert!(last_of_1 < 21, "tenant 1 done within 21 pops: {order:?}");
        // Weights 2:1: tenant 0 gets two turns for each of tenant 1's.
        let mut q = FairQueue::new(&[2, 1]);
        for i in 0..30 {
            q.push(1, 0, i);
            q.push(1, 1, 100 + i);
        }
        let first: Vec<bool> = drain(&mut q).iter().take(30).map(|&i| i < 100).collect();
        assert_eq!(first.iter().filter(|&&zero| zero).count(), 20, "{first:?}");
    }

    #[test]
    fn a_tenant_served_more_is_ahead_of_one_served_less() {
        let mut q = FairQueue::new(&[1, 1]);
        q.push(1, 0, 1);
        q.pop();
        q.charge(0, 10.0);
        assert!(q.ahead(0, [0, 1]));
        assert!(!q.ahead(1, [0, 1]));
        assert!(!q.ahead(0, [0]), "alone, no one is behind it");
    }

    #[test]
    fn removed_items_leave_the_counts_right() {
        let mut q = FairQueue::new(&[1, 1]);
        for i in 0..6 {
            q.push(1 + (i % 2) as u8, (i % 3) as usize, i);
        }
        let mut gone = q.remove(|&i| i % 2 == 0);
        gone.sort();
        assert_eq!(gone, [0, 2, 4]);
        assert_eq!((q.len(), q.len_at(1), q.len_at(2)), (3, 0, 3));
        assert_eq!(drain(&mut q).len(), 3);
        q.push(1, 2, 7);
        assert_eq!(q.pop(), Some((1, 2, 7)));
    }
}
