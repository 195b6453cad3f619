//! What admission expects a request to take, so that one whose deadline
//! cannot be met is refused at once instead of timing out after waiting:
//! `base` (a request that finds nothing ahead of it) plus `per_ahead` for
//! each request of its model at its level or above already in flight. Both
//! are learned from the answers as they come (exponentially weighted, so
//! the forecast follows the load and the machine), which takes in every
//! stage's service time and the parallelism of the workers without naming
//! them.

/// Weight of the newest answer in the averages.
const ALPHA: f64 = 0.1;
/// Answers needed before the forecast refuses anything: until then the
/// daemon does not know its own speed, and lets requests try.
const MIN_SAMPLES: u32 = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Forecast {
    base_ns: f64,
    base_samples: u32,
    per_ahead_ns: f64,
    per_ahead_samples: u32,
}

fn ewma(old: f64, new: f64, samples: u32) -> f64 {
    if samples == 0 { new } else { old + ALPHA * (new - old) }
}

impl Forecast {
    /// A request admitted with `ahead` requests before it took `took_ns`
    /// from admission to its answer.
    pub fn learn(&mut self, ahead: u32, took_ns: f64) {
        if ahead == 0 {
            self.base_ns = ewma(self.base_ns, took_ns, self.base_samples);
            self.base_samples = self.base_samples.saturating_add(1);
        } else {
            let per = (took_ns - self.base_ns).max(0.0) / f64::from(ahead);
            self.per_ahead_ns = ewma(self.per_ahead_ns, per, self.per_ahead_samples);
            self.per_ahead_samples = self.per_ahead_samples.saturating_add(1);
        }
    }

    /// How long a request with `ahead` requests before it is expected to
    /// take, once enough answers were seen; `None` until then.
    pub fn predict(&self, ahead: u32) -> Option<f64> {
        let per = if self.per_ahead_samples >= MIN_SAMPLES { self.per_ahead_ns } else { 0.0 };
        (self.base_samples >= MIN_SAMPLES || self.per_ahead_samples >= MIN_SAMPLES)
            .then(|| self.base_ns + f64::from(ahead) * per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_knows_nothing_until_it_has_seen_enough_answers() {
        let mut f = Forecast::default();
        for _ in 0..MIN_SAMPLES - 1 {
            f.learn(0, 5e6);
        }
        assert_eq!(f.predict(0), None);
        f.learn(0, 5e6);
        assert_eq!(f.predict(10), Some(5e6), "no answers with requests ahead yet: base only");
    }

    #[test]
    fn it_learns_the_cost_of_each_request_ahead() {
        let mut f = Forecast::default();
        for _ in 0..50 {
            f.learn(0, 5e6);
            f.learn(4, 5e6 + 4.0 * 2e6);
        }
        let p = f.predict(10).unwrap();
        assert!((p - 25e6).abs() < 1e3, "{p}");
        // The load changes: the averages follow.
        for _ in 0..100 {
            f.learn(4, 5e6 + 4.0 * 4e6);
        }
        assert!((f.predict(1).unwrap() - 9e6).abs() < 1e5);
    }
}
