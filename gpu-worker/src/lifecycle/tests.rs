//! The lifecycle's rules, on made-up tables.

use std::collections::BTreeMap;

use model_repo::{Model, ModelConfig, ModelState, Repository};

use super::rules::{Change, Phase, holds, may_unload, plan, same};

const CONFIG: &str = "max_batch_size = 4\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                      [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";

fn entry(name: &str, version: u64, state: ModelState) -> Model {
    Model {
        name: name.into(),
        dir: format!("/nowhere/{name}").into(),
        versions: vec![version],
        config: ModelConfig::parse(CONFIG, "config.toml").expect("test config parses"),
        state,
    }
}

fn pipeline(name: &str) -> Model {
    let mut m = entry(name, 1, ModelState::Ready);
    let text = format!("{CONFIG}[[pipeline.step]]\nstep = \"model\"\nmodel = \"a\"\n");
    m.config = ModelConfig::parse(&text, "config.toml").expect("test pipeline parses");
    m
}

fn table(models: Vec<Model>) -> Repository {
    Repository { root: "/nowhere".into(), models, generation: 1, failures: BTreeMap::new() }
}

use ModelState::{Loading, Ready, Unloaded, Unloading};

#[test]
fn ready_and_loading_entries_load_where_nothing_is_here() {
    let t = table(vec![
        entry("a", 1, Ready),
        entry("a", 2, Loading),
        entry("b", 1, Unloading),
        entry("c", 1, Unloaded),
        pipeline("ocr"),
    ]);
    assert_eq!(plan(&[], &t), [(0, Change::Load), (1, Change::Load)], "not UNLOADING, UNLOADED or a pipeline");
}

#[test]
fn an_entry_the_table_still_holds_stays() {
    let here = entry("a", 1, Ready);
    for state in [Ready, Loading, Unloading] {
        let t = table(vec![entry("a", 1, state)]);
        for phase in [Phase::Loading, Phase::Serving, Phase::Retiring { drained: true }] {
            assert_eq!(plan(&[Some((&here, phase))], &t), [], "{state:?} {phase:?}");
        }
    }
}

#[test]
fn an_entry_unloaded_replaced_or_beyond_the_table_retires_and_its_index_waits() {
    let a1 = entry("a", 1, Ready);
    let here = [Some((&a1, Phase::Serving))];
    assert_eq!(plan(&here, &table(vec![entry("a", 1, Unloaded)])), [(0, Change::Retire)]);
    assert_eq!(plan(&here, &table(vec![])), [(0, Change::Retire)], "beyond the table");
    // Another version at its index: it retires first; its index loads only
    // once it is gone.
    let t = table(vec![entry("a", 2, Loading)]);
    assert_eq!(plan(&here, &t), [(0, Change::Retire)]);
    assert_eq!(plan(&[Some((&a1, Phase::Retiring { drained: false }))], &t), []);
    assert_eq!(plan(&[None], &t), [(0, Change::Load)]);
}

#[test]
fn a_changed_config_is_another_entry() {
    let a = entry("a", 1, Ready);
    let mut b = a.clone();
    b.config.max_batch_size = 8;
    assert!(!same(&a, &b));
    assert!(same(&a, &entry("a", 1, Unloading)), "the state is not the entry");
    assert_eq!(plan(&[Some((&a, Phase::Serving))], &table(vec![b])), [(0, Change::Retire)]);
}

#[test]
fn a_load_the_table_dropped_is_judged_when_it_completes() {
    let a1 = entry("a", 1, Loading);
    let t = table(vec![entry("a", 1, Unloaded)]);
    assert_eq!(plan(&[Some((&a1, Phase::Loading))], &t), [], "its threads are still loading");
    assert!(!holds(&t, 0, &a1), "so it is thrown away when done");
    assert!(holds(&table(vec![entry("a", 1, Ready)]), 0, &a1));
    assert!(holds(&table(vec![entry("a", 1, Unloading)]), 0, &a1));
    assert!(!holds(&table(vec![entry("a", 2, Loading)]), 0, &a1));
    assert!(!holds(&table(vec![]), 0, &a1));
}

#[test]
fn a_failed_load_is_not_retried_until_the_table_moves_on() {
    let a1 = entry("a", 1, Loading);
    let failed = [Some((&a1, Phase::Failed))];
    assert_eq!(plan(&failed, &table(vec![entry("a", 1, Loading)])), []);
    assert_eq!(plan(&failed, &table(vec![entry("a", 1, Unloaded)])), [(0, Change::Forget)]);
    // The supervisor put another entry there: forgotten, then loaded.
    let t = table(vec![entry("b", 3, Loading)]);
    assert_eq!(plan(&failed, &t), [(0, Change::Forget)]);
    assert_eq!(plan(&[None], &t), [(0, Change::Load)]);
}

#[test]
fn a_retiring_entry_goes_once_drained_and_idle() {
    let drained = Phase::Retiring { drained: true };
    assert!(may_unload(drained, 0, 0));
    assert!(!may_unload(Phase::Retiring { drained: false }, 0, 0), "the inbox may still hold a step for it");
    assert!(!may_unload(drained, 1, 0), "a request queued");
    assert!(!may_unload(drained, 0, 1), "a batch computing");
    assert!(!may_unload(Phase::Serving, 0, 0));
    assert!(!may_unload(Phase::Loading, 0, 0));
}
