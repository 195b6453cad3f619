//! The repository extension over HTTP (`/v2/repository/...`, as
//! tritonclient's `get_model_repository_index`, `load_model` and
//! `unload_model` call it): the header and body become an order for
//! [`crate::control`], whose answer becomes the response.

use http::{Request, header};

use super::response::{self, Resp};
use crate::body::BodySource;
use crate::control::{self, Order};
use crate::error::ApiError;
use crate::state::State;

/// `POST /v2/repository/index`, its body optional (`{"ready": true}`).
pub async fn index<B: BodySource>(state: &State, req: Request<B>) -> Result<Resp, ApiError> {
    let body = super::small_body(state, &mut req.into_body()).await?;
    Ok(response::json(control::index::render(&state.table(), state.dispatch.all_ready(), &body)?))
}

/// `POST /v2/repository/models/<name>/load` or `.../unload`: answered once
/// the supervisor has done it (200 with `{}`) or refused it.
pub async fn order<B: BodySource>(state: &State, name: &str, order: Order, req: Request<B>) -> Result<Resp, ApiError> {
    let (parts, mut body) = req.into_parts();
    // A value that is not text is a token that does not match.
    let authorization = parts.headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
    state.orders.authorize(authorization)?;
    let body = super::small_body(state, &mut body).await?;
    state.orders.order(order.op(name, &body)?).await?;
    Ok(response::json(b"{}".to_vec()))
}
