//! The config schema's own rules, read from TOML as operators write it.

use super::*;

const MINIMAL: &str = "max_batch_size = 1\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                       [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";

#[test]
fn the_cpu_backend_is_onnxruntime_unless_named() {
    let cfg = ModelConfig::parse(MINIMAL, "config.toml").unwrap();
    assert_eq!(cfg.backend, CpuBackend::OnnxRuntime);
    for b in CpuBackend::ALL {
        let text = format!("backend = \"{}\"\n{MINIMAL}", b.name());
        assert_eq!(ModelConfig::parse(&text, "config.toml").unwrap().backend, b);
    }
}

#[test]
fn an_unknown_cpu_backend_is_refused_naming_those_accepted() {
    let text = format!("backend = \"torch\"\n{MINIMAL}");
    let err = ModelConfig::parse(&text, "config.toml").unwrap_err().to_string();
    assert!(err.contains("backend `torch` is not available; accepted: onnxruntime, tract"), "{err}");
}

#[test]
fn levels_follow_triton_out_of_range_and_zero_take_the_default() {
    let cfg = ModelConfig::parse(&format!("priority_levels = 3\ndefault_priority_level = 2\n{MINIMAL}"), "c").unwrap();
    cfg.validate("m").unwrap();
    assert_eq!([0, 1, 2, 3, 4, 300].map(|p| cfg.level(p)), [2, 1, 2, 3, 2, 2]);
    // Without levels declared: as given, and 0 after every explicit level.
    let plain = ModelConfig::parse(MINIMAL, "c").unwrap();
    assert_eq!([0, 1, 7, 300].map(|p| plain.level(p)), [255, 1, 7, 255]);
    assert_eq!(plain.weight, 1);
}

#[test]
fn bad_scheduling_settings_are_refused_saying_what_is_accepted() {
    for (text, says) in [
        ("priority_levels = 2\n", "needs default_priority_level (1 to 2)"),
        ("default_priority_level = 1\n", "needs priority_levels"),
        ("priority_levels = 2\ndefault_priority_level = 3\n", "default_priority_level = 3; accepted: 1 to 2"),
        ("priority_levels = 256\ndefault_priority_level = 1\n", "at most 255"),
        ("weight = 0\n", "weight = 0; accepted: 1 to 1000"),
    ] {
        let cfg = ModelConfig::parse(&format!("{text}{MINIMAL}"), "c").unwrap();
        let err = cfg.validate("m").unwrap_err().to_string();
        assert!(err.contains(says), "{text}: {err}");
    }
}

#[test]
fn version_policies_select_as_in_triton() {
    let on_disk = [1, 2, 5];
    let latest2 = VersionPolicy::Latest { num_versions: 2 };
    assert_eq!(VersionPolicy::default().select(&on_disk).unwrap(), [5]);
    assert_eq!(latest2.select(&on_disk).unwrap(), [2, 5]);
    assert_eq!(VersionPolicy::All {}.select(&on_disk).unwrap(), [1, 2, 5]);
    assert_eq!(VersionPolicy::Specific { versions: vec![5, 1] }.select(&on_disk).unwrap(), [1, 5]);
    let e = VersionPolicy::Specific { versions: vec![3] }.select(&on_disk).unwrap_err();
    assert!(e.contains("version 3") && e.contains("[1, 2, 5]"), "{e}");
    for (text, want) in [
        ("version_policy = { latest = { num_versions = 2 } }\n", latest2),
        ("version_policy = { all = {} }\n", VersionPolicy::All {}),
        ("version_policy = { specific = { versions = [1, 3] } }\n", VersionPolicy::Specific { versions: vec![1, 3] }),
    ] {
        assert_eq!(ModelConfig::parse(&format!("{text}{MINIMAL}"), "c").unwrap().version_policy, want);
    }
    let zero = ModelConfig::parse(&format!("version_policy = {{ latest = {{ num_versions = 0 }} }}\n{MINIMAL}"), "c");
    assert!(zero.unwrap().validate("m").unwrap_err().to_string().contains("num_versions"));
}
