//! Outputs that found no free shared-memory slot large enough (every slot
//! of the classes that fit is in use, for a moment): their bytes wait here,
//! and are sent oldest first as soon as a slot frees (the instance retries
//! every millisecond while any wait, and runs other batches meanwhile), until
//! the request's deadline. As the preproc workers' pipelines do with their
//! steps, instead of answering 503 to a load the slots can carry a moment
//! later.

use std::collections::VecDeque;
use std::time::Duration;

use shm::tensor::TensorSpec;
use shm::{Descriptor, Peers, Status};

use super::outputs::send_outputs;

/// The outputs waiting for a slot, oldest first.
#[derive(Default)]
pub struct Parked {
    queue: VecDeque<ParkedOutputs>,
    bytes: usize,
}

struct ParkedOutputs {
    desc: Descriptor,
    need: usize,
    specs: Vec<TensorSpec>,
    data: Vec<Vec<u8>>,
    until_ns: u64,
}

/// The most output bytes an instance keeps waiting for slots; past that,
/// requests fail with 503 at once.
const PARKED_BYTES: usize = 256 << 20;
/// How long outputs of a request without a deadline wait for a slot.
const PARKED_WITHOUT_DEADLINE: Duration = Duration::from_secs(10);

impl Parked {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn has_room(&self, need: usize) -> bool {
        self.bytes + need <= PARKED_BYTES
    }

    pub fn park(&mut self, desc: Descriptor, need: usize, specs: Vec<TensorSpec>, data: &[&[u8]]) {
        tracing::debug!(request_id = desc.request_id, need, "no free shared-memory slot for the outputs; waiting");
        let until_ns = match desc.deadline_ns {
            0 => shm::now_ns() + PARKED_WITHOUT_DEADLINE.as_nanos() as u64,
            d => d,
        };
        self.bytes += need;
        self.queue.push_back(ParkedOutputs {
            desc,
            need,
            specs,
            data: data.iter().map(|d| d.to_vec()).collect(),
            until_ns,
        });
    }

    /// Fails everything still waiting.
    pub fn give_up(&mut self, peers: &Peers, why: &str) {
        for p in self.queue.drain(..) {
            peers.fail(&p.desc, None, Status::Unavailable, &format!("cannot return the outputs: {why}"));
        }
        self.bytes = 0;
    }

    /// Sends what now finds a slot, oldest first, and fails what waited past
    /// its deadline.
    pub fn retry(&mut self, peers: &Peers) {
        while let Some(p) = self.queue.front() {
            let result = if shm::now_ns() >= p.until_ns {
                Err(format!(
                    "no shared-memory slot of {} bytes for the outputs freed before the request's deadline \
                     (raise [shm] slot counts or sizes)",
                    p.need
                ))
            } else {
                match peers.pool().alloc(p.need, peers.me(), p.desc.request_id) {
                    Ok(out) => send_outputs(peers, &p.desc, &p.specs, &p.data, out).map_err(|e| e.to_string()),
                    Err(e) if e.may_free() => return, // still none: the oldest goes first
                    Err(e) => Err(e.to_string()),
                }
            };
            let p = self.queue.pop_front().expect("looked at above");
            self.bytes -= p.need;
            if let Err(e) = result {
                peers.fail(&p.desc, None, Status::Unavailable, &format!("cannot return the outputs: {e}"));
            }
        }
    }
}
