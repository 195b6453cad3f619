//! Which levels (or tenants) have had work lately: while a higher level, or
//! a tenant behind its share, is active, the places that keep capacity for
//! it (an inference instance, a preproc worker's main thread) hold it back
//! from the others.

use std::collections::BTreeMap;

/// How long after a level's last request it still counts as active: long
/// enough to cover the gaps of a paced stream (1 s covers one frame a
/// second), short enough that bulk work gets everything back soon after live
/// traffic stops.
pub const ACTIVE_NS: u64 = 1_000_000_000;

/// When each key (a level, a tenant) last had work.
#[derive(Clone, Debug)]
pub struct Active<K = u8> {
    seen: BTreeMap<K, u64>,
}

impl<K> Default for Active<K> {
    fn default() -> Self {
        Active { seen: BTreeMap::new() }
    }
}

impl<K: Ord + Copy> Active<K> {
    /// Work of `key` arrived at `now_ns`.
    pub fn note(&mut self, key: K, now_ns: u64) {
        let at = self.seen.entry(key).or_insert(now_ns);
        *at = (*at).max(now_ns);
    }

    /// The keys that had work within [`ACTIVE_NS`] of `now_ns`.
    pub fn active(&self, now_ns: u64) -> impl Iterator<Item = K> + '_ {
        self.seen.iter().filter(move |&(_, &at)| now_ns.saturating_sub(at) < ACTIVE_NS).map(|(&k, _)| k)
    }

    /// Whether a key below `key` (for levels: a higher level) is active.
    pub fn above(&self, key: K, now_ns: u64) -> bool {
        self.seen.range(..key).any(|(_, &at)| now_ns.saturating_sub(at) < ACTIVE_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_higher_level_is_active_for_a_second_after_its_last_work() {
        let mut a = Active::default();
        assert!(!a.above(2, 0));
        a.note(1, 100);
        a.note(3, 200);
        assert!(a.above(2, 100 + ACTIVE_NS - 1));
        assert!(!a.above(2, 100 + ACTIVE_NS), "a second later it is not");
        assert!(!a.above(1, 150), "nothing is above the highest level");
        assert!(a.above(4, 200), "level 3 is above 4");
        a.note(1, 50);
        assert!(a.above(2, 100 + ACTIVE_NS - 1), "an older note does not move it back");
        assert_eq!(a.active(200 + ACTIVE_NS - 1).collect::<Vec<_>>(), [3]);
    }
}
