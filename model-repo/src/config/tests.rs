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
