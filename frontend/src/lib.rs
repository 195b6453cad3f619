//! The frontend: the HTTP server (KServe v2 / Open Inference Protocol and
//! image POSTs). It owns admission, request ids, routing results back to the
//! waiting connection and the one error → HTTP status table. It never decodes
//! images or runs models: that work is in the preproc and inference workers.
//!
//! Inside, an inference request goes adapter → core → dispatch: `http`
//! turns HTTP into a protocol-neutral request, `core` runs it (admission,
//! body, slot, submit, answer: the one path, which a gRPC adapter will share),
//! `dispatch` hands slots to the workers and answers back to the waiting
//! request. `state` is what they all share; `table` is the model table as
//! the supervisor changes it, `control` the operators' orders to change it
//! (the repository extension); `metrics` and `stats` report.
#![forbid(unsafe_code)]

mod admission;
mod body;
mod client_shm;
mod control;
mod core;
mod dispatch;
pub mod error;
pub mod grpc;
mod http;
mod metrics;
mod state;
mod stats;
mod table;
#[cfg(test)]
mod tests;
pub mod v2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use model_repo::Repository;
use shm::ProcId;
use shm::mailbox::Wiring;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::dispatch::{Dispatch, Receiver, Target};
use crate::state::{Control, Limits, State};

/// What the frontend needs to run.
pub struct Config {
    pub wiring: Wiring,
    /// The model table at start (later ones come as [`Command::Models`]).
    pub repository: Arc<Repository>,
    /// Reports and operators' orders to the supervisor.
    pub notify: model_repo::control::Notify,
    /// When set, the repository API's load and unload need
    /// `Authorization: Bearer <token>`.
    pub admin_token: Option<model_repo::control::Secret>,
    /// `host:port` to listen on (port 0 picks a free one).
    pub addr: String,
    pub max_body_bytes: u64,
    pub max_inflight: usize,
    pub max_inflight_bytes: u64,
    /// See `server.priority_headroom`.
    pub priority_headroom: f64,
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
    /// `host:port` of the gRPC service (KServe v2 / Triton's
    /// `GRPCInferenceService`); `None`: off.
    pub grpc_addr: Option<String>,
    /// Triton's system shared-memory extension (`--allow-client-shm`).
    pub allow_client_shm: bool,
}

/// Orders from the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, finish in-flight requests within the deadline, return.
    Drain { deadline: Duration },
    /// Worker `proc` died, holding `ids` in its slots and lanes: send the
    /// requests that were there again (once; a second loss fails with
    /// `message`).
    Lost { proc: ProcId, ids: Vec<u64>, message: String },
    /// The workers of a kind (`inference` or `preproc`) cannot come back:
    /// fail what waits for them, and every new request for them, with
    /// `message`.
    Unavailable { kind: String, message: String },
    /// The model table changed: route by this one from now on.
    Models(Arc<Repository>),
    /// The supervisor's answer to the operator's order `id`.
    ControlDone { id: u64, result: Result<(), model_repo::control::ControlError> },
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves until a `Drain` command; `on_ready` gets the bound addresses
/// (HTTP, and gRPC when it serves it).
pub fn run(
    cfg: Config,
    mut commands: UnboundedReceiver<Command>,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<(), FrontendError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.addr)
            .await
            .map_err(|source| FrontendError::Bind { addr: cfg.addr.clone(), source })?;
        let dispatch = Arc::new(Dispatch::new(&cfg.wiring));
        // Stopped (and joined) when dropped, after the drain below.
        let receiver = Receiver::spawn(dispatch.clone(), &cfg.wiring, cfg.spin)?;
        let limits = Limits {
            max_body_bytes: cfg.max_body_bytes.min(usize::MAX as u64) as usize,
            max_inflight: cfg.max_inflight,
            max_inflight_bytes: cfg.max_inflight_bytes.min(usize::MAX as u64) as usize,
            priority_headroom: cfg.priority_headroom,
            request_timeout: cfg.request_timeout,
            body_timeout: cfg.body_timeout,
        };
        let control = Control {
            notify: cfg.notify.clone(),
            admin_token: cfg.admin_token.clone(),
            allow_client_shm: cfg.allow_client_shm,
        };
        let state = Arc::new(State::new(dispatch.clone(), cfg.repository.clone(), limits, control));
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        if let Some(maddr) = &cfg.metrics_addr {
            let metrics_listener = tokio::net::TcpListener::bind(maddr)
                .await
                .map_err(|source| FrontendError::Bind { addr: maddr.clone(), source })?;
            tracing::info!("metrics on http://{}/metrics", metrics_listener.local_addr()?);
            tokio::spawn(http::serve::serve_metrics(metrics_listener, state.clone()));
        }
        // Bound before the daemon reports ready, as HTTP's: a port in use
        // is a start-up error.
        let (drain, draining) = tokio::sync::watch::channel(None);
        let mut grpc_addr = None;
        let grpc = match &cfg.grpc_addr {
            Some(gaddr) => {
                let grpc_listener = tokio::net::TcpListener::bind(gaddr)
                    .await
                    .map_err(|source| FrontendError::Bind { addr: gaddr.clone(), source })?;
                let bound = grpc_listener.local_addr()?;
                tracing::info!("gRPC on {bound}");
                grpc_addr = Some(bound);
                Some(tokio::spawn(grpc::serve(grpc_listener, state.clone(), draining)))
            }
            None => None,
        };
        on_ready(addr, grpc_addr);
        let commanded = state.clone();
        let stop = async move {
            let state = commanded;
            while let Some(cmd) = commands.recv().await {
                match cmd {
                    Command::Drain { deadline } => {
                        // Orders still waiting would hold the drain to its
                        // deadline; the supervisor stops taking them.
                        state.orders.fail_all("the daemon is stopping");
                        return deadline;
                    }
                    Command::Lost { proc, ids, message } => dispatch.lost(proc, &ids, &message),
                    Command::Unavailable { kind, message } => {
                        let target = if kind == "inference" { Target::Gpu } else { Target::Preproc };
                        dispatch.unavailable(target, &message);
                    }
                    Command::Models(table) => state.apply(table),
                    Command::ControlDone { id, result } => state.orders.done(id, result),
                }
            }
            Duration::ZERO
        };
        // gRPC drains alongside HTTP, to the same deadline.
        let stop = async move {
            let deadline = stop.await;
            let _ = drain.send(Some(deadline));
            deadline
        };
        http::serve::serve(listener, state, stop, cfg.header_timeout).await;
        if let Some(grpc) = grpc {
            let _ = grpc.await;
        }
        drop(receiver);
        Ok(())
    })
}
