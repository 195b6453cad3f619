//! The HTTP server: accept loop, routing, graceful drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use model_repo::{Model, Repository};
use tracing::Instrument;

use crate::dispatch::Dispatch;
use crate::error::ApiError;
use crate::{infer, metrics, stats, v2};

/// Shared by every connection.
pub struct State {
    pub dispatch: Arc<Dispatch>,
    pub repository: Arc<Repository>,
    pub admission: crate::admission::Admission,
    pub metrics: crate::metrics::Metrics,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub body_timeout: Duration,
}

type Resp = Response<Full<Bytes>>;

fn ok_json(body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = route(&state, req).await.unwrap_or_else(|e| {
        if path.ends_with("/infer") && e.status() != StatusCode::NOT_FOUND {
            // Logged in `route`, inside the request's span.
        } else if e.status().is_server_error() {
            tracing::warn!("{method} {path}: {}", e.message());
        } else {
            tracing::debug!("{method} {path}: {}", e.message());
        }
        e.into_response()
    });
    Ok(resp)
}

fn metrics_response(state: &State) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(metrics::render(state))));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// The metrics-only listener (`server.metrics_port`, like Triton's 8002).
pub async fn handle_metrics(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().trim_end_matches('/');
    let resp = match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/metrics") => metrics_response(&state),
        (_, "/metrics") => {
            ApiError::MethodNotAllowed(format!("{} is not allowed on /metrics", req.method())).into_response()
        }
        _ => ApiError::NotFound(format!("no route {path}; this port serves /metrics only")).into_response(),
    };
    Ok(resp)
}

/// Finds a model (and checks the version) or says which exist.
fn find_model<'a>(repo: &'a Repository, name: &str, version: Option<&str>) -> Result<(u16, &'a Model), ApiError> {
    let (i, m) = repo.get(name).ok_or_else(|| {
        ApiError::NotFound(format!("unknown model `{name}`; available models: {}", repo.names().join(", ")))
    })?;
    if let Some(v) = version
        && v.parse::<u64>().ok() != Some(m.latest())
    {
        return Err(ApiError::NotFound(format!(
            "model `{name}` has no loaded version `{v}`; the loaded version is {}",
            m.latest()
        )));
    }
    Ok((i, m))
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let wrong = || ApiError::MethodNotAllowed(format!("{method} is not allowed on {path}"));
    let repo = &state.repository;
    match segs.as_slice() {
        ["v2", "models", "stats"] => match get {
            true => Ok(ok_json(stats::render(state, None)?)),
            false => Err(wrong()),
        },
        ["metrics"] if get => Ok(metrics_response(state)),
        ["v2"] if get => Ok(ok_json(v2::server_metadata())),
        ["v2", "health", "live"] if get => Ok(empty(StatusCode::OK)),
        ["v2", "health", "ready"] if get => {
            Ok(empty(if state.dispatch.all_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }))
        }
        ["v2", "repository", "index"] if method == Method::POST => Ok(ok_json(stats::repository_index(state))),
        ["v2", "models", name, rest @ ..] => {
            let (version, rest) = match rest {
                ["versions", v, rest @ ..] => (Some(*v), rest),
                rest => (None, rest),
            };
            let (index, model) = find_model(repo, name, version)?;
            match rest {
                [] if get => Ok(ok_json(v2::model_metadata(model))),
                ["ready"] if get => {
                    Ok(empty(if state.dispatch.all_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }))
                }
                ["stats"] if get => Ok(ok_json(stats::render(state, Some(index))?)),
                ["config"] if get => Ok(ok_json(v2::model_config(model))),
                ["infer"] if method == Method::POST => {
                    // `request_id` is filled in once the request has one; the
                    // workers log under the same id.
                    let span = tracing::debug_span!("infer", model = %model.name, request_id = tracing::field::Empty);
                    let track = state.metrics.track(index);
                    let result = async {
                        let result = infer::infer(state, model, index, req, &track).await;
                        // Logged once, here, with the request id.
                        match &result {
                            Ok(r) => tracing::debug!(status = r.status().as_u16(), "answered"),
                            Err(e) if e.status().is_server_error() => tracing::warn!("failed: {}", e.message()),
                            Err(e) => tracing::debug!(status = e.status().as_u16(), "refused: {}", e.message()),
                        }
                        result
                    }
                    .instrument(span)
                    .await;
                    track.finish(match &result {
                        Ok(r) => r.status(),
                        Err(e) => e.status(),
                    });
                    result
                }
                [] | ["ready"] | ["stats"] | ["config"] | ["infer"] => Err(wrong()),
                _ => Err(ApiError::NotFound(format!("no route {path}; see docs/api.md"))),
            }
        }
        ["v2"] | ["v2", "health", "live" | "ready"] | ["v2", "repository", "index"] | ["metrics"] => Err(wrong()),
        _ => Err(ApiError::NotFound(format!("no route {path}; the API is under /v2 (see docs/api.md)"))),
    }
}

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
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
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
        let service = hyper::service::service_fn(move |req| handle_metrics(state.clone(), req));
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
