//! How much of each admission limit a priority level may fill: every level
//! keeps `server.priority_headroom` of `max_inflight` (and of
//! `max_inflight_bytes`) from each level below it, so bulk traffic cannot
//! take the last places and, when the daemon is full, the lowest level is
//! refused first. Levels are those the models declare (`priority_levels`);
//! a request of a level beyond them, or of none, ranks with the lowest.
//! With no model declaring levels, every request may fill the limits.

use std::sync::atomic::{AtomicU8, Ordering};

use model_repo::Repository;

#[derive(Debug)]
pub struct Shares {
    /// The most levels any model of the table declares (it changes with
    /// the table).
    levels: AtomicU8,
    headroom: f64,
}

fn most_levels(repo: &Repository) -> u8 {
    crate::table::present(repo).map(|(_, m)| m.config.priority_levels).max().unwrap_or(0).min(255) as u8
}

impl Shares {
    pub fn new(repo: &Repository, headroom: f64) -> Shares {
        Shares { levels: AtomicU8::new(most_levels(repo)), headroom }
    }

    /// The levels of a new table.
    pub fn set(&self, repo: &Repository) {
        self.levels.store(most_levels(repo), Ordering::Relaxed);
    }

    /// How many levels are above `level` (0 for the highest).
    fn rank(&self, level: u8) -> u8 {
        level.clamp(1, self.levels.load(Ordering::Relaxed).saturating_add(1)) - 1
    }

    /// How much of `limit` requests at `level` may fill (at least one).
    pub fn cap(&self, limit: usize, level: u8) -> usize {
        let kept = (self.headroom * f64::from(self.rank(level))).min(1.0);
        ((limit as f64 * (1.0 - kept)).floor() as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(levels: u8, headroom: f64) -> Shares {
        Shares { levels: AtomicU8::new(levels), headroom }
    }

    #[test]
    fn each_level_keeps_headroom_from_the_ones_below() {
        let s = shares(2, 0.1);
        assert_eq!([1, 2, 3, 255].map(|l| s.cap(256, l)), [256, 230, 204, 204]);
        // No level declared: everyone may fill everything.
        assert_eq!([1, 2, 255].map(|l| shares(0, 0.1).cap(256, l)), [256; 3]);
        // However many levels, at least one place.
        assert_eq!(shares(20, 0.1).cap(8, 20), 1);
    }
}
