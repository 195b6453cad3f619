//! The HTTP adapter (KServe v2 over HTTP, image posts, the repository
//! extension, `/metrics`): the
//! routing table, headers → request core → response, and the listeners.

mod infer;
mod repository;
mod response;
pub mod router;
pub mod serve;
mod shared_memory;

use crate::body::{BodySource, Timed};
use crate::error::ApiError;
use crate::state::State;

/// The whole of a small body (a repository order, a region to register),
/// within the body limits.
async fn small_body<B: BodySource>(state: &State, body: &mut B) -> Result<Vec<u8>, ApiError> {
    Timed::new(body, state.limits.body_timeout).read_all(state.limits.max_body_bytes, None).await
}
