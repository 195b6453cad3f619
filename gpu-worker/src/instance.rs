//! A backend instance: one OS thread that owns one backend for its life and
//! runs the batches the scheduler sends it. Gathering the batch into one
//! buffer is the only copy of the input bytes on this side (the preproc
//! worker wrote them straight into shared memory): on the CPU into a host
//! buffer; on a GPU, where the backend hands out device memory, by DMA from
//! the pinned slots straight into it, on the instance's staging stream, which
//! the backend's stream waits for on the GPU: the batch's one host wait is at
//! the end of the run. Outputs are written from the backend's
//! memory straight into each request's slot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use model_repo::ModelConfig;
use shm::mailbox::SelfWaker;
use shm::stats::{ModelStats, Stage, model_stats, stage_histogram};
use shm::tensor::{self, TensorSpec};
use shm::{Descriptor, Kind, ProcId, ShmError, Status};

use crate::backend::{Backend, DeviceInput, TensorView};
use crate::batcher::Pending;
use crate::cuda::decode::GpuDecode;
use crate::cuda::staging::Staging;
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

/// What an instance keeps from batch to batch.
struct Scratch {
    /// One gather buffer per model input, for batches on host inputs.
    bufs: Vec<AlignedBuf>,
    /// Outputs waiting for a free slot.
    parked: Parked,
    /// Batches whose inputs in device memory failed, and ran again from
    /// host memory.
    device_failures: u64,
}

/// Fault injection for the test suite: when this variable names a file that
/// exists, the next batch's thread removes it and panics (once), so tests can
/// check that a panic takes down only its process and the supervisor recovers.
pub const PANIC_FILE_ENV: &str = "HIGHSERVE_FAULT_PANIC_FILE";

/// An instance's GPU side: the stream its batches' inputs are staged on,
/// and the model's GPU preprocessing (`decode = "gpu"`) on that stream.
pub struct Gpu {
    pub staging: Staging,
    pub decode: Option<GpuDecode>,
}

/// Runs batches until the scheduler hangs up. `gpu`: the instance's GPU
/// side, on a GPU.
pub fn run(
    inst: Instance,
    mut backend: Box<dyn Backend>,
    mut gpu: Option<Gpu>,
    batches: mpsc::Receiver<Vec<Pending<Item>>>,
) {
    let fault = std::env::var_os(PANIC_FILE_ENV).map(std::path::PathBuf::from);
    let region = inst.replies.pool.region().clone();
    let stats = model_stats(&region, inst.gpu, inst.model_index as u16);
    let mut st = Scratch {
        bufs: (0..inst.config.inputs.len()).map(|_| AlignedBuf::default()).collect(),
        parked: Parked::default(),
        device_failures: 0,
    };
    loop {
        // While outputs wait for a slot, look again every millisecond.
        let batch = if st.parked.is_empty() {
            match batches.recv() {
                Ok(b) => b,
                Err(_) => break,
            }
        } else {
            match batches.recv_timeout(Duration::from_millis(1)) {
                Ok(b) => b,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    st.parked.retry(&inst);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        if let Some(f) = &fault
            && std::fs::remove_file(f).is_ok()
        {
            panic!("fault injected by {PANIC_FILE_ENV}");
        }
        let batch = match gpu.as_mut().and_then(|g| g.decode.as_mut()) {
            Some(d) if batch.iter().any(|p| p.item.encoded) => stage_images(&inst, d, batch),
            Some(_) => batch,
            // Images reach an instance only when it decodes on the GPU; a
            // bug otherwise, which must not take the batch's tensors with it.
            None => {
                let (images, tensors): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.item.encoded);
                for p in images {
                    let msg = "images reached an instance that does not decode them; this is a bug";
                    inst.replies.fail(&p.item.desc, Some(p.item.slot), Status::Internal, msg);
                }
                tensors
            }
        };
        if !batch.is_empty() {
            run_batch(&inst, backend.as_mut(), gpu.as_ref(), &mut st, batch, stats, true);
        }
        st.parked.retry(&inst);
        // Tell the scheduler this instance is free, and wake it if it sleeps.
        if inst.done.send((inst.model_index, inst.instance)).is_err() {
            break;
        }
        inst.waker.wake();
    }
    st.parked.give_up(&inst, "the inference worker is shutting down");
}

/// Enqueues the decoding and preprocessing of the batch's images on the GPU
/// (each request's rows, `Item::staged`); a request with an image that
/// cannot be decoded fails alone, and the rest of the batch goes on.
fn stage_images(inst: &Instance, decode: &mut GpuDecode, mut batch: Vec<Pending<Item>>) -> Vec<Pending<Item>> {
    let started = Instant::now();
    let mut images: Vec<&[u8]> = Vec::new();
    let mut owner = Vec::new();
    let mut bad: Vec<(usize, String)> = Vec::new();
    for (k, p) in batch.iter().enumerate() {
        if !p.item.encoded {
            continue;
        }
        let d = &p.item.desc;
        match p
            .item
            .slot
            .bytes(d.offset as usize, d.len as usize)
            .map_err(|e| e.to_string())
            .and_then(tensor::bytes_elements)
        {
            Ok(elements) => {
                owner.extend(std::iter::repeat_n(k, elements.len()));
                images.extend(elements);
            }
            Err(e) => bad.push((k, e)),
        }
    }
    let results = match decode.stage(&images) {
        Ok(r) => r,
        Err(e) => {
            // CUDA itself failed: every request with images fails.
            let message = format!("GPU preprocessing failed: {e}");
            tracing::error!("{}: {message}", inst.name);
            let (encoded, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.item.encoded);
            for p in encoded {
                inst.replies.fail(&p.item.desc, Some(p.item.slot), Status::Backend, &message);
            }
            return rest;
        }
    };
    let mut first = vec![usize::MAX; batch.len()];
    for (row, (&k, result)) in owner.iter().zip(&results).enumerate() {
        first[k] = first[k].min(row);
        if let Err(e) = result {
            bad.push((k, e.clone()));
        }
    }
    drop(images);
    for (k, p) in batch.iter_mut().enumerate() {
        if p.item.encoded && first[k] != usize::MAX {
            p.item.staged = Some(first[k]..first[k] + p.rows as usize);
        }
    }
    bad.sort_by_key(|(k, _)| *k);
    bad.dedup_by_key(|(k, _)| *k);
    let mut kept = Vec::with_capacity(batch.len());
    let mut bad = bad.into_iter().peekable();
    for (k, p) in batch.into_iter().enumerate() {
        match bad.next_if(|(b, _)| *b == k) {
            Some((_, e)) => inst.replies.fail(&p.item.desc, Some(p.item.slot), Status::InvalidInput, &e),
            None => kept.push(p),
        }
    }
    if let Some(h) = stage_histogram(inst.replies.pool.region(), inst.model_index as u16, Stage::Decode) {
        h.observe(started.elapsed());
    }
    kept
}

/// One request's input `i`: its dims (batch dimension first when the model
/// batches) and byte length. Images decoded on the GPU have no tensor table:
/// their shape is the preprocessing's.
fn input_shape<'a>(inst: &Instance, item: &'a Item, rows: u32, i: usize) -> (std::borrow::Cow<'a, [i64]>, usize) {
    if item.encoded
        && let Some(pre) = &inst.config.preprocess
    {
        let dims: Vec<i64> = std::iter::once(rows as i64).chain(pre.image_dims()).collect();
        let len = dims.iter().product::<i64>() as usize * inst.config.inputs[i].datatype.size().unwrap_or(4);
        return (dims.into(), len);
    }
    let m = &item.inputs[i];
    (m.dims.as_slice().into(), m.len)
}

/// Runs one batch: on a GPU, from inputs in device memory where the backend
/// takes them (`try_device`), else, or where that fails before any answer
/// is sent, from host memory.
fn run_batch(
    inst: &Instance,
    backend: &mut dyn Backend,
    gpu: Option<&Gpu>,
    st: &mut Scratch,
    batch: Vec<Pending<Item>>,
    stats: Option<&ModelStats>,
    try_device: bool,
) {
    let start = Instant::now();
    let now_ns = shm::now_ns();
    let rows: u32 = batch.iter().map(|p| p.rows).sum();
    let queued: Vec<u64> = batch.iter().map(|p| now_ns.saturating_sub(p.arrived_ns)).collect();
    let queued_ns: u64 = queued.iter().sum();
    let batched = inst.config.max_batch_size > 0;
    // Each input's dims and byte length, per request, and the batch's.
    let parts: Vec<Vec<_>> = (0..st.bufs.len())
        .map(|i| batch.iter().map(|p| input_shape(inst, &p.item, p.rows, i)).collect::<Vec<_>>())
        .collect();
    let shapes: Vec<Vec<i64>> = parts
        .iter()
        .map(|ps| {
            let mut shape = ps[0].0.to_vec();
            if batched {
                shape[0] = rows as i64;
            }
            shape
        })
        .collect();
    let lens: Vec<usize> = parts.iter().map(|ps| ps.iter().map(|(_, len)| len).sum()).collect();
    let fail_all = |batch: Vec<Pending<Item>>, message: String| {
        tracing::error!("{}: {message}", inst.name);
        for p in batch {
            inst.replies.fail(&p.item.desc, Some(p.item.slot), Status::Backend, &message);
        }
    };
    // On a GPU, device memory from the backend for the batch's inputs.
    let device = match gpu {
        Some(_) if try_device => {
            let specs: Vec<TensorView<'_>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| TensorView { dtype: inst.config.inputs[i].datatype, shape: s, data: &[] })
                .collect();
            backend.device_inputs(&specs).unwrap_or_else(|e| {
                device_failed(inst, st, &e);
                None
            })
        }
        _ => None,
    };
    // Gather: item inputs are contiguous tensors in their slots (or rows
    // made by GPU preprocessing); stack them.
    let mut copied: Result<(), String> = Ok(());
    for (i, ps) in parts.iter().enumerate() {
        let mut host = match &device {
            None => Some(st.bufs[i].bytes_mut(lens[i])),
            Some(_) => None,
        };
        let mut at = 0;
        for (p, (_, len)) in batch.iter().zip(ps) {
            let len = *len;
            let slot_bytes = || {
                let m = &p.item.inputs[i];
                &p.item.slot.as_slice()[m.offset..m.offset + len]
            };
            let r = match (gpu, &device, host.as_deref_mut(), &p.item.staged) {
                (Some(g), Some(dev), _, staged) => stage_rows(g, dev[i], at, len, staged.clone(), slot_bytes),
                (Some(Gpu { decode: Some(d), .. }), None, Some(dst), Some(rows)) => {
                    d.download(rows.clone(), &mut dst[at..at + len]).map_err(|e| e.to_string())
                }
                (_, _, Some(dst), None) => {
                    dst[at..at + len].copy_from_slice(slot_bytes());
                    Ok(())
                }
                _ => Err("a request's input has nowhere to go (this is a bug)".to_string()),
            };
            if let Err(e) = r {
                copied = Err(e);
            }
            at += len;
        }
    }
    // Copies to the device are waited for by the backend's stream, on the
    // GPU (`run_device`); rows copied back to the host for a backend that
    // takes host inputs, here. After a failure, too, before the slots (and
    // the device memory) the copies use are given back.
    if let Some(g) = gpu {
        let wait_here = copied.is_err() || (device.is_none() && batch.iter().any(|p| p.item.staged.is_some()));
        let waited = if wait_here { g.staging.finish().map_err(|e| e.to_string()) } else { Ok(()) };
        match copied.and(waited) {
            Ok(()) => {}
            Err(e) if device.is_some() => {
                device_failed(inst, st, &format!("copying the inputs to the GPU: {e}"));
                return run_batch(inst, backend, gpu, st, batch, stats, false);
            }
            Err(e) => return fail_all(batch, format!("copying the batch's inputs from the GPU failed: {e}")),
        }
    }
    let gathered = Instant::now();
    let views: Vec<TensorView<'_>> = st
        .bufs
        .iter()
        .zip(&shapes)
        .zip(&lens)
        .enumerate()
        .map(|(i, ((b, s), &l))| TensorView {
            dtype: inst.config.inputs[i].datatype,
            shape: s,
            data: if device.is_some() { &[] } else { b.bytes(l) },
        })
        .collect();
    let items_total = batch.len();
    let mut items: Vec<Option<Pending<Item>>> = batch.into_iter().map(Some).collect();
    let mut scattered = None;
    let mut sink = |outputs: &[TensorView<'_>]| {
        let t = Instant::now();
        scatter(inst, &mut items, outputs, rows, batched, &mut st.parked);
        scattered = Some(t);
    };
    let result = match (&device, gpu) {
        (Some(_), Some(g)) => backend.run_device(g.staging.stream(), &mut sink),
        _ => backend.run(&views, &mut sink),
    };
    let end = Instant::now();
    // The device path failed before answering anyone: the same batch again,
    // from host memory (what the CPU tests check), so that serving goes on
    // and the log says why.
    if device.is_some()
        && scattered.is_none()
        && let Err(e) = &result
    {
        device_failed(inst, st, e);
        let batch = items.into_iter().flatten().collect();
        return run_batch(inst, backend, gpu, st, batch, stats, false);
    }
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

/// Logs a failure of the device inputs (the first at error level) and
/// counts it.
fn device_failed(inst: &Instance, st: &mut Scratch, e: &dyn std::fmt::Display) {
    st.device_failures += 1;
    if st.device_failures == 1 {
        tracing::error!(
            "{}: a batch on inputs in device memory failed ({e}); it runs again from host memory, as will any \
             other batch whose device inputs fail",
            inst.name
        );
    } else {
        tracing::debug!(failures = st.device_failures, "{}: device inputs failed again: {e}", inst.name);
    }
}

/// Enqueues one request's rows of one input into the backend's device
/// memory `dst`, at byte `at`: GPU-preprocessed rows device to device,
/// tensors by DMA from the request's pinned slot.
fn stage_rows<'a>(
    gpu: &Gpu,
    dst: DeviceInput,
    at: usize,
    len: usize,
    staged: Option<std::ops::Range<usize>>,
    slot_bytes: impl FnOnce() -> &'a [u8],
) -> Result<(), String> {
    // The copies write through raw device addresses: never past the end.
    if at + len > dst.len {
        return Err(format!("{len} bytes at {at} overrun the device input of {} bytes (this is a bug)", dst.len));
    }
    let to = dst.ptr + at as u64;
    match (staged, &gpu.decode) {
        (Some(rows), Some(d)) => d.copy_rows(rows, to, len, &gpu.staging).map_err(|e| e.to_string()),
        (Some(_), None) => Err("GPU-preprocessed rows without GPU preprocessing (this is a bug)".into()),
        (None, _) => gpu.staging.upload(to, slot_bytes()).map_err(|e| e.to_string()),
    }
}

/// Splits each output along the batch dimension and sends every request its
/// rows, written into its own slot when that is large enough, else into a
/// new one; where none is free, the rows wait in `parked`.
fn scatter(
    inst: &Instance,
    items: &mut [Option<Pending<Item>>],
    outputs: &[TensorView<'_>],
    rows: u32,
    batched: bool,
    parked: &mut Parked,
) {
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
        let data: Vec<&[u8]> = outputs
            .iter()
            .map(|o| {
                let per = if batched { o.data.len() / rows as usize } else { 0 };
                if batched { &o.data[row * per..(row + r) * per] } else { o.data }
            })
            .collect();
        row += r;
        let desc = p.item.desc;
        let result = tensor::plan(0, &specs).and_then(|(need, _)| {
            if p.item.slot.capacity() >= need {
                return send_outputs(inst, &desc, &specs, &data, p.item.slot);
            }
            drop(p.item.slot);
            match inst.replies.pool.alloc(need, inst.replies.me, desc.request_id) {
                Ok(out) => send_outputs(inst, &desc, &specs, &data, out),
                Err(ShmError::NoSlot { wanted, largest }) if wanted <= largest && parked.has_room(need) => {
                    parked.park(desc, need, specs, &data);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        });
        if let Err(e) = result {
            inst.replies.fail(&desc, None, Status::Unavailable, &format!("cannot return the outputs: {e}"));
        }
    }
}

/// Writes a request's outputs into `out` (a table, then the bytes) and sends
/// it to the process that asked.
fn send_outputs(
    inst: &Instance,
    desc: &Descriptor,
    specs: &[TensorSpec],
    data: &[impl AsRef<[u8]>],
    mut out: shm::Slot,
) -> Result<(), ShmError> {
    let (table_len, ranges) = tensor::write_table(out.as_mut_slice(), 0, specs)?;
    for (src, range) in data.iter().zip(ranges) {
        out.as_mut_slice()[range].copy_from_slice(src.as_ref());
    }
    let d = Descriptor { kind: Kind::Outputs as u8, offset: 0, len: table_len as u32, sent_ns: shm::now_ns(), ..*desc };
    inst.replies.send(ProcId(desc.reply_to), d, out)
}

/// Outputs that found no free shared-memory slot large enough (every slot
/// of the classes that fit is in use, for a moment): their bytes wait here,
/// and are sent oldest first as soon as a slot frees (the instance retries
/// every millisecond while any wait, and runs other batches meanwhile), until
/// the request's deadline. As the preproc workers' pipelines do with their
/// steps, instead of answering 503 to a load the slots can carry a moment
/// later.
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

    fn has_room(&self, need: usize) -> bool {
        self.bytes + need <= PARKED_BYTES
    }

    fn park(&mut self, desc: Descriptor, need: usize, specs: Vec<TensorSpec>, data: &[&[u8]]) {
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
    fn give_up(&mut self, inst: &Instance, why: &str) {
        for p in self.queue.drain(..) {
            inst.replies.fail(&p.desc, None, Status::Unavailable, &format!("cannot return the outputs: {why}"));
        }
        self.bytes = 0;
    }

    /// Sends what now finds a slot, oldest first, and fails what waited past
    /// its deadline.
    fn retry(&mut self, inst: &Instance) {
        while let Some(p) = self.queue.front() {
            let result = if shm::now_ns() >= p.until_ns {
                Err(format!(
                    "no shared-memory slot of {} bytes for the outputs freed before the request's deadline \
                     (raise [shm] slot counts or sizes)",
                    p.need
                ))
            } else {
                match inst.replies.pool.alloc(p.need, inst.replies.me, p.desc.request_id) {
                    Ok(out) => send_outputs(inst, &p.desc, &p.specs, &p.data, out).map_err(|e| e.to_string()),
                    Err(ShmError::NoSlot { .. }) => return, // still none: the oldest goes first
                    Err(e) => Err(e.to_string()),
                }
            };
            let p = self.queue.pop_front().expect("looked at above");
            self.bytes -= p.need;
            if let Err(e) = result {
                inst.replies.fail(&p.desc, None, Status::Unavailable, &format!("cannot return the outputs: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use shm::mailbox::Wiring;
    use shm::{Inbox, LayoutParams, Region, SlotClass, SlotPool, Topology};

    use super::*;
    use crate::worker::Replies;

    /// An instance of the inference worker (GPU 0) of a region with two
    /// 4 KiB slots and one 16 KiB slot, and the frontend's inbox.
    fn setup() -> (Instance, Inbox, SlotPool, mpsc::Receiver<(usize, usize)>) {
        let topology = Topology { gpus: 1, preprocs: 1 };
        let classes = [SlotClass { size: 4096, count: 2 }, SlotClass { size: 16384, count: 1 }];
        let p = LayoutParams::new(topology, 1, 8, &classes).unwrap();
        let region = Arc::new(Region::heap(&p).unwrap());
        let efds: Vec<Arc<OwnedFd>> = (0..topology.procs())
            .map(|_| Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()))
            .collect();
        let me = topology.gpu(0);
        let wiring = Wiring::new(region.clone(), me, efds.clone()).unwrap();
        let frontend = Wiring::new(region.clone(), ProcId::FRONTEND, efds).unwrap();
        let replies = Arc::new(Replies {
            me,
            pool: SlotPool::new(region.clone()),
            outboxes: (0..topology.procs()).map(|p| wiring.outbox(ProcId(p as u16))).collect(),
        });
        let text = "max_batch_size = 4\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                    [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [-1]\n";
        let (done, done_rx) = mpsc::channel();
        let inst = Instance {
            name: "m".into(),
            model_index: 0,
            instance: 0,
            gpu: 0,
            config: ModelConfig::parse(text, "config.toml").unwrap(),
            replies,
            done,
            waker: wiring.self_waker(),
        };
        (inst, frontend.inbox(), SlotPool::new(region), done_rx)
    }

    /// A one-row request in a 4 KiB slot, as the frontend sends it.
    fn request(inst: &Instance, id: u64, deadline_ns: u64) -> Option<Pending<Item>> {
        let slot = inst.replies.pool.alloc(64, ProcId::FRONTEND, id).unwrap();
        let desc = Descriptor { request_id: id, deadline_ns, reply_to: 0, rows: 1, ..Default::default() };
        let item = Item { desc, slot, inputs: Vec::new(), encoded: false, staged: None };
        Some(Pending { item, rows: 1, shape_key: 0, arrived_ns: 0, deadline_ns, priority: 0 })
    }

    /// Scatters one request's outputs of 8000 bytes (more than its 4 KiB
    /// slot) while the only slot large enough is held: they wait. Returns
    /// what waits, the held slot and the outputs' bytes.
    fn scatter_while_held(inst: &Instance, pool: &SlotPool, id: u64, deadline_ns: u64) -> (Parked, shm::Slot, Vec<u8>) {
        let held = pool.alloc(16384, ProcId::FRONTEND, 99).unwrap();
        let data: Vec<u8> = (0..8000).map(|i| (i % 251) as u8).collect();
        let view = TensorView { dtype: shm::tensor::DType::F32, shape: &[1, 2000], data: &data };
        let mut parked = Parked::default();
        scatter(inst, &mut [request(inst, id, deadline_ns)], &[view], 1, true, &mut parked);
        assert!(!parked.is_empty(), "parked, not failed");
        (parked, held, data)
    }

    /// The failure the frontend received: its descriptor (checked to be a
    /// 503) and message.
    fn failure(inbox: &mut Inbox, pool: &SlotPool) -> (Descriptor, String) {
        let (from, d) = inbox.try_recv().expect("a failure is sent");
        assert_eq!((d.kind, d.status), (Kind::Error as u8, Status::Unavailable as u8));
        let slot = pool.adopt(from, ProcId::FRONTEND, &d).unwrap();
        (d, String::from_utf8_lossy(&slot.as_slice()[..d.len as usize]).to_string())
    }

    #[test]
    fn outputs_wait_for_a_slot_and_are_sent_when_one_frees() {
        let (inst, mut inbox, pool, _done) = setup();
        let (mut parked, held, data) = scatter_while_held(&inst, &pool, 1, 0);
        assert!(inbox.try_recv().is_none(), "nothing sent yet");
        parked.retry(&inst);
        assert!(!parked.is_empty() && inbox.try_recv().is_none(), "still no slot");
        drop(held);
        parked.retry(&inst);
        assert!(parked.is_empty());
        let (from, d) = inbox.try_recv().expect("the outputs are sent");
        assert_eq!((d.request_id, d.kind), (1, Kind::Outputs as u8));
        let slot = pool.adopt(from, ProcId::FRONTEND, &d).unwrap();
        let metas = tensor::read_table(slot.as_slice(), 0, d.len as usize).unwrap();
        assert_eq!(metas[0].dims, vec![1, 2000]);
        assert_eq!(&slot.as_slice()[metas[0].offset..metas[0].offset + metas[0].len], &data[..]);
    }

    #[test]
    fn outputs_that_find_no_slot_by_the_deadline_fail_with_503() {
        let (inst, mut inbox, pool, _done) = setup();
        let (mut parked, _held, _) = scatter_while_held(&inst, &pool, 2, shm::now_ns() + 5_000_000);
        std::thread::sleep(Duration::from_millis(10));
        parked.retry(&inst);
        assert!(parked.is_empty());
        let (d, message) = failure(&mut inbox, &pool);
        assert_eq!(d.request_id, 2);
        assert!(message.contains("before the request's deadline") && message.contains("[shm]"), "{message}");
    }

    #[test]
    fn outputs_larger_than_any_slot_fail_at_once() {
        let (inst, mut inbox, pool, _done) = setup();
        let data = vec![0u8; 24000]; // no slot class holds them
        let view = TensorView { dtype: shm::tensor::DType::F32, shape: &[1, 6000], data: &data };
        let mut parked = Parked::default();
        let mut items = vec![request(&inst, 3, 0)];
        scatter(&inst, &mut items, &[view], 1, true, &mut parked);
        assert!(parked.is_empty());
        let (d, message) = failure(&mut inbox, &pool);
        assert_eq!(d.request_id, 3);
        assert!(message.contains("largest slot class is 16384 bytes"), "{message}");
    }
}
