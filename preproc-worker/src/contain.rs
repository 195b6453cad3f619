//! Containing panics of the image decoders and CPU steps to the request that
//! caused them. A panic elsewhere in a worker aborts the process (the
//! supervisor replaces it), but third-party decoders see hostile input here:
//! fuzzing found a PNG palette that makes the `png` crate index out of bounds.
//! One such image must fail its request, not kill a worker and every other
//! request it holds.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside [`contain`]: the process's panic
/// hook then lets the panic unwind to it instead of aborting.
pub fn in_contained_scope() -> bool {
    CONTAINED.with(Cell::get)
}

/// Runs `f`; a panic inside becomes `Err` with its message. `f` works on
/// request-local data only, which the caller discards on `Err`.
pub fn contain<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_flag_is_restored() {
        assert!(!in_contained_scope());
        let r = contain(|| {
            assert!(in_contained_scope());
            let v: Vec<u8> = Vec::new();
            v[3]
        });
        assert!(r.unwrap_err().contains("index out of bounds"));
        assert!(!in_contained_scope());
        assert_eq!(contain(|| 7), Ok(7));
    }
}
