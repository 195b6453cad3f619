//! Reading the repository directory, and the table of what is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ModelConfig, RepoError};

/// The file each version directory must hold.
pub const MODEL_FILE: &str = "model.onnx";

/// A validated model: its config and versions. As read from disk,
/// `versions` are those with a model file; as an entry of the loaded table
/// ([`Repository::models`]), the one version that entry serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub dir: PathBuf,
    /// Version numbers, ascending.
    pub versions: Vec<u64>,
    pub config: ModelConfig,
    /// Where a table entry stands in its life.
    #[serde(default)]
    pub state: ModelState,
}

/// The life of a loaded version (Triton's states, less UNAVAILABLE, which
/// is a load that failed: [`Repository::failures`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelState {
    /// The inference workers load and warm it up; nothing is routed to it.
    Loading,
    /// Serving.
    #[default]
    Ready,
    /// Replaced or unloaded: no new request goes to it; those in flight
    /// finish, then it is unloaded.
    Unloading,
    /// Gone; its entry (its index) may be given to another version.
    Unloaded,
}

impl Model {
    pub fn latest(&self) -> u64 {
        *self.versions.last().expect("a loaded model has a version; this is a bug")
    }

    pub fn file(&self, version: u64) -> PathBuf {
        self.dir.join(version.to_string()).join(MODEL_FILE)
    }

    pub fn is_pipeline(&self) -> bool {
        self.config.pipeline.is_some()
    }
}

/// The loaded table: an entry per loaded version of each model, whose index
/// in `models` is its id in descriptors and shared-memory statistics (at
/// start-up, sorted by name). The supervisor owns it and hands every process
/// a copy whenever it changes (`generation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Repository {
    pub root: PathBuf,
    pub models: Vec<Model>,
    /// Bumped by every change.
    #[serde(default)]
    pub generation: u64,
    /// Models whose last load failed, and why (the index's UNAVAILABLE).
    #[serde(default)]
    pub failures: BTreeMap<String, String>,
}

/// Model names become URL path segments and directory names: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Repository {
    /// Loads every model under `root` (or only those named in `only`).
    pub fn load(root: &Path, only: Option<&[String]>) -> Result<Repository, RepoError> {
        let io = |path: &Path, source| RepoError::Io { path: path.display().to_string(), source };
        let entries = std::fs::read_dir(root).map_err(|e| io(root, e))?;
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(root, e))?;
            let path = entry.path();
            if path.join("config.toml").is_file() {
                dirs.push(path);
            }
        }
        dirs.sort();
        let name_of = |d: &PathBuf| d.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let available: Vec<String> = dirs.iter().map(name_of).collect();
        // Wanted models, plus the models the wanted pipelines run.
        let mut wanted: Vec<String> = match only {
            Some(o) => o.to_vec(),
            None => available.clone(),
        };
        let mut models: Vec<Model> = Vec::new();
        while let Some(name) = wanted.pop() {
            if models.iter().any(|m| m.name == name) {
                continue;
            }
            let Some(dir) = dirs.iter().find(|d| name_of(d) == name) else {
                return Err(RepoError::Repository(format!(
                    "model `{name}` is not in {} (it has a directory with config.toml for each model; found: {})",
                    root.display(),
                    available.join(", ")
                )));
            };
            let model = Model::load(dir, &name, None)?;
            if let Some(p) = &model.config.pipeline {
                wanted.extend(p.models().iter().map(|m| m.to_string()));
                wanted.extend(p.steps.iter().filter_map(|s| match s {
                    crate::Step::OcrDecode(d) => Some(d.charset_model.clone()),
                    _ => None,
                }));
            }
            models.push(model);
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        check_pipelines(&models)?;
        // One entry per version the model's policy loads.
        let mut table = Vec::new();
        for m in models {
            let chosen = m
                .config
                .version_policy
                .select(&m.versions)
                .map_err(|message| RepoError::Invalid { model: m.name.clone(), message })?;
            table.extend(chosen.into_iter().map(|v| Model { versions: vec![v], ..m.clone() }));
        }
        let models = table;
        if models.is_empty() {
            return Err(RepoError::Repository(format!(
                "no models in {}: each model needs <name>/config.toml and <name>/<version>/{MODEL_FILE}",
                root.display()
            )));
        }
        if models.len() > u16::MAX as usize {
            return Err(RepoError::Repository("more than 65535 models".into()));
        }
        Ok(Repository { root: root.to_path_buf(), models, generation: 0, failures: BTreeMap::new() })
    }

    /// The entries serving `name` (ready), with their indices.
    fn serving(&self, name: &str) -> Vec<(u16, &Model)> {
        let ready = |m: &&Model| m.name == name && m.state == ModelState::Ready;
        self.models.iter().enumerate().filter(|(_, m)| ready(m)).map(|(i, m)| (i as u16, m)).collect()
    }

    /// The entry serving `name` without a version asked for: its latest
    /// ready version.
    pub fn get(&self, name: &str) -> Option<(u16, &Model)> {
        self.serving(name).into_iter().max_by_key(|(_, m)| m.latest())
    }

    /// The entry serving version `version` of `name`.
    pub fn get_version(&self, name: &str, version: u64) -> Option<(u16, &Model)> {
        self.serving(name).into_iter().find(|(_, m)| m.latest() == version)
    }

    /// The ready versions of `name`, ascending.
    pub fn versions_of(&self, name: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self.serving(name).iter().map(|(_, m)| m.latest()).collect();
        v.sort_unstable();
        v
    }

    /// The names of the models being served, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.models.iter().filter(|m| m.state == ModelState::Ready).map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The models of the repository at `root`: its directories holding a
/// `config.toml` and named as a model may be, sorted.
pub fn catalog(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("config.toml").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| valid_name(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A pipeline may only run models that are loaded and are not pipelines.
fn check_pipelines(models: &[Model]) -> Result<(), RepoError> {
    for m in models {
        let Some(p) = &m.config.pipeline else { continue };
        let mut refs: Vec<&str> = p.models();
        refs.extend(p.steps.iter().filter_map(|s| match s {
            crate::Step::OcrDecode(d) => Some(d.charset_model.as_str()),
            _ => None,
        }));
        for r in refs {
            match models.iter().find(|x| x.name == r) {
                None => {
                    return Err(RepoError::Invalid {
                        model: m.name.clone(),
                        message: format!("pipeline step names model `{r}`, which is not in the repository"),
                    });
                }
                Some(x) if x.is_pipeline() => {
                    return Err(RepoError::Invalid {
                        model: m.name.clone(),
                        message: format!("pipeline step names `{r}`, which is itself a pipeline"),
                    });
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

impl Model {
    /// Reads model `name` of the repository at `root`: its config
    /// (`config`, when given, instead of its `config.toml`: a JSON or TOML
    /// override, validated as a file is) and the versions on disk.
    pub fn read(root: &Path, name: &str, config: Option<&str>) -> Result<Model, RepoError> {
        if !valid_name(name) {
            return Err(RepoError::Invalid {
                model: name.into(),
                message: "model names may use letters, digits, `_`, `-` and `.` (not first)".into(),
            });
        }
        let dir = root.join(name);
        if !dir.join("config.toml").is_file() && config.is_none() {
            return Err(RepoError::Repository(format!(
                "model `{name}` is not in {} (it has a directory with config.toml for each model; found: {})",
                root.display(),
                catalog(root).join(", ")
            )));
        }
        let mut model = Model::load(&dir, name, config)?;
        model.dir = dir;
        Ok(model)
    }

    fn load(dir: &Path, name: &str, override_text: Option<&str>) -> Result<Model, RepoError> {
        if !valid_name(name) {
            return Err(RepoError::Invalid {
                model: name.into(),
                message: "model names may use letters, digits, `_`, `-` and `.` (not first)".into(),
            });
        }
        let path = dir.join("config.toml");
        let config = match override_text {
            // Triton's `parameters.config` is JSON; a TOML override is taken too.
            Some(text) if text.trim_start().starts_with('{') => serde_json::from_str(text)
                .map_err(|e| RepoError::Parse { path: "the config override".into(), message: e.to_string() })?,
            Some(text) => ModelConfig::parse(text, "the config override")?,
            None => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| RepoError::Io { path: path.display().to_string(), source })?;
                ModelConfig::parse(&text, &path.display().to_string())?
            }
        };
        config.validate(name)?;
        let mut versions = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|source| RepoError::Io { path: dir.display().to_string(), source })?;
        for entry in entries.flatten() {
            let v = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok());
            if let Some(v) = v
                && entry.path().join(MODEL_FILE).is_file()
            {
                versions.push(v);
            }
        }
        versions.sort_unstable();
        if config.pipeline.is_some() {
            // A pipeline has no file of its own: it is version 1 of itself.
            versions = vec![1];
        }
        if versions.is_empty() {
            return Err(RepoError::Invalid {
                model: name.into(),
                message: format!(
                    "no version directory with {MODEL_FILE} in {} (expected e.g. {}/1/{MODEL_FILE}; ./scripts/fetch downloads the default models)",
                    dir.display(),
                    dir.display()
                ),
            });
        }
        Ok(Model { name: name.into(), dir: dir.to_path_buf(), versions, config, state: ModelState::Ready })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLS: &str = r#"
max_batch_size = 16
[dynamic_batching]
max_queue_delay_microseconds = 200
preferred_batch_size = [8]
[[input]]
name = "x"
datatype = "FP32"
dims = [3, 48, 192]
[[output]]
name = "probs"
datatype = "FP32"
dims = [2]
[preprocess]
resize = "fit_height_pad_right"
width = 192
height = 48
channel_order = "BGR"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[postprocess]
kind = "classification"
top_k = 2
labels = ["0", "180"]
"#;

    fn write_model(root: &Path, name: &str, config: &str, versions: &[u64]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        for v in versions {
            std::fs::create_dir_all(dir.join(v.to_string())).unwrap();
            std::fs::write(dir.join(v.to_string()).join(MODEL_FILE), b"onnx").unwrap();
        }
    }

    #[test]
    fn loads_sorted_models_with_versions() {
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), "zeta", CLS, &[1]);
        write_model(tmp.path(), "alpha", CLS, &[3, 1, 2]);
        let repo = Repository::load(tmp.path(), None).unwrap();
        assert_eq!(repo.names(), vec!["alpha", "zeta"]);
        // The default policy loads the latest version only.
        let (i, m) = repo.get("alpha").unwrap();
        assert_eq!((i, m.latest(), m.versions.clone()), (0, 3, vec![3]));
        assert_eq!(m.config.full_shape(&m.config.inputs[0]), vec![-1, 3, 48, 192]);
        write_model(tmp.path(), "all", &format!("version_policy = {{ all = {{}} }}\n{CLS}"), &[1, 2]);
        let repo = Repository::load(tmp.path(), Some(&["all".to_string()])).unwrap();
        assert_eq!(repo.versions_of("all"), [1, 2], "an entry per version");
        assert_eq!((repo.get("all").unwrap().0, repo.get_version("all", 1).unwrap().0), (1, 0));
        let only = Repository::load(tmp.path(), Some(&["zeta".to_string()])).unwrap();
        assert_eq!(only.names(), vec!["zeta"]);
        let err = Repository::load(tmp.path(), Some(&["nope".to_string()])).unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), "m", &format!("{CLS}\ncolour = 3\n"), &[1]);
        let err = Repository::load(tmp.path(), None).unwrap_err().to_string();
        assert!(err.contains("colour"), "unknown key is named: {err}");

        let tmp = tempfile::tempdir().unwrap();
        write_model(tmp.path(), "m", CLS, &[]);
        let err = Repository::load(tmp.path(), None).unwrap_err().to_string();
        assert!(err.contains("model.onnx") && err.contains("fetch"), "{err}");

        let cases = [
            (CLS.replace("dims = [3, 48, 192]", "dims = [3, 32, 192]"), "do not match"),
            (CLS.replace("preferred_batch_size = [8]", "preferred_batch_size = [32]"), "preferred_batch_size"),
            (CLS.replace("datatype = \"FP32\"\ndims = [3", "datatype = \"FLOAT\"\ndims = [3"), "FLOAT"),
            (
                CLS.replace("name = \"probs\"", "name = \"x\"\n")
                    .replace("[postprocess]", "[postprocess]\noutput = \"y\""),
                "not a model output",
            ),
            (CLS.replace("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]"), "std"),
            (CLS.replace("max_batch_size = 16", "max_batch_size = 0"), "max_batch_size"),
            // The GPU kernel stretches into NCHW: other resize modes are refused.
            (
                CLS.replace("channel_order = \"BGR\"", "channel_order = \"BGR\"\ndecode = \"gpu\""),
                "decode = \"gpu\" takes",
            ),
            (CLS.replace("channel_order = \"BGR\"", "channel_order = \"BGR\"\ndecode = \"tpu\""), "decode"),
        ];
        for (text, needle) in cases {
            let tmp = tempfile::tempdir().unwrap();
            write_model(tmp.path(), "m", &text, &[1]);
            let err = Repository::load(tmp.path(), None).unwrap_err().to_string();
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }
    }

    #[test]
    fn decode_on_the_gpu_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let text = CLS
            .replace("resize = \"fit_height_pad_right\"", "resize = \"stretch\"")
            .replace("channel_order = \"BGR\"", "channel_order = \"BGR\"\ndecode = \"gpu\"");
        write_model(tmp.path(), "m", &text, &[1]);
        let repo = Repository::load(tmp.path(), None).unwrap();
        let pre = repo.get("m").unwrap().1.config.preprocess.clone().unwrap();
        assert_eq!(pre.decode, crate::DecodeOn::Gpu);
        write_model(tmp.path(), "m", CLS, &[1]);
        let repo = Repository::load(tmp.path(), None).unwrap();
        assert_eq!(repo.get("m").unwrap().1.config.preprocess.clone().unwrap().decode, crate::DecodeOn::Cpu);
    }

    #[test]
    fn the_shipped_repository_loads_and_pipelines_bring_their_models() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let repo =
            Repository::load(&root, Some(&["ocr".to_string()])).unwrap_or_else(|e| panic!("{e}; run ./scripts/fetch"));
        assert_eq!(repo.names(), vec!["ocr", "ppocr_cls", "ppocr_det", "ppocr_rec"]);
        let (_, ocr) = repo.get("ocr").unwrap();
        assert!(ocr.is_pipeline());
        assert_eq!(ocr.latest(), 1);
        assert_eq!(ocr.config.pipeline.as_ref().unwrap().models(), vec!["ppocr_det", "ppocr_cls", "ppocr_rec"]);
        assert_eq!(ocr.config.image_input().unwrap().1.name, "image");
    }

    #[test]
    fn pipelines_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let pipe = |steps: &str| {
            format!(
                "max_batch_size = 0\n[[input]]\nname = \"image\"\ndatatype = \"BYTES\"\ndims = [1]\n\
                 [[output]]\nname = \"text\"\ndatatype = \"BYTES\"\ndims = [-1]\n{steps}"
            )
        };
        let cases = [
            ("[[pipeline.step]]\nstep = \"model\"\nmodel = \"m\"\n", "first step"),
            (
                "[[pipeline.step]]\nstep = \"ocr_det_preprocess\"\n[[pipeline.step]]\nstep = \"model\"\nmodel = \"nope\"\n[[pipeline.step]]\nstep = \"ocr_decode\"\ncharset_model = \"m\"\n",
                "`nope`",
            ),
            ("[[pipeline.step]]\nstep = \"ocr_det_preprocess\"\nlimit_sid_len = 3\n", "limit_sid_len"),
            ("[[pipeline.step]]\nstep = \"ocr_magic\"\n", "ocr_magic"),
        ];
        for (steps, needle) in cases {
            let root = tmp.path().join(needle.replace(['`', ' '], ""));
            write_model(&root, "m", CLS, &[1]);
            write_model(&root, "p", &pipe(steps), &[]);
            let err = Repository::load(&root, None).unwrap_err().to_string();
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("ppocr_cls"));
        assert!(valid_name("resnet-50.v2"));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
