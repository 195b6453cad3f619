//! The flags that override the config file, each also read from the
//! environment: what operators change per host.

use std::path::PathBuf;

use model_repo::control::Secret;

use super::{Config, DeviceChoice, LogFormat, tidy};
use crate::models::Mode;

/// Flags that override the file (each also readable from the environment).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on
    #[arg(long, env = "HIGHSERVE_HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one
    #[arg(long, env = "HIGHSERVE_PORT")]
    pub port: Option<u16>,
    /// Preproc worker processes; 0 = one per core
    #[arg(long, env = "HIGHSERVE_PREPROC_WORKERS")]
    pub preproc_workers: Option<u32>,
    /// Model repository directory
    #[arg(long, env = "HIGHSERVE_MODELS")]
    pub models: Option<PathBuf>,
    /// Load only these models (comma-separated)
    #[arg(long, env = "HIGHSERVE_LOAD", value_delimiter = ',')]
    pub load: Option<Vec<String>>,
    /// Also serve /metrics on this port
    #[arg(long, env = "HIGHSERVE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Log format
    #[arg(long, env = "HIGHSERVE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where models run: auto, gpu or cpu
    #[arg(long, env = "HIGHSERVE_DEVICE")]
    pub device: Option<DeviceChoice>,
    /// How models come and go while serving: none (those of start-up stay),
    /// explicit (the repository API's load and unload), poll (the repository
    /// directory is watched)
    #[arg(long, env = "HIGHSERVE_MODEL_CONTROL_MODE")]
    pub model_control_mode: Option<Mode>,
    /// Explicit mode: a model to load at start-up (repeat it; `*` for all)
    #[arg(long, env = "HIGHSERVE_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Option<Vec<String>>,
    /// Poll mode: seconds between scans of the repository directory
    #[arg(long, env = "HIGHSERVE_REPOSITORY_POLL_SECS")]
    pub repository_poll_secs: Option<u64>,
    /// The token the repository API's load and unload need (Authorization:
    /// Bearer); required for model control beyond loopback
    #[arg(long, env = "HIGHSERVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Port of the gRPC service (KServe v2 / Triton's); 0 = off
    #[arg(long, env = "HIGHSERVE_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Let clients on this host pass tensors through POSIX shared-memory
    /// regions they register (Triton's system shared-memory extension)
    #[arg(long, env = "HIGHSERVE_ALLOW_CLIENT_SHM")]
    pub allow_client_shm: bool,
}

impl Config {
    pub(super) fn apply(&mut self, o: &Overrides) {
        if let Some(h) = &o.host {
            self.server.host = h.clone();
        }
        if let Some(p) = o.port {
            self.server.port = p;
        }
        if let Some(n) = o.preproc_workers {
            self.preproc.workers = n;
        }
        if let Some(m) = &o.models {
            // A flag is relative to the working directory, not to the file.
            self.models.repository = tidy(std::env::current_dir().map(|d| d.join(m)).unwrap_or_else(|_| m.clone()));
        }
        if let Some(l) = &o.load {
            self.models.load = l.clone();
        }
        if let Some(p) = o.metrics_port {
            self.server.metrics_port = Some(p);
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
        if let Some(d) = o.device {
            self.inference.device = d;
        }
        if let Some(m) = o.model_control_mode {
            self.models.control_mode = m;
        }
        if let Some(l) = &o.load_model {
            self.models.load_model = l.clone();
        }
        if let Some(s) = o.repository_poll_secs {
            self.models.repository_poll_secs = s;
        }
        if let Some(p) = o.grpc_port {
            self.server.grpc_port = p;
        }
        if o.allow_client_shm {
            self.server.allow_client_shm = true;
        }
        if let Some(t) = &o.admin_token {
            self.server.admin_token = Some(Secret::new(t.clone()));
        }
    }
}
