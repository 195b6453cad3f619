//! ModelInfer and ModelStreamInfer: a message becomes a parsed request for
//! the request core ([`core::infer_parsed`]), the same path as HTTP's
//! requests after their body is read. The RPC's deadline (`grpc-timeout`)
//! caps the request's `timeout`; a client that cancels, or whose deadline
//! passes, drops the request's future, which cancels it as an HTTP
//! disconnect does (its slot is skipped by the workers if still queued).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use super::convert;
use super::proto::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use crate::core::{self, Parsed};
use crate::error::ApiError;
use crate::state::State;

/// What ModelStreamInfer answers with.
pub type Answers = ReceiverStream<Result<ModelStreamInferResponse, Status>>;

/// Answers finished but not yet taken by the client, per stream: beyond
/// this, finished requests wait for the client to read (their slots are
/// already free; only the messages wait).
const STREAM_BUFFER: usize = 32;

/// Runs one request; `budget`: the time left before the RPC's deadline.
pub async fn infer(
    state: &State,
    mut msg: ModelInferRequest,
    budget: Option<Duration>,
) -> Result<ModelInferResponse, ApiError> {
    // Kept aside (not copied) to be echoed in the response.
    let id = std::mem::take(&mut msg.id);
    let version = (!msg.model_version.is_empty()).then_some(msg.model_version.as_str());
    // Counted in flight on its entry until its response is made.
    let serving = state.tables.serve(&msg.model_name, version).inspect_err(|e| e.log("gRPC ModelInfer"))?;
    let model = serving.model();
    let len = convert::held_bytes(&msg);
    let request = convert::infer_request(msg).map_err(ApiError::from);
    let parsed = Parsed { serving: &serving, request, len, budget };
    core::infer_parsed(state, parsed, |answer| convert::infer_response(model, answer, id)).await
}

/// The stream's requests run side by side; each answer goes out as soon
/// as it is ready, whatever the order they came in, carrying its request's
/// id. A failed request is answered with `error_message` (prefixed with
/// `[request id: <id>] ` as Triton does, since tritonclient hands the
/// callback the message only) and its model and id in `infer_response`;
/// the stream goes on.
pub fn stream(state: Arc<State>, inbound: Streaming<ModelInferRequest>, budget: Option<Duration>) -> Answers {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let deadline = budget.map(|b| Instant::now() + b);
    tokio::spawn(stream_loop(state, inbound, tx, deadline));
    ReceiverStream::new(rx)
}

async fn stream_loop(
    state: Arc<State>,
    mut inbound: Streaming<ModelInferRequest>,
    tx: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
    deadline: Option<Instant>,
) {
    // Dropped on return, which aborts (cancels) every request still running.
    let mut running = JoinSet::new();
    let mut reading = true;
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        if !reading && running.is_empty() {
            return;
        }
        tokio::select! {
            msg = inbound.message(), if reading => match msg {
                Ok(Some(msg)) => {
                    let state = state.clone();
                    let budget = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    running.spawn(async move { answer(&state, msg, budget).await });
                }
                // The client sent its last request: answer what runs, then end.
                Ok(None) => reading = false,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            },
            Some(done) = running.join_next() => {
                let answer = done.unwrap_or_else(|e| ModelStreamInferResponse {
                    error_message: format!("the request failed: {e}; this is a bug"),
                    infer_response: None,
                });
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
            // The client cancelled the RPC.
            () = tx.closed() => return,
            () = &mut expired => {
                let _ = tx.send(Err(Status::deadline_exceeded("the stream's deadline (grpc-timeout) passed"))).await;
                return;
            }
        }
    }
}

/// One request of a stream, its failure included.
async fn answer(state: &State, msg: ModelInferRequest, budget: Option<Duration>) -> ModelStreamInferResponse {
    let who = ModelInferResponse {
        model_name: msg.model_name.clone(),
        model_version: msg.model_version.clone(),
        id: msg.id.clone(),
        ..Default::default()
    };
    match infer(state, msg, budget).await {
        Ok(r) => ModelStreamInferResponse { error_message: String::new(), infer_response: Some(r) },
        Err(e) => {
            let error_message = match who.id.as_str() {
                "" => e.message().to_string(),
                id => format!("[request id: {id}] {}", e.message()),
            };
            ModelStreamInferResponse { error_message, infer_response: Some(who) }
        }
    }
}

/// The RPC's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits, then a
/// unit among H M S m u n); `None` when absent or malformed (tonic ignores
/// a malformed one too).
pub fn budget(metadata: &MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
