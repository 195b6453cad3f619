//! The one path of an inference request, whatever protocol brought it:
//! admit → reserve → read → submit → answer. The request's span and its
//! metrics are opened here, once, and its outcome is logged here, once.

use std::time::Duration;

use http::StatusCode;
use tracing::Instrument;

use super::answer::Answer;
use super::input::{Buffered, ImageLayout, Reading, Work};
use super::job::{Job, RequestParams};
use super::payload::Payload;
use crate::admission::Permit;
use crate::body::{BodySource, Timed};
use crate::error::ApiError;
use crate::metrics::Track;
use crate::state::State;
use crate::table::Serving;
use crate::v2::{self, InferRequest};

/// One inference request, as an adapter hands it over.
pub struct Request<'r> {
    /// The table entry that serves it (the adapter routed it), counted in
    /// flight while the adapter holds it.
    pub serving: &'r Serving<'r>,
    /// What the adapter read of the client's priority and timeout, or why
    /// it could not: refused after admission, as a malformed body is.
    pub params: Result<RequestParams, ApiError>,
    /// What the adapter made of the request's description (its headers), or
    /// why it could not: refused after admission, as a malformed body is.
    pub payload: Result<Payload, ApiError>,
}

/// A request the adapter already holds whole and parsed (gRPC: a message
/// arrives complete, its tensors in buffers of their own or in a client's
/// shared-memory region).
pub struct Parsed<'r> {
    pub serving: &'r Serving<'r>,
    /// The request, or why it could not be made: refused after admission,
    /// as a malformed body is.
    pub request: Result<InferRequest, ApiError>,
    /// Bytes of the message, counted against `server.max_inflight_bytes`.
    pub len: usize,
    /// The client's deadline for the call, if its protocol carries one.
    pub budget: Option<Duration>,
}

/// Runs `request`, reading its body from `body`; `respond` turns the answer
/// into the adapter's response, inside the request's span (its failures
/// count as the request's).
pub async fn infer<S: BodySource, R>(
    state: &State,
    request: Request<'_>,
    body: &mut S,
    respond: impl FnOnce(Answer) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let (serving, track) = (request.serving, state.metrics.track(request.serving.index()));
    observed(serving, track, async |track| answer(state, request, body, track, respond).await).await
}

/// Runs a request the adapter parsed itself, as [`infer`] runs one it reads.
pub async fn infer_parsed<R>(
    state: &State,
    parsed: Parsed<'_>,
    respond: impl FnOnce(Answer) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let (serving, track) = (parsed.serving, state.metrics.track(parsed.serving.index()));
    observed(serving, track, async |track| answer_parsed(state, parsed, track, respond).await).await
}

/// Runs `run` in the request's span, counts its outcome on `track` (its
/// metrics) and logs it.
async fn observed<R>(
    serving: &Serving<'_>,
    track: Track<'_>,
    run: impl AsyncFnOnce(&Track<'_>) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let model = serving.model();
    // `request_id` is filled in once the request has one; the workers log
    // under the same id.
    let span = tracing::debug_span!("infer", model = %model.name, request_id = tracing::field::Empty);
    let result = async {
        let result = run(&track).await;
        match &result {
            Ok(_) => tracing::debug!(status = StatusCode::OK.as_u16(), "answered"),
            Err(e) if e.status().is_server_error() => tracing::warn!("failed: {}", e.message()),
            Err(e) => tracing::debug!(status = e.status().as_u16(), "refused: {}", e.message()),
        }
        result
    }
    .instrument(span)
    .await;
    track.finish(match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    });
    result
}

/// The request's way from admission to its response; the admission permit
/// is held until the response is made.
async fn answer<S: BodySource, R>(
    state: &State,
    request: Request<'_>,
    body: &mut S,
    track: &Track<'_>,
    respond: impl FnOnce(Answer) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let Request { serving, params, payload } = request;
    let (index, model) = (serving.index(), serving.model());
    // Refusals before the level is settled count at the one the adapter
    // saw (a v2 body may name another).
    let seen = params.as_ref().ok().and_then(|p| p.priority).unwrap_or(0);
    let mut permit = state.admission.admit(index, &model.name, model.config.level(seen))?;
    let (payload, params) = (payload?, params?);
    let limit = state.limits.max_body_bytes;
    if let Some(n) = payload.len {
        if n > limit {
            return Err(ApiError::body_too_large(limit));
        }
        // Refused before a byte of the body is read.
        state.admission.reserve(&mut permit, n)?;
    }
    let mut body = Timed::new(body, state.limits.body_timeout);
    let work = match Reading::of(state, model, &payload, &mut permit)? {
        Reading::Slot(image) => {
            let job = Job::new(state, model, index, params, &mut permit)?;
            let mut work = Work::image(state, job, model, image)?;
            // Straight into the slot: the only copy of the bytes on this side.
            body.read_exact(work.body()).await?;
            track.received();
            work
        }
        Reading::Buffer(what) => {
            let raw = body.read_all(limit, payload.len).await?;
            track.received();
            if payload.len.is_none() {
                state.admission.reserve(&mut permit, raw.len())?;
            }
            let (raw, request) = match what {
                Buffered::Image => (raw, None),
                Buffered::V2(form) => {
                    let raw = payload.encoding.decode(raw, limit)?;
                    let request = form.parse(&raw, model)?;
                    (raw, request)
                }
            };
            match request {
                Some(request) => tensors(state, serving, params, request, &raw, &mut permit)?,
                // An image sent without its length, or without a Content-Type.
                None => {
                    let image = ImageLayout::image(model, raw.len())?;
                    let job = Job::new(state, model, index, params, &mut permit)?;
                    let mut work = Work::image(state, job, model, image)?;
                    work.body().copy_from_slice(&raw);
                    work
                }
            }
        }
    };
    work.submit(state, model).await.and_then(respond)
}

async fn answer_parsed<R>(
    state: &State,
    parsed: Parsed<'_>,
    track: &Track<'_>,
    respond: impl FnOnce(Answer) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let Parsed { serving, request, len, budget } = parsed;
    let (index, model) = (serving.index(), serving.model());
    let seen = request.as_ref().ok().and_then(|r| r.priority).unwrap_or(0);
    let mut permit = state.admission.admit(index, &model.name, model.config.level(seen))?;
    state.admission.reserve(&mut permit, len)?;
    track.received();
    let params = RequestParams { budget, ..RequestParams::default() };
    let work = tensors(state, serving, params, request?, &[], &mut permit)?;
    work.submit(state, model).await.and_then(respond)
}

/// A parsed v2 request into its slot, once checked against the model; its
/// tensors are in `body` or held by the request itself.
fn tensors(
    state: &State,
    serving: &Serving<'_>,
    params: RequestParams,
    request: InferRequest,
    body: &[u8],
    permit: &mut Permit,
) -> Result<Work, ApiError> {
    let (index, model) = (serving.index(), serving.model());
    v2::validate(&request, model)?;
    // The request's own parameters over the adapter's.
    let params = RequestParams {
        priority: request.priority.or(params.priority),
        timeout_us: request.timeout_us.or(params.timeout_us),
        budget: params.budget,
    };
    let job = Job::new(state, model, index, params, permit)?;
    Work::tensors(state, job, model, request, body)
}
