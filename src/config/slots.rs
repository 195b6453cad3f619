//! The shared-memory slot classes: derived from what the loaded models need
//! and the admission bounds, unless `[shm] slots` lists them. Slots are
//! address space until used (their pages commit on first use, within
//! `shm.max_bytes`), so the derived classes are generous in count and cost
//! memory only for the slots requests actually hold at once. On a GPU the
//! inference worker pins the whole region, which commits all of it: there
//! the slots must fit under the ceiling themselves ([`fit_pinned`]).

use anyhow::bail;
use model_repo::{Model, SlotNeed, TABLE_ROOM};
use shm::SlotClass;

use super::Config;

/// The smallest class: an encoded photo, a small tensor, an answer.
const SMALLEST: usize = 256 << 10;
/// Each class is this many times the one below (until the largest need).
const STEP: usize = 8;
/// The largest class is rounded up to a whole MiB.
const MIB: usize = 1 << 20;

/// The admission bounds the classes follow.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_inflight: u32,
    pub max_inflight_bytes: u64,
}

/// Classes for requests whose largest slot is `largest` bytes: 256 KiB,
/// then ×8 steps below the largest, which is `largest` rounded up to a MiB.
/// Every request in flight may hold two slots at once (its input, and its
/// tensor or answer), so the smallest class has two per request; a larger
/// class has two per request its bytes allow in flight
/// (`max_inflight_bytes / size`), at least 8, at most the smallest's count.
pub fn derive(largest: usize, b: Bounds) -> Vec<SlotClass> {
    let top = if largest <= SMALLEST { SMALLEST } else { largest.div_ceil(MIB) * MIB };
    let most = 2 * b.max_inflight.max(1);
    let count = |size: usize| {
        if size == SMALLEST {
            return most;
        }
        let by_bytes = b.max_inflight_bytes.div_ceil(size as u64).min(u32::MAX as u64 / 2) as u32;
        (2 * by_bytes).clamp(8, most.max(8))
    };
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(SMALLEST), |s| Some(s * STEP)).take_while(|&s| s < top).collect();
    sizes.push(top);
    sizes.into_iter().map(|size| SlotClass { size, count: count(size) }).collect()
}

/// Derived classes cut to fit under `ceiling` bytes in all, for a region
/// that is pinned (so committed) whole: the largest classes lose slots
/// first, each keeping at least [`PINNED_KEEP`] (fewer large requests at
/// once, which then wait or get 429, instead of memory nobody asked for).
/// `None` when even that is over the ceiling; `ceiling` 0 is none.
fn fit_pinned(mut classes: Vec<SlotClass>, ceiling: u64) -> Option<Vec<SlotClass>> {
    if ceiling == 0 {
        return Some(classes);
    }
    let mut excess = bytes(&classes).saturating_sub(ceiling);
    for c in classes.iter_mut().rev() {
        let cut = u64::from(c.count.saturating_sub(PINNED_KEEP)).min(excess.div_ceil(c.size as u64));
        c.count -= cut as u32;
        excess = excess.saturating_sub(cut * c.size as u64);
    }
    (excess == 0).then_some(classes)
}

/// All the slots' bytes.
fn bytes(classes: &[SlotClass]) -> u64 {
    classes.iter().map(|c| c.size as u64 * u64::from(c.count)).sum()
}

/// The slots of each class that [`fit_pinned`] keeps.
const PINNED_KEEP: u32 = 2;

/// The classes the daemon runs with, checked against the models `loaded`
/// at start and the ceiling (`shm.max_bytes`), whose messages name the key
/// to change. Derived classes also hold the models that may be loaded
/// later (`later`: the repository's others, under model control), those
/// within the ceiling. `pinned`: the region will be pinned whole for a GPU,
/// so the slots themselves must fit under the ceiling.
pub fn classes(cfg: &Config, loaded: &[Model], later: &[Model], pinned: bool) -> anyhow::Result<Vec<SlotClass>> {
    let need = |m: &Model| m.config.slot_need().map(|n| (m.name.clone(), n));
    let needs: Vec<(String, SlotNeed)> = loaded.iter().filter_map(need).collect();
    let body = cfg.server.max_body_bytes.0 as usize + TABLE_ROOM;
    let ceiling = cfg.shm.max_bytes.0;
    let biggest = needs.iter().max_by_key(|(_, n)| n.bytes);
    let classes = if cfg.shm.slots.is_empty() {
        // As derive rounds the largest class (a model that may never load
        // must not make start-up fail).
        let fits = |n: &SlotNeed| ceiling == 0 || (n.bytes.div_ceil(MIB) * MIB) as u64 <= ceiling;
        let later = later.iter().filter_map(need).map(|(_, n)| n).filter(fits).map(|n| n.bytes);
        let largest = needs.iter().map(|(_, n)| n.bytes).chain(later).max().unwrap_or(0).max(body);
        derive(
            largest,
            Bounds { max_inflight: cfg.server.max_inflight, max_inflight_bytes: cfg.server.max_inflight_bytes.0 },
        )
    } else {
        cfg.shm.slots.iter().map(|s| SlotClass { size: s.size.0 as usize, count: s.count }).collect()
    };
    let largest = classes.iter().map(|c| c.size).max().unwrap_or(0);
    if let Some((name, need)) = biggest
        && need.bytes > largest
    {
        bail!(
            "model `{name}`: {} needs a {}-byte shared-memory slot; the largest in shm.slots holds {largest}: list a \
             larger class (or leave shm.slots empty to derive the classes from the models)",
            need.what,
            need.bytes
        );
    }
    if ceiling > 0 && largest as u64 > ceiling {
        let why = match biggest {
            Some((name, need)) if need.bytes as u64 > ceiling => {
                format!("model `{name}`: {} needs a {}-byte shared-memory slot", need.what, need.bytes)
            }
            _ => format!("the largest shared-memory slot is {largest} bytes"),
        };
        bail!("{why}, over the pool's ceiling shm.max_bytes ({ceiling} bytes): raise shm.max_bytes");
    }
    if !pinned {
        return Ok(classes);
    }
    let total = bytes(&classes);
    if !cfg.shm.slots.is_empty() && ceiling > 0 && total > ceiling {
        bail!(
            "shm.slots add up to {total} bytes, over shm.max_bytes ({ceiling} bytes); on a GPU the whole pool is \
             pinned, so all of it is memory: list fewer or smaller slots, or raise shm.max_bytes"
        );
    }
    fit_pinned(classes, ceiling).ok_or_else(|| {
        anyhow::anyhow!(
            "on a GPU the whole shared-memory pool is pinned, and {PINNED_KEEP} slots of each size class do not fit \
             under shm.max_bytes ({ceiling} bytes): raise shm.max_bytes"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Bounds = Bounds { max_inflight: 256, max_inflight_bytes: 256 << 20 };
    /// The default server.max_body_bytes, and a slot's table.
    const BODY: usize = (16 << 20) + 4096;

    fn sizes_and_counts(classes: &[SlotClass]) -> Vec<(usize, u32)> {
        classes.iter().map(|c| (c.size, c.count)).collect()
    }

    #[test]
    fn classes_step_up_to_the_largest_need() {
        // The default admission bounds with the OCR pipeline loaded (its
        // detector input for a 2016x2016 image).
        let ocr = 2016 * 2016 * 12 + 4096;
        assert_eq!(
            sizes_and_counts(&derive(ocr, DEFAULTS)),
            [(256 << 10, 512), (2 << 20, 256), (16 << 20, 32), (47 << 20, 12)]
        );
        // A classifier alone: the request body is the largest need.
        assert_eq!(
            sizes_and_counts(&derive(BODY, DEFAULTS)),
            [(256 << 10, 512), (2 << 20, 256), (16 << 20, 32), (17 << 20, 32)]
        );
        // A small daemon: few requests, small bodies.
        let small = Bounds { max_inflight: 2, max_inflight_bytes: 2 << 20 };
        assert_eq!(sizes_and_counts(&derive(1 << 20, small)), [(256 << 10, 4), (1 << 20, 8)]);
        assert_eq!(sizes_and_counts(&derive(100, small)), [(256 << 10, 4)]);
    }

    #[test]
    fn pinned_classes_fit_under_the_ceiling_largest_first() {
        let ocr = derive(2016 * 2016 * 12 + 4096, DEFAULTS);
        // 1.7 GiB of slots under a 1 GiB ceiling: the 47 MiB class keeps two,
        // the 16 MiB class gives up what is still over.
        let fit = fit_pinned(ocr.clone(), 1 << 30).unwrap();
        assert_eq!(sizes_and_counts(&fit), [(256 << 10, 512), (2 << 20, 256), (16 << 20, 18), (47 << 20, 2)]);
        assert!(bytes(&fit) <= 1 << 30);
        // Under the ceiling already, or no ceiling: unchanged.
        assert_eq!(fit_pinned(ocr.clone(), 4 << 30), Some(ocr.clone()));
        assert_eq!(fit_pinned(ocr.clone(), 0), Some(ocr.clone()));
        // Two of each class over the ceiling: no fit.
        assert_eq!(fit_pinned(ocr, 64 << 20), None);
    }

    #[test]
    fn a_pinned_pool_is_held_to_the_ceiling() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
        let mut cfg = Config::load(&path, &Default::default()).unwrap();
        cfg.shm.max_bytes = crate::config::ByteSize(256 << 20);
        // Derived: cut to fit.
        assert!(bytes(&classes(&cfg, &[], &[], false).unwrap()) > 256 << 20);
        assert!(bytes(&classes(&cfg, &[], &[], true).unwrap()) <= 256 << 20);
        // Listed: refused, naming both keys.
        cfg.shm.slots = vec![crate::config::SlotClass { size: crate::config::ByteSize(64 << 20), count: 5 }];
        assert!(classes(&cfg, &[], &[], false).is_ok());
        let err = classes(&cfg, &[], &[], true).unwrap_err().to_string();
        assert!(err.contains("shm.slots") && err.contains("shm.max_bytes") && err.contains("GPU"), "{err}");
    }

    #[test]
    fn every_class_is_a_valid_layout() {
        for largest in [1, 300 << 10, 5 << 20, 100 << 20, 1 << 30] {
            let classes = derive(largest, DEFAULTS);
            assert!(classes.windows(2).all(|w| w[0].size < w[1].size), "{classes:?}");
            assert!(classes.iter().all(|c| c.size % 4096 == 0 && c.count > 0), "{classes:?}");
            assert!(classes.last().unwrap().size >= largest);
            let topo = shm::Topology { gpus: 1, preprocs: 2 };
            shm::LayoutParams::new(topo, 4, 1024, &classes).unwrap();
        }
    }
}
