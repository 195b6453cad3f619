//! The scatter: a batch's outputs split along the batch dimension, and each
//! request's rows written from the backend's memory straight into its slot
//! (its own when large enough, else a new one) and sent; where no slot is
//! free, the rows wait in [`Parked`].

use shm::Peers;
use shm::tensor::{self, TensorSpec};

use super::outputs::send_outputs;
use super::parked::Parked;
use crate::backend::TensorView;
use crate::request::Batch;

/// Splits each output along the batch dimension (`batched`: the model has
/// one) and sends every request of `batch` its rows, taking them out of it.
/// Outputs that do not split leave every request in `batch`, for the
/// caller to fail.
pub fn scatter(peers: &Peers, parked: &mut Parked, batch: &mut Batch, outputs: &[TensorView<'_>], batched: bool) {
    let rows: u32 = batch.iter().map(|p| p.rows).sum();
    let split_ok = outputs
        .iter()
        .all(|o| !batched || (o.shape.first() == Some(&(rows as i64)) && o.data.len() % rows.max(1) as usize == 0));
    if !split_ok {
        return;
    }
    let mut row = 0usize;
    for p in batch.drain(..) {
        let _span = p.item.span.enter();
        let r = p.rows as usize;
        let specs: Vec<TensorSpec> = outputs
            .iter()
            .map(|o| {
                let mut dims = o.shape.to_vec();
                if batched {
                    dims[0] = r as i64;
                }
                let byte_len = if batched { o.data.len() / rows as usize * r } else { o.data.len() };
                TensorSpec { dtype: o.dtype, dims, byte_len }
            })
            .collect();
        let data: Vec<&[u8]> = outputs
            .iter()
            .map(|o| {
                let per = if batched { o.data.len() / rows as usize } else { 0 };
                if batched { &o.data[row * per..(row + r) * per] } else { o.data }
            })
            .collect();
        row += r;
        let desc = p.item.desc;
        // Its own slot when it was given one large enough (never a loan: the
        // frontend keeps that unwritten until the answer).
        let own = p.item.slot.owned();
        let result = tensor::plan(0, &specs).and_then(|(need, _)| {
            if let Some(slot) = own.filter(|s| s.capacity() >= need) {
                return send_outputs(peers, &desc, &specs, &data, slot);
            }
            match peers.pool().alloc(need, peers.me(), desc.request_id) {
                Ok(out) => send_outputs(peers, &desc, &specs, &data, out),
                Err(e) if e.may_free() && parked.has_room(need) => {
                    parked.park(desc, need, specs, &data);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        });
        if let Err(e) = result {
            peers.fail(&desc, None, e.status(), &format!("cannot return the outputs: {e}"));
        }
    }
}
