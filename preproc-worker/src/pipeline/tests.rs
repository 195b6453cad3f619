//! The engine with toy steps over a heap region: a CPU step that makes a
//! tensor, a model step answered by a fake inference worker, and a last step
//! that answers; parking, expiry, fan-out and failures.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shm::mailbox::Wiring;
use shm::stats::{MAX_STEPS, step_stats};
use shm::tensor::{self, DType, TensorSpec};
use shm::{Descriptor, Inbox, Kind, LayoutParams, Peers, ProcId, Region, SlotClass, SlotPool, Status, Topology};

use super::engine::{Def, Engine, Io, PipelineStep};
use super::step::{Answer, CpuStep, Ctx, Form, Output};
use super::tensors::{Item, Slots};
use crate::failure::Failure;
use crate::image::DecodeLimits;

/// The model the toy pipeline's model step runs.
const MODEL: u16 = 0;

/// A preproc worker's view of a heap region with one inference worker, and
/// the inboxes of the other processes.
struct Rig {
    peers: Peers,
    me: Inbox,
    gpu: ProcId,
    gpu_inbox: Inbox,
    gpu_wiring: Wiring,
    frontend: Inbox,
    /// The slots, seen from outside the worker.
    pool: SlotPool,
}

/// A region with `slots` slots of 4 KiB.
fn rig(slots: u32) -> Rig {
    let topology = Topology { gpus: 1, preprocs: 1 };
    let p = LayoutParams::new(topology, 1, 8, &[SlotClass { size: 4096, count: slots }]).unwrap();
    let region = Arc::new(Region::heap(&p).unwrap());
    // No process here sleeps on its inbox (every receiver polls), so no
    // wake-up is ever written: /dev/null stands in for the eventfds.
    let efds: Vec<Arc<OwnedFd>> = (0..topology.procs())
        .map(|_| Arc::new(OwnedFd::from(File::options().write(true).open("/dev/null").unwrap())))
        .collect();
    let wiring = |p: ProcId| Wiring::new(region.clone(), p, efds.clone()).unwrap();
    let (me, gpu) = (wiring(topology.preproc(0)), wiring(topology.gpu(0)));
    Rig {
        peers: Peers::new(&me),
        me: me.inbox(),
        gpu: topology.gpu(0),
        gpu_inbox: gpu.inbox(),
        gpu_wiring: gpu,
        frontend: wiring(ProcId::FRONTEND).inbox(),
        pool: SlotPool::new(region),
    }
}

impl Rig {
    fn io(&self) -> Io<'_> {
        Io { peers: &self.peers, gpu: self.gpu }
    }

    /// The fake inference worker: answers every model request waiting for
    /// it with its input tensor doubled, last received first. Returns the
    /// request ids it answered, in the order received.
    fn answer_all(&mut self) -> Vec<u64> {
        let mut got = Vec::new();
        while let Some((from, d)) = self.gpu_inbox.try_recv() {
            got.push((from, d));
        }
        let back = self.gpu_wiring.outbox(self.peers.me()).unwrap();
        for &(from, d) in got.iter().rev() {
            assert_eq!((d.kind, d.model, d.reply_to), (Kind::Tensors as u8, MODEL, self.peers.me().0));
            let mut slot = self.pool.adopt(from, self.gpu, &d).unwrap();
            let metas = tensor::read_table(slot.as_slice(), 0, d.len as usize).unwrap();
            let values = f32s(slot.bytes(metas[0].offset, metas[0].len).unwrap());
            let spec = TensorSpec::dense(DType::F32, &metas[0].dims).unwrap();
            let (len, ranges) = tensor::write_table(slot.as_mut_slice(), 0, std::slice::from_ref(&spec)).unwrap();
            let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
            slot.as_mut_slice()[ranges[0].clone()].copy_from_slice(bytemuck::cast_slice(&doubled));
            let answer = Descriptor { kind: Kind::Outputs as u8, offset: 0, len: len as u32, ..d };
            back.send_slot(answer, slot).map_err(|(e, _)| e).unwrap();
        }
        got.iter().map(|(_, d)| d.request_id).collect()
    }

    /// Hands the engine every model answer that came back.
    fn deliver(&mut self, engine: &mut Engine) {
        while let Some((from, d)) = self.me.try_recv() {
            engine.on_outputs(&self.io(), from, &d).ok().expect("the answer is taken");
        }
    }

    /// The next message the frontend got: its descriptor and bytes.
    fn next_to_frontend(&mut self) -> Option<(Descriptor, Vec<u8>)> {
        let (from, d) = self.frontend.try_recv()?;
        let slot = self.pool.adopt(from, ProcId::FRONTEND, &d).unwrap();
        let end = if d.kind == Kind::Outputs as u8 { slot.capacity() } else { d.len as usize };
        Some((d, slot.as_slice()[..end].to_vec()))
    }

    fn slots_in_use(&self) -> u32 {
        self.pool.occupancy()[0].1
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A 2x1 raw RGB frame, as the frontend passes one on.
fn image() -> Vec<u8> {
    let info = shm::frame::FrameInfo { format: shm::frame::PixelFormat::Rgb24, width: 2, height: 1 };
    let mut bytes = info.header().to_vec();
    bytes.extend_from_slice(&[10, 20, 30, 40, 50, 60]);
    bytes
}

fn request(id: u64, form: Form) -> Descriptor {
    let flags = if form == Form::Json { shm::desc::FLAG_POSTPROCESS } else { 0 };
    Descriptor { request_id: id, model: 0, rows: 1, flags, ..Default::default() }
}

/// What the toy steps keep: how often the first step ran.
#[derive(Default)]
struct Toy {
    runs: u32,
}

/// The first step: one model request per entry of `.0`, each a [1, 3] tensor
/// of (width, height, first red value + entry); its tag is the entry.
struct Tensorize(Vec<usize>);

impl CpuStep for Tensorize {
    fn run(&self, ctx: &mut Ctx, slots: &Slots) -> Result<Option<Answer>, Failure> {
        ctx.state.get::<Toy>()?.runs += 1;
        let image = ctx.image.as_ref().ok_or_else(|| Failure::internal("no image"))?;
        let mut items = Vec::new();
        for &tag in &self.0 {
            let mut item = Item::new(slots, &[1, 3], vec![tag])?;
            let values = [image.width as f32, image.height as f32, (image.data[0] as usize + tag) as f32];
            item.data_mut().copy_from_slice(bytemuck::cast_slice(&values));
            items.push(item);
        }
        ctx.image = None;
        ctx.pending = items;
        Ok(None)
    }
}

/// The last step: every value the model answered, in tag order.
struct Collect;

impl CpuStep for Collect {
    fn run(&self, ctx: &mut Ctx, _: &Slots) -> Result<Option<Answer>, Failure> {
        let mut values = Vec::new();
        for (tags, answer) in &ctx.outputs {
            values.push((tags[0] as f32, answer.f32s(0)?.1.to_vec()));
        }
        values.push((-1.0, vec![ctx.state.get::<Toy>()?.runs as f32]));
        let flat: Vec<f32> = values.into_iter().flat_map(|(tag, v)| std::iter::once(tag).chain(v)).collect();
        Ok(Some(match ctx.form {
            Form::Json => Answer::Json(serde_json::Map::from_iter([("lines".into(), serde_json::json!(flat))])),
            Form::Tensors => Answer::Tensors(vec![Output {
                dtype: DType::F32,
                dims: vec![flat.len() as i64],
                data: bytemuck::cast_slice(&flat).to_vec(),
            }]),
        }))
    }
}

fn engine(first: impl CpuStep + 'static, last: impl CpuStep + 'static) -> Engine {
    let steps = vec![PipelineStep::Cpu(Box::new(first)), PipelineStep::Model(MODEL), PipelineStep::Cpu(Box::new(last))];
    let def = Def { index: 0, name: "toy".into(), steps };
    Engine::with_pipelines(vec![def], DecodeLimits::default()).ok().unwrap()
}

#[test]
fn a_request_runs_through_its_steps_and_is_answered_in_json() {
    let mut rig = rig(4);
    let mut engine = engine(Tensorize(vec![0]), Collect);
    engine.start(&rig.io(), &request(7, Form::Json), &image()).ok().unwrap();
    assert!(rig.next_to_frontend().is_none() && engine.owns(7));
    assert_eq!(rig.answer_all(), vec![7]);
    rig.deliver(&mut engine);
    let (d, body) = rig.next_to_frontend().expect("answered");
    assert_eq!((d.kind, d.request_id), (Kind::Response as u8, 7));
    // The keys in the order the OCR answers have always had them.
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"lines":[0.0,4.0,2.0,20.0,-1.0,1.0],"model_name":"toy","model_version":"1"}"#
    );
    assert!(!engine.owns(7));
    assert_eq!(rig.slots_in_use(), 0);
    let stats = step_stats(rig.peers.region(), 0).unwrap();
    let counts: Vec<u64> = [0, 1, 2, MAX_STEPS - 1].iter().map(|&i| stats[i].count.load(Ordering::Relaxed)).collect();
    assert_eq!(counts, vec![1, 1, 1, 1], "the three steps and the decode");
}

#[test]
fn a_v2_request_is_answered_with_tensors() {
    let mut rig = rig(4);
    let mut engine = engine(Tensorize(vec![0]), Collect);
    engine.start(&rig.io(), &request(7, Form::Tensors), &image()).ok().unwrap();
    rig.answer_all();
    rig.deliver(&mut engine);
    let (d, bytes) = rig.next_to_frontend().expect("answered");
    assert_eq!(d.kind, Kind::Outputs as u8);
    let metas = tensor::read_table(&bytes, 0, d.len as usize).unwrap();
    assert_eq!((metas.len(), metas[0].dtype, &metas[0].dims[..]), (1, DType::F32, &[6][..]));
    let values = f32s(&bytes[metas[0].offset..metas[0].offset + metas[0].len]);
    assert_eq!(values, vec![0.0, 4.0, 2.0, 20.0, -1.0, 1.0]);
}

#[test]
fn answers_come_back_in_the_order_sent_and_the_early_ones_give_their_slot_back() {
    let mut rig = rig(4);
    let mut engine = engine(Tensorize(vec![0, 1]), Collect);
    engine.start(&rig.io(), &request(7, Form::Json), &image()).ok().unwrap();
    assert_eq!(rig.slots_in_use(), 2);
    rig.answer_all(); // the second request first
    let (from, d) = rig.me.try_recv().unwrap();
    assert_eq!(d.aux, 1);
    engine.on_outputs(&rig.io(), from, &d).ok().unwrap();
    assert_eq!(rig.slots_in_use(), 1, "copied to the heap while the other is awaited");
    rig.deliver(&mut engine);
    let (_, body) = rig.next_to_frontend().expect("answered");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["lines"], serde_json::json!([0.0, 4.0, 2.0, 20.0, 1.0, 4.0, 2.0, 22.0, -1.0, 1.0]));
    assert_eq!(rig.slots_in_use(), 0);
}

#[test]
fn a_step_without_a_free_slot_parks_and_resumes_in_order() {
    let mut rig = rig(3);
    let held: Vec<_> = (0..3).map(|i| rig.pool.alloc(64, ProcId::FRONTEND, 100 + i).unwrap()).collect();
    let mut engine = engine(Tensorize(vec![0]), Collect);
    engine.start(&rig.io(), &request(1, Form::Json), &image()).ok().unwrap();
    engine.start(&rig.io(), &request(2, Form::Json), &image()).ok().unwrap();
    assert_eq!((engine.parked(), engine.active()), (2, 2), "parked, not failed");
    assert!(engine.retry_parked(&rig.io()).is_empty());
    assert_eq!(engine.parked(), 2, "still no slot");
    let mut held = held.into_iter();
    drop(held.next());
    assert!(engine.retry_parked(&rig.io()).is_empty());
    assert_eq!(engine.parked(), 1, "the oldest went first; the next waits");
    drop(held);
    assert!(engine.retry_parked(&rig.io()).is_empty());
    assert_eq!(engine.parked(), 0);
    assert_eq!(rig.answer_all(), vec![1, 2], "in the order they came");
    rig.deliver(&mut engine);
    let mut runs: Vec<(u64, serde_json::Value)> = (0..2)
        .map(|_| {
            let (d, body) = rig.next_to_frontend().expect("answered");
            (d.request_id, serde_json::from_slice::<serde_json::Value>(&body).unwrap()["lines"][5].clone())
        })
        .collect();
    runs.sort_by_key(|r| r.0);
    // The state the step kept survived its tries without a slot.
    assert_eq!(runs, vec![(1, serde_json::json!(3.0)), (2, serde_json::json!(2.0))]);
}

#[test]
fn expired_requests_are_taken_out_and_their_late_answers_dropped() {
    let mut rig = rig(2);
    let mut engine = engine(Tensorize(vec![0]), Collect);
    let deadline = Descriptor { deadline_ns: shm::now_ns() + 1_000_000_000, ..request(1, Form::Json) };
    engine.start(&rig.io(), &deadline, &image()).ok().unwrap();
    // A second one waits for a slot while the only other is held.
    let held = rig.pool.alloc(64, ProcId::FRONTEND, 99).unwrap();
    engine.start(&rig.io(), &Descriptor { deadline_ns: 1, ..request(2, Form::Json) }, &image()).ok().unwrap();
    assert_eq!((engine.active(), engine.parked()), (2, 1));
    let expired = engine.expire(shm::now_ns());
    assert_eq!(expired.iter().map(|d| d.request_id).collect::<Vec<_>>(), vec![2]);
    let expired = engine.expire(deadline.deadline_ns);
    assert_eq!(expired.iter().map(|d| d.request_id).collect::<Vec<_>>(), vec![1]);
    drop(held);
    assert!(engine.retry_parked(&rig.io()).is_empty());
    assert_eq!((engine.active(), engine.parked()), (0, 0), "the expired parked request is skipped");
    rig.answer_all();
    rig.deliver(&mut engine);
    assert!(rig.next_to_frontend().is_none());
    assert_eq!(rig.slots_in_use(), 0, "the late answer's slot is freed");
}

#[test]
fn failures_fail_only_their_request() {
    struct Panics;
    impl CpuStep for Panics {
        fn run(&self, _: &mut Ctx, _: &Slots) -> Result<Option<Answer>, Failure> {
            panic!("toy bug")
        }
    }
    /// Shares the request's state with `Tensorize`, as another type.
    struct WrongState;
    impl CpuStep for WrongState {
        fn run(&self, ctx: &mut Ctx, _: &Slots) -> Result<Option<Answer>, Failure> {
            ctx.state.get::<u8>()?;
            Ok(None)
        }
    }
    let mut rig = rig(2);
    let failure =
        |engine: &mut Engine, bytes: &[u8]| engine.start(&rig.io(), &request(1, Form::Json), bytes).err().unwrap();
    let f = failure(&mut engine(Panics, Collect), &image());
    assert_eq!((f.status, f.message.as_str()), (Status::Internal, "pipeline step failed: toy bug"));
    let f = failure(&mut engine(Tensorize(vec![0]), Collect), b"GIF89a");
    assert_eq!(f.status, Status::InvalidInput);
    assert!(f.message.starts_with("the body is not a JPEG or PNG image"), "{}", f.message);
    let mut toy = engine(Tensorize(vec![0]), WrongState);
    toy.start(&rig.io(), &request(1, Form::Json), &image()).ok().unwrap();
    rig.answer_all();
    let (from, d) = rig.me.try_recv().unwrap();
    let f = toy.on_outputs(&rig.io(), from, &d).err().unwrap();
    assert_eq!(f.status, Status::Internal);
    assert!(f.message.starts_with("the pipeline's state is not a u8"), "{}", f.message);
    assert_eq!((toy.active(), rig.slots_in_use()), (0, 0));
}
