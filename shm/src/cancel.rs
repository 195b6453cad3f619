//! Requests cancelled recently, remembered for a while by each worker: a
//! cancel can overtake its request (the client leaves while the image is
//! still being decoded upstream), and the request must then be dropped when
//! it arrives.

use std::collections::HashMap;

/// How long a cancelled id is remembered; longer than any request lives.
const REMEMBER_NS: u64 = 120_000_000_000;
/// Most ids remembered: a burst beyond it forgets the oldest.
const MAX_IDS: usize = 65_536;

#[derive(Default)]
pub struct Recent {
    ids: HashMap<u64, u64>,
}

impl Recent {
    pub fn insert(&mut self, id: u64, now_ns: u64) {
        if self.ids.len() >= MAX_IDS {
            self.prune(now_ns);
            if self.ids.len() >= MAX_IDS {
                let oldest = self.ids.iter().min_by_key(|e| *e.1).map(|e| *e.0);
                if let Some(k) = oldest {
                    self.ids.remove(&k);
                }
            }
        }
        self.ids.insert(id, now_ns);
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ids.contains_key(&id)
    }

    /// Forgets ids cancelled more than two minutes ago.
    pub fn prune(&mut self, now_ns: u64) {
        self.ids.retain(|_, &mut t| now_ns.saturating_sub(t) < REMEMBER_NS);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_a_while_and_stays_bounded() {
        let mut r = Recent::default();
        r.insert(7, 0);
        assert!(r.contains(7));
        r.prune(REMEMBER_NS - 1);
        assert!(r.contains(7));
        r.prune(REMEMBER_NS);
        assert!(!r.contains(7));
        for i in 0..(MAX_IDS as u64 + 10) {
            r.insert(i, i);
        }
        assert_eq!(r.len(), MAX_IDS);
        assert!(r.contains(MAX_IDS as u64 + 9), "the newest is kept");
        assert!(!r.contains(0), "the oldest went");
    }
}
