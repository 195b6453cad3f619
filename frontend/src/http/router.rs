//! The routing table, as a function of the request alone: tests call it
//! without a socket, with any body type. Errors of every route but the
//! inference core's become responses here, with their one log line.

use http::{Method, Request, StatusCode};
use model_repo::Model;

use super::infer;
use super::repository;
use super::response::{self, Resp};
use super::shared_memory;
use crate::body::BodySource;
use crate::control::Order;
use crate::error::ApiError;
use crate::state::State;
use crate::{client_shm, metrics, stats, table, v2};

/// Answers `req`: the whole API on the main port.
pub async fn route<B: BodySource>(state: &State, req: Request<B>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match table(state, &method, &path, req).await {
        Ok(resp) => resp,
        // Inference requests log their own outcome, in their span.
        Err(e) => {
            e.log(format_args!("{method} {path}"));
            response::error(&e)
        }
    }
}

/// Answers `req` on the metrics-only listener (`server.metrics_port`, like
/// Triton's 8002).
pub fn metrics_only<B>(state: &State, req: &Request<B>) -> Resp {
    let path = req.uri().path().trim_end_matches('/');
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/metrics") => metrics_text(state),
        (_, "/metrics") => {
            response::error(&ApiError::MethodNotAllowed(format!("{} is not allowed on /metrics", req.method())))
        }
        _ => response::error(&ApiError::NotFound(format!("no route {path}; this port serves /metrics only"))),
    }
}

fn metrics_text(state: &State) -> Resp {
    response::metrics(metrics::render(&state.scrape()))
}

fn readiness(state: &State) -> Resp {
    response::empty(if state.dispatch.all_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
}

async fn table<B: BodySource>(state: &State, method: &Method, path: &str, req: Request<B>) -> Result<Resp, ApiError> {
    let path = path.trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let wrong = || ApiError::MethodNotAllowed(format!("{method} is not allowed on {path}"));
    match segs.as_slice() {
        ["v2", "models", "stats"] => match get {
            true => {
                let table = state.table();
                Ok(response::json(stats::render(state, &table, &table::stats_entries(&table, None, None)?)?))
            }
            false => Err(wrong()),
        },
        ["metrics"] if get => Ok(metrics_text(state)),
        ["v2"] if get => Ok(response::json(v2::server_metadata())),
        ["v2", "health", "live"] if get => Ok(response::empty(StatusCode::OK)),
        ["v2", "health", "ready"] if get => Ok(readiness(state)),
        ["v2", "repository", "index"] if post => repository::index(state, req).await,
        ["v2", "repository", "models", name, "load"] if post => repository::order(state, name, Order::Load, req).await,
        ["v2", "repository", "models", name, "unload"] if post => {
            repository::order(state, name, Order::Unload, req).await
        }
        ["v2", "systemsharedmemory", "status"] if get => shared_memory::status(state, None),
        ["v2", "systemsharedmemory", "region", name, "status"] if get => shared_memory::status(state, Some(name)),
        ["v2", "systemsharedmemory", "region", name, "register"] if post => {
            shared_memory::register(state, name, req).await
        }
        ["v2", "systemsharedmemory", "region", name, "unregister"] if post => {
            Ok(shared_memory::unregister(state, Some(name)))
        }
        ["v2", "systemsharedmemory", "unregister"] if post => Ok(shared_memory::unregister(state, None)),
        ["v2", "cudasharedmemory", "status"] | ["v2", "cudasharedmemory", "region", _, "status"] if get => {
            Ok(response::json(b"[]".to_vec()))
        }
        ["v2", "cudasharedmemory", "region", name, "register"] if post => Err(client_shm::cuda_unsupported(name)),
        ["v2", "cudasharedmemory", "unregister"] | ["v2", "cudasharedmemory", "region", _, "unregister"] if post => {
            Ok(response::json(b"{}".to_vec()))
        }
        ["v2", "models", name, rest @ ..] => {
            let (version, rest) = match rest {
                ["versions", v, rest @ ..] => (Some(*v), rest),
                rest => (None, rest),
            };
            if post && rest == ["infer"] {
                // Counted in flight on its entry until its response is made.
                let serving = state.tables.serve(name, version)?;
                return Ok(infer::infer(state, &serving, req).await);
            }
            let table = state.table();
            let (_, model): (u16, &Model) = table::find(&table, name, version)?;
            match rest {
                [] if get => Ok(response::json(v2::model_metadata(model, &table.versions_of(name)))),
                ["ready"] if get => Ok(readiness(state)),
                ["stats"] if get => {
                    let entries = table::stats_entries(&table, Some(name), version)?;
                    Ok(response::json(stats::render(state, &table, &entries)?))
                }
                ["config"] if get => Ok(response::json(v2::model_config(model))),
                [] | ["ready"] | ["stats"] | ["config"] | ["infer"] => Err(wrong()),
                _ => Err(ApiError::NotFound(format!("no route {path}; see docs/api.md"))),
            }
        }
        ["v2"]
        | ["v2", "health", "live" | "ready"]
        | ["v2", "repository", "index"]
        | ["v2", "repository", "models", _, "load" | "unload"]
        | ["v2", "systemsharedmemory" | "cudasharedmemory", "status" | "unregister"]
        | ["v2", "systemsharedmemory" | "cudasharedmemory", "region", _, "status" | "register" | "unregister"]
        | ["metrics"] => Err(wrong()),
        _ => Err(ApiError::NotFound(format!("no route {path}; the API is under /v2 (see docs/api.md)"))),
    }
}
