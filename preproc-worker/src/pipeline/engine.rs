//! The engine that runs each request through its pipeline's steps. CPU
//! steps run here, in the preproc worker that received the image; model
//! steps send tensors to the inference workers with this worker as
//! `reply_to`, so the request's context (decoded image, and whatever its
//! steps keep) stays in this process while its tensors are batched with
//! other requests' work. One request may fan out into several model requests
//! (e.g. one per recognizer width bucket); the step after a model step runs
//! when all of them are back. The engine knows no kind of step: it decodes
//! the request's image, carries the steps' state, and writes the answer the
//! last step returns.
//!
//! A step that finds no free shared-memory slot of the size it needs (large
//! images each hold a detector input of several MiB, and the large slot
//! classes are few) does not fail its request: the request is parked, holding
//! no slot, and its step runs again when the worker next looks (every
//! millisecond while any are parked), oldest first, until its deadline. New
//! requests queue behind parked ones. Slots are freed by the other requests
//! as they move on, so a burst of large images waits its turn instead of
//! getting 503s.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use model_repo::{ModelState, Repository, Step};
use shm::desc::FLAG_POSTPROCESS;
use shm::stats::{MAX_STEPS, step_stats};
use shm::tensor::{self, TensorSpec};
use shm::{Descriptor, Kind, Peers, ProcId, Status};

use super::registry;
use super::step::{Answer, CpuStep, Ctx, Form};
use super::tensors::{Arrived, Slots};
use crate::contain::contain;
use crate::failure::{self, Failure};
use crate::image::{self, DecodeLimits};

/// What the engine needs from the worker it runs in.
pub struct Io<'a> {
    pub peers: &'a Peers,
    /// The inference worker to send model work to.
    pub gpu: ProcId,
}

/// One step of a pipeline.
pub enum PipelineStep {
    /// Runs model `.0` of the repository on the tensors the CPU step before made.
    Model(u16),
    Cpu(Box<dyn CpuStep>),
}

/// A pipeline: the model it is served as, and its steps.
pub struct Def {
    pub index: u16,
    pub name: String,
    pub steps: Vec<PipelineStep>,
}

/// The answer, ready for a slot; kept while the request waits for one.
enum Reply {
    Json(Vec<u8>),
    Tensors { specs: Vec<TensorSpec>, data: Vec<Vec<u8>> },
}

/// One request's progress through its pipeline.
struct Running {
    /// The request as the frontend sent it (id, deadline, flags).
    desc: Descriptor,
    step: usize,
    ctx: Ctx,
    arrived: Vec<Option<Arrived>>,
    /// The tags of each model request awaited, in the order sent.
    groups: Vec<Vec<usize>>,
    sent_at: Instant,
    /// Set once the last step has answered.
    reply: Option<Reply>,
}

/// Every pipeline of the repository and the requests running through them.
pub struct Engine {
    limits: DecodeLimits,
    defs: HashMap<u16, Arc<Def>>,
    active: HashMap<u64, Running>,
    /// Requests waiting for a free slot (in `active` too), oldest first; ids
    /// of requests that expired or were cancelled meanwhile are skipped.
    parked: VecDeque<u64>,
}

impl Engine {
    /// Builds every pipeline of the repository: resolves its model steps'
    /// names, and builds its CPU steps (which load what they need).
    pub fn new(repo: &Repository, limits: DecodeLimits) -> Result<Engine, String> {
        let mut engine = Engine::with_pipelines(Vec::new(), limits)?;
        match engine.set_pipelines(repo).as_slice() {
            [] => Ok(engine),
            errors => Err(errors.join("; ")),
        }
    }

    /// Builds every serving pipeline of `repo` (READY or UNLOADING) anew:
    /// its model steps go to the entries serving their models now. Requests
    /// under way carry on with the new definitions. Returns the pipelines
    /// that could not be built, which are left out.
    pub fn set_pipelines(&mut self, repo: &Repository) -> Vec<String> {
        let mut errors = Vec::new();
        let mut defs = HashMap::new();
        let serving = |m: &&model_repo::Model| matches!(m.state, ModelState::Ready | ModelState::Unloading);
        for (i, m) in repo.models.iter().enumerate().filter(|(_, m)| serving(m)) {
            let Some(p) = &m.config.pipeline else { continue };
            let steps: Result<Vec<PipelineStep>, String> = p
                .steps
                .iter()
                .map(|s| match s {
                    Step::Model { model } => repo
                        .get(model)
                        .map(|(mi, _)| PipelineStep::Model(mi))
                        .ok_or_else(|| format!("{}: no model `{model}` is ready", m.name)),
                    cpu => registry::cpu_step(cpu, repo).map(PipelineStep::Cpu).map_err(|e| format!("{}: {e}", m.name)),
                })
                .collect();
            match steps {
                Ok(steps) if steps.len() < MAX_STEPS => {
                    defs.insert(i as u16, Arc::new(Def { index: i as u16, name: m.name.clone(), steps }));
                }
                Ok(steps) => errors.push(format!("{}: {} steps; at most {}", m.name, steps.len(), MAX_STEPS - 1)),
                Err(e) => errors.push(e),
            }
        }
        self.defs = defs;
        errors
    }

    /// An engine for pipelines whose steps are built already.
    pub fn with_pipelines(defs: Vec<Def>, limits: DecodeLimits) -> Result<Engine, String> {
        let mut by_model = HashMap::new();
        for def in defs {
            if def.steps.len() >= MAX_STEPS {
                return Err(format!("{}: {} steps; at most {}", def.name, def.steps.len(), MAX_STEPS - 1));
            }
            by_model.insert(def.index, Arc::new(def));
        }
        Ok(Engine { limits, defs: by_model, active: HashMap::new(), parked: VecDeque::new() })
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
            let Some(run) = self.active.remove(&id) else { continue };
            let Some(def) = self.defs.get(&run.desc.model).cloned() else { continue };
            let desc = run.desc;
            let before = self.parked.len();
            if let Err(f) = self.advance(io, &def, run) {
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

    fn park(&mut self, run: Running) {
        tracing::debug!(request_id = run.desc.request_id, step = run.step, "no free shared-memory slot; waiting");
        self.parked.push_back(run.desc.request_id);
        self.active.insert(run.desc.request_id, run);
    }

    /// Starts request `d`, whose encoded image is `image`.
    pub fn start(&mut self, io: &Io, d: &Descriptor, image: &[u8]) -> Result<(), Failure> {
        let def = self.defs.get(&d.model).cloned().ok_or_else(|| Failure::internal("not a pipeline"))?;
        if d.rows != 1 {
            return Err(Failure::input(format!("pipeline `{}` takes one image per request, got {}", def.name, d.rows)));
        }
        let started = Instant::now();
        // Full size: what a step needs of it (text detection: all of it) is
        // the step's to say.
        let decoded = contain(|| image::decode_rgb(image, &self.limits).map_err(|e| Failure::input(e.to_string())))
            .map_err(|panic| Failure::input(format!("the image could not be decoded: {panic}")))??;
        record(io, &def, usize::MAX, started);
        let form = if d.flags & FLAG_POSTPROCESS != 0 { Form::Json } else { Form::Tensors };
        let run = Running {
            desc: *d,
            step: 0,
            ctx: Ctx::new(decoded, form),
            arrived: Vec::new(),
            groups: Vec::new(),
            sent_at: started,
            reply: None,
        };
        if !self.parked.is_empty() {
            // Behind the requests already waiting for a slot.
            self.park(run);
            return Ok(());
        }
        self.advance(io, &def, run)
    }

    /// A model request of request `d.request_id` came back.
    pub fn on_outputs(&mut self, io: &Io, from: ProcId, d: &Descriptor) -> Result<(), Failure> {
        let slot = io.peers.pool().adopt(from, io.peers.me(), d)?;
        let Some(mut run) = self.active.remove(&d.request_id) else {
            return Ok(()); // the request failed or timed out meanwhile
        };
        let def = self.defs.get(&run.desc.model).cloned().ok_or_else(|| Failure::internal("pipeline vanished"))?;
        let metas = tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize)?;
        let i = d.aux as usize;
        let last = run.arrived.iter().filter(|a| a.is_none()).count() == 1;
        match run.arrived.get_mut(i) {
            Some(place @ None) => *place = Some(Arrived::new(slot, metas, last)),
            _ => return Err(Failure::internal(format!("unexpected model answer #{i}"))),
        }
        if run.arrived.iter().any(Option::is_none) {
            self.active.insert(d.request_id, run);
            return Ok(());
        }
        record(io, &def, run.step, run.sent_at);
        let groups = std::mem::take(&mut run.groups);
        run.ctx.outputs = groups.into_iter().zip(run.arrived.drain(..).flatten()).collect();
        run.step += 1;
        self.advance(io, &def, run)
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
            .filter(|(_, r)| r.desc.deadline_ns != 0 && r.desc.deadline_ns <= now_ns)
            .map(|(&k, _)| k)
            .collect();
        expired.into_iter().filter_map(|k| self.active.remove(&k)).map(|r| r.desc).collect()
    }

    /// Runs CPU steps until a model step sends work out (the request then
    /// waits in `active`) or the pipeline ends (the answer goes to the
    /// frontend). Parks it instead when a step (or the answer) finds no free
    /// slot.
    fn advance(&mut self, io: &Io, def: &Def, mut run: Running) -> Result<(), Failure> {
        loop {
            let Some(step) = def.steps.get(run.step) else {
                return match finish(io, def, &run) {
                    Err(f) if f.no_slot => {
                        self.park(run);
                        Ok(())
                    }
                    done => done,
                };
            };
            match step {
                PipelineStep::Cpu(cpu) => {
                    let started = Instant::now();
                    let slots = Slots { pool: io.peers.pool(), me: io.peers.me(), request_id: run.desc.request_id };
                    // A panic here drops the request's context with it.
                    match contain(|| cpu.run(&mut run.ctx, &slots))
                        .map_err(|panic| Failure::internal(format!("pipeline step failed: {panic}")))?
                    {
                        Ok(answer) => {
                            record(io, def, run.step, started);
                            if let Some(answer) = answer {
                                run.reply = Some(render(def, run.ctx.form, answer)?);
                            }
                        }
                        Err(f) if f.no_slot => {
                            // Nothing half-done is kept: the step can run again.
                            run.ctx.pending.clear();
                            self.park(run);
                            return Ok(());
                        }
                        Err(f) => return Err(f),
                    }
                    run.step += 1;
                }
                PipelineStep::Model(model) => {
                    let items = std::mem::take(&mut run.ctx.pending);
                    run.ctx.outputs.clear();
                    if items.is_empty() {
                        // Nothing to run (an image without text): skip the model.
                        run.step += 1;
                        continue;
                    }
                    run.sent_at = Instant::now();
                    run.groups = Vec::with_capacity(items.len());
                    run.arrived = (0..items.len()).map(|_| None).collect();
                    for (i, item) in items.into_iter().enumerate() {
                        let d = Descriptor {
                            kind: Kind::Tensors as u8,
                            model: *model,
                            offset: 0,
                            len: item.table_len as u32,
                            rows: item.rows,
                            reply_to: io.peers.me().0,
                            aux: i as u64,
                            sent_ns: shm::now_ns(),
                            flags: 0,
                            ..run.desc
                        };
                        run.groups.push(item.tags);
                        failure::send(io.peers, io.gpu, d, item.slot)?;
                    }
                    self.active.insert(run.desc.request_id, run);
                    return Ok(());
                }
            }
        }
    }
}

/// Adds `started.elapsed()` to step `step`'s counters (`usize::MAX`: the
/// decode, counted in the last slot).
fn record(io: &Io, def: &Def, step: usize, started: Instant) {
    let region = io.peers.region();
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

/// The last step's answer as it goes into a slot: a JSON body (with the
/// pipeline's name and version) or the output tensors.
fn render(def: &Def, form: Form, answer: Answer) -> Result<Reply, Failure> {
    match (answer, form) {
        (Answer::Json(fields), Form::Json) => {
            let mut body = serde_json::Map::new();
            body.insert("model_name".into(), def.name.clone().into());
            body.insert("model_version".into(), "1".into());
            body.extend(fields);
            Ok(Reply::Json(serde_json::to_vec(&body).map_err(|e| Failure::internal(e.to_string()))?))
        }
        (Answer::Tensors(outputs), Form::Tensors) => {
            let (specs, data) = outputs
                .into_iter()
                .map(|o| (TensorSpec { dtype: o.dtype, dims: o.dims, byte_len: o.data.len() }, o.data))
                .unzip();
            Ok(Reply::Tensors { specs, data })
        }
        _ => Err(Failure::internal(format!(
            "pipeline `{}` answered in another form than asked; this is a bug",
            def.name
        ))),
    }
}

/// Sends the answer: JSON for image requests, output tensors for v2 ones.
fn finish(io: &Io, def: &Def, run: &Running) -> Result<(), Failure> {
    let reply =
        run.reply.as_ref().ok_or_else(|| Failure::internal(format!("pipeline `{}` made no answer", def.name)))?;
    let (d, me, pool) = (run.desc, io.peers.me(), io.peers.pool());
    let reply = match reply {
        Reply::Json(json) => {
            let mut slot = pool.alloc(json.len(), me, d.request_id)?;
            slot.as_mut_slice()[..json.len()].copy_from_slice(json);
            let desc = Descriptor {
                kind: Kind::Response as u8,
                offset: 0,
                len: json.len() as u32,
                sent_ns: shm::now_ns(),
                ..d
            };
            (desc, slot)
        }
        Reply::Tensors { specs, data } => {
            let mut slot = pool.alloc(tensor::plan(0, specs)?.0, me, d.request_id)?;
            let (table_len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, specs)?;
            for (src, r) in data.iter().zip(ranges) {
                slot.as_mut_slice()[r].copy_from_slice(src);
            }
            let desc =
                Descriptor { kind: Kind::Outputs as u8, offset: 0, len: table_len as u32, sent_ns: shm::now_ns(), ..d };
            (desc, slot)
        }
    };
    failure::send(io.peers, ProcId::FRONTEND, reply.0, reply.1)
}

/// The failure of an expired request, for the frontend.
pub fn timeout_failure() -> Failure {
    Failure::new(Status::Timeout, "the request timed out in the pipeline (parameter `timeout` or the server default)")
}
