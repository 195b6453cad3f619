//! The daemon's configuration: one TOML file (configs/default.toml documents
//! every key) plus a few flags with environment overrides for what operators
//! change per host. Relative paths are resolved against the file's directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer, Serialize};

mod cli;
pub mod slots;

pub use self::cli::Overrides;
use crate::models::Mode;

/// A byte size written as an integer or as "64MiB" / "256KiB" / "1GiB".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.replace('_', "").parse().map_err(|_| format!("`{s}` is not a size; write e.g. 65536 or \"64KiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{s}`; accepted: B, KiB, MiB, GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub models: Models,
    pub preproc: Preproc,
    pub inference: Inference,
    pub shm: Shm,
    pub supervisor: Supervisor,
    pub log: Log,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: ByteSize,
    pub max_inflight: u32,
    pub max_inflight_bytes: ByteSize,
    /// Each priority level keeps this share of `max_inflight` and
    /// `max_inflight_bytes` from every level below it.
    #[serde(default = "headroom")]
    pub priority_headroom: f64,
    pub request_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub threads: u32,
    /// A second port serving only `/metrics` (Triton uses 8002), on `host`.
    #[serde(default)]
    pub metrics_port: Option<u16>,
    /// Guards the repository API's load and unload (`Authorization: Bearer`);
    /// needed when model control is on and `host` is not loopback. Set it
    /// with `--admin-token` or `HIGHSERVE_ADMIN_TOKEN` rather than here.
    #[serde(default)]
    pub admin_token: Option<model_repo::control::Secret>,
    /// The gRPC service's port (Triton's 8001), on `host`; 0: off.
    #[serde(default = "grpc_port")]
    pub grpc_port: u16,
    /// Triton's system shared-memory extension: clients on this host may
    /// register POSIX shared-memory regions and pass tensors through them.
    #[serde(default)]
    pub allow_client_shm: bool,
}

fn grpc_port() -> u16 {
    8001
}

fn headroom() -> f64 {
    0.1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub repository: PathBuf,
    #[serde(default)]
    pub load: Vec<String>,
    /// Loaded versions the daemon can hold at once (each an index in
    /// descriptors and shared-memory statistics): room for what loads at
    /// start-up, for the versions loaded alongside while a model is
    /// swapped, and for models loaded later.
    #[serde(default = "max_models")]
    pub max_models: u32,
    /// How models come and go while serving (`--model-control-mode`).
    #[serde(default = "control_mode")]
    pub control_mode: Mode,
    /// Explicit mode: the models loaded at start-up (`*`: all; none: none).
    #[serde(default)]
    pub load_model: Vec<String>,
    /// Poll mode: seconds between scans of the repository directory.
    #[serde(default = "poll_secs")]
    pub repository_poll_secs: u64,
}

fn control_mode() -> Mode {
    Mode::None
}

fn poll_secs() -> u64 {
    15
}

fn max_models() -> u32 {
    32
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preproc {
    pub workers: u32,
    pub max_image_pixels: u64,
    pub max_image_side: u32,
    pub jpeg_dct_scaling: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inference {
    pub onnxruntime_library: PathBuf,
    pub intra_op_threads: u32,
    pub max_concurrent_batches: u32,
    pub workers: u32,
    /// Where models run: `auto`, `gpu` or `cpu` (docs/gpu.md).
    #[serde(default)]
    pub device: DeviceChoice,
    /// CUDA ordinals to use (one inference worker each); empty: all visible.
    #[serde(default)]
    pub devices: Vec<u32>,
    /// Directories searched first for the CUDA libraries.
    #[serde(default)]
    pub cuda_library_path: Vec<PathBuf>,
    /// The backend that runs models on a GPU.
    #[serde(default)]
    pub gpu_backend: GpuEngine,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPUs when CUDA and a GPU are found, else the CPU (with a warning
    /// saying what was missing).
    #[default]
    Auto,
    /// The GPUs; refuse to start (naming what is missing) without them.
    Gpu,
    /// The CPU, even where there is a GPU.
    Cpu,
}

/// The backend that runs models on a GPU, as the inference worker knows it.
pub use gpu_worker::GpuEngine;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlotClass {
    pub size: ByteSize,
    pub count: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shm {
    pub lane_capacity: u32,
    pub spin_microseconds: u64,
    /// Explicit slot classes; empty: derived from the models
    /// ([`slots::classes`]).
    #[serde(default)]
    pub slots: Vec<SlotClass>,
    /// The most bytes the slots may hold in memory at once (0: no ceiling).
    #[serde(default = "default_shm_max_bytes")]
    pub max_bytes: ByteSize,
    /// A free slot unused this long returns its pages to the kernel (0:
    /// never).
    #[serde(default = "default_release_idle_secs")]
    pub release_idle_secs: u64,
}

fn default_shm_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}

fn default_release_idle_secs() -> u64 {
    300
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Supervisor {
    pub drain_timeout_ms: u64,
    pub ready_timeout_ms: u64,
    pub restart_backoff_ms: [u64; 2],
    pub max_restarts: u32,
    pub restart_window_s: u64,
    /// A child whose main loop has not turned for this long counts as hung:
    /// the systemd watchdog pings stop (see docs/operations.md).
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
}

fn default_heartbeat_timeout_ms() -> u64 {
    5000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// `a/configs/../models` → `a/models` when the path exists (for readable logs).
pub(super) fn tidy(p: PathBuf) -> PathBuf {
    p.canonicalize().unwrap_or(p)
}

impl Config {
    /// Reads `path`, applies `overrides`, resolves paths and validates.
    pub fn load(path: &Path, overrides: &Overrides) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
        cfg.apply(overrides);
        cfg.models.repository = tidy(base.join(&cfg.models.repository));
        cfg.inference.onnxruntime_library = tidy(base.join(&cfg.inference.onnxruntime_library));
        cfg.inference.cuda_library_path = cfg.inference.cuda_library_path.iter().map(|p| tidy(base.join(p))).collect();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Model control changes the daemon: beyond loopback only with a token.
    fn validate_model_control(&self) -> anyhow::Result<()> {
        let m = &self.models;
        if !m.load_model.is_empty() && m.control_mode != Mode::Explicit {
            bail!("--load-model (models.load_model) needs --model-control-mode explicit");
        }
        if m.control_mode == Mode::Poll && m.repository_poll_secs == 0 {
            bail!("--repository-poll-secs must be at least 1");
        }
        if self.server.admin_token.as_ref().is_some_and(|t| t.is_empty()) {
            bail!("--admin-token (HIGHSERVE_ADMIN_TOKEN) is empty; give a token or leave it unset");
        }
        let loopback = self.server.host == "localhost"
            || self.server.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if m.control_mode != Mode::None && !loopback && self.server.admin_token.is_none() {
            bail!(
                "model control (--model-control-mode {}) lets clients load and unload models, and {} is not a                  loopback address: set --admin-token or HIGHSERVE_ADMIN_TOKEN (load and unload then need                  `Authorization: Bearer <token>`), or listen on 127.0.0.1",
                if m.control_mode == Mode::Poll { "poll" } else { "explicit" },
                self.server.host
            );
        }
        Ok(())
    }

    /// Checks the values that have a valid range; the messages name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.server.max_inflight == 0 {
            bail!("server.max_inflight must be at least 1");
        }
        if self.server.threads == 0 || self.server.threads > 256 {
            bail!("server.threads = {}; 1 to 256 are accepted", self.server.threads);
        }
        if self.server.max_body_bytes.0 == 0 {
            bail!("server.max_body_bytes must be positive");
        }
        self.validate_model_control()?;
        if !(0.0..=0.5).contains(&self.server.priority_headroom) {
            bail!("server.priority_headroom = {}; 0 to 0.5 are accepted", self.server.priority_headroom);
        }
        if self.server.max_inflight_bytes.0 < self.server.max_body_bytes.0 {
            bail!(
                "server.max_inflight_bytes ({}) must be at least server.max_body_bytes ({}), or no large request is ever admitted",
                self.server.max_inflight_bytes.0,
                self.server.max_body_bytes.0
            );
        }
        for (key, v) in [
            ("request_timeout_ms", self.server.request_timeout_ms),
            ("header_timeout_ms", self.server.header_timeout_ms),
            ("body_timeout_ms", self.server.body_timeout_ms),
        ] {
            if v == 0 {
                bail!("server.{key} must be positive");
            }
        }
        if self.inference.workers == 0 || self.inference.workers > 64 {
            bail!("inference.workers = {}; 1 to 64 are accepted", self.inference.workers);
        }
        if self.inference.intra_op_threads == 0 {
            bail!("inference.intra_op_threads must be at least 1");
        }
        if self.preproc.workers > 1024 {
            bail!("preproc.workers = {}; 0 (one per core) to 1024 are accepted", self.preproc.workers);
        }
        if !self.shm.lane_capacity.is_power_of_two() || self.shm.lane_capacity < 16 {
            bail!("shm.lane_capacity = {} must be a power of two, at least 16", self.shm.lane_capacity);
        }
        if self.shm.lane_capacity < self.server.max_inflight {
            bail!(
                "shm.lane_capacity ({}) must be at least server.max_inflight ({}) so that a lane never fills",
                self.shm.lane_capacity,
                self.server.max_inflight
            );
        }
        for s in &self.shm.slots {
            if s.size.0 == 0 || s.size.0 % 4096 != 0 || s.count == 0 {
                bail!(
                    "shm.slots: size {} x {} must be a positive multiple of 4096 bytes with count > 0",
                    s.size.0,
                    s.count
                );
            }
        }
        let largest = self.shm.slots.iter().map(|s| s.size.0).max().unwrap_or(u64::MAX);
        if largest < self.server.max_body_bytes.0 + model_repo::TABLE_ROOM as u64 {
            bail!(
                "the largest shm slot ({largest} bytes) must hold server.max_body_bytes ({}) plus 4096",
                self.server.max_body_bytes.0
            );
        }
        let [lo, hi] = self.supervisor.restart_backoff_ms;
        if lo == 0 || lo > hi {
            bail!("supervisor.restart_backoff_ms = [{lo}, {hi}]; need 0 < first <= second");
        }
        if !matches!(self.log.level.as_str(), "") && tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bail!("log.level `{}` is not a tracing filter (e.g. \"info\" or \"highserve=debug,info\")", self.log.level);
        }
        Ok(())
    }

    /// Preproc workers after resolving 0 to the number of cores.
    pub fn preproc_workers(&self) -> u16 {
        match self.preproc.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(1024) as u16,
            n => n as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml")
    }

    #[test]
    fn the_shipped_default_config_loads() {
        let cfg = Config::load(&default_path(), &Overrides::default()).unwrap();
        assert_eq!(cfg.server.port, 8000);
        assert_eq!(cfg.server.host, "127.0.0.1", "loopback unless configured otherwise");
        assert!(cfg.models.repository.ends_with("models"));
        assert!(cfg.models.repository.is_absolute());
        assert!(cfg.shm.slots.is_empty(), "slot classes are derived from the models");
        assert_eq!(cfg.shm.max_bytes, ByteSize(1 << 30));
    }

    /// docs/configuration.md is written by hand; this keeps it complete: every
    /// key of the config types (optional ones set, so they serialize) and
    /// every flag must appear in it, keys under their section's heading.
    #[test]
    fn every_key_and_flag_is_documented() {
        let docs =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")).unwrap();
        let mut cfg = Config::load(&default_path(), &Overrides::default()).unwrap();
        cfg.server.metrics_port = Some(8002);
        let value = toml::Value::try_from(&cfg).unwrap();
        let mut missing = Vec::new();
        for (section, table) in value.as_table().unwrap() {
            let heading = format!("## `[{section}]`");
            let start = docs.find(&heading).unwrap_or_else(|| panic!("no heading {heading}"));
            let end = docs[start + heading.len()..].find("\n## ").map_or(docs.len(), |i| start + heading.len() + i);
            for key in table.as_table().unwrap().keys() {
                if !docs[start..end].contains(&format!("| `{key}` |")) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        use clap::Args as _;
        for arg in Overrides::augment_args(clap::Command::new("serve")).get_arguments() {
            if let Some(long) = arg.get_long()
                && !docs.contains(&format!("`--{long}`"))
            {
                missing.push(format!("--{long}"));
            }
        }
        assert!(missing.is_empty(), "undocumented in docs/configuration.md: {missing:?}");
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            port: Some(0),
            preproc_workers: Some(3),
            log_format: Some(LogFormat::Json),
            ..Default::default()
        };
        let cfg = Config::load(&default_path(), &o).unwrap();
        assert_eq!((cfg.server.port, cfg.preproc_workers(), cfg.log.format), (0, 3, LogFormat::Json));
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = std::fs::read_to_string(default_path()).unwrap().replace("[server]", "[server]\nprot = 1");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let err = Config::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn both_gpu_backends_parse() {
        let base = std::fs::read_to_string(default_path()).unwrap();
        for (name, want) in [("tract-cuda", GpuEngine::TractCuda), ("onnxruntime-cuda", GpuEngine::OnnxRuntimeCuda)] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.toml");
            std::fs::write(&p, base.replace("gpu_backend = \"tract-cuda\"", &format!("gpu_backend = \"{name}\"")))
                .unwrap();
            assert_eq!(Config::load(&p, &Overrides::default()).unwrap().inference.gpu_backend, want);
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1_024 KiB"), Ok(1 << 20));
        assert!(parse_size("3 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn bad_values_are_explained() {
        let base = std::fs::read_to_string(default_path()).unwrap();
        let cases = [
            ("lane_capacity = 1024", "lane_capacity = 1000", "power of two"),
            ("max_inflight = 256", "max_inflight = 4096", "lane never fills"),
            ("slots = []", "slots = [{ size = \"1MiB\", count = 8 }]", "largest shm slot"),
            ("restart_backoff_ms = [100, 5000]", "restart_backoff_ms = [100, 50]", "restart_backoff_ms"),
            ("format = \"text\"", "format = \"xml\"", "xml"),
            ("gpu_backend = \"tract-cuda\"", "gpu_backend = \"tensorrt\"", "onnxruntime-cuda"),
        ];
        for (from, to, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.toml");
            std::fs::write(&p, base.replace(from, to)).unwrap();
            let err = Config::load(&p, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains(needle), "`{to}`: {err}");
        }
    }
}
