//! A backend instance: one OS thread that owns one backend for its life and
//! runs the batches the scheduler sends it. Gathering the batch into one
//! buffer is the only copy of the input bytes on this side (the preproc
//! worker wrote them straight into shared memory); outputs are written from
//! the backend's memory straight into each request's slot.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use model_repo::ModelConfig;
use shm::mailbox::SelfWaker;
use shm::stats::{ModelStats, Stage, model_stats, stage_histogram};
use shm::tensor::{self, TensorSpec};
use shm::{Descriptor, Kind, ProcId, Status};

use crate::backend::{Backend, TensorView};
use crate::batcher::Pending;
use crate::worker::{Item, Replies};

pub struct Instance {
    pub name: String,
    pub model_index: usize,
    pub instance: usize,
    pub gpu: u16,
    pub config: ModelConfig,
    pub replies: Arc<Replies>,
    pub done: mpsc::Sender<(usize, usize)>,
    pub waker: SelfWaker,
}

/// A reusable, 8-byte aligned byte buffer (backends view it as f32/f64/i64).
#[derive(Default)]
struct AlignedBuf(Vec<u64>);

impl AlignedBuf {
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.0.len() < words {
            self.0.resize(words, 0);
        }
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..len]
    }
}

/// Fault injection for the test suite: when this variable names a file that
/// exists, the next batch's thread removes it and panics (once), so tests can
/// check that a panic takes down only its process and the supervisor recovers.
pub const PANIC_FILE_ENV: &str = "HIGHSERVE_FAULT_PANIC_FILE";

pub fn run(inst: Instance, mut backend: Box<dyn Backend>, batches: mpsc::Receiver<Vec<Pending<Item>>>) {
    let fault = std::env::var_os(PANIC_FILE_ENV).map(std::path::PathBuf::from);
    let region = inst.replies.pool.region().clone();
    let stats = model_stats(&region, inst.gpu, inst.model_index as u16);
    let mut bufs: Vec<AlignedBuf> = (0..inst.config.inputs.len()).map(|_| AlignedBuf::default()).collect();
    for batch in batches {
        if let Some(f) = &fault
            && std::fs::remove_file(f).is_ok()
        {
            panic!("fault injected by {PANIC_FILE_ENV}");
        }
        run_batch(&inst, backend.as_mut(), &mut bufs, batch, stats);
        // Tell the scheduler this instance is free, and wake it if it sleeps.
        if inst.done.send((inst.model_index, inst.instance)).is_err() {
            break;
        }
        inst.waker.wake();
    }
}

fn run_batch(
    inst: &Instance,
    backend: &mut dyn Backend,
    bufs: &mut [AlignedBuf],
    batch: Vec<Pending<Item>>,
    stats: Option<&ModelStats>,
) {
    let start = Instant::now();
    let now_ns = shm::now_ns();
    let rows: u32 = batch.iter().map(|p| p.rows).sum();
    let queued: Vec<u64> = batch.iter().map(|p| now_ns.saturating_sub(p.arrived_ns)).collect();
    let queued_ns: u64 = queued.iter().sum();
    let batched = inst.config.max_batch_size > 0;
    // Gather: item inputs are contiguous tensors in their slots; stack them.
    let mut shapes: Vec<Vec<i64>> = Vec::new();
    let mut lens = Vec::new();
    for (i, buf) in bufs.iter_mut().enumerate() {
        let first = &batch[0].item.inputs[i];
        let total: usize = batch.iter().map(|p| p.item.inputs[i].len).sum();
        let dst = buf.bytes_mut(total);
        let mut at = 0;
        for p in &batch {
            let m = &p.item.inputs[i];
            dst[at..at + m.len].copy_from_slice(&p.item.slot.as_slice()[m.offset..m.offset + m.len]);
            at += m.len;
        }
        let mut shape = first.dims.clone();
        if batched {
            shape[0] = rows as i64;
        }
        shapes.push(shape);
        lens.push(total);
    }
    let gathered = Instant::now();
    let views: Vec<TensorView<'_>> = bufs
        .iter()
        .zip(&shapes)
        .zip(&lens)
        .enumerate()
        .map(|(i, ((b, s), &l))| TensorView { dtype: inst.config.inputs[i].datatype, shape: s, data: b.bytes(l) })
        .collect();
    let items_total = batch.len();
    let mut items: Vec<Option<Pending<Item>>> = batch.into_iter().map(Some).collect();
    let mut scattered = None;
    let mut sink = |outputs: &[TensorView<'_>]| {
        let t = Instant::now();
        scatter(inst, &mut items, outputs, rows, batched);
        scattered = Some(t);
    };
    let result = backend.run(&views, &mut sink);
    let end = Instant::now();
    // Whatever was not answered (a backend error, or outputs that did not
    // split) fails with the reason.
    let message = match &result {
        Ok(()) => "the model produced outputs that do not split into the batch's requests".to_string(),
        Err(e) => format!("inference failed: {e}"),
    };
    let mut failed = 0u64;
    for p in items.into_iter().flatten() {
        failed += 1;
        inst.replies.fail(&p.item.desc, Some(p.item.slot), Status::Backend, &message);
    }
    if let Err(e) = &result {
        tracing::error!("{}: batch of {rows} failed: {e}", inst.name);
    }
    if let Some(s) = stats {
        let infer_end = scattered.unwrap_or(end);
        let ns = |d: Duration| d.as_nanos() as u64;
        let (input_ns, infer_ns, output_ns) = (ns(gathered - start), ns(infer_end - gathered), ns(end - infer_end));
        s.add(&s.execution_count, 1);
        s.add(&s.inference_count, rows as u64);
        s.record_batch(rows as usize, input_ns, infer_ns, output_ns);
        s.add(&s.compute_input_ns, input_ns);
        s.add(&s.compute_infer_ns, infer_ns);
        s.add(&s.compute_output_ns, output_ns);
        s.add(&s.queue_ns, queued_ns);
        s.add(&s.failure_count, failed);
        let succeeded = (items_total as u64).saturating_sub(failed);
        s.add(&s.success_count, succeeded);
        // Triton's success time: arrival at this worker to the batch's end.
        s.add(&s.success_ns, succeeded * ns(end - start) + queued_ns * succeeded / items_total.max(1) as u64);
        let wall_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        s.last_inference_ms.store(wall_ms as u64, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(h) = stage_histogram(inst.replies.pool.region(), inst.model_index as u16, Stage::Queue) {
        for &q in &queued {
            h.observe_ns(q);
        }
    }
    if let Some(h) = stage_histogram(inst.replies.pool.region(), inst.model_index as u16, Stage::Compute) {
        h.observe(end - start);
    }
}

/// Splits each output along the batch dimension and sends every request its
/// rows, written into its own slot when that is large enough.
fn scatter(inst: &Instance, items: &mut [Option<Pending<Item>>], outputs: &[TensorView<'_>], rows: u32, batched: bool) {
    let split_ok = outputs
        .iter()
        .all(|o| !batched || (o.shape.first() == Some(&(rows as i64)) && o.data.len() % rows.max(1) as usize == 0));
    if !split_ok {
        return; // the caller fails every request that is still here
    }
    let mut row = 0usize;
    for slot in items.iter_mut() {
        let Some(p) = slot.take() else { continue };
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
        let result = (|| {
            let need = tensor::plan(0, &specs)?.0;
            let mut out = if p.item.slot.capacity() >= need {
                p.item.slot
            } else {
                inst.replies.pool.alloc(need, inst.replies.me, p.item.desc.request_id)?
            };
            let (table_len, ranges) = tensor::write_table(out.as_mut_slice(), 0, &specs)?;
            for (o, range) in outputs.iter().zip(&ranges) {
                let per = if batched { o.data.len() / rows as usize } else { 0 };
                let src = if batched { &o.data[row * per..(row + r) * per] } else { o.data };
                out.as_mut_slice()[range.clone()].copy_from_slice(src);
            }
            let d = Descriptor {
                kind: Kind::Outputs as u8,
                offset: 0,
                len: table_len as u32,
                sent_ns: shm::now_ns(),
                ..p.item.desc
            };
            inst.replies.send(ProcId(p.item.desc.reply_to), d, out)
        })();
        if let Err(e) = result {
            inst.replies.fail(&p.item.desc, None, Status::Unavailable, &format!("cannot return the outputs: {e}"));
        }
        row += r;
    }
}
