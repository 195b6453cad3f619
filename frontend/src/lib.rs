//! The frontend: the HTTP server (KServe v2 / Open Inference Protocol and
//! image POSTs). It owns admission, request ids, routing results back to the
//! waiting connection and the one error → HTTP status table. It never decodes
//! images or runs models: that work is in the preproc and inference workers.
#![forbid(unsafe_code)]

mod admission;
mod body;
mod dispatch;
pub mod error;
mod infer;
mod metrics;
mod server;
mod stats;
pub mod v2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use model_repo::Repository;
use shm::mailbox::Wiring;
use tokio::sync::mpsc::UnboundedReceiver;

/// What the frontend needs to run.
pub struct Config {
    pub wiring: Wiring,
    pub repository: Arc<Repository>,
    /// `host:port` to listen on (port 0 picks a free one).
    pub addr: String,
    pub max_body_bytes: u64,
    pub max_inflight: usize,
    pub max_inflight_bytes: u64,
    pub request_timeout: Duration,
    /// Bounds a client that sends its headers slowly.
    pub header_timeout: Duration,
    /// Bounds a client that sends its body slowly.
    pub body_timeout: Duration,
    pub threads: usize,
    /// How long the inbox thread spins before sleeping.
    pub spin: Duration,
    /// `host:port` of a second listener serving only `/metrics` (Triton's
    /// 8002); `/metrics` is on the main port in any case.
    pub metrics_addr: Option<String>,
}

/// Orders from the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, finish in-flight requests within the deadline, return.
    Drain { deadline: Duration },
    /// Fail these requests: they were lost with a crashed worker.
    Fail { ids: Vec<u64>, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves until a `Drain` command; `on_ready` gets the bound address.
pub fn run(
    cfg: Config,
    mut commands: UnboundedReceiver<Command>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), FrontendError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.addr)
            .await
            .map_err(|source| FrontendError::Bind { addr: cfg.addr.clone(), source })?;
        let dispatch = Arc::new(dispatch::Dispatch::new(&cfg.wiring));
        let inbox = cfg.wiring.inbox();
        let stop_receiving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let receiver = {
            let (d, stop) = (dispatch.clone(), stop_receiving.clone());
            std::thread::Builder::new()
                .name("inbox".into())
                .spawn(move || dispatch::receive_loop(d, inbox, cfg.spin, stop))?
        };
        let state = Arc::new(server::State {
            dispatch: dispatch.clone(),
            repository: cfg.repository.clone(),
            admission: admission::Admission::new(
                cfg.max_inflight,
                cfg.max_inflight_bytes.min(usize::MAX as u64) as usize,
                &cfg.repository,
            ),
            metrics: metrics::Metrics::new(cfg.repository.models.len()),
            max_body_bytes: cfg.max_body_bytes.min(usize::MAX as u64) as usize,
            request_timeout: cfg.request_timeout,
            body_timeout: cfg.body_timeout,
        });
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        if let Some(maddr) = &cfg.metrics_addr {
            let metrics_listener = tokio::net::TcpListener::bind(maddr)
                .await
                .map_err(|source| FrontendError::Bind { addr: maddr.clone(), source })?;
            tracing::info!("metrics on http://{}/metrics", metrics_listener.local_addr()?);
            tokio::spawn(server::serve_metrics(metrics_listener, state.clone()));
        }
        on_ready(addr);
        let stop = async move {
            while let Some(cmd) = commands.recv().await {
                match cmd {
                    Command::Drain { deadline } => return deadline,
                    Command::Fail { ids, message } => dispatch.fail(&ids, &message),
                }
            }
            Duration::ZERO
        };
        server::serve(listener, state, stop, cfg.header_timeout).await;
        stop_receiving.store(true, std::sync::atomic::Ordering::Release);
        cfg.wiring.self_waker().wake();
        let _ = receiver.join();
        Ok(())
    })
}
