//! The scatter and the outputs that wait for a slot, over a real region
//! and mailbox.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use shm::mailbox::Wiring;
use shm::tensor::{self, DType};
use shm::{Descriptor, Inbox, Kind, LayoutParams, Peers, ProcId, Region, SlotClass, SlotPool, Status, Topology};

use super::parked::Parked;
use super::scatter::scatter;
use crate::backend::TensorView;
use crate::batcher::Pending;
use crate::request::{Item, Request};

/// Serializes these tests: tracing caches whether a log line is wanted per
/// call site, and a line first reached on another test's thread while
/// `with_default` installs the recorder here can be cached as unwanted.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The inference worker (GPU 0) of a region with two 4 KiB slots and one
/// 16 KiB slot, and the frontend's inbox.
fn setup() -> (Peers, Inbox, SlotPool) {
    let topology = Topology { gpus: 1, preprocs: 1 };
    let classes = [SlotClass { size: 4096, count: 2 }, SlotClass { size: 16384, count: 1 }];
    let p = LayoutParams::new(topology, 1, 8, &classes).unwrap();
    let region = Arc::new(Region::heap(&p).unwrap());
    let efds: Vec<Arc<OwnedFd>> = (0..topology.procs())
        .map(|_| Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()))
        .collect();
    let wiring = Wiring::new(region.clone(), topology.gpu(0), efds.clone()).unwrap();
    let frontend = Wiring::new(region.clone(), ProcId::FRONTEND, efds).unwrap();
    (Peers::new(&wiring), frontend.inbox(), SlotPool::new(region))
}

/// A one-row request in a 4 KiB slot, as the frontend sends it.
fn request(peers: &Peers, id: u64, deadline_ns: u64) -> Request {
    let slot = peers.pool().alloc(64, ProcId::FRONTEND, id).unwrap();
    let desc = Descriptor { request_id: id, deadline_ns, reply_to: 0, rows: 1, ..Default::default() };
    let item =
        Item { desc, slot: slot.into(), inputs: Vec::new(), encoded: false, staged: None, span: tracing::Span::none() };
    Pending { item, rows: 1, shape_key: 0, arrived_ns: 0, deadline_ns, priority: 0 }
}

/// Scatters one request's outputs of 8000 bytes (more than its 4 KiB
/// slot) while the only slot large enough is held: they wait. Returns
/// what waits, the held slot and the outputs' bytes.
fn scatter_while_held(peers: &Peers, pool: &SlotPool, id: u64, deadline_ns: u64) -> (Parked, shm::Slot, Vec<u8>) {
    let held = pool.alloc(16384, ProcId::FRONTEND, 99).unwrap();
    let data: Vec<u8> = (0..8000).map(|i| (i % 251) as u8).collect();
    let view = TensorView { dtype: DType::F32, shape: &[1, 2000], data: &data };
    let mut parked = Parked::default();
    scatter(peers, &mut parked, &mut vec![request(peers, id, deadline_ns)], &[view], true);
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
    let _serial = serial();
    let (peers, mut inbox, pool) = setup();
    let (mut parked, held, data) = scatter_while_held(&peers, &pool, 1, 0);
    assert!(inbox.try_recv().is_none(), "nothing sent yet");
    parked.retry(&peers);
    assert!(!parked.is_empty() && inbox.try_recv().is_none(), "still no slot");
    drop(held);
    parked.retry(&peers);
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
    let _serial = serial();
    let (peers, mut inbox, pool) = setup();
    let (mut parked, _held, _) = scatter_while_held(&peers, &pool, 2, shm::now_ns() + 5_000_000);
    std::thread::sleep(Duration::from_millis(10));
    parked.retry(&peers);
    assert!(parked.is_empty());
    let (d, message) = failure(&mut inbox, &pool);
    assert_eq!(d.request_id, 2);
    assert!(message.contains("before the request's deadline") && message.contains("[shm]"), "{message}");
}

#[test]
fn outputs_larger_than_any_slot_fail_at_once() {
    let _serial = serial();
    let (peers, mut inbox, pool) = setup();
    let data = vec![0u8; 24000]; // no slot class holds them
    let view = TensorView { dtype: DType::F32, shape: &[1, 6000], data: &data };
    let mut parked = Parked::default();
    let mut batch = vec![request(&peers, 3, 0)];
    scatter(&peers, &mut parked, &mut batch, &[view], true);
    assert!(parked.is_empty());
    let (d, message) = failure(&mut inbox, &pool);
    assert_eq!(d.request_id, 3);
    assert!(message.contains("largest slot class is 16384 bytes"), "{message}");
}

/// A subscriber that keeps each event's message with the spans it was
/// written in (`name{field=value}`, outermost first).
#[derive(Default)]
struct Recorder {
    spans: std::sync::Mutex<Vec<String>>,
    stack: std::sync::Mutex<Vec<u64>>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let sep = if self.0.is_empty() { "" } else { " " };
        self.0 = format!("{}{sep}{}={value:?}", self.0, field.name());
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(String::new());
        span.record(&mut fields);
        let mut spans = self.spans.lock().unwrap();
        spans.push(format!("{}{{{}}}", span.metadata().name(), fields.0));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let spans = self.spans.lock().unwrap();
        let within: Vec<&str> = self.stack.lock().unwrap().iter().map(|&id| spans[id as usize - 1].as_str()).collect();
        self.lines.lock().unwrap().push(format!("{}: {}", within.join(":"), fields.0));
    }
    fn enter(&self, span: &tracing::span::Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _: &tracing::span::Id) {
        self.stack.lock().unwrap().pop();
    }
}

/// What is done on the instance thread for one request is logged in that
/// request's span, so the line names it.
#[test]
fn a_failure_on_the_instance_thread_is_logged_in_its_request_span() {
    let _serial = serial();
    let (peers, mut inbox, pool) = setup();
    let recorder = Recorder::default();
    let lines = recorder.lines.clone();
    tracing::subscriber::with_default(recorder, || {
        let data = vec![0u8; 24000]; // no slot class holds them
        let view = TensorView { dtype: DType::F32, shape: &[1, 6000], data: &data };
        let mut p = request(&peers, 4, 0);
        p.item.span = tracing::debug_span!("request", request_id = 4);
        scatter(&peers, &mut Parked::default(), &mut vec![p], &[view], true);
    });
    assert_eq!(failure(&mut inbox, &pool).0.request_id, 4);
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().any(|l| l.starts_with("request{request_id=4}: ") && l.contains("request failed")),
        "{lines:?}"
    );
}
