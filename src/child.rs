//! A child process: the same binary started by the supervisor with the hidden
//! `child` command. It reads its spec from the control socket, attaches to the
//! shared memory and runs one role until told to stop or until its parent dies.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use shm::mailbox::Wiring;
use shm::{Region, Role};

use model_repo::control::{Notify, Upstream};

use crate::control::{CONTROL_FD_ENV, ChildSpec, FromChild, SUPERVISOR_PID_ENV, ToChild};

fn env_fd(name: &str) -> anyhow::Result<i32> {
    let v = std::env::var(name)
        .with_context(|| format!("{name} is not set; `highserve child` is started by `highserve serve`"))?;
    v.parse().with_context(|| format!("{name}={v} is not a descriptor number"))
}

/// Dies with the supervisor even if it is SIGKILLed.
fn die_with_parent() -> anyhow::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    // The parent may have died between our fork and the prctl above: then we
    // were reparented and the death signal will never come.
    let expected: i32 = std::env::var(SUPERVISOR_PID_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get()).unwrap_or(0);
    if parent != expected {
        bail!("the supervisor (pid {expected}) is gone; exiting");
    }
    Ok(())
}

/// The child's end of the control socket for writing: one line per
/// message, whole, from whichever thread sends it.
#[derive(Clone)]
struct Upward(Arc<Mutex<UnixStream>>);

impl Upward {
    fn send(&self, msg: &FromChild) {
        let mut line = serde_json::to_vec(msg).expect("control messages serialize; this is a bug");
        line.push(b'\n');
        // A failed write means the supervisor is gone; the death signal follows.
        let _ = self.0.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line);
    }

    /// Reports and operators' orders about the model table, as a process's
    /// libraries send them.
    fn notify(&self) -> Notify {
        let up = self.clone();
        Arc::new(move |message: Upstream| up.send(&FromChild::Upstream { message }))
    }
}

/// A panic on any thread ends the whole process: a worker missing one thread
/// (a backend instance, the inbox loop) would otherwise hang the requests it
/// held while looking alive. The supervisor then restarts it.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if preproc_worker::contain::in_contained_scope() {
            // A decoder or CPU step failing on one request's data: it unwinds
            // to `contain`, which fails that request only.
            tracing::warn!("contained panic: {info}");
            return;
        }
        default(info);
        tracing::error!("panic: {info}; exiting so the supervisor restarts this process");
        std::process::abort();
    }));
}

pub fn main(role: Role) -> anyhow::Result<()> {
    exit_on_panic();
    die_with_parent()?;
    let control = UnixStream::from(shm::fd::adopt(env_fd(CONTROL_FD_ENV)?)?);
    let mut reader = BufReader::new(control.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let spec = match serde_json::from_str::<ToChild>(&first) {
        Ok(ToChild::Spec(spec)) => *spec,
        Ok(other) => bail!("expected a spec from the supervisor, got {other:?}"),
        Err(e) => bail!("bad spec from the supervisor: {e}"),
    };
    crate::telemetry::init(&role.name(), spec.config.log.format, &spec.config.log.level);
    let result = run_role(role, spec, control, reader);
    if let Err(e) = &result {
        tracing::error!("{} failed: {e:#}", role.name());
    }
    result
}

fn attach(role: Role, spec: &ChildSpec) -> anyhow::Result<Wiring> {
    let region = Arc::new(Region::attach(shm::fd::adopt(spec.shm_fd)?)?);
    let efds = spec.efds.iter().map(|&n| shm::fd::adopt(n).map(Arc::new)).collect::<Result<Vec<Arc<OwnedFd>>, _>>()?;
    let topo = region.layout().topology();
    let me = topo.proc_of(role).with_context(|| format!("the shared memory has no process for {role}"))?;
    Ok(Wiring::new(region, me, efds)?)
}

fn run_role(role: Role, spec: ChildSpec, control: UnixStream, reader: BufReader<UnixStream>) -> anyhow::Result<()> {
    let wiring = attach(role, &spec)?;
    let repository = Arc::new(spec.repository.clone());
    let cfg = &spec.config;
    let spin = Duration::from_micros(cfg.shm.spin_microseconds);
    let up = Upward(Arc::new(Mutex::new(control)));
    let ready = |addr: Option<String>, grpc: Option<String>| up.send(&FromChild::Ready { addr, grpc });
    match role {
        Role::Frontend => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::Builder::new().name("control".into()).spawn(move || {
                for line in reader.lines() {
                    let cmd = match line.map(|l| serde_json::from_str::<ToChild>(&l)) {
                        Ok(Ok(ToChild::Drain { deadline_ms })) => {
                            frontend::Command::Drain { deadline: Duration::from_millis(deadline_ms) }
                        }
                        Ok(Ok(ToChild::Lost { proc, ids, message })) => {
                            frontend::Command::Lost { proc: shm::ProcId(proc), ids, message }
                        }
                        Ok(Ok(ToChild::Unavailable { kind, message })) => {
                            frontend::Command::Unavailable { kind, message }
                        }
                        Ok(Ok(ToChild::Models { repository })) => frontend::Command::Models(Arc::new(*repository)),
                        Ok(Ok(ToChild::ControlDone { id, result })) => frontend::Command::ControlDone { id, result },
                        Ok(Ok(_)) => continue,
                        _ => break,
                    };
                    if tx.send(cmd).is_err() {
                        break;
                    }
                }
                // The supervisor is gone (or spoke nonsense): stop at once.
                let _ = tx.send(frontend::Command::Drain { deadline: Duration::ZERO });
            })?;
            let fcfg = frontend::Config {
                wiring,
                repository,
                notify: up.notify(),
                admin_token: cfg.server.admin_token.clone(),
                addr: format!("{}:{}", cfg.server.host, cfg.server.port),
                max_body_bytes: cfg.server.max_body_bytes.0,
                max_inflight: cfg.server.max_inflight as usize,
                max_inflight_bytes: cfg.server.max_inflight_bytes.0,
                priority_headroom: cfg.server.priority_headroom,
                request_timeout: Duration::from_millis(cfg.server.request_timeout_ms),
                header_timeout: Duration::from_millis(cfg.server.header_timeout_ms),
                body_timeout: Duration::from_millis(cfg.server.body_timeout_ms),
                threads: cfg.server.threads as usize,
                spin,
                metrics_addr: cfg.server.metrics_port.map(|p| format!("{}:{p}", cfg.server.host)),
                grpc_addr: (cfg.server.grpc_port != 0).then(|| format!("{}:{}", cfg.server.host, cfg.server.grpc_port)),
                allow_client_shm: cfg.server.allow_client_shm,
            };
            frontend::run(fcfg, rx, |addr, grpc| ready(Some(addr.to_string()), grpc.map(|g| g.to_string())))?;
        }
        Role::Gpu(index) => {
            let (shutdown, updates) = control_thread(reader, &wiring)?;
            let gcfg = gpu_worker::Config {
                wiring,
                repository,
                updates,
                notify: up.notify(),
                index,
                onnxruntime_library: cfg.inference.onnxruntime_library.clone(),
                intra_op_threads: cfg.inference.intra_op_threads as usize,
                max_concurrent_batches: cfg.inference.max_concurrent_batches as usize,
                spin,
                cuda_device: spec.cuda_device,
                gpu_engine: cfg.inference.gpu_backend,
            };
            gpu_worker::run(gcfg, shutdown, || ready(None, None))?;
        }
        Role::Preproc(_) => {
            let (shutdown, updates) = control_thread(reader, &wiring)?;
            let pcfg = preproc_worker::Config {
                wiring,
                repository,
                updates,
                notify: up.notify(),
                limits: preproc_worker::image::DecodeLimits {
                    max_pixels: cfg.preproc.max_image_pixels,
                    max_side: cfg.preproc.max_image_side,
                },
                dct_scaling: cfg.preproc.jpeg_dct_scaling,
                gpu_decode: spec.gpu_decode,
                spin,
            };
            preproc_worker::run(pcfg, shutdown, || ready(None, None))?;
        }
    }
    Ok(())
}

type Updates = std::sync::mpsc::Receiver<Arc<model_repo::Repository>>;

/// A worker's control thread: hands each new model table over (and wakes
/// the worker's inbox), and sets the returned flag (waking it too) on
/// `stop` or when the supervisor's end of the socket closes.
fn control_thread(reader: BufReader<UnixStream>, wiring: &Wiring) -> anyhow::Result<(Arc<AtomicBool>, Updates)> {
    let flag = Arc::new(AtomicBool::new(false));
    let (f, waker) = (flag.clone(), wiring.self_waker());
    let (tx, updates) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for line in reader.lines() {
            match line.map(|l| serde_json::from_str::<ToChild>(&l)) {
                Ok(Ok(ToChild::Stop)) | Err(_) => break,
                Ok(Ok(ToChild::Models { repository })) => {
                    if tx.send(Arc::new(*repository)).is_err() {
                        break;
                    }
                    waker.wake();
                }
                _ => {}
            }
        }
        f.store(true, Ordering::Release);
        waker.wake();
    })?;
    Ok((flag, updates))
}
