//! The model control's rules with a made-up repository and made-up
//! reports.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use model_repo::control::{ControlError, ControlOp, Report};
use model_repo::{Model, ModelConfig, ModelState, Repository};
use shm::ProcId;

use super::catalog::CatalogError;
use super::{Action, Catalog, Input, Manager, Mode, Procs};

const MODEL: &str = "max_batch_size = 4\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                     [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";
const PIPELINE: &str = "max_batch_size = 0\n[[input]]\nname = \"image\"\ndatatype = \"BYTES\"\ndims = [1]\n\
                        [[output]]\nname = \"text\"\ndatatype = \"BYTES\"\ndims = [-1]\n\
                        [pipeline]\n[[pipeline.step]]\nstep = \"ocr_det_preprocess\"\n\
                        [[pipeline.step]]\nstep = \"model\"\nmodel = \"m\"\n\
                        [[pipeline.step]]\nstep = \"ocr_det_postprocess\"\n";

/// A repository: name -> (config text, versions on disk).
#[derive(Default)]
struct Fake(RefCell<BTreeMap<String, (String, Vec<u64>)>>);

impl Fake {
    fn put(&self, name: &str, config: &str, versions: &[u64]) {
        self.0.borrow_mut().insert(name.into(), (config.into(), versions.to_vec()));
    }
}

impl Catalog for &Fake {
    fn names(&self) -> Vec<String> {
        self.0.borrow().keys().cloned().collect()
    }

    fn read(&self, name: &str, config: Option<&str>) -> Result<Model, CatalogError> {
        let repo = self.0.borrow();
        let (text, versions) = repo.get(name).ok_or_else(|| CatalogError::NotFound(format!("no model `{name}`")))?;
        let config =
            ModelConfig::parse(config.unwrap_or(text), name).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        config.validate(name).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        let versions = if config.pipeline.is_some() { vec![1] } else { versions.clone() };
        Ok(Model { name: name.into(), dir: PathBuf::from("/r").join(name), versions, config, state: ModelState::Ready })
    }
}

const FRONTEND: ProcId = ProcId(0);
const GPU: ProcId = ProcId(1);
const PREPROC: ProcId = ProcId(2);

fn manager<'a>(fake: &'a Fake, mode: Mode, loaded: &[&str], capacity: usize) -> Manager<&'a Fake> {
    let mut models = Vec::new();
    for name in loaded {
        let m = fake.read(name, None).unwrap();
        let v = *m.versions.last().unwrap();
        models.push(Model { versions: vec![v], ..m });
    }
    let table = Repository { root: PathBuf::from("/r"), models, generation: 0, failures: Default::default() };
    let procs = Procs { frontend: FRONTEND, gpus: vec![GPU], preprocs: vec![PREPROC] };
    Manager::new(fake, mode, table, capacity, 64 << 20, procs)
}

fn load(name: &str) -> Input {
    Input::Order { id: Some(7), op: ControlOp::Load { name: name.into(), config: None } }
}

fn report(from: ProcId, report: Report) -> Input {
    Input::Report { from, report }
}

fn states(m: &Manager<&Fake>) -> Vec<(String, u64, ModelState)> {
    m.table().models.iter().map(|e| (e.name.clone(), e.latest(), e.state)).collect()
}

fn ok() -> Action {
    Action::Reply { id: 7, result: Ok(()) }
}

/// Runs a load of `name` through its stages with every process agreeing.
fn loaded(m: &mut Manager<&Fake>, name: &str, slot: u16) -> Vec<Action> {
    let mut out = m.handle(load(name));
    out.extend(m.handle(report(GPU, Report::Loaded { slot, error: None })));
    let g = m.table().generation;
    out.extend(m.handle(report(GPU, Report::Applied { generation: g })));
    out.extend(m.handle(report(PREPROC, Report::Applied { generation: g })));
    out.extend(m.handle(report(FRONTEND, Report::Applied { generation: g })));
    out
}

#[test]
fn a_new_model_loads_then_switches_workers_first_then_the_frontend() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    let mut m = manager(&fake, Mode::Explicit, &[], 4);
    let out = m.handle(load("m"));
    assert_eq!(out, [Action::ResetStats { slot: 0 }, Action::Table { to: vec![GPU] }]);
    assert_eq!(states(&m), [("m".into(), 1, ModelState::Loading)]);
    let out = m.handle(report(GPU, Report::Loaded { slot: 0, error: None }));
    assert_eq!(out, [Action::Table { to: vec![GPU, PREPROC] }], "the workers first");
    assert_eq!(states(&m), [("m".into(), 1, ModelState::Ready)]);
    let g = m.table().generation;
    assert_eq!(m.handle(report(GPU, Report::Applied { generation: g })), []);
    let out = m.handle(report(PREPROC, Report::Applied { generation: g }));
    assert_eq!(out, [Action::Table { to: vec![FRONTEND] }], "then the frontend");
    assert_eq!(m.handle(report(FRONTEND, Report::Applied { generation: g })), [ok()]);
}

#[test]
fn a_new_version_loads_alongside_and_the_old_one_drains_then_unloads() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    let mut m = manager(&fake, Mode::Explicit, &["m"], 4);
    fake.put("m", MODEL, &[1, 2]);
    let out = loaded(&mut m, "m", 1);
    assert!(out.contains(&ok()), "{out:?}");
    assert_eq!(states(&m), [("m".into(), 1, ModelState::Unloading), ("m".into(), 2, ModelState::Ready)]);
    // The old entry goes once the frontend has nothing in flight on it.
    assert_eq!(m.handle(report(GPU, Report::Drained { slot: 0 })), [], "only the frontend says drained");
    let out = m.handle(report(FRONTEND, Report::Drained { slot: 0 }));
    assert_eq!(out, [Action::Table { to: vec![GPU, PREPROC, FRONTEND] }]);
    assert_eq!(states(&m)[0].2, ModelState::Unloaded);
    // Its entry is used again by the next version.
    fake.put("m", MODEL, &[3]);
    let out = m.handle(load("m"));
    assert_eq!(out[0], Action::ResetStats { slot: 0 });
    assert_eq!(states(&m)[0], ("m".into(), 3, ModelState::Loading));
}

#[test]
fn a_failed_load_leaves_the_serving_version_and_says_why() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    let mut m = manager(&fake, Mode::Explicit, &["m"], 4);
    fake.put("m", MODEL, &[2]);
    m.handle(load("m"));
    let out = m.handle(report(GPU, Report::Loaded { slot: 1, error: Some("corrupt model.onnx".into()) }));
    assert_eq!(out[0], Action::Table { to: vec![GPU, PREPROC, FRONTEND] });
    let Action::Reply { result: Err(ControlError::LoadFailed(why)), .. } = &out[1] else { panic!("{out:?}") };
    assert!(why.contains("corrupt model.onnx"), "{why}");
    assert_eq!(states(&m), [("m".into(), 1, ModelState::Ready), ("m".into(), 2, ModelState::Unloaded)]);
    assert!(m.table().failures["m"].contains("corrupt"));
    // A later order runs: nothing is stuck.
    assert_eq!(
        m.handle(Input::Order { id: Some(7), op: ControlOp::Unload { name: "m".into(), dependents: false } }).len(),
        1
    );
}

#[test]
fn a_pipeline_loads_its_models_and_holds_them_unless_dependents_go_too() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    fake.put("p", PIPELINE, &[]);
    let mut m = manager(&fake, Mode::Explicit, &[], 4);
    m.handle(load("p"));
    assert_eq!(states(&m), [("m".into(), 1, ModelState::Loading), ("p".into(), 1, ModelState::Loading)]);
    m.handle(report(GPU, Report::Loaded { slot: 0, error: None }));
    assert_eq!(states(&m)[1].2, ModelState::Ready, "a pipeline waits for no inference worker");
    let unload = |dependents| Input::Order { id: Some(7), op: ControlOp::Unload { name: "m".into(), dependents } };
    let g = m.table().generation;
    for p in [GPU, PREPROC, FRONTEND] {
        m.handle(report(p, Report::Applied { generation: g }));
    }
    let out = m.handle(unload(false));
    let [Action::Reply { result: Err(ControlError::Invalid(why)), .. }] = &out[..] else { panic!("{out:?}") };
    assert!(why.contains("pipeline(s) p") && why.contains("unload_dependents"), "{why}");
    let out = m.handle(unload(true));
    assert_eq!(out, [Action::Table { to: vec![GPU, PREPROC, FRONTEND] }]);
    assert!(states(&m).iter().all(|s| s.2 == ModelState::Unloading));
    m.handle(report(FRONTEND, Report::Drained { slot: 0 }));
    let out = m.handle(report(FRONTEND, Report::Drained { slot: 1 }));
    assert_eq!(out, [Action::Table { to: vec![GPU, PREPROC, FRONTEND] }, ok()]);
}

#[test]
fn orders_outside_explicit_mode_and_beyond_the_limits_are_refused_saying_why() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    fake.put("big", &MODEL.replace("dims = [2]\n[[output]]", "dims = [20000000]\n[[output]]"), &[1]);
    let mut none = manager(&fake, Mode::None, &[], 4);
    let out = none.handle(load("m"));
    let [Action::Reply { result: Err(ControlError::Invalid(why)), .. }] = &out[..] else { panic!("{out:?}") };
    assert!(why.contains("--model-control-mode explicit"), "{why}");
    let mut full = manager(&fake, Mode::Explicit, &["m"], 1);
    fake.put("m", MODEL, &[1, 2]);
    // A refused load of a model the repository has: the frontend's index
    // gets the reason too.
    let out = full.handle(load("m"));
    let [Action::Table { to }, Action::Reply { result: Err(ControlError::Invalid(why)), .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(to, &[FRONTEND]);
    assert!(why.contains("models.max_models") && full.table().failures["m"] == *why, "{why}");
    let out = full.handle(load("big"));
    let [_, Action::Reply { result: Err(ControlError::Invalid(why)), .. }] = &out[..] else { panic!("{out:?}") };
    assert!(why.contains("80000000 bytes") && why.contains("shm.slots"), "{why}");
    let out = full.handle(load("nope"));
    assert!(matches!(&out[..], [Action::Reply { result: Err(ControlError::NotFound(_)), .. }]), "{out:?}");
}

#[test]
fn polling_loads_what_changed_and_unloads_what_went() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    fake.put("gone", MODEL, &[1]);
    let mut m = manager(&fake, Mode::Poll, &["m", "gone"], 8);
    assert_eq!(m.handle(Input::Poll), [], "nothing changed");
    fake.0.borrow_mut().remove("gone");
    fake.put("m", MODEL, &[1, 2]);
    let out = m.handle(Input::Poll);
    assert_eq!(out, [Action::ResetStats { slot: 2 }, Action::Table { to: vec![GPU] }], "m's version 2 loads first");
    assert_eq!(states(&m)[2], ("m".into(), 2, ModelState::Loading));
    // An order from the API is refused in poll mode: the repository decides.
    assert!(matches!(&m.handle(load("m"))[..], [Action::Reply { result: Err(ControlError::Invalid(_)), .. }]));
}

#[test]
fn a_restarted_worker_has_the_current_table() {
    let fake = Fake::default();
    fake.put("m", MODEL, &[1]);
    let mut m = manager(&fake, Mode::Explicit, &[], 4);
    m.handle(load("m"));
    m.handle(report(GPU, Report::Loaded { slot: 0, error: None }));
    m.handle(Input::Restarted { proc: GPU });
    let out = m.handle(report(PREPROC, Report::Applied { generation: m.table().generation }));
    assert_eq!(out, [Action::Table { to: vec![FRONTEND] }]);
}
