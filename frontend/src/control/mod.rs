//! The repository extension's orders (Triton's model control): loading and
//! unloading models, which the frontend only forwards. An order goes up to
//! the supervisor, which decides it and changes the table; the request
//! waits for its answer ([`Orders::order`]). Also the admin token that
//! guards them, and what their bodies may say. Protocol-neutral: the HTTP
//! adapter hands over header values and body bytes. The index is in
//! [`index`].

pub mod index;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use model_repo::control::{ControlError, ControlOp, Notify, Secret, Upstream};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::ApiError;

type Answer = Result<(), ControlError>;

/// The orders sent up and not answered yet.
pub struct Orders {
    notify: Notify,
    admin_token: Option<Secret>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

/// An order's place among those waiting; dropped (its client left, or it
/// was answered), it leaves, and a late answer finds nobody.
struct Waiter<'o> {
    orders: &'o Orders,
    id: u64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.orders.waiting().remove(&self.id);
    }
}

impl Orders {
    pub fn new(notify: Notify, admin_token: Option<Secret>) -> Orders {
        Orders { notify, admin_token, next_id: AtomicU64::new(1), waiting: Mutex::new(HashMap::new()) }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `authorization` (the header's value, if any) carries the
    /// admin token, when one is set. The message never shows a token.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(token) = &self.admin_token else { return Ok(()) };
        const HOW: &str = "send `Authorization: Bearer <token>` with the daemon's admin token (--admin-token or \
                           HIGHSERVE_ADMIN_TOKEN)";
        let given = authorization.map(str::trim).and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        match given {
            None => Err(ApiError::Unauthorized(format!("loading and unloading models needs the admin token: {HOW}"))),
            Some(t) if token.matches(t) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized(format!("the admin token given is not the daemon's: {HOW}"))),
        }
    }

    /// Sends `op` to the supervisor and waits for its answer.
    pub async fn order(&self, op: ControlOp) -> Result<(), ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id, tx);
        let _waiter = Waiter { orders: self, id };
        tracing::info!("model control: {op:?} (order {id})");
        (self.notify)(Upstream::Control { id, op });
        match rx.await {
            Ok(answer) => answer.map_err(ApiError::from),
            Err(_) => Err(ApiError::Unavailable("the order was dropped without an answer; retry".into())),
        }
    }

    /// The supervisor's answer to order `id`.
    pub fn done(&self, id: u64, answer: Answer) {
        match self.waiting().remove(&id) {
            Some(tx) => {
                let _ = tx.send(answer);
            }
            None => tracing::debug!("model control: order {id} was answered after its client left"),
        }
    }

    /// Answers every order still waiting with `message` (the daemon stops).
    pub fn fail_all(&self, message: &str) {
        for (_, tx) in self.waiting().drain() {
            let _ = tx.send(Err(ControlError::Unavailable(message.into())));
        }
    }
}

/// Model names become URL path segments and directory names: letters,
/// digits, `_`, `-` and `.` (not first), at most 128. The same rule as
/// `model_repo`'s, which keeps its own private.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    match model_repo::valid_name(name) {
        true => Ok(()),
        false => Err(ApiError::BadRequest(format!(
            "`{name}` is not a model name: names use letters, digits, `_`, `-` and `.` (not first), at most 128"
        ))),
    }
}

/// The `parameters` of an order's body (optional; `{}` when empty).
fn parameters(body: &[u8], what: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    let bad = |e: String| ApiError::BadRequest(format!("malformed {what} request JSON: {e}"));
    let Value::Object(mut body) = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))? else {
        return Err(bad("expected an object".into()));
    };
    match body.remove("parameters") {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(p)) => Ok(p),
        Some(_) => Err(bad("`parameters` must be an object".into())),
    }
}

/// Which way a repository order goes, over either protocol.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    Load,
    Unload,
}

impl Order {
    /// The operation for model `name`, from the order's body as HTTP
    /// carries it.
    pub fn op(self, name: &str, body: &[u8]) -> Result<ControlOp, ApiError> {
        match self {
            Order::Load => load(name, body),
            Order::Unload => unload(name, body),
        }
    }
}

/// `POST /v2/repository/models/<name>/load`, with an optional body
/// `{"parameters": {"config": "<the model's config as JSON>"}}`.
pub fn load(name: &str, body: &[u8]) -> Result<ControlOp, ApiError> {
    check_name(name)?;
    let mut config = None;
    for (key, value) in parameters(body, "load")? {
        match (key.as_str(), value) {
            ("config", Value::String(c)) => config = Some(c),
            ("config", _) => {
                return Err(ApiError::BadRequest(
                    "parameters.config must be a string: the model's config as JSON".into(),
                ));
            }
            (k, _) if k.starts_with("file:") => {
                return Err(ApiError::BadRequest(format!(
                    "parameter `{k}`: model files cannot be sent with a load; put them in the repository \
                     (accepted parameter: config)"
                )));
            }
            (k, _) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown load parameter `{k}`; accepted: config (the model's config as JSON)"
                )));
            }
        }
    }
    Ok(ControlOp::Load { name: name.into(), config })
}

/// `POST /v2/repository/models/<name>/unload`, with an optional body
/// `{"parameters": {"unload_dependents": true}}`.
pub fn unload(name: &str, body: &[u8]) -> Result<ControlOp, ApiError> {
    check_name(name)?;
    let mut dependents = false;
    for (key, value) in parameters(body, "unload")? {
        match (key.as_str(), value) {
            ("unload_dependents", Value::Bool(b)) => dependents = b,
            ("unload_dependents", _) => {
                return Err(ApiError::BadRequest("parameters.unload_dependents must be true or false".into()));
            }
            (k, _) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown unload parameter `{k}`; accepted: unload_dependents"
                )));
            }
        }
    }
    Ok(ControlOp::Unload { name: name.into(), dependents })
}
