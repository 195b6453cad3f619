//! The admission rules on their own: shares by level, refusal order, the
//! deadline forecast, and what is counted.

use std::path::PathBuf;
use std::time::Duration;

use model_repo::{Model, ModelConfig, Repository};

use super::*;

/// One model with two levels (default 2), four places, a quarter of them
/// kept from each level below: level 1 may fill 4, level 2 three, requests
/// of no level (255) two.
fn admission() -> Admission {
    let config = "priority_levels = 2\ndefault_priority_level = 2\nmax_batch_size = 1\n\
                  [[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                  [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";
    let model = Model {
        name: "m".into(),
        dir: PathBuf::from("/nonexistent"),
        versions: vec![1],
        config: ModelConfig::parse(config, "m").unwrap(),
        state: Default::default(),
    };
    let repo = Repository {
        root: PathBuf::from("/nonexistent"),
        models: vec![model],
        generation: 0,
        failures: Default::default(),
    };
    Admission::new(4, 1 << 20, 0.25, 1, &repo)
}

const SECOND: Duration = Duration::from_secs(1);

fn enter(a: &Admission, level: u8) -> Result<Permit, ApiError> {
    let mut p = a.admit(0, "m", level)?;
    a.enter(&mut p, level, SECOND)?;
    Ok(p)
}

#[test]
fn when_full_the_lowest_level_is_refused_first() {
    let a = admission();
    let held: Vec<Permit> = [255, 255, 2].into_iter().map(|l| enter(&a, l).unwrap()).collect();
    let e = enter(&a, 255).err().unwrap();
    assert_eq!(e.status(), 429);
    assert!(e.message().contains("level 255 may fill 2 of the 4") && e.message().contains("priority_headroom"));
    let level2 = enter(&a, 2).err().unwrap();
    assert!(level2.message().starts_with("4 requests are in flight; level 2 may fill 3"), "{level2:?}");
    let live = enter(&a, 1).unwrap();
    let full = enter(&a, 1).err().unwrap();
    assert!(full.message().contains("the limit (server.max_inflight)"), "{full:?}");
    assert_eq!(a.inflight_by_level(0), [(1, 1), (2, 1), (255, 2)]);
    assert_eq!(a.shed(0), [((1, Shed::MaxInflight), 1), ((2, Shed::LevelShare), 1), ((255, Shed::LevelShare), 1)]);
    drop((held, live));
    assert_eq!(a.inflight_by_level(0), []);
}

#[test]
fn a_deadline_that_has_passed_is_a_504() {
    let a = admission();
    let mut p = a.admit(0, "m", 2).unwrap();
    let e = a.enter(&mut p, 2, Duration::ZERO).unwrap_err();
    assert_eq!((e.status().as_u16(), e.retry_after()), (504, None));
    assert_eq!(a.shed(0), [((2, Shed::Expired), 1)]);
}

#[test]
fn a_deadline_that_cannot_be_met_is_refused_at_once() {
    let a = admission();
    // Requests take 50 ms; nothing is refused before the forecast has
    // seen enough of them.
    let mut p = a.admit(0, "m", 2).unwrap();
    assert!(a.enter(&mut p, 2, Duration::from_millis(10)).is_ok());
    drop(p);
    for _ in 0..20 {
        a.learn(0, 0, Duration::from_millis(50));
    }
    let mut p = a.admit(0, "m", 2).unwrap();
    let e = a.enter(&mut p, 2, Duration::from_millis(10)).unwrap_err();
    assert_eq!((e.status().as_u16(), e.retry_after()), (429, Some(1)));
    assert!(e.message().contains("would take about 50ms") && e.message().contains("deadline of 10ms"), "{e:?}");
    assert!(a.enter(&mut p, 2, SECOND).is_ok(), "a second is enough");
    assert_eq!(a.shed(0), [((2, Shed::Deadline), 1)]);
}
