//! When to restart a crashed worker: exponential backoff, and giving up when
//! crashes come too fast. Pure: the caller passes the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct RestartPolicy {
    base: Duration,
    max: Duration,
    max_restarts: u32,
    window: Duration,
    crashes: VecDeque<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a replacement after this delay.
    Restart(Duration),
    /// Too many crashes within the window: stop the daemon.
    GiveUp { crashes: u32, window: Duration },
}

impl RestartPolicy {
    pub fn new(base: Duration, max: Duration, max_restarts: u32, window: Duration) -> RestartPolicy {
        RestartPolicy { base, max, max_restarts, window, crashes: VecDeque::new() }
    }

    /// Records a crash at `now` and decides what to do.
    pub fn on_crash(&mut self, now: Instant) -> Decision {
        while self.crashes.front().is_some_and(|&t| now.duration_since(t) > self.window) {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let n = self.crashes.len() as u32;
        if n > self.max_restarts {
            return Decision::GiveUp { crashes: n, window: self.window };
        }
        // Crashes that keep coming within the window back off exponentially; a
        // worker that stayed up longer than the window starts again at `base`.
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        Decision::Restart(self.base.saturating_mul(factor).min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::new(Duration::from_millis(100), Duration::from_secs(5), 4, Duration::from_secs(60))
    }

    #[test]
    fn backs_off_exponentially_up_to_the_cap() {
        let mut p =
            RestartPolicy::new(Duration::from_millis(100), Duration::from_millis(500), 10, Duration::from_secs(60));
        let t = Instant::now();
        let delays: Vec<Decision> = (0..5).map(|i| p.on_crash(t + Duration::from_secs(i))).collect();
        let ms = |m| Decision::Restart(Duration::from_millis(m));
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(500), ms(500)]);
    }

    #[test]
    fn gives_up_after_too_many_crashes_in_the_window() {
        let mut p = policy();
        let t = Instant::now();
        for i in 0..4 {
            assert!(matches!(p.on_crash(t + Duration::from_secs(i)), Decision::Restart(_)));
        }
        assert!(matches!(p.on_crash(t + Duration::from_secs(5)), Decision::GiveUp { crashes: 5, .. }));
    }

    #[test]
    fn old_crashes_are_forgotten() {
        let mut p = policy();
        let t = Instant::now();
        for i in 0..4 {
            p.on_crash(t + Duration::from_secs(i));
        }
        // Two minutes later the window is empty again: restart quickly.
        assert_eq!(p.on_crash(t + Duration::from_secs(120)), Decision::Restart(Duration::from_millis(100)));
    }
}
