//! The listeners: the main accept loop with its graceful drain, and the
//! metrics-only port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};

use super::router;
use crate::state::State;

/// Accepts connections until `stop` resolves, then lets in-flight requests
/// finish for up to the drain deadline the stop carries.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    stop: impl std::future::Future<Output = Duration>,
    header_timeout: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Bounds a client that dribbles its headers (slowloris).
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true).max_buf_size(64 << 10);
    tokio::pin!(stop);
    let deadline = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(router::route(&state, req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            deadline = &mut stop => break deadline,
        }
    };
    drop(listener);
    tracing::info!("draining: no new connections; waiting up to {deadline:?} for requests in flight");
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain deadline passed with requests still in flight");
    }
}

/// Serves `/metrics` on its own port for the daemon's life (scrapes are
/// short; this listener is not drained).
pub async fn serve_metrics(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let resp = router::metrics_only(&state, &req);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
