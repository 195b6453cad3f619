//! The control channel between the supervisor and each child: one Unix
//! socket pair per child, JSON lines. The first line the supervisor writes is
//! the child's spec; the child answers `ready` when it can take work.

use std::path::PathBuf;

use model_repo::Repository;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Environment variable naming the child's end of the control socket.
pub const CONTROL_FD_ENV: &str = "HIGHSERVE_CONTROL_FD";
/// Environment variable with the supervisor's pid (a child exits if its parent
/// is not this process, i.e. the supervisor died before it could see it).
pub const SUPERVISOR_PID_ENV: &str = "HIGHSERVE_SUPERVISOR_PID";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Frontend,
    Gpu(u16),
    Preproc(u16),
}

impl Role {
    pub fn name(&self) -> String {
        match self {
            Role::Frontend => "frontend".into(),
            Role::Gpu(i) => format!("gpu{i}"),
            Role::Preproc(i) => format!("preproc{i}"),
        }
    }
}

/// Everything a child needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
    pub role: Role,
    pub config: Config,
    pub repository: Repository,
    /// Inherited descriptor numbers: the shared-memory region and the eventfd
    /// of every process, indexed by process id.
    pub shm_fd: i32,
    pub efds: Vec<i32>,
    pub run_dir: Option<PathBuf>,
    /// The GPU an inference worker drives (its CUDA_VISIBLE_DEVICES); None:
    /// the CPU.
    #[serde(default)]
    pub cuda_device: Option<u32>,
    /// A preproc worker whose inference workers drive GPUs: it sends the
    /// images of models with `decode = "gpu"` on undecoded.
    #[serde(default)]
    pub gpu_decode: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToChild {
    Spec(Box<ChildSpec>),
    /// Frontend: stop accepting, finish in-flight requests within the deadline, exit.
    Drain {
        deadline_ms: u64,
    },
    /// Workers: stop now (the frontend has drained).
    Stop,
    /// Frontend: these requests were lost with a crashed worker.
    Fail {
        ids: Vec<u64>,
        message: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromChild {
    Ready { addr: Option<String> },
}
