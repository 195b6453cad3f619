//! A request as the scheduler queues it and an instance computes it: the
//! descriptor, the slot holding its inputs, and the span that names it in
//! every log line, on whichever thread the line is written.

use std::ops::Range;

use shm::tensor::TensorMeta;
use shm::{Descriptor, Held, Peers, Status};

use crate::batcher::Pending;

/// One request waiting for, or in, a batch.
pub struct Item {
    pub desc: Descriptor,
    /// Its inputs: a slot it was given, or the frontend's loan (v2 tensors
    /// sent straight from the frontend), which is only read.
    pub slot: Held,
    /// The tensors in the slot (none when `encoded`).
    pub inputs: Vec<TensorMeta>,
    /// The slot holds the images as the client sent them (a BYTES payload of
    /// JPEGs or raw frames) for GPU preprocessing (`decode = "gpu"`).
    pub encoded: bool,
    /// Once staged on the GPU: the rows of the device tensor holding its images.
    pub staged: Option<Range<usize>>,
    /// The `request` span opened when it arrived (`request_id`); entered on
    /// the instance's thread for what is done for this request alone. A
    /// disabled span (debug off) is free to carry and enter.
    pub span: tracing::Span,
}

/// A queued request, as the batcher holds it.
pub type Request = Pending<Item>;

/// Requests that run as one batch, in batch order.
pub type Batch = Vec<Request>;

impl Item {
    /// Fails this request towards the frontend, in its span, reusing its
    /// slot (if it was given) for the message.
    pub fn fail(self, peers: &Peers, status: Status, message: &str) {
        let _span = self.span.enter();
        peers.fail(&self.desc, self.slot.owned(), status, message);
    }
}
