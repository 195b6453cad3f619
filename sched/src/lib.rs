//! The scheduling policy that every place a request can wait applies alike:
//! **priority levels first** (Triton's numbering: 1 is the highest), then,
//! within a level, **weighted fair sharing between tenants** (the models
//! clients ask for), so that live frames pass bulk ones and one tenant's
//! flood cannot starve another.
//!
//! Pure state, like the batcher's `BatchState`: no clock, no I/O, no
//! threads. The processes hold it and feed it what they measure (the cost of
//! each piece of work, in whatever unit they choose: nanoseconds of CPU,
//! rows of a batch), and every rule here is unit-tested with made-up costs.
#![forbid(unsafe_code)]

mod active;
mod fair;
mod queue;

pub use active::{ACTIVE_NS, Active};
pub use fair::Fairness;
pub use queue::FairQueue;

/// The level a request waits at: its priority, or the model's default level
/// for priority 0 ("none asked for"). Without a default level, priority 0
/// ranks after every explicit level (a client that names a level should not
/// queue behind untagged bulk traffic). Lower is served first.
pub fn level(priority: u8, default_level: Option<u8>) -> u8 {
    match (priority, default_level) {
        (0, Some(d)) if d > 0 => d,
        (0, _) => u8::MAX,
        (p, _) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_zero_takes_the_default_level_or_comes_last() {
        assert_eq!(level(1, None), 1);
        assert_eq!(level(0, Some(2)), 2);
        assert_eq!(level(0, None), u8::MAX);
        assert_eq!(level(0, Some(0)), u8::MAX, "a default of 0 is no default");
        assert_eq!(level(3, Some(2)), 3, "an explicit level wins");
    }
}
