//! Pipeline models: the executor that runs a pipeline's steps for each
//! request. CPU steps run here, in the preproc worker that received the image;
//! model steps send tensors to the inference workers with this worker as
//! `reply_to`, so the request's context (decoded image, boxes, crops) stays in
//! this process while its tensors are batched with other requests' work.
//! One request may fan out into several model requests (e.g. one per
//! recognizer width bucket); the step after a model step runs when all of them
//! are back.
//!
//! A step that finds no free shared-memory slot of the size it needs (large
//! images each hold a detector input of several MiB, and the large slot
//! classes are few) does not fail its request: the request is parked, holding
//! no slot, and its step runs again when the worker next looks (every
//! millisecond while any are parked), oldest first, until its deadline. New
//! requests queue behind parked ones. Slots are freed by the other requests
//! as they move on, so a burst of large images waits its turn instead of
//! getting 503s.

mod ocr;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use model_repo::{Repository, Step};
use shm::desc::FLAG_POSTPROCESS;
use shm::stats::{MAX_STEPS, step_stats};
use shm::tensor::{self, DType, TensorMeta, TensorSpec};
use shm::{Descriptor, Kind, Outbox, ProcId, Slot, SlotPool, Status};

use crate::contain::contain;
use crate::worker::{Failure, send_slot};

pub use ocr::Decoder;
use ocr::Line;

/// What the executor needs from the worker it runs in.
pub struct Io<'a> {
    pub me: ProcId,
    pub pool: &'a SlotPool,
    pub frontend: &'a Outbox,
    /// The inference worker to send model work to.
    pub gpu: &'a Outbox,
}

/// Tensors a CPU step made for the next model step: one model request.
pub struct Item {
    slot: Slot,
    table_len: usize,
    data: std::ops::Range<usize>,
    rows: u32,
    /// The regions whose inputs are this item's rows, in row order.
    pub regions: Vec<usize>,
}

impl Item {
    /// A slot holding one FP32 tensor of `dims` (the first is the rows).
    pub fn new(io: &Io, request_id: u64, dims: &[i64], regions: Vec<usize>) -> Result<Item, Failure> {
        let spec = TensorSpec::dense(DType::F32, dims).ok_or_else(|| Failure::internal("bad tensor dims"))?;
        let specs = std::slice::from_ref(&spec);
        let mut slot = io.pool.alloc(tensor::plan(0, specs)?.0, io.me, request_id)?;
        let (table_len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, specs)?;
        Ok(Item { slot, table_len, data: ranges[0].clone(), rows: dims[0] as u32, regions })
    }

    /// The tensor's bytes, for the step to fill.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.slot.as_mut_slice()[self.data.clone()]
    }
}

/// A model request's answer: in its shared-memory slot, or, when it came
/// while the request still waited for other answers of the same step, copied
/// to the heap with its slot given back at once. A request then never holds
/// slots while it waits for its own other answers, which may need those very
/// slots (the recognizer's outputs are about 5.75 times its inputs, and a
/// step sends one request per width bucket).
pub struct Arrived {
    data: Data,
    metas: Vec<TensorMeta>,
}

enum Data {
    Slot(Slot),
    /// The slot's bytes up to the end of the last output, 8-byte aligned.
    Heap(Vec<u64>),
}

impl Arrived {
    fn new(slot: Slot, metas: Vec<TensorMeta>, keep_slot: bool) -> Arrived {
        if keep_slot {
            return Arrived { data: Data::Slot(slot), metas };
        }
        let end = metas.iter().map(|m| m.offset + m.len).max().unwrap_or(0).min(slot.capacity());
        let mut words = vec![0u64; end.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..end].copy_from_slice(&slot.as_slice()[..end]);
        Arrived { data: Data::Heap(words), metas }
    }

    /// Output `i` as f32 values (the data is 64-byte aligned in a slot,
    /// 8-byte aligned on the heap).
    pub fn f32s(&self, i: usize) -> Result<(&[i64], &[f32]), Failure> {
        let m = self.metas.get(i).ok_or_else(|| Failure::internal(format!("model output {i} is missing")))?;
        if m.dtype != DType::F32 {
            return Err(Failure::internal(format!("model output {i} is {}, expected FP32", m.dtype)));
        }
        let bytes = match &self.data {
            Data::Slot(slot) => slot.bytes(m.offset, m.len)?,
            Data::Heap(words) => bytemuck::cast_slice::<u64, u8>(words)
                .get(m.offset..m.offset + m.len)
                .ok_or_else(|| Failure::internal(format!("model output {i} lies outside its answer")))?,
        };
        let values = bytemuck::try_cast_slice(bytes).map_err(|e| Failure::internal(format!("output {i}: {e}")))?;
        Ok((&m.dims, values))
    }
}

/// One request's progress through its pipeline.
pub struct Ctx {
    /// The request as the frontend sent it (id, deadline, flags).
    pub desc: Descriptor,
    step: usize,
    /// Set by the CPU steps (OCR: the prepared image, text regions).
    pub ocr: ocr::State,
    /// Made by a CPU step for the next model step.
    pub pending: Vec<Item>,
    /// The answers of the last model step, one per item, with the regions of
    /// each item's rows.
    pub outputs: Vec<(Vec<usize>, Arrived)>,
    arrived: Vec<Option<Arrived>>,
    groups: Vec<Vec<usize>>,
    sent_at: Instant,
    /// The answer, set by the last step.
    pub lines: Option<Vec<Line>>,
}

enum StepRt {
    Model(u16),
    Cpu(ocr::CpuStep),
}

struct Def {
    index: u16,
    name: String,
    steps: Vec<StepRt>,
}

/// Every pipeline of the repository and the requests running through them.
pub struct Engine {
    defs: HashMap<u16, Arc<Def>>,
    active: HashMap<u64, Ctx>,
    /// Requests waiting for a free slot (in `active` too), oldest first; ids
    /// of requests that expired or were cancelled meanwhile are skipped.
    parked: VecDeque<u64>,
}

impl Engine {
    /// Resolves the pipelines' model names and loads what their CPU steps
    /// need (the recognizer's character list).
    pub fn new(repo: &Repository) -> Result<Engine, String> {
        let mut defs = HashMap::new();
        for (i, m) in repo.models.iter().enumerate() {
            let Some(p) = &m.config.pipeline else { continue };
            let mut steps = Vec::new();
            for s in &p.steps {
                steps.push(match s {
                    Step::Model { model } => {
                        let (mi, _) = repo.get(model).ok_or_else(|| format!("{}: no model `{model}`", m.name))?;
                        StepRt::Model(mi)
                    }
                    cpu => StepRt::Cpu(ocr::CpuStep::new(cpu, repo).map_err(|e| format!("{}: {e}", m.name))?),
                });
            }
            if steps.len() >= MAX_STEPS {
                return Err(format!("{}: {} steps; at most {}", m.name, steps.len(), MAX_STEPS - 1));
            }
            defs.insert(i as u16, Arc::new(Def { index: i as u16, name: m.name.clone(), steps }));
        }
        Ok(Engine { defs, active: HashMap::new(), parked: VecDeque::new() })
    }

    pub fn is_pipeline(&self, model: u16) -> bool {
        self.defs.contains_key(&model)
    }

    /// Whether request `id` is running through a pipeline here.
    pub fn owns(&self, id: u64) -> bool {
        self.active.contains_key(&id)
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// How many requests wait for a free slot.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Runs the parked requests' steps again, oldest first, until one still
    /// finds no slot (it stays first in line). Returns the requests that
    /// failed meanwhile, for the caller to report.
    pub fn retry_parked(&mut self, io: &Io) -> Vec<(Descriptor, Failure)> {
        let mut failed = Vec::new();
        while let Some(id) = self.parked.pop_front() {
            let Some(ctx) = self.active.remove(&id) else { continue };
            let Some(def) = self.defs.get(&ctx.desc.model).cloned() else { continue };
            let desc = ctx.desc;
            let before = self.parked.len();
            if let Err(f) = self.advance(io, &def, ctx) {
                failed.push((desc, f));
            } else if self.parked.len() > before {
                // Parked again, at the back: put it back in front and stop.
                let again = self.parked.pop_back().expect("just parked");
                self.parked.push_front(again);
                break;
            }
        }
        failed
    }

    fn park(&mut self, ctx: Ctx) {
        tracing::debug!(request_id = ctx.desc.request_id, step = ctx.step, "no free shared-memory slot; waiting");
        self.parked.push_back(ctx.desc.request_id);
        self.active.insert(ctx.desc.request_id, ctx);
    }

    /// Starts request `d`, whose encoded image is `image`.
    pub fn start(&mut self, io: &Io, d: &Descriptor, image: &[u8], decode: &ocr::Decoder) -> Result<(), Failure> {
        let def = self.defs.get(&d.model).cloned().ok_or_else(|| Failure::internal("not a pipeline"))?;
        if d.rows != 1 {
            return Err(Failure::input(format!("pipeline `{}` takes one image per request, got {}", def.name, d.rows)));
        }
        let started = Instant::now();
        let state = contain(|| ocr::State::from_image(image, decode))
            .map_err(|panic| Failure::input(format!("the image could not be decoded: {panic}")))??;
        record(io, &def, usize::MAX, started);
        let ctx = Ctx {
            desc: *d,
            step: 0,
            ocr: state,
            pending: Vec::new(),
            outputs: Vec::new(),
            arrived: Vec::new(),
            groups: Vec::new(),
            sent_at: started,
            lines: None,
        };
        if !self.parked.is_empty() {
            // Behind the requests already waiting for a slot.
            self.park(ctx);
            return Ok(());
        }
        self.advance(io, &def, ctx)
    }

    /// A model request of request `d.request_id` came back.
    pub fn on_outputs(&mut self, io: &Io, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
        let slot = io.pool.adopt(from, io.me, d)?;
        let Some(mut ctx) = self.active.remove(&d.request_id) else {
            return Ok(()); // the request failed or timed out meanwhile
        };
        let def = self.defs.get(&ctx.desc.model).cloned().ok_or_else(|| Failure::internal("pipeline vanished"))?;
        let metas = tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize)?;
        let i = d.aux as usize;
        let last = ctx.arrived.iter().filter(|a| a.is_none()).count() == 1;
        match ctx.arrived.get_mut(i) {
            Some(place @ None) => *place = Some(Arrived::new(slot, metas, last)),
            _ => return Err(Failure::internal(format!("unexpected model answer #{i}"))),
        }
        if ctx.arrived.iter().any(Option::is_none) {
            self.active.insert(d.request_id, ctx);
            return Ok(());
        }
        record(io, &def, ctx.step, ctx.sent_at);
        let groups = std::mem::take(&mut ctx.groups);
        ctx.outputs = groups.into_iter().zip(ctx.arrived.drain(..).flatten()).collect();
        ctx.step += 1;
        self.advance(io, &def, ctx)
    }

    /// Forgets request `id` (its client left); the answers still on their way
    /// for it will be discarded.
    pub fn cancel(&mut self, id: u64) {
        self.active.remove(&id);
    }

    /// Takes out the requests whose deadline has passed, for the caller to fail.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Descriptor> {
        let expired: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, c)| c.desc.deadline_ns != 0 && c.desc.deadline_ns <= now_ns)
            .map(|(&k, _)| k)
            .collect();
        expired.into_iter().filter_map(|k| self.active.remove(&k)).map(|c| c.desc).collect()
    }

    /// Runs CPU steps until a model step sends work out (the context is then
    /// parked) or the pipeline ends (the answer goes to the frontend).
    /// Parks it instead when a step (or the answer) finds no free slot.
    fn advance(&mut self, io: &Io, def: &Def, mut ctx: Ctx) -> Result<(), Failure> {
        loop {
            let Some(step) = def.steps.get(ctx.step) else {
                return match finish(io, def, &ctx) {
                    Err(f) if f.no_slot => {
                        self.park(ctx);
                        Ok(())
                    }
                    done => done,
                };
            };
            match step {
                StepRt::Cpu(cpu) => {
                    let started = Instant::now();
                    // A panic here drops the request's context with it.
                    match contain(|| cpu.run(&mut ctx, io))
                        .map_err(|panic| Failure::internal(format!("pipeline step failed: {panic}")))?
                    {
                        Ok(()) => {}
                        Err(f) if f.no_slot => {
                            // Nothing half-done is kept: the step can run again.
                            ctx.pending.clear();
                            self.park(ctx);
                            return Ok(());
                        }
                        Err(f) => return Err(f),
                    }
                    record(io, def, ctx.step, started);
                    ctx.step += 1;
                }
                StepRt::Model(model) => {
                    let items = std::mem::take(&mut ctx.pending);
                    ctx.outputs.clear();
                    if items.is_empty() {
                        // Nothing to run (an image without text): skip the model.
                        ctx.step += 1;
                        continue;
                    }
                    ctx.sent_at = Instant::now();
                    ctx.groups = Vec::with_capacity(items.len());
                    ctx.arrived = (0..items.len()).map(|_| None).collect();
                    for (i, item) in items.into_iter().enumerate() {
                        let d = Descriptor {
                            kind: Kind::Tensors as u8,
                            model: *model,
                            offset: 0,
                            len: item.table_len as u32,
                            rows: item.rows,
                            reply_to: io.me.0,
                            aux: i as u64,
                            sent_ns: shm::now_ns(),
                            flags: 0,
                            ..ctx.desc
                        };
                        ctx.groups.push(item.regions);
                        send_slot(io.gpu, d, item.slot)?;
                    }
                    self.active.insert(ctx.desc.request_id, ctx);
                    return Ok(());
                }
            }
        }
    }
}

/// Adds `started.elapsed()` to step `step`'s counters (`usize::MAX`: the
/// decode, counted in the last slot).
fn record(io: &Io, def: &Def, step: usize, started: Instant) {
    let region = io.pool.region();
    let took = started.elapsed();
    if let Some(stats) = step_stats(region, def.index) {
        let i = step.min(MAX_STEPS - 1);
        stats[i].record(took.as_nanos() as u64);
    }
    if step == usize::MAX
        && let Some(h) = shm::stats::stage_histogram(region, def.index, shm::stats::Stage::Decode)
    {
        h.observe(took);
    }
}

/// Sends the answer: JSON for image requests, output tensors for v2 ones.
fn finish(io: &Io, def: &Def, ctx: &Ctx) -> Result<(), Failure> {
    let lines =
        ctx.lines.as_ref().ok_or_else(|| Failure::internal(format!("pipeline `{}` made no answer", def.name)))?;
    let d = ctx.desc;
    if d.flags & FLAG_POSTPROCESS != 0 {
        let json = serde_json::to_vec(&serde_json::json!({
            "model_name": def.name,
            "model_version": "1",
            "lines": lines,
        }))
        .map_err(|e| Failure::internal(e.to_string()))?;
        let mut slot = io.pool.alloc(json.len(), io.me, d.request_id)?;
        slot.as_mut_slice()[..json.len()].copy_from_slice(&json);
        let reply =
            Descriptor { kind: Kind::Response as u8, offset: 0, len: json.len() as u32, sent_ns: shm::now_ns(), ..d };
        return send_slot(io.frontend, reply, slot);
    }
    // v2: text (BYTES [n]), score (FP32 [n]), box (FP32 [n, 4, 2]).
    let n = lines.len();
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(&(l.text.len() as u32).to_le_bytes());
        text.extend_from_slice(l.text.as_bytes());
    }
    let scores: Vec<u8> = lines.iter().flat_map(|l| l.score.to_le_bytes()).collect();
    let boxes: Vec<u8> = lines.iter().flat_map(|l| l.points.iter().flatten().flat_map(|v| v.to_le_bytes())).collect();
    let specs = [
        TensorSpec { dtype: DType::Bytes, dims: vec![n as i64], byte_len: text.len() },
        TensorSpec { dtype: DType::F32, dims: vec![n as i64], byte_len: scores.len() },
        TensorSpec { dtype: DType::F32, dims: vec![n as i64, 4, 2], byte_len: boxes.len() },
    ];
    let mut slot = io.pool.alloc(tensor::plan(0, &specs)?.0, io.me, d.request_id)?;
    let (table_len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, &specs)?;
    for (src, r) in [&text, &scores, &boxes].into_iter().zip(ranges) {
        slot.as_mut_slice()[r].copy_from_slice(src);
    }
    let reply = Descriptor { kind: Kind::Outputs as u8, offset: 0, len: table_len as u32, sent_ns: shm::now_ns(), ..d };
    send_slot(io.frontend, reply, slot)
}

/// The failure of an expired request, for the frontend.
pub fn timeout_failure() -> Failure {
    Failure::new(Status::Timeout, "the request timed out in the pipeline (parameter `timeout` or the server default)")
}
