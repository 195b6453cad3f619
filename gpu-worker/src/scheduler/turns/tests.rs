//! The rules of `Turns`, with made-up queues and times.

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
    let p = |deadline_ns, arrived_ns| Pending { item: (), rows: 1, shape_key: 0, arrived_ns, deadline_ns, priority: 2 };
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
    let heads = [Some(Head { level: 2, tenant: 0, urgency_ns: 1 }), Some(Head { level: 2, tenant: 1, urgency_ns: 9 })];
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

#[test]
fn a_model_added_later_is_served_and_one_removed_is_not() {
    // Four indices, none loaded at first (the capacity of the table).
    let mut t = turns(4, &[0, 0, 0, 0]);
    let heads = [None, head(5), head(1), None];
    assert_eq!(t.next(0, |m| heads[m]), None, "no model has an instance yet");
    t.add(1, 2);
    assert_eq!(t.next(0, |m| heads[m]), Some(1));
    t.add(2, 1);
    assert_eq!(t.next(0, |m| heads[m]), Some(2), "the more urgent head, now that its model is loaded");
    t.remove(2);
    assert_eq!(t.next(0, |m| heads[m]), Some(1));
    t.remove(1);
    assert_eq!(t.next(0, |m| heads[m]), None);
}

#[test]
fn an_index_beyond_the_first_size_can_be_added() {
    let mut t = turns(4, &[1]);
    t.add(5, 1);
    let heads = [None, None, None, None, None, head(3)];
    assert_eq!(t.next(0, |m| heads[m]), Some(5));
    assert_eq!(t.start(5, vec![(5, 1)]), 0);
    assert_eq!(t.busy(5), 1);
}

#[test]
fn busy_counts_a_models_batches_until_they_are_free_or_lost() {
    let mut t = turns(4, &[3, 1]);
    assert_eq!(t.busy(0), 0);
    t.start(0, vec![(0, 1)]);
    t.start(0, vec![(0, 1)]);
    t.start(1, vec![(1, 1)]);
    assert_eq!((t.busy(0), t.busy(1)), (2, 1));
    t.free(0, 2, 10);
    t.lost(0, 1);
    assert_eq!((t.busy(0), t.busy(1), t.running()), (0, 1, 1));
    assert_eq!(t.busy(9), 0, "an index never added has nothing computing");
}

#[test]
fn a_model_added_again_starts_with_all_its_instances_idle() {
    let mut t = turns(4, &[2]);
    t.start(0, vec![(0, 1)]);
    t.free(0, 1, 10);
    t.remove(0);
    t.add(0, 3);
    assert_eq!((t.start(0, vec![]), t.start(0, vec![]), t.start(0, vec![])), (2, 1, 0));
}

#[test]
fn a_free_from_an_unknown_instance_is_ignored() {
    let mut t = turns(4, &[1]);
    t.free(3, 0, 10);
    t.free(0, 7, 10);
    assert_eq!(t.running(), 0);
    assert_eq!(t.next(0, |m| [head(1)][m]), Some(0));
}

#[test]
fn the_budget_and_a_tenants_weight_can_change() {
    let mut t = turns(1, &[2]);
    let heads = [head(1)];
    t.start(0, vec![(0, 1)]);
    assert_eq!(t.next(0, |m| heads[m]), None, "a budget of one is spent");
    t.set_budget(2);
    assert_eq!(t.next(0, |m| heads[m]), Some(0));
    // Tenant 1 gets weight 4 after the table changed: its 8 ms count as 2,
    // behind tenant 0's 3.
    let mut t = Turns::new(4, [1, 1], &[1, 1]);
    t.set_weight(1, 4);
    t.start(0, vec![(0, 1)]);
    t.free(0, 0, 3_000_000);
    t.start(1, vec![(1, 1)]);
    t.free(1, 0, 8_000_000);
    let both = [Some(Head { level: 2, tenant: 0, urgency_ns: 1 }), Some(Head { level: 2, tenant: 1, urgency_ns: 9 })];
    assert_eq!(t.next(0, |m| both[m]), Some(1));
}
