//! The checks a request passes before it is queued: its entry is loaded
//! here, and its tensors (or, for GPU preprocessing, its images) fit the
//! model's config. These return the request's batch rows and the key of the
//! shapes it may share a batch with, or the message its client gets.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use model_repo::{Model, ModelState, Repository};
use shm::tensor::{self, TensorMeta};
use shm::{Descriptor, Held, Status};

/// What this worker has of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Here {
    /// Nothing (not loaded, still loading, or unloaded).
    Absent,
    /// Its instances run it.
    Serving,
    /// The table no longer wants it, but its instances run until what was
    /// sent for it before the table changed is done.
    Retiring,
}

/// Whether a request for entry `slot` of `table` is taken: READY and
/// UNLOADING entries loaded here are (requests in flight finish on a
/// version being replaced), and so is whatever still comes for an entry
/// being unloaded here (a pipeline's step sent before the table changed).
/// Anything else fails at once, with the status and the message.
pub fn check_loaded(slot: usize, table: &Repository, here: Here) -> Result<(), (Status, String)> {
    if here == Here::Retiring {
        return Ok(());
    }
    // A pipeline runs in the preproc pool (its steps come here as requests
    // for the models they name); an index beyond the table was never given.
    let Some(m) = table.models.get(slot).filter(|m| !m.is_pipeline()) else {
        return Err((Status::Internal, format!("no runnable model #{slot}")));
    };
    let not_loaded = |why: &str| format!("model `{}` version {} is not loaded{why}", m.name, m.latest());
    match (here, m.state) {
        (Here::Serving, ModelState::Ready | ModelState::Unloading) => Ok(()),
        (_, ModelState::Loading) => Err((Status::Unavailable, not_loaded(" yet (it is loading)"))),
        _ => Err((Status::Unavailable, not_loaded(""))),
    }
}

/// Checks a request of images for GPU preprocessing (the preproc pool read
/// their headers): one to max_batch_size of them. Returns the batch rows and
/// the key of the tensor they become, as `check_inputs` would give it, so
/// they share batches with tensor requests of that shape.
pub fn check_images(model: &Model, slot: &Held, d: &Descriptor) -> Result<(u32, u64), String> {
    let bytes = slot.bytes(d.offset as usize, d.len as usize).map_err(|e| e.to_string())?;
    let n = tensor::bytes_elements(bytes)?.len();
    let cfg = &model.config;
    if n == 0 || n != d.rows as usize || n > cfg.max_batch_size as usize {
        return Err(format!("{n} images for {} rows (1 to {} are accepted)", d.rows, cfg.max_batch_size));
    }
    let Some(pre) = &cfg.preprocess else {
        return Err(format!("model `{}` does not take images", model.name));
    };
    let mut key = DefaultHasher::new();
    pre.image_dims()[..].hash(&mut key);
    Ok((n as u32, key.finish()))
}

/// Checks tensors against the model's config; returns the batch rows and a key
/// that is equal for requests that may share a batch (same non-batch shapes).
pub fn check_inputs(model: &Model, metas: &[TensorMeta]) -> Result<(u32, u64), String> {
    let cfg = &model.config;
    if metas.len() != cfg.inputs.len() {
        return Err(format!("model `{}` takes {} inputs, got {}", model.name, cfg.inputs.len(), metas.len()));
    }
    let batched = cfg.max_batch_size > 0;
    let mut rows = None;
    let mut key = DefaultHasher::new();
    for (m, c) in metas.iter().zip(&cfg.inputs) {
        let dims = if batched { m.dims.get(1..).unwrap_or(&[]) } else { &m.dims[..] };
        let fits = m.dtype == c.datatype
            && dims.len() == c.dims.len()
            && dims.iter().zip(&c.dims).all(|(&d, &want)| want == -1 || d == want)
            && (!batched || !m.dims.is_empty());
        if !fits {
            return Err(format!(
                "input `{}` is {} {:?}; the model takes {} {:?}",
                c.name,
                m.dtype,
                m.dims,
                c.datatype,
                cfg.full_shape(c)
            ));
        }
        let r = if batched { m.dims[0] as u32 } else { 1 };
        if *rows.get_or_insert(r) != r || r == 0 || (batched && r > cfg.max_batch_size) {
            return Err(format!("batch size {r} is not accepted (1 to {} for every input)", cfg.max_batch_size));
        }
        dims.hash(&mut key);
    }
    Ok((rows.unwrap_or(1), key.finish()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn table(states: &[ModelState]) -> Repository {
        let text = "max_batch_size = 4\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                    [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";
        let config = model_repo::ModelConfig::parse(text, "config.toml").expect("test config parses");
        let models = states
            .iter()
            .enumerate()
            .map(|(i, &state)| Model {
                name: "m".into(),
                dir: "/nowhere/m".into(),
                versions: vec![i as u64 + 1],
                config: config.clone(),
                state,
            })
            .collect();
        Repository { root: "/nowhere".into(), models, generation: 1, failures: BTreeMap::new() }
    }

    #[test]
    fn ready_and_unloading_entries_loaded_here_are_taken() {
        let t = table(&[ModelState::Ready, ModelState::Unloading]);
        assert_eq!(check_loaded(0, &t, Here::Serving), Ok(()));
        assert_eq!(check_loaded(1, &t, Here::Serving), Ok(()), "requests in flight finish on the old version");
    }

    #[test]
    fn an_entry_not_loaded_here_fails_at_once_naming_model_and_version() {
        let t = table(&[ModelState::Loading, ModelState::Unloaded, ModelState::Ready]);
        let (status, m) = check_loaded(0, &t, Here::Absent).unwrap_err();
        assert_eq!(
            (status, m.as_str()),
            (Status::Unavailable, "model `m` version 1 is not loaded yet (it is loading)")
        );
        let (_, m) = check_loaded(0, &t, Here::Serving).unwrap_err();
        assert!(m.contains("it is loading"), "loaded here but not switched to yet: {m}");
        let (status, m) = check_loaded(1, &t, Here::Absent).unwrap_err();
        assert_eq!((status, m.as_str()), (Status::Unavailable, "model `m` version 2 is not loaded"));
        let (_, m) = check_loaded(2, &t, Here::Absent).unwrap_err();
        assert_eq!(m, "model `m` version 3 is not loaded", "a ready entry whose load failed here");
    }

    #[test]
    fn an_index_beyond_the_table_or_a_pipeline_fails_without_a_panic() {
        let t = table(&[ModelState::Ready]);
        assert_eq!(check_loaded(7, &t, Here::Absent), Err((Status::Internal, "no runnable model #7".into())));
        assert_eq!(check_loaded(u16::MAX as usize, &t, Here::Serving).unwrap_err().0, Status::Internal);
    }

    #[test]
    fn an_entry_being_unloaded_here_takes_what_still_comes_for_it() {
        // Its index may already be unloaded, hold another version, or be
        // beyond the table: what arrives was sent before the table changed.
        let t = table(&[ModelState::Unloaded, ModelState::Loading]);
        for slot in [0, 1, 5] {
            assert_eq!(check_loaded(slot, &t, Here::Retiring), Ok(()), "entry {slot}");
        }
    }
}
