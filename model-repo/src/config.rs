//! The schema of `models/<name>/config.toml`. Field docs are the operator
//! manual; `docs/model-repository.md` shows complete examples.

use serde::{Deserialize, Serialize};
use shm::tensor::DType;

pub use self::image::{ChannelOrder, DecodeOn, Layout, Postprocess, PostprocessKind, Preprocess, ResizeMode};
use crate::RepoError;

mod dtype_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use shm::tensor::DType;

    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        DType::parse(&name).ok_or_else(|| {
            let all: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
            serde::de::Error::custom(format!("unknown datatype `{name}`; accepted: {}", all.join(", ")))
        })
    }
}

/// One model's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Optional; when given it must equal the directory name.
    #[serde(default)]
    pub name: Option<String>,
    /// The CPU backend: `"onnxruntime"` (default) or `"tract"`. On a GPU
    /// every model runs on the daemon's `inference.gpu_backend` (tract-cuda).
    #[serde(default)]
    pub backend: CpuBackend,
    /// Arithmetic on the GPU: `"fp32"` (default) or `"fp16"` (weights and
    /// activations in half precision; inputs and outputs stay as declared).
    /// The CPU backends compute in FP32 either way.
    #[serde(default)]
    pub precision: Precision,
    /// Largest batch the batcher forms. With `max_batch_size > 0` the model's
    /// first dimension is the batch and `dims` below leave it out (Triton's
    /// convention); 0 disables batching and `dims` are the full shape.
    pub max_batch_size: u32,
    /// Dynamic batching; absent means requests run as they come (each batch is
    /// whatever is queued when the model is free).
    #[serde(default)]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Backend instances (threads, each with its own session), like Triton's
    /// `instance_group.count`.
    #[serde(default = "one")]
    pub instances: u32,
    /// ONNX Runtime intra-op threads per instance; default from the daemon
    /// config (`[inference] intra_op_threads`).
    #[serde(default)]
    pub intra_op_threads: Option<u32>,
    /// Most requests for this model in flight at once (beyond: 429); default:
    /// only the server-wide `server.max_inflight` applies.
    #[serde(default)]
    pub max_inflight: Option<u32>,
    /// Priority levels this model's requests may ask for (`priority` 1, the
    /// highest, to this), as Triton's `priority_levels` (which Triton nests
    /// in `dynamic_batching`; here it is at the top level, since pipelines,
    /// which have no batcher, take it too). A request with priority 0 or
    /// beyond the levels waits at `default_priority_level`, as in Triton.
    /// 0 (default): any priority is taken as given, and 0 ranks after every
    /// explicit level.
    #[serde(default)]
    pub priority_levels: u32,
    /// The level of a request that asks for none; needed when
    /// `priority_levels` is set (Triton's `default_priority_level`).
    #[serde(default)]
    pub default_priority_level: Option<u32>,
    /// This model's share when several models have work waiting at the same
    /// level: the preproc pool and the inference workers serve them in
    /// proportion to their weights (weighted fair queuing), so a flood on
    /// one model cannot starve another. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Deadline of a request that sets no `timeout` parameter; default:
    /// `server.request_timeout_ms`. A request still queued at its deadline is
    /// dropped without computing and answered with a timeout error.
    #[serde(default)]
    pub default_timeout_microseconds: Option<u64>,
    /// The model's inputs, in the order the model declares them.
    #[serde(rename = "input")]
    pub inputs: Vec<TensorConfig>,
    /// The model's outputs.
    #[serde(rename = "output")]
    pub outputs: Vec<TensorConfig>,
    /// How an image posted to this model becomes its input tensor.
    #[serde(default)]
    pub preprocess: Option<Preprocess>,
    /// How the output becomes the answer to an image request.
    #[serde(default)]
    pub postprocess: Option<Postprocess>,
    /// Makes this a pipeline model: CPU and model steps instead of a model
    /// file (no version directory needed).
    #[serde(default)]
    pub pipeline: Option<crate::Pipeline>,
    /// Which versions on disk are loaded (Triton's `version_policy`):
    /// `{ latest = { num_versions = N } }` (default: the latest one),
    /// `{ all = {} }`, or `{ specific = { versions = [1, 3] } }`.
    #[serde(default)]
    pub version_policy: VersionPolicy,
}

/// See `ModelConfig::version_policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    Latest {
        #[serde(default = "one")]
        num_versions: u32,
    },
    All {},
    Specific {
        versions: Vec<u64>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest { num_versions: 1 }
    }
}

impl VersionPolicy {
    /// The versions to load among those on disk (ascending), or why none.
    pub fn select(&self, on_disk: &[u64]) -> Result<Vec<u64>, String> {
        let chosen: Vec<u64> = match self {
            VersionPolicy::Latest { num_versions } => {
                on_disk[on_disk.len().saturating_sub(*num_versions as usize)..].to_vec()
            }
            VersionPolicy::All {} => on_disk.to_vec(),
            VersionPolicy::Specific { versions } => {
                if let Some(v) = versions.iter().find(|v| !on_disk.contains(v)) {
                    return Err(format!("version_policy names version {v}, which is not on disk (found: {on_disk:?})"));
                }
                let mut v = versions.clone();
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        if chosen.is_empty() {
            return Err(format!("version_policy selects no version (found on disk: {on_disk:?})"));
        }
        Ok(chosen)
    }
}

/// See `ModelConfig::precision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
}

/// What runs a model on the CPU (`backend`): one type, matched where the
/// backend is opened, rather than names compared there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum CpuBackend {
    /// ONNX Runtime, through `ort`.
    #[default]
    OnnxRuntime,
    /// tract's own CPU runtime: the code the GPU path runs, on the CPU.
    Tract,
}

impl CpuBackend {
    pub const ALL: [CpuBackend; 2] = [CpuBackend::OnnxRuntime, CpuBackend::Tract];

    /// The name the config gives it.
    pub fn name(self) -> &'static str {
        match self {
            CpuBackend::OnnxRuntime => "onnxruntime",
            CpuBackend::Tract => "tract",
        }
    }
}

impl TryFrom<String> for CpuBackend {
    type Error = String;

    /// An unknown name is refused when the config is read, naming those
    /// accepted.
    fn try_from(name: String) -> Result<CpuBackend, String> {
        CpuBackend::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| {
            let all: Vec<&str> = CpuBackend::ALL.iter().map(|b| b.name()).collect();
            format!("backend `{name}` is not available; accepted: {}", all.join(", "))
        })
    }
}

fn one() -> u32 {
    1
}

/// Triton's dynamic batcher knobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    /// How long the oldest queued request may wait for a batch to fill while
    /// the model is idle. The batcher never waits once a preferred size (or
    /// `max_batch_size`) is reached, and while the model is busy requests
    /// accumulate anyway.
    #[serde(default)]
    pub max_queue_delay_microseconds: u64,
    /// Batch sizes to aim for; the batcher cuts the largest preferred size it
    /// can fill.
    #[serde(default)]
    pub preferred_batch_size: Vec<u32>,
}

/// A model input or output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    pub name: String,
    /// KServe v2 datatype name: FP32, FP16, UINT8, INT64, BYTES, ...
    #[serde(with = "dtype_serde")]
    pub datatype: DType,
    /// Shape without the batch dimension when `max_batch_size > 0`; `-1` marks
    /// a dimension of any size.
    pub dims: Vec<i64>,
}

impl ModelConfig {
    /// The level a request of this model with `priority` waits at (see
    /// `priority_levels`): 1 is served first.
    pub fn level(&self, priority: u64) -> u8 {
        let levels = u64::from(self.priority_levels);
        let asked = if levels > 0 && priority > levels { 0 } else { priority.min(255) as u8 };
        sched::level(asked, self.default_priority_level.map(|d| d as u8))
    }

    fn validate_scheduling(&self) -> Result<(), String> {
        if self.priority_levels > 255 {
            return Err(format!("priority_levels = {}; at most 255", self.priority_levels));
        }
        match (self.priority_levels, self.default_priority_level) {
            (0, Some(_)) => Err("default_priority_level needs priority_levels".into()),
            (n, None) if n > 0 => {
                Err(format!("priority_levels = {n} needs default_priority_level (1 to {n}), as in Triton"))
            }
            (n, Some(d)) if d == 0 || d > n => Err(format!("default_priority_level = {d}; accepted: 1 to {n}")),
            _ if self.weight == 0 || self.weight > 1000 => {
                Err(format!("weight = {}; accepted: 1 to 1000", self.weight))
            }
            _ => Ok(()),
        }
    }

    pub fn parse(text: &str, path: &str) -> Result<ModelConfig, RepoError> {
        toml::from_str(text).map_err(|e| RepoError::Parse { path: path.into(), message: e.to_string() })
    }

    pub fn input(&self, name: &str) -> Option<(usize, &TensorConfig)> {
        self.inputs.iter().enumerate().find(|(_, t)| t.name == name)
    }

    pub fn output(&self, name: &str) -> Option<(usize, &TensorConfig)> {
        self.outputs.iter().enumerate().find(|(_, t)| t.name == name)
    }

    /// The model's images are to be decoded on the GPU (`decode = "gpu"`).
    pub fn decodes_on_gpu(&self) -> bool {
        self.preprocess.as_ref().is_some_and(|p| p.decode == DecodeOn::Gpu)
    }

    /// The input an image becomes, if the model takes images: the
    /// preprocessed input, or a pipeline's (BYTES) input.
    pub fn image_input(&self) -> Option<(usize, &TensorConfig)> {
        if self.pipeline.is_some() {
            return self.inputs.first().map(|t| (0, t));
        }
        let p = self.preprocess.as_ref()?;
        match &p.input {
            Some(n) => self.input(n),
            None => self.inputs.first().map(|t| (0, t)),
        }
    }

    /// Whether an image request gets a JSON answer made on the CPU (labels,
    /// text lines) rather than the output tensors.
    pub fn answers_in_json(&self) -> bool {
        self.postprocess.is_some() || self.pipeline.is_some()
    }

    /// Triton's `platform` name for metadata.
    pub fn platform(&self) -> &'static str {
        if self.pipeline.is_some() { "pipeline" } else { "onnxruntime_onnx" }
    }

    /// Triton's `backend` name for its model configuration.
    pub fn backend(&self) -> &'static str {
        if self.pipeline.is_some() { "pipeline" } else { "onnxruntime" }
    }

    /// The output classification reads.
    pub fn scores_output(&self) -> Option<(usize, &TensorConfig)> {
        let p = self.postprocess.as_ref()?;
        match &p.output {
            Some(n) => self.output(n),
            None => self.outputs.first().map(|t| (0, t)),
        }
    }

    /// The shape clients see, with `-1` for the batch dimension when batching.
    pub fn full_shape(&self, t: &TensorConfig) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1).chain(t.dims.iter().copied()).collect()
        } else {
            t.dims.clone()
        }
    }

    /// The largest of its tensors for one request row whose size its config
    /// fixes (no `-1` dims), with its name: what must fit a shared-memory
    /// slot for the model to be served at all.
    pub fn largest_tensor(&self) -> Option<(&str, usize)> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .filter_map(|t| {
                let elements = t.dims.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().map(|d| n * d))?;
                Some((t.name.as_str(), elements * t.datatype.size()?))
            })
            .max_by_key(|&(_, bytes)| bytes)
    }

    /// Checks everything that can be checked without the model file.
    pub fn validate(&self, dir_name: &str) -> Result<(), RepoError> {
        let bad = |message: String| Err(RepoError::Invalid { model: dir_name.into(), message });
        if let Some(n) = &self.name
            && n != dir_name
        {
            return bad(format!("config says name = \"{n}\" but the directory is `{dir_name}`; they must match"));
        }
        self.validate_scheduling().or_else(bad)?;
        match &self.version_policy {
            VersionPolicy::Latest { num_versions: 0 } => {
                return bad("version_policy latest needs num_versions of at least 1".into());
            }
            VersionPolicy::Specific { versions } if versions.is_empty() => {
                return bad("version_policy specific needs at least one version".into());
            }
            _ => {}
        }
        if let Some(p) = &self.pipeline {
            return self.validate_pipeline(p).or_else(bad);
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return bad("at least one [[input]] and one [[output]] are required".into());
        }
        if self.max_inflight == Some(0) {
            return bad("max_inflight must be at least 1 (leave it out for no per-model limit)".into());
        }
        if self.instances == 0 || self.instances > 64 {
            return bad(format!("instances = {}; 1 to 64 are accepted", self.instances));
        }
        for (what, list) in [("input", &self.inputs), ("output", &self.outputs)] {
            let mut names = std::collections::HashSet::new();
            if let Some(t) = list.iter().find(|t| !names.insert(t.name.as_str())) {
                return bad(format!("{what} `{}` is declared twice", t.name));
            }
        }
        for t in self.inputs.iter().chain(&self.outputs) {
            if t.dims.iter().any(|&d| d < -1 || d == 0) {
                return bad(format!("tensor `{}` has dims {:?}; each must be positive or -1", t.name, t.dims));
            }
            if t.dims.len() + usize::from(self.max_batch_size > 0) > shm::tensor::MAX_DIMS {
                return bad(format!("tensor `{}` has too many dimensions", t.name));
            }
        }
        if let Some(db) = &self.dynamic_batching {
            if self.max_batch_size == 0 {
                return bad("dynamic_batching needs max_batch_size > 0".into());
            }
            if let Some(&p) = db.preferred_batch_size.iter().find(|&&p| p == 0 || p > self.max_batch_size) {
                return bad(format!(
                    "preferred_batch_size {p} must be between 1 and max_batch_size ({})",
                    self.max_batch_size
                ));
            }
            if db.max_queue_delay_microseconds > 10_000_000 {
                return bad("max_queue_delay_microseconds over 10 s is not accepted".into());
            }
        }
        if let Some(p) = &self.preprocess {
            self.validate_preprocess(p).or_else(bad)?;
        }
        if let Some(p) = &self.postprocess {
            let Some((_, out)) = self.scores_output() else {
                return bad(format!(
                    "postprocess output `{}` is not a model output",
                    p.output.as_deref().unwrap_or("")
                ));
            };
            if !matches!(out.datatype, DType::F32 | DType::F16) {
                return bad(format!("classification needs an FP32 or FP16 output; `{}` is {}", out.name, out.datatype));
            }
            if p.top_k == 0 {
                return bad("postprocess top_k must be at least 1".into());
            }
        }
        Ok(())
    }

    fn validate_pipeline(&self, p: &crate::Pipeline) -> Result<(), String> {
        if self.preprocess.is_some() || self.postprocess.is_some() || self.dynamic_batching.is_some() {
            return Err("a pipeline has no [preprocess], [postprocess] or [dynamic_batching]: its steps do that".into());
        }
        if self.max_batch_size != 0 {
            return Err("a pipeline takes one image per request: max_batch_size must be 0".into());
        }
        let one_bytes = self.inputs.len() == 1 && self.inputs[0].datatype == DType::Bytes && self.inputs[0].dims == [1];
        if !one_bytes {
            return Err("a pipeline has exactly one input: an encoded image, datatype BYTES, dims [1]".into());
        }
        p.validate()
    }

    fn validate_preprocess(&self, p: &Preprocess) -> Result<(), String> {
        let Some((_, input)) = self.image_input() else {
            return Err(format!("preprocess input `{}` is not a model input", p.input.as_deref().unwrap_or("")));
        };
        if !matches!(input.datatype, DType::F32 | DType::F16 | DType::U8) {
            return Err(format!(
                "image input `{}` is {}; images can become FP32, FP16 or UINT8 tensors",
                input.name, input.datatype
            ));
        }
        if self.max_batch_size == 0 {
            return Err("image models need max_batch_size > 0 (images are stacked along the batch dimension)".into());
        }
        if p.width == 0 || p.height == 0 || p.width > 16384 || p.height > 16384 {
            return Err(format!("preprocess size {}x{}; 1 to 16384 per side is accepted", p.width, p.height));
        }
        let want = p.image_dims();
        let fits = input.dims.len() == 3 && input.dims.iter().zip(want).all(|(&d, w)| d == w || d == -1);
        if !fits {
            return Err(format!(
                "image input `{}` has dims {:?}, which do not match {:?} for a {}x{} {:?} image",
                input.name, input.dims, want, p.width, p.height, p.layout
            ));
        }
        if p.std.contains(&0.0) {
            return Err("preprocess std must not contain 0".into());
        }
        if let (ResizeMode::CenterCrop, Some(s)) = (p.resize, p.resize_shorter)
            && s < p.width.min(p.height)
        {
            return Err(format!("resize_shorter {s} is smaller than the crop {}x{}", p.width, p.height));
        }
        if p.decode == DecodeOn::Gpu {
            // What the GPU preprocessing kernel does (gpu-worker/src/cuda/preprocess.cu).
            if p.resize != ResizeMode::Stretch || p.layout != Layout::NCHW || input.datatype == DType::U8 {
                return Err(format!(
                    "decode = \"gpu\" takes resize = \"stretch\", layout NCHW and an FP32 or FP16 input \
                     (the GPU kernel's); this model has resize {:?}, layout {:?}, {}: use decode = \"cpu\"",
                    p.resize, p.layout, input.datatype
                ));
            }
            if self.inputs.len() != 1 {
                return Err(format!(
                    "decode = \"gpu\" needs a model with one input (the image); this one has {}",
                    self.inputs.len()
                ));
            }
        }
        Ok(())
    }
}

mod image;
#[cfg(test)]
mod tests;
