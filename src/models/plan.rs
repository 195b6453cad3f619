//! What an order changes in the table: the versions to add and the entries
//! they replace (a load), or the entries to take away (an unload), checked
//! before anything moves.

use model_repo::control::ControlError;
use model_repo::{Model, ModelState, Repository, Step};

use super::catalog::CatalogError;
use super::{Catalog, Manager};

#[derive(Debug, Default)]
pub(super) struct Plan {
    /// The order to answer.
    pub id: Option<u64>,
    /// The models the order is about (a pipeline's models with it).
    pub names: Vec<String>,
    /// Versions to load, placed in the table when the load starts...
    pub adding: Vec<Model>,
    /// ...at these entries.
    pub new: Vec<u16>,
    /// Entries replaced (a load) or taken away (an unload).
    pub retire: Vec<u16>,
    pub unload: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.adding.is_empty() && self.retire.is_empty()
    }

    /// `ocr version 1, ppocr_det version 2` for the log.
    pub fn describe(&self, table: &Repository) -> String {
        let at = |s: &u16| &table.models[*s as usize];
        let named: Vec<String> =
            self.new.iter().map(at).map(|m| format!("{} version {}", m.name, m.latest())).collect();
        if named.is_empty() { self.names.join(", ") } else { named.join(", ") }
    }
}

/// The models a pipeline runs (its model steps, and the model whose
/// metadata its decoding reads).
fn uses(model: &Model) -> Vec<&str> {
    let Some(p) = &model.config.pipeline else { return vec![] };
    let mut names = p.models();
    names.extend(p.steps.iter().filter_map(|s| match s {
        Step::OcrDecode(d) => Some(d.charset_model.as_str()),
        _ => None,
    }));
    names
}

fn read<C: Catalog>(catalog: &C, name: &str, config: Option<&str>) -> Result<Model, ControlError> {
    catalog.read(name, config).map_err(|e| match e {
        CatalogError::NotFound(m) => ControlError::NotFound(m),
        CatalogError::Invalid(m) => ControlError::Invalid(m),
    })
}

/// Loading `name` (its versions by its policy), and the models it uses
/// that are not loaded yet.
pub(super) fn load<C: Catalog>(m: &Manager<C>, name: &str, config: Option<&str>) -> Result<Plan, ControlError> {
    let target = read(&m.catalog, name, config)?;
    let mut models = Vec::new();
    for used in uses(&target) {
        if m.table.get(used).is_none() {
            let model = read(&m.catalog, used, None)
                .map_err(|e| ControlError::Invalid(format!("pipeline `{name}` runs model `{used}`: {e}")))?;
            if model.is_pipeline() {
                return Err(ControlError::Invalid(format!("pipeline `{name}` runs `{used}`, itself a pipeline")));
            }
            models.push(model);
        }
    }
    models.push(target);
    let mut plan = Plan::default();
    for model in models {
        let invalid = |message: String| ControlError::Invalid(format!("model `{}`: {message}", model.name));
        let versions = model.config.version_policy.select(&model.versions).map_err(invalid)?;
        if let Some(need) = model.config.slot_need()
            && need.bytes > m.largest_slot
        {
            return Err(invalid(format!(
                "{} needs a {}-byte shared-memory slot; the largest holds {} (the classes were set at start, from \
                 shm.slots or from the models loaded then: list a larger class in shm.slots, or load this model at \
                 start, within shm.max_bytes)",
                need.what, need.bytes, m.largest_slot
            )));
        }
        let mut kept = Vec::new();
        for v in versions {
            let entry = Model { versions: vec![v], state: ModelState::Loading, ..model.clone() };
            let same = |e: &Model| e.name == entry.name && e.versions == entry.versions && e.config == entry.config;
            match m.table.models.iter().position(|e| e.state == ModelState::Ready && same(e)) {
                Some(i) => kept.push(i),
                None => plan.adding.push(entry),
            }
        }
        plan.retire.extend(
            m.table
                .models
                .iter()
                .enumerate()
                .filter(|(i, e)| e.state == ModelState::Ready && e.name == model.name && !kept.contains(i))
                .map(|(i, _)| i as u16),
        );
        plan.names.push(model.name);
    }
    let free = m.table.models.iter().filter(|e| e.state == ModelState::Unloaded).count()
        + m.capacity.saturating_sub(m.table.models.len());
    if plan.adding.len() > free {
        return Err(ControlError::Invalid(format!(
            "loading {} needs {} more versions loaded at once; room is left for {free} of the {} (config: \
             models.max_models)",
            plan.names.join(", "),
            plan.adding.len(),
            m.capacity
        )));
    }
    Ok(plan)
}

/// Unloading every version of `name`, and with `dependents` the loaded
/// pipelines that use it (else they make it refuse).
pub(super) fn unload(table: &Repository, name: &str, dependents: bool) -> Result<Plan, ControlError> {
    let ready = |i: &usize| table.models[*i].state == ModelState::Ready;
    let mut retire: Vec<u16> =
        (0..table.models.len()).filter(ready).filter(|&i| table.models[i].name == name).map(|i| i as u16).collect();
    if retire.is_empty() {
        return Err(ControlError::NotFound(format!(
            "model `{name}` is not loaded; loaded: {}",
            table.names().join(", ")
        )));
    }
    let users: Vec<usize> =
        (0..table.models.len()).filter(ready).filter(|&i| uses(&table.models[i]).contains(&name)).collect();
    let mut names = vec![name.to_string()];
    if !users.is_empty() {
        let pipelines: Vec<&str> = users.iter().map(|&i| table.models[i].name.as_str()).collect();
        if !dependents {
            return Err(ControlError::Invalid(format!(
                "model `{name}` is used by the loaded pipeline(s) {}: unload them first, or ask for \
                 `unload_dependents`",
                pipelines.join(", ")
            )));
        }
        names.extend(pipelines.iter().map(|p| p.to_string()));
        retire.extend(users.iter().map(|&i| i as u16));
    }
    Ok(Plan { names, retire, unload: true, ..Plan::default() })
}

/// Whether the repository's `model` (as on disk) is not what is loaded of
/// it: not loaded, other versions, or another config.
pub(super) fn differs(table: &Repository, model: &Model) -> bool {
    let Ok(wanted) = model.config.version_policy.select(&model.versions) else { return false };
    let loaded: Vec<&Model> =
        table.models.iter().filter(|e| e.state == ModelState::Ready && e.name == model.name).collect();
    let mut versions: Vec<u64> = loaded.iter().map(|e| e.latest()).collect();
    versions.sort_unstable();
    versions != wanted || loaded.iter().any(|e| e.config != model.config)
}
