//! `highserve serve`: creates the shared memory, starts the children in order
//! (inference workers, preproc pool, frontend), each reporting ready, restarts
//! crashed workers with backoff, and on SIGTERM or Ctrl-C drains and stops
//! them in reverse order.
//!
//! The frontend is not restarted: if it dies the daemon exits non-zero and the
//! service manager (systemd `Restart=on-failure`, Kubernetes) starts it again;
//! every client connection died with it anyway, so an in-process restart would
//! hide the failure without saving any request.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shm::mailbox::Wiring;
use shm::region::ProcState;
use shm::{LayoutParams, ProcId, Region, Role, SlotPool, Topology};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{ChildSpec, FromChild, Start, ToChild};
use crate::notify::Notifier;
use crate::restart::{Decision, RestartPolicy};

mod health;
mod models;

enum Event {
    Exited { proc: ProcId, generation: u64, status: std::io::Result<ExitStatus> },
    Ready { proc: ProcId, generation: u64, addr: Option<String>, grpc: Option<String> },
    RestartDue { proc: ProcId },
    Upstream { proc: ProcId, generation: u64, message: model_repo::control::Upstream },
}

struct Child {
    role: Role,
    generation: u64,
    pid: Option<u32>,
    writer: Option<OwnedWriteHalf>,
    policy: RestartPolicy,
}

pub struct Supervisor {
    cfg: Config,
    /// The loaded table and every change to it.
    models: crate::models::Manager<crate::models::Disk>,
    run_dir: Option<PathBuf>,
    region: Arc<Region>,
    efds: Vec<Arc<OwnedFd>>,
    children: HashMap<ProcId, Child>,
    topology: Topology,
    placement: crate::placement::Placement,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    notifier: Option<Notifier>,
    /// Why the last health check failed (logged on each change).
    unhealthy: Option<String>,
}

impl Supervisor {
    pub fn new(cfg: Config, run_dir: Option<PathBuf>) -> anyhow::Result<Supervisor> {
        let repository = models::initial(&cfg)?;
        // A model that decodes on the GPU needs nvJPEG there too: without it,
        // `auto` runs on the CPU and `gpu` refuses to start, naming it.
        let nvjpeg = repository.models.iter().any(|m| m.config.decodes_on_gpu());
        let probe = crate::placement::Probe::system(&cfg.inference, nvjpeg);
        let placement = crate::placement::decide(&cfg.inference, &probe)?;
        let topology = Topology { gpus: placement.workers() as u16, preprocs: cfg.preproc_workers() };
        for m in repository.models.iter().filter(|m| m.config.decodes_on_gpu()) {
            if placement.is_gpu() {
                tracing::info!("{}: JPEGs and raw frames are decoded and preprocessed on the GPU", m.name);
            } else {
                tracing::info!("{}: decode = \"gpu\" but the models run on the CPU: the preproc pool decodes", m.name);
            }
        }
        let later = models::later(&cfg, &repository);
        let classes = crate::config::slots::classes(&cfg, &repository.models, &later, placement.is_gpu())?;
        let params =
            LayoutParams::new(topology, cfg.models.max_models as usize, cfg.shm.lane_capacity as usize, &classes)?
                .with_ceiling(cfg.shm.max_bytes.0);
        let region = Arc::new(Region::create("highserve", &params)?);
        let shown: Vec<String> = classes.iter().map(|c| format!("{} x {} KiB", c.count, c.size >> 10)).collect();
        let pinned = if placement.is_gpu() { " (pinned whole for the GPU, so they fit under it)" } else { "" };
        tracing::info!(
            "shared memory: {} MiB of address space, committed as used up to {} MiB (shm.max_bytes); slots {}{pinned}; \
             {} lanes of {} descriptors",
            region.len() >> 20,
            cfg.shm.max_bytes.0 >> 20,
            shown.join(", "),
            region.layout().lanes,
            cfg.shm.lane_capacity
        );
        // Every child maps the region and may wake any process, so these stay
        // inheritable for the supervisor's life; nothing else is ever spawned.
        shm::fd::set_inheritable(region.fd().context("memfd region has an fd")?, true)?;
        let mut efds = Vec::new();
        for _ in 0..topology.procs() {
            let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK)?;
            efds.push(Arc::new(efd));
        }
        let policy = RestartPolicy::new(
            Duration::from_millis(cfg.supervisor.restart_backoff_ms[0]),
            Duration::from_millis(cfg.supervisor.restart_backoff_ms[1]),
            cfg.supervisor.max_restarts,
            Duration::from_secs(cfg.supervisor.restart_window_s),
        );
        let mut children = HashMap::new();
        let mut add = |proc, role| {
            children.insert(proc, Child { role, generation: 0, pid: None, writer: None, policy: policy.clone() });
        };
        add(ProcId::FRONTEND, Role::Frontend);
        for i in 0..topology.gpus {
            add(topology.gpu(i), Role::Gpu(i));
        }
        for i in 0..topology.preprocs {
            add(topology.preproc(i), Role::Preproc(i));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let notifier = Notifier::from_env();
        let procs = crate::models::Procs {
            frontend: ProcId::FRONTEND,
            gpus: (0..topology.gpus).map(|i| topology.gpu(i)).collect(),
            preprocs: (0..topology.preprocs).map(|i| topology.preproc(i)).collect(),
        };
        let largest_slot = classes.iter().map(|c| c.size).max().unwrap_or(0);
        let models = crate::models::Manager::new(
            crate::models::Disk(cfg.models.repository.clone()),
            cfg.models.control_mode,
            repository,
            cfg.models.max_models as usize,
            largest_slot,
            procs,
        );
        Ok(Supervisor {
            cfg,
            models,
            run_dir,
            region,
            efds,
            children,
            topology,
            placement,
            tx,
            rx,
            notifier,
            unhealthy: None,
        })
    }

    /// Start-up order: inference workers (models loaded), preproc pool, frontend.
    fn start_order(&self) -> Vec<ProcId> {
        let t = self.topology;
        let mut order: Vec<ProcId> = (0..t.gpus).map(|i| t.gpu(i)).collect();
        order.extend((0..t.preprocs).map(|i| t.preproc(i)));
        order.push(ProcId::FRONTEND);
        order
    }

    async fn spawn(&mut self, proc: ProcId) -> anyhow::Result<()> {
        let role = self.children[&proc].role;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        shm::fd::set_inheritable(&theirs, true)?;
        let exe = std::env::current_exe().context("cannot find the highserve executable")?;
        let cuda_device = match role {
            Role::Gpu(i) => self.placement.device(i),
            _ => None,
        };
        let gpu = match (cuda_device, &self.placement) {
            (Some(d), crate::placement::Placement::Gpu { library_path, .. }) => Some((d, library_path.as_os_str())),
            _ => None,
        };
        let start = Start { control_fd: theirs.as_raw_fd(), supervisor_pid: std::process::id(), gpu };
        let mut cmd = tokio::process::Command::new(exe);
        // `highserve child preproc 1`: what the process is, for `ps`, `top -c`
        // and `systemd-cgls`.
        cmd.arg("child")
            .arg(role.kind())
            .args(role.index().map(|i| i.to_string()))
            .env_clear()
            .envs(crate::control::child_env(|k| std::env::var_os(k), &start))
            .stdin(std::process::Stdio::null())
            // Own process group: a terminal's Ctrl-C reaches only the supervisor,
            // which then drains in order instead of every process dying at once.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot start the {} process", role.name()))?;
        drop(theirs);
        let pid = child.id();
        self.region.set_proc_state(proc, ProcState::Starting);
        if let Some(e) = self.region.proc(proc) {
            e.pid.store(pid.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
            // The previous incarnation's heartbeat must not count against this one.
            e.heartbeat_ns.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let entry = self.children.get_mut(&proc).expect("child slot exists; this is a bug");
        entry.generation += 1;
        entry.pid = pid;
        let generation = entry.generation;
        ours.set_nonblocking(true)?;
        let (read, mut write) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let spec = ChildSpec {
            config: self.cfg.clone(),
            repository: self.models.table().clone(),
            shm_fd: self.region.fd().context("memfd region has an fd")?.as_raw_fd(),
            efds: self.efds.iter().map(|e| e.as_fd().as_raw_fd()).collect(),
            run_dir: self.run_dir.clone(),
            cuda_device,
            gpu_decode: matches!(role, Role::Preproc(_)) && self.placement.is_gpu(),
        };
        let mut line = serde_json::to_vec(&ToChild::Spec(Box::new(spec)))?;
        line.push(b'\n');
        write.write_all(&line).await.context("cannot send the child its spec")?;
        entry.writer = Some(write);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::Exited { proc, generation, status });
        });
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let event = match serde_json::from_str(&l) {
                    Ok(FromChild::Ready { addr, grpc }) => Event::Ready { proc, generation, addr, grpc },
                    Ok(FromChild::Upstream { message }) => Event::Upstream { proc, generation, message },
                    Err(e) => {
                        tracing::warn!("a message from {proc:?} that does not parse ({e}); ignored");
                        continue;
                    }
                };
                let _ = tx.send(event);
            }
        });
        Ok(())
    }

    async fn tell(&mut self, proc: ProcId, msg: &ToChild) {
        if let Some(w) = self.children.get_mut(&proc).and_then(|c| c.writer.as_mut()) {
            let mut line = serde_json::to_vec(msg).expect("control messages serialize; this is a bug");
            line.push(b'\n');
            let _ = w.write_all(&line).await;
        }
    }

    fn current(&self, proc: ProcId, generation: u64) -> bool {
        self.children.get(&proc).is_some_and(|c| c.generation == generation)
    }

    /// Starts every child in order, waiting for each to report ready.
    /// Returns the frontend's HTTP address, and its gRPC one if it serves gRPC.
    async fn start_all(&mut self) -> anyhow::Result<(String, Option<String>)> {
        let timeout = Duration::from_millis(self.cfg.supervisor.ready_timeout_ms);
        let (mut addr, mut grpc_addr) = (String::new(), None);
        for proc in self.start_order() {
            self.spawn(proc).await?;
            let name = self.children[&proc].role.name();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let ev = tokio::time::timeout_at(deadline, self.rx.recv())
                    .await
                    .map_err(|_| anyhow::anyhow!("{name} did not report ready within {timeout:?}"))?;
                match ev {
                    Some(Event::Ready { proc: p, generation, addr: a, grpc })
                        if p == proc && self.current(p, generation) =>
                    {
                        self.region.set_proc_state(proc, ProcState::Ready);
                        if let Some(a) = a {
                            addr = a;
                        }
                        grpc_addr = grpc_addr.or(grpc);
                        tracing::info!("{name} ready");
                        break;
                    }
                    Some(Event::Exited { proc: p, status, .. }) => {
                        bail!("{} exited during start-up ({})", self.children[&p].role.name(), describe(&status));
                    }
                    _ => {}
                }
            }
        }
        Ok((addr, grpc_addr))
    }

    /// Runs the daemon until a signal or a fatal failure; returns the exit code.
    pub async fn run(mut self) -> anyhow::Result<i32> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let started = tokio::select! {
            r = self.start_all() => r,
            _ = term.recv() => Err(anyhow::anyhow!("SIGTERM during start-up")),
            _ = int.recv() => Err(anyhow::anyhow!("interrupted during start-up")),
        };
        let (addr, grpc) = match started {
            Ok(a) => a,
            Err(e) => {
                self.stop_all(Duration::ZERO).await;
                return Err(e);
            }
        };
        let serving = self.models.table().names().len();
        tracing::info!("highserve ready on http://{addr} ({serving} models)");
        if let Some(dir) = &self.run_dir {
            if let Some(g) = &grpc {
                // Beside `ready`, for clients of a daemon on a chosen port.
                std::fs::write(dir.join("grpc"), format!("{g}\n"))?;
            }
            let tmp = dir.join("ready.tmp");
            std::fs::write(&tmp, format!("http://{addr}\n"))?;
            std::fs::rename(&tmp, dir.join("ready"))?;
        }
        if let Some(n) = &self.notifier {
            n.send(&format!("READY=1\nSTATUS=serving {serving} models on http://{addr}"));
        }
        // Health checks run every second (or every half watchdog period, if
        // systemd asked for a shorter one); pings go out only when healthy.
        let watchdog = self.notifier.as_ref().and_then(Notifier::watchdog);
        let period = watchdog.map_or(Duration::from_secs(1), |w| (w / 2).min(Duration::from_secs(1)));
        let mut checks = tokio::time::interval(period);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let polling = self.cfg.models.control_mode == crate::models::Mode::Poll;
        let mut poll = tokio::time::interval(Duration::from_secs(self.cfg.models.repository_poll_secs.max(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Idle slots return their pages to the kernel: checked every tenth
        // of the idle time (at most once a minute). Not on a GPU: the pool
        // is pinned there, and a hole would leave the GPU the old pages.
        let idle = Duration::from_secs(if self.placement.is_gpu() { 0 } else { self.cfg.shm.release_idle_secs });
        let mut release = tokio::time::interval((idle / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)));
        release.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let code = loop {
            tokio::select! {
                _ = term.recv() => break 0,
                _ = int.recv() => break 0,
                _ = checks.tick() => self.check_health(watchdog.is_some()),
                _ = release.tick(), if !idle.is_zero() => {
                    let bytes = SlotPool::new(self.region.clone()).release_idle(idle);
                    if bytes > 0 {
                        tracing::debug!("returned {} KiB of idle slots' pages to the kernel", bytes >> 10);
                    }
                }
                _ = poll.tick(), if polling => self.model_control(crate::models::Input::Poll).await,
                ev = self.rx.recv() => match ev {
                    Some(ev) => if let Some(code) = self.handle(ev).await { break code },
                    None => break 1,
                },
            }
        };
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1\nSTATUS=draining");
        }
        let drain =
            if code == 0 { Duration::from_millis(self.cfg.supervisor.drain_timeout_ms) } else { Duration::ZERO };
        self.stop_all(drain).await;
        Ok(code)
    }

    /// Handles an event while serving; `Some(code)` ends the daemon.
    async fn handle(&mut self, ev: Event) -> Option<i32> {
        match ev {
            Event::Ready { proc, generation, .. } if self.current(proc, generation) => {
                self.region.set_proc_state(proc, ProcState::Ready);
                tracing::info!("{} ready again", self.children[&proc].role.name());
                // It started with the current table, whatever it was told before.
                self.model_control(crate::models::Input::Restarted { proc }).await;
                None
            }
            Event::RestartDue { proc } => match self.spawn(proc).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!("cannot restart {}: {e:#}", self.children[&proc].role.name());
                    Some(1)
                }
            },
            Event::Upstream { proc, generation, message } if self.current(proc, generation) => {
                self.upstream(proc, message).await;
                None
            }
            Event::Exited { proc, generation, status } if self.current(proc, generation) => {
                self.on_exit(proc, status).await
            }
            _ => None,
        }
    }

    async fn on_exit(&mut self, proc: ProcId, status: std::io::Result<ExitStatus>) -> Option<i32> {
        let name = self.children[&proc].role.name();
        self.region.set_proc_state(proc, ProcState::Down);
        if let Some(c) = self.children.get_mut(&proc) {
            c.pid = None;
            c.writer = None;
        }
        if proc == ProcId::FRONTEND {
            tracing::error!("the frontend exited ({}); stopping the daemon", describe(&status));
            return Some(1);
        }
        let lost = self.reclaim(proc);
        tracing::error!(
            "{name} exited ({}); {} request(s) in its slots and lanes, sent again with every other it held",
            describe(&status),
            lost.len()
        );
        let message = format!("the {name} worker crashed while handling this request");
        self.tell(ProcId::FRONTEND, &ToChild::Lost { proc: proc.0, ids: lost, message }).await;
        let decision = self.children.get_mut(&proc).map(|c| c.policy.on_crash(Instant::now()));
        match decision {
            Some(Decision::Restart(delay)) => {
                tracing::info!("restarting {name} in {delay:?}");
                if let Some(e) = self.region.proc(proc) {
                    e.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Event::RestartDue { proc });
                });
                None
            }
            Some(Decision::GiveUp { crashes, window }) => {
                let message =
                    format!("the {name} worker crashed {crashes} times within {window:?} and is not restarted");
                tracing::error!("{message}; giving up");
                let kind = self.children[&proc].role.kind().to_string();
                self.tell(ProcId::FRONTEND, &ToChild::Unavailable { kind, message }).await;
                Some(1)
            }
            None => Some(1),
        }
    }

    /// Frees what a dead process held: its slots and the descriptors queued to
    /// it (they point at those slots). Returns the requests that were lost.
    fn reclaim(&self, dead: ProcId) -> Vec<u64> {
        let pool = SlotPool::new(self.region.clone());
        let mut lost = pool.reclaim(dead);
        if let Ok(w) = Wiring::new(self.region.clone(), dead, self.efds.clone()) {
            let mut inbox = w.inbox();
            while let Some((_, d)) = inbox.try_recv() {
                lost.push(d.request_id);
            }
        }
        lost.sort_unstable();
        lost.dedup();
        lost
    }

    /// Drains the frontend (up to `drain`), then stops the workers in reverse
    /// start order; anything that does not exit in time is killed.
    async fn stop_all(&mut self, drain: Duration) {
        let mut order = self.start_order();
        order.reverse();
        for proc in order {
            let Some(pid) = self.children[&proc].pid else { continue };
            self.region.set_proc_state(proc, ProcState::Stopping);
            let grace = if proc == ProcId::FRONTEND {
                self.tell(proc, &ToChild::Drain { deadline_ms: drain.as_millis() as u64 }).await;
                drain + Duration::from_secs(2)
            } else {
                self.tell(proc, &ToChild::Stop).await;
                Duration::from_secs(5)
            };
            let generation = self.children[&proc].generation;
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(Event::Exited { proc: p, generation: g, .. })) if p == proc && g == generation => break,
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        tracing::warn!(
                            "{} did not stop within {grace:?}; killing it",
                            self.children[&proc].role.name()
                        );
                        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        }
                        break;
                    }
                }
            }
            if let Some(c) = self.children.get_mut(&proc) {
                c.pid = None;
                c.writer = None;
            }
        }
    }
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}
