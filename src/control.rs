//! How the supervisor starts each child and talks to it. A child is this
//! binary run as `highserve child <role>` (so `ps` and `systemd-cgls` show
//! `highserve child preproc 1`), with an environment built here from
//! nothing, and one Unix socket pair carrying JSON lines: the first line the
//! supervisor writes is the child's spec; the child answers `ready` when it
//! can take work.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use model_repo::Repository;
use model_repo::control::{ControlError, Upstream};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Environment variable naming the child's end of the control socket.
pub const CONTROL_FD_ENV: &str = "HIGHSERVE_CONTROL_FD";
/// Environment variable with the supervisor's pid (a child exits if its parent
/// is not this process, i.e. the supervisor died before it could see it).
pub const SUPERVISOR_PID_ENV: &str = "HIGHSERVE_SUPERVISOR_PID";

/// Variables a child keeps from the supervisor's environment when they are
/// set: the locale, the time zone, temporary and home directories (CUDA and
/// tract keep caches there), `PATH`, the log filter and backtraces, and the
/// test suite's fault injection. Nothing else reaches a child: systemd's
/// `NOTIFY_SOCKET` and `WATCHDOG_*` in particular belong to the supervisor
/// alone (`NotifyAccess=main`).
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "TZ",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    gpu_worker::PANIC_FILE_ENV,
];

/// What a child is started with besides its role.
pub struct Start<'a> {
    /// The child's end of the control socket.
    pub control_fd: i32,
    pub supervisor_pid: u32,
    /// An inference worker's GPU (as CUDA ordinal) and the directories of
    /// the CUDA libraries.
    pub gpu: Option<(u32, &'a OsStr)>,
}

/// The whole environment of a child: [`INHERITED`] from `parent` (the
/// supervisor's environment), then what the child is told. An inference
/// worker on a GPU sees only that GPU, as ordinal 0, and finds the CUDA
/// libraries by name, as cudarc and cuDNN look for them.
pub fn child_env(parent: impl Fn(&str) -> Option<OsString>, start: &Start<'_>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> =
        INHERITED.iter().filter_map(|&k| parent(k).map(|v| (k.into(), v))).collect();
    env.push((CONTROL_FD_ENV.into(), start.control_fd.to_string().into()));
    env.push((SUPERVISOR_PID_ENV.into(), start.supervisor_pid.to_string().into()));
    if let Some((device, library_path)) = start.gpu {
        env.push(("CUDA_VISIBLE_DEVICES".into(), device.to_string().into()));
        env.push(("LD_LIBRARY_PATH".into(), library_path.into()));
    }
    env
}

/// Everything a child needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
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
    /// Frontend: worker `proc` died, holding `ids` in its slots and lanes
    /// (the requests that were there are sent again).
    Lost {
        proc: u16,
        ids: Vec<u64>,
        message: String,
    },
    /// Frontend: the workers of `kind` (`inference`, `preproc`) cannot come
    /// back.
    Unavailable {
        kind: String,
        message: String,
    },
    /// Every process: the model table changed; this is the whole new one.
    Models {
        repository: Box<Repository>,
    },
    /// Frontend: the answer to the operator's order `id`.
    ControlDone {
        id: u64,
        result: Result<(), ControlError>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromChild {
    /// `addr` and `grpc`: the frontend's HTTP and gRPC addresses.
    Ready {
        addr: Option<String>,
        #[serde(default)]
        grpc: Option<String>,
    },
    /// About the model table: a report, or an operator's order.
    Upstream { message: Upstream },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gets_only_what_it_needs() {
        let parent = |k: &str| match k {
            "PATH" | "RUST_LOG" | "NOTIFY_SOCKET" | "AWS_SECRET_ACCESS_KEY" | "LD_LIBRARY_PATH" => {
                Some(OsString::from(format!("{k}-value")))
            }
            _ => None,
        };
        let names = |env: &[(OsString, OsString)]| -> Vec<String> {
            env.iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect()
        };
        let cpu = child_env(parent, &Start { control_fd: 7, supervisor_pid: 42, gpu: None });
        assert_eq!(names(&cpu), ["PATH", "RUST_LOG", CONTROL_FD_ENV, SUPERVISOR_PID_ENV]);
        assert!(cpu.contains(&(CONTROL_FD_ENV.into(), "7".into())));
        let gpu = child_env(parent, &Start { control_fd: 7, supervisor_pid: 42, gpu: Some((3, OsStr::new("/cuda"))) });
        assert!(gpu.contains(&("CUDA_VISIBLE_DEVICES".into(), "3".into())));
        assert!(gpu.contains(&("LD_LIBRARY_PATH".into(), "/cuda".into())), "the CUDA directories, not the parent's");
        assert_eq!(gpu.iter().filter(|(k, _)| k == "LD_LIBRARY_PATH").count(), 1);
    }
}
