//! A request on its way to the workers: its id, deadline and priority, the
//! slot and descriptor that carry it, and the wait for its answer.

use std::time::{Duration, Instant};

use model_repo::Model;
use shm::{Descriptor, Kind, ProcId, Slot};

use crate::admission::Permit;
use crate::dispatch::{Completion, Target};
use crate::error::ApiError;
use crate::state::State;

/// What the client asked of the request's handling, however its protocol
/// carries it (v2 `parameters`, query parameters, gRPC parameters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// Triton's convention: 0 is the model's default, 1 the highest.
    pub priority: Option<u64>,
    /// The request's deadline, in microseconds from now.
    pub timeout_us: Option<u64>,
    /// The client's own deadline for the call (gRPC's `grpc-timeout`): the
    /// request's deadline never passes it.
    pub budget: Option<Duration>,
}

/// A request on its way: where its answer will come from and until when.
pub struct Job {
    pub id: u64,
    model: u16,
    deadline_ns: u64,
    timeout: Duration,
    priority: u8,
    /// Requests of its model at its level or above in flight when it was
    /// admitted, and when that was: what admission's forecast learns from.
    ahead: u32,
    admitted: Instant,
}

impl Job {
    /// Gives the request its id (recorded in the current span, the
    /// request's), its level and its deadline, and admits it at that level
    /// ([`crate::admission::Admission::enter`]).
    pub fn new(
        state: &State,
        config: &Model,
        model: u16,
        params: RequestParams,
        permit: &mut Permit,
    ) -> Result<Job, ApiError> {
        // The request's `timeout`, else the model's default, else the
        // server's; never past the client's own deadline.
        let timeout = params
            .timeout_us
            .or(config.config.default_timeout_microseconds)
            .map(Duration::from_micros)
            .unwrap_or(state.limits.request_timeout)
            .min(params.budget.unwrap_or(Duration::MAX));
        let id = state.dispatch.new_id();
        tracing::Span::current().record("request_id", id);
        // Triton's convention (1 the highest, 0 the model's default),
        // resolved once here: every stage after reads the level as is.
        let priority = config.config.level(params.priority.unwrap_or(0));
        let ahead = state.admission.enter(permit, priority, timeout)?;
        Ok(Job {
            id,
            model,
            deadline_ns: shm::now_ns().saturating_add(timeout.as_nanos() as u64),
            timeout,
            priority,
            ahead,
            admitted: Instant::now(),
        })
    }

    /// A slot for `len` bytes of request data: 413 if no slot class could
    /// ever hold it, 503 if all that could are busy.
    pub fn alloc(&self, state: &State, len: usize) -> Result<Slot, ApiError> {
        let pool = state.dispatch.pool();
        let largest = pool.largest();
        if len > largest {
            return Err(ApiError::TooLarge(format!(
                "the request needs {len} bytes of shared memory; the largest slot holds {largest} (config: shm.slots)"
            )));
        }
        // Admission under the pool's ceiling: a request is let in only while
        // there is room for its slot and one more of its size (the tensor or
        // answer a worker makes for it), so that it is refused here, with
        // 429, rather than by a worker halfway.
        if let Some(room) = pool.room()
            && room < 2 * len as u64
        {
            let m = pool.memory();
            return Err(ApiError::TooManyRequests(format!(
                "the shared-memory pool is at its ceiling: requests in flight hold {} of its {} bytes and this one \
                 needs {} more; retry, or raise shm.max_bytes",
                m.used,
                m.ceiling,
                2 * len
            )));
        }
        Ok(pool.alloc(len, ProcId::FRONTEND, self.id)?)
    }

    pub fn descriptor(&self, kind: Kind, len: usize, rows: u32, flags: u8) -> Descriptor {
        Descriptor {
            request_id: self.id,
            deadline_ns: self.deadline_ns,
            offset: 0,
            len: len as u32,
            model: self.model,
            kind: kind as u8,
            rows,
            reply_to: ProcId::FRONTEND.0,
            priority: self.priority,
            tenant: self.model,
            flags,
            ..Default::default()
        }
    }

    /// Hands `slot` with `d` to a worker of `target` and waits for the
    /// answer until the deadline.
    pub async fn run(
        &self,
        state: &State,
        target: Target,
        d: Descriptor,
        slot: Slot,
    ) -> Result<(Descriptor, Slot), ApiError> {
        let d = Descriptor { sent_ns: shm::now_ns(), ..d };
        let ticket = state.dispatch.submit(target, d, slot)?;
        // A little grace beyond the deadline: a worker that drops an expired
        // request answers with a timeout error, which is more precise.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), ticket.wait()).await {
            Ok(Completion::Done { desc, slot }) => {
                let took = self.admitted.elapsed();
                state.admission.learn(self.model, self.ahead, took);
                state.metrics.answered(self.model, self.priority, took);
                Ok((desc, slot))
            }
            Ok(Completion::Failed(e)) => Err(e),
            Err(_) => Err(ApiError::Timeout(format!(
                "the request did not complete within {:?} (parameter `timeout` in microseconds, or server.request_timeout_ms)",
                self.timeout
            ))),
        }
    }
}
