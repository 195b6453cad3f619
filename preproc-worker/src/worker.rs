//! The preproc worker's loop: take jobs from the inbox, do the CPU stage they
//! need, hand the result on. Every job is stateless (everything it needs is in
//! the descriptor and its slot), so a replacement worker can pick up whatever
//! a crashed one left in its lanes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use model_repo::{DType, Model, Repository};
use shm::desc::FLAG_POSTPROCESS;
use shm::mailbox::Wiring;
use shm::region::ProcState;
use shm::stats::Stage;
use shm::tensor::{self, TensorSpec};
use shm::{Descriptor, Inbox, Kind, Outbox, ProcId, ShmError, Slot, SlotPool, Status};

use crate::classify;
use crate::contain::contain;
use crate::image::{self, DecodeLimits};
use crate::pipeline;
use crate::preprocess::{self, Scratch};

/// What the preproc worker needs to run.
pub struct Config {
    pub wiring: Wiring,
    pub repository: Arc<Repository>,
    pub limits: DecodeLimits,
    /// Decode JPEGs at a reduced DCT scale when the model input is small.
    pub dct_scaling: bool,
    /// The inference workers drive GPUs: images of models with `decode =
    /// "gpu"` go to them encoded (JPEG) or raw (frames), after a header check.
    pub gpu_decode: bool,
    /// How long to spin on an empty inbox before sleeping.
    pub spin: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error("the topology has no lane from {from:?} to {to:?}; this is a bug")]
    NoLane { from: ProcId, to: ProcId },
    #[error("pipeline set-up: {0}")]
    Pipeline(String),
}

/// Why one request failed: its status class and a message for the client.
pub(crate) struct Failure {
    pub status: Status,
    pub message: String,
    /// No shared-memory slot was free (though one of the size exists): the
    /// pipeline executor parks the request until one is, instead of failing it.
    pub no_slot: bool,
}

impl Failure {
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into(), no_slot: false }
    }

    pub fn input(message: impl Into<String>) -> Failure {
        Failure::new(Status::InvalidInput, message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(Status::Internal, message)
    }
}

impl From<ShmError> for Failure {
    fn from(e: ShmError) -> Failure {
        let status = if matches!(e, ShmError::NoSlot { .. } | ShmError::Full { .. }) {
            Status::Unavailable
        } else {
            Status::Internal
        };
        // NoSlot for more than the largest slot can never succeed: not worth waiting for.
        let no_slot = matches!(e, ShmError::NoSlot { wanted, largest } if wanted <= largest);
        Failure { status, message: e.to_string(), no_slot }
    }
}

struct Worker {
    me: ProcId,
    repository: Arc<Repository>,
    pool: SlotPool,
    frontend: Outbox,
    gpus: Vec<Outbox>,
    limits: DecodeLimits,
    dct_scaling: bool,
    gpu_decode: bool,
    scratch: Scratch,
    decoded: Vec<u8>,
    decoder: pipeline::Decoder,
    cancelled: shm::cancel::Recent,
}

/// Runs until `shutdown` is set (the caller also wakes the inbox).
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>, on_ready: impl FnOnce()) -> Result<(), WorkerError> {
    let me = cfg.wiring.me();
    let region = cfg.wiring.region().clone();
    let topo = region.layout().topology();
    let lane = |to: ProcId| cfg.wiring.outbox(to).ok_or(WorkerError::NoLane { from: me, to });
    let mut worker = Worker {
        me,
        repository: cfg.repository,
        pool: SlotPool::new(region.clone()),
        frontend: lane(ProcId::FRONTEND)?,
        gpus: (0..topo.gpus).map(|i| lane(topo.gpu(i))).collect::<Result<_, _>>()?,
        limits: cfg.limits,
        dct_scaling: cfg.dct_scaling,
        gpu_decode: cfg.gpu_decode,
        scratch: Scratch::default(),
        decoded: Vec::new(),
        decoder: pipeline::Decoder { limits: cfg.limits },
        cancelled: Default::default(),
    };
    let mut engine = pipeline::Engine::new(&worker.repository).map_err(WorkerError::Pipeline)?;
    let mut inbox: Inbox = cfg.wiring.inbox();
    tracing::info!("preproc worker up ({} models)", worker.repository.models.len());
    on_ready();
    let mut next_sweep = shm::now_ns();
    while !shutdown.load(Ordering::Acquire) {
        region.beat(me);
        // Wake up now and then while pipeline requests wait, to time them out,
        // and every millisecond while some wait for a free slot (no process
        // is told when another frees one).
        let wait = if engine.parked() > 0 {
            Duration::from_millis(1)
        } else if engine.active() > 0 {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        };
        if let Some((from, d)) = inbox.recv(Some(wait), cfg.spin) {
            worker.handle(from, d, &mut engine);
        }
        if engine.parked() > 0
            && let Ok(gpu) = worker.pick_gpu()
        {
            for (d, f) in engine.retry_parked(&worker.io(gpu)) {
                worker.fail(&d, f);
            }
        }
        let now = shm::now_ns();
        if now >= next_sweep {
            next_sweep = now + 20_000_000;
            for d in engine.expire(now) {
                worker.fail(&d, pipeline::timeout_failure());
            }
            worker.cancelled.prune(now);
        }
    }
    tracing::info!("preproc worker stopping");
    Ok(())
}

impl Worker {
    fn io(&self, gpu: usize) -> pipeline::Io<'_> {
        pipeline::Io { me: self.me, pool: &self.pool, frontend: &self.frontend, gpu: &self.gpus[gpu] }
    }

    fn handle(&mut self, from: ProcId, d: Descriptor, engine: &mut pipeline::Engine) {
        let _span = tracing::debug_span!("request", request_id = d.request_id).entered();
        if d.kind() == Some(Kind::Cancel) {
            // The client left: forget the request's pipeline state, and drop its
            // work if it reaches us later.
            engine.cancel(d.request_id);
            self.cancelled.insert(d.request_id, shm::now_ns());
            return;
        }
        if self.cancelled.contains(d.request_id) {
            if d.has_slot() {
                drop(self.pool.adopt(from, self.me, &d));
            }
            return;
        }
        let result = match d.kind() {
            Some(Kind::Images) if engine.is_pipeline(d.model) => self.start_pipeline(from, &d, engine),
            Some(Kind::Images) => self.on_images(from, &d),
            Some(Kind::Outputs) if engine.owns(d.request_id) => {
                self.pick_gpu().and_then(|g| engine.on_outputs(&self.io(g), from, &d))
            }
            Some(Kind::Outputs) => self.on_outputs(from, &d),
            other => {
                // A buggy peer; free the slot if it really is ours and move on.
                tracing::warn!("unexpected {other:?} descriptor from {from:?}; dropped");
                if d.has_slot() {
                    drop(self.pool.adopt(from, self.me, &d));
                }
                return;
            }
        };
        if let Err(f) = result {
            tracing::debug!("request failed: {}", f.message);
            self.fail(&d, f);
        }
    }

    /// Encoded image from the frontend → the first steps of its pipeline.
    fn start_pipeline(&mut self, from: ProcId, d: &Descriptor, engine: &mut pipeline::Engine) -> Result<(), Failure> {
        let input = self.pool.adopt(from, self.me, d)?;
        let images = split_bytes(input.bytes(d.offset as usize, d.len as usize)?, d.rows)?;
        let io = self.io(self.pick_gpu()?);
        engine.start(&io, d, images[0], &self.decoder)
    }

    fn model(&self, index: u16) -> Result<&Model, Failure> {
        self.repository
            .models
            .get(index as usize)
            .ok_or_else(|| Failure::internal(format!("descriptor names model #{index}, which does not exist")))
    }

    /// Encoded images from the frontend → one input tensor for the model.
    fn on_images(&mut self, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
        let input = self.pool.adopt(from, self.me, d)?;
        let repository = self.repository.clone();
        let model = repository
            .models
            .get(d.model as usize)
            .ok_or_else(|| Failure::internal(format!("descriptor names model #{}, which does not exist", d.model)))?;
        let cfg = &model.config;
        let (Some(pre), Some((_, tensor_cfg))) = (cfg.preprocess.as_ref(), cfg.image_input()) else {
            return Err(Failure::input(format!("model `{}` does not take images; send tensors", model.name)));
        };
        let dtype = tensor_cfg.datatype;
        let images = split_bytes(input.bytes(d.offset as usize, d.len as usize)?, d.rows)?;
        let postprocess = d.flags & FLAG_POSTPROCESS != 0 && cfg.postprocess.is_some();
        let reply_to = if postprocess { self.me } else { ProcId::FRONTEND };
        if self.gpu_decode && cfg.decodes_on_gpu() {
            // Only the headers here: JPEGs and raw frames go to the GPU as they
            // came, in their slot; a request with a PNG is done here.
            let mut on_gpu = true;
            for (i, bytes) in images.iter().enumerate() {
                let which = if images.len() > 1 { format!("image {i}: ") } else { String::new() };
                let info = image::probe(bytes, &self.limits).map_err(|e| Failure::input(format!("{which}{e}")))?;
                on_gpu &= info.format != image::ImageFormat::Png;
            }
            if on_gpu {
                let next = Descriptor { kind: Kind::Images as u8, reply_to: reply_to.0, sent_ns: shm::now_ns(), ..*d };
                let gpu = self.pick_gpu()?;
                return send_slot(&self.gpus[gpu], next, input);
            }
        }
        let per_image = preprocess::tensor_len(pre, dtype);
        let dims: Vec<i64> = std::iter::once(d.rows as i64).chain(pre.image_dims()).collect();
        let spec = TensorSpec { dtype, dims, byte_len: per_image * d.rows as usize };
        let mut out = self.pool.alloc(tensor::plan(0, std::slice::from_ref(&spec))?.0, self.me, d.request_id)?;
        let (table_len, ranges) = tensor::write_table(out.as_mut_slice(), 0, std::slice::from_ref(&spec))?;
        let data = ranges[0].clone();
        for (i, bytes) in images.iter().enumerate() {
            let which = if images.len() > 1 { format!("image {i}: ") } else { String::new() };
            let dst = &mut out.as_mut_slice()[data.start + i * per_image..data.start + (i + 1) * per_image];
            let (limits, dct, decoded, scratch) =
                (&self.limits, self.dct_scaling, &mut self.decoded, &mut self.scratch);
            let started = Instant::now();
            let (decode_took, preprocess_took) = contain(|| {
                let info = image::probe(bytes, limits).map_err(|e| Failure::input(format!("{which}{e}")))?;
                let scale_to = dct.then(|| preprocess::source_size_needed(pre, info.width, info.height));
                let src = image::pixels(bytes, &info, scale_to, decoded)
                    .map_err(|e| Failure::input(format!("{which}{e}")))?;
                let decoded_at = Instant::now();
                preprocess::preprocess_into(src, pre, dtype, dst, scratch)
                    .map_err(|e| Failure::internal(format!("{which}{e}")))?;
                Ok::<_, Failure>((decoded_at - started, decoded_at.elapsed()))
            })
            .map_err(|panic| Failure::input(format!("{which}the image could not be decoded: {panic}")))??;
            self.observe(d.model, Stage::Decode, decode_took);
            self.observe(d.model, Stage::Preprocess, preprocess_took);
        }
        drop(input);
        let next = Descriptor {
            kind: Kind::Tensors as u8,
            offset: 0,
            len: table_len as u32,
            reply_to: reply_to.0,
            sent_ns: shm::now_ns(),
            ..*d
        };
        let gpu = self.pick_gpu()?;
        send_slot(&self.gpus[gpu], next, out)
    }

    /// The inference worker with the shortest queue from us among the ready
    /// ones; none ready (all crashed and restarting) fails the request at once
    /// rather than leaving it in a dead worker's queue.
    fn pick_gpu(&self) -> Result<usize, Failure> {
        let region = self.pool.region();
        let ready = |o: &Outbox| region.proc_state(o.to()) == ProcState::Ready;
        (0..self.gpus.len()).filter(|&i| ready(&self.gpus[i])).min_by_key(|&i| self.gpus[i].backlog()).ok_or_else(
            || Failure::new(Status::Unavailable, "no inference worker is ready (it is restarting); retry shortly"),
        )
    }

    /// Model outputs → the post-processed JSON answer for the frontend.
    fn on_outputs(&mut self, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
        let started = Instant::now();
        let mut slot = self.pool.adopt(from, self.me, d)?;
        let model = self.model(d.model)?;
        let Some(post) = model.config.postprocess.as_ref() else {
            return Err(Failure::internal(format!(
                "model `{}` has no postprocess but its outputs came here",
                model.name
            )));
        };
        let (index, _) = model.config.scores_output().ok_or_else(|| Failure::internal("no scores output"))?;
        let metas = tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize)?;
        let meta = metas.get(index).ok_or_else(|| Failure::internal("the outputs lack the scores tensor"))?;
        let scores = to_f32(meta.dtype, slot.bytes(meta.offset, meta.len)?)?;
        let rows = (d.rows as usize).max(1);
        if scores.len() % rows != 0 {
            return Err(Failure::internal(format!("{} scores do not split into {rows} rows", scores.len())));
        }
        let per_row: Vec<Vec<classify::Class>> =
            scores.chunks(scores.len() / rows).map(|row| classify::classify(row, post)).collect();
        let body = if per_row.len() == 1 {
            serde_json::json!({ "model_name": model.name, "model_version": model.latest().to_string(), "classes": per_row[0] })
        } else {
            serde_json::json!({ "model_name": model.name, "model_version": model.latest().to_string(), "results": per_row })
        };
        let json = serde_json::to_vec(&body).map_err(|e| Failure::internal(e.to_string()))?;
        // The answer is small; write it over the outputs we no longer need.
        if json.len() > slot.capacity() {
            return Err(Failure::internal("the answer does not fit its slot"));
        }
        slot.as_mut_slice()[..json.len()].copy_from_slice(&json);
        let reply =
            Descriptor { kind: Kind::Response as u8, offset: 0, len: json.len() as u32, sent_ns: shm::now_ns(), ..*d };
        self.observe(d.model, Stage::Postprocess, started.elapsed());
        send_slot(&self.frontend, reply, slot)
    }

    /// Adds a stage's time to the model's histogram in shared memory.
    fn observe(&self, model: u16, stage: Stage, took: Duration) {
        if let Some(h) = shm::stats::stage_histogram(self.pool.region(), model, stage) {
            h.observe(took);
        }
    }

    /// Tells the frontend that request `d` failed.
    fn fail(&self, d: &Descriptor, f: Failure) {
        if let Err(e) = self.frontend.send_error(&self.pool, self.me, d, None, f.status, &f.message) {
            tracing::warn!("could not report the failure of request {} to the frontend: {e}", d.request_id);
        }
    }
}

/// Sends `slot` with `d`, waiting up to a second while the lane is full.
pub(crate) fn send_slot(out: &Outbox, d: Descriptor, slot: Slot) -> Result<(), Failure> {
    out.send_slot_wait(d, slot, Duration::from_secs(1))
        .map_err(|e| Failure::new(Status::Unavailable, format!("the {:?} process is not keeping up: {e}", out.to())))
}

/// Splits a BYTES payload (u32 little-endian length, then the bytes; `rows`
/// times) into its elements.
fn split_bytes(data: &[u8], rows: u32) -> Result<Vec<&[u8]>, Failure> {
    let out = tensor::bytes_elements(data).map_err(|e| Failure::input(format!("BYTES input: {e}")))?;
    if out.len() != rows as usize {
        return Err(Failure::input(format!("expected {rows} images, found {}", out.len())));
    }
    Ok(out)
}

fn to_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>, Failure> {
    match dtype {
        DType::F32 => Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        DType::F16 => Ok(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        other => Err(Failure::internal(format!("classification needs FP32 or FP16 scores, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_payload(items: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for i in items {
            v.extend_from_slice(&(i.len() as u32).to_le_bytes());
            v.extend_from_slice(i);
        }
        v
    }

    #[test]
    fn bytes_payloads_split_and_are_checked() {
        let p = bytes_payload(&[b"abc", b"", b"de"]);
        assert_eq!(split_bytes(&p, 3).ok().unwrap(), vec![&b"abc"[..], b"", b"de"]);
        assert!(split_bytes(&p, 2).is_err(), "count mismatch");
        assert!(split_bytes(&p[..p.len() - 1], 3).is_err(), "truncated element");
        assert!(split_bytes(&[1, 0], 1).is_err(), "truncated length");
    }

    #[test]
    fn scores_convert_from_fp16_and_fp32() {
        let f32s: Vec<u8> = [0.25f32, 0.75].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(DType::F32, &f32s).ok().unwrap(), vec![0.25, 0.75]);
        let f16s: Vec<u8> = [0.5f32].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        assert_eq!(to_f32(DType::F16, &f16s).ok().unwrap(), vec![0.5]);
        assert!(to_f32(DType::I64, &[0; 8]).is_err());
    }
}
