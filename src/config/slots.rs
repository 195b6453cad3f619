//! The shared-memory slot classes: derived from what the loaded models need
//! and the admission bounds, unless `[shm] slots` lists them. Slots are
//! address space until used (their pages commit on first use, within
//! `shm.max_bytes`), so the derived classes are generous in count and cost
//! memory only for the slots requests actually hold at once.

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

/// The classes the daemon runs with, checked against the models `loaded`
/// at start and the ceiling (`shm.max_bytes`), whose messages name the key
/// to change. Derived classes also hold the models that may be loaded
/// later (`later`: the repository's others, under model control), those
/// within the ceiling.
pub fn classes(cfg: &Config, loaded: &[Model], later: &[Model]) -> anyhow::Result<Vec<SlotClass>> {
    let need = |m: &Model| m.config.slot_need().map(|n| (m.name.clone(), n));
    let needs: Vec<(String, SlotNeed)> = loaded.iter().filter_map(need).collect();
    let body = cfg.server.max_body_bytes.0 as usize + TABLE_ROOM;
    let ceiling = cfg.shm.max_bytes.0;
    let biggest = needs.iter().max_by_key(|(_, n)| n.bytes);
    let classes = if cfg.shm.slots.is_empty() {
        let fits = |n: &SlotNeed| ceiling == 0 || n.bytes as u64 <= ceiling;
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
    Ok(classes)
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
