//! Models loaded, swapped and unloaded while the inference worker serves,
//! through the crate: `gpu_worker::run` on a heap region with a real model
//! (ppocr_cls on ONNX Runtime), this test playing the supervisor (tables
//! through `updates`, reports from `notify`) and the frontend (requests
//! into the worker's inbox, answers out of the frontend's).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use model_repo::control::{Report, Upstream};
use model_repo::{Model, ModelState, Repository};
use shm::mailbox::{SelfWaker, Wiring};
use shm::tensor::{self, DType, TensorSpec};
use shm::{Descriptor, Inbox, Kind, LayoutParams, Peers, ProcId, Region, SlotClass, Topology};

use ModelState::{Loading, Ready, Unloaded, Unloading};

const PATIENCE: Duration = Duration::from_secs(60);

/// Every log line of the test process, at info and above (the worker logs
/// from many threads).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Recorder;

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        LOG.lock().unwrap_or_else(|e| e.into_inner()).push(m.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Waits for a log line containing `text`.
fn await_log(text: &str) {
    let until = Instant::now() + PATIENCE;
    while !LOG.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|l| l.contains(text)) {
        assert!(Instant::now() < until, "no log line with {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn need(path: PathBuf) -> PathBuf {
    assert!(path.is_file(), "{} is missing; run `./scripts/fetch` from the repository root", path.display());
    path
}

/// A repository holding `name` (ppocr_cls's config and file, as versions 1
/// and 2) and `broken` (the same config, a file that is not a model).
fn repository(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(need(repo_path("models/ppocr_cls/config.toml"))).unwrap();
    let file = need(repo_path("models/ppocr_cls/1/model.onnx"));
    for v in ["1", "2"] {
        let dir = tmp.path().join(name).join(v);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&file, dir.join("model.onnx")).unwrap();
    }
    std::fs::write(tmp.path().join(name).join("config.toml"), &config).unwrap();
    std::fs::create_dir_all(tmp.path().join("broken/1")).unwrap();
    std::fs::write(tmp.path().join("broken/config.toml"), &config).unwrap();
    std::fs::write(tmp.path().join("broken/1/model.onnx"), b"not a model").unwrap();
    tmp
}

/// The test's side of a running inference worker.
struct Rig {
    root: tempfile::TempDir,
    name: String,
    generation: u64,
    frontend: Peers,
    inbox: Inbox,
    updates: mpsc::Sender<Arc<Repository>>,
    waker: SelfWaker,
    reports: mpsc::Receiver<Upstream>,
    seen: Vec<Report>,
    shutdown: Arc<AtomicBool>,
    worker: Option<JoinHandle<Result<(), gpu_worker::WorkerError>>>,
    next_id: u64,
}

impl Rig {
    /// Starts the worker on a table of `entries` (name, version, state);
    /// returns once it is ready.
    fn start(name: &str, entries: &[(&str, u64, ModelState)]) -> Rig {
        static LOGGING: std::sync::Once = std::sync::Once::new();
        LOGGING.call_once(|| tracing::subscriber::set_global_default(Recorder).expect("the only subscriber"));
        let root = repository(name);
        let topology = Topology { gpus: 1, preprocs: 1 };
        // Room for four entries; one slot class that holds a request.
        let classes = [SlotClass { size: 256 << 10, count: 16 }];
        let params = LayoutParams::new(topology, 4, 64, &classes).unwrap();
        let region = Arc::new(Region::heap(&params).unwrap());
        let efds: Vec<Arc<OwnedFd>> = (0..topology.procs())
            .map(|_| Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()))
            .collect();
        let wiring = Wiring::new(region.clone(), topology.gpu(0), efds.clone()).unwrap();
        let front = Wiring::new(region, ProcId::FRONTEND, efds).unwrap();
        let (updates, updates_rx) = mpsc::channel();
        let (reports_tx, reports) = mpsc::channel();
        let waker = wiring.self_waker();
        let mut rig = Rig {
            root,
            name: name.into(),
            generation: 0,
            frontend: Peers::new(&front),
            inbox: front.inbox(),
            updates,
            waker,
            reports,
            seen: Vec::new(),
            shutdown: Arc::new(AtomicBool::new(false)),
            worker: None,
            next_id: 0,
        };
        let cfg = gpu_worker::Config {
            wiring,
            repository: Arc::new(rig.table(entries)),
            updates: updates_rx,
            notify: Arc::new(move |u| {
                let _ = reports_tx.send(u);
            }),
            index: 0,
            onnxruntime_library: need(repo_path(".cache/onnxruntime/libonnxruntime.so")),
            intra_op_threads: 1,
            max_concurrent_batches: 0,
            spin: Duration::ZERO,
            cuda_device: None,
            gpu_engine: Default::default(),
        };
        let (ready_tx, ready) = mpsc::channel();
        let shutdown = rig.shutdown.clone();
        rig.worker = Some(std::thread::spawn(move || {
            gpu_worker::run(cfg, shutdown, move || {
                let _ = ready_tx.send(());
            })
        }));
        if ready.recv_timeout(PATIENCE).is_err() {
            let result = rig.worker.take().unwrap().join();
            panic!("the worker did not come up: {result:?}");
        }
        rig
    }

    /// A table of `entries` (`name` is the rig's model, or `broken`).
    fn table(&mut self, entries: &[(&str, u64, ModelState)]) -> Repository {
        let root = self.root.path();
        let models = entries
            .iter()
            .map(|&(name, version, state)| {
                let base = Repository::load(root, Some(&[name.to_string()])).unwrap().models.remove(0);
                Model { versions: vec![version], state, ..base }
            })
            .collect();
        self.generation += 1;
        Repository { root: root.to_path_buf(), models, generation: self.generation, failures: Default::default() }
    }

    /// Hands the worker a new table, as the control thread does; returns
    /// its generation.
    fn send_table(&mut self, entries: &[(&str, u64, ModelState)]) -> u64 {
        let t = self.table(entries);
        self.updates.send(Arc::new(t)).unwrap();
        self.waker.wake();
        self.generation
    }

    /// Waits for the worker to report `want`.
    fn expect(&mut self, want: Report) {
        let until = Instant::now() + PATIENCE;
        while !self.seen.contains(&want) {
            let left = until.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(Upstream::Report(r)) => self.seen.push(r),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => panic!("no {want:?} within {PATIENCE:?}; reported: {:?}", self.seen),
            }
        }
    }

    /// The next `loaded` report of entry `slot` (taken out of those seen).
    fn loaded(&mut self, slot: u16) -> Option<String> {
        let until = Instant::now() + PATIENCE;
        loop {
            let found = self.seen.iter().position(|r| matches!(r, Report::Loaded { slot: s, .. } if *s == slot));
            if let Some(i) = found {
                let Report::Loaded { error, .. } = self.seen.remove(i) else { unreachable!("matched above") };
                return error;
            }
            match self.reports.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Upstream::Report(r)) => self.seen.push(r),
                other => panic!("no load report of entry {slot}: {other:?}; reported: {:?}", self.seen),
            }
        }
    }

    /// Sends a one-row request of zeros for entry `slot`; returns its id.
    fn send(&mut self, slot: u16) -> u64 {
        self.send_as(slot, Kind::Tensors)
    }

    /// [`Rig::send`] as a descriptor of `kind` (images: for GPU decoding).
    fn send_as(&mut self, slot: u16, kind: Kind) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let spec = TensorSpec::dense(DType::F32, &[1, 3, 48, 192]).unwrap();
        let (need, _) = tensor::plan(0, std::slice::from_ref(&spec)).unwrap();
        let mut s = self.frontend.pool().alloc(need, ProcId::FRONTEND, id).unwrap();
        let (len, ranges) = tensor::write_table(s.as_mut_slice(), 0, &[spec]).unwrap();
        s.as_mut_slice()[ranges[0].clone()].fill(0);
        let d = Descriptor {
            request_id: id,
            kind: kind as u8,
            model: slot,
            tenant: slot,
            rows: 1,
            len: len as u32,
            attempt: 1,
            ..Default::default()
        };
        self.frontend.send(ProcId(1), d, s).unwrap();
        id
    }

    /// The answer to request `id`: its output's dims, or the error message.
    fn answer(&mut self, id: u64) -> Result<Vec<i64>, String> {
        let until = Instant::now() + PATIENCE;
        while Instant::now() < until {
            let Some((from, d)) = self.inbox.recv(Some(Duration::from_millis(100)), Duration::ZERO) else { continue };
            let slot = self.frontend.pool().adopt(from, ProcId::FRONTEND, &d).unwrap();
            assert_eq!(d.request_id, id, "answers come in order here");
            let bytes = &slot.as_slice()[d.offset as usize..(d.offset + d.len) as usize];
            return match Kind::from_u8(d.kind) {
                Some(Kind::Outputs) => {
                    Ok(tensor::read_table(slot.as_slice(), d.offset as usize, d.len as usize).unwrap()[0].dims.clone())
                }
                _ => Err(String::from_utf8_lossy(bytes).into_owned()),
            };
        }
        panic!("no answer to request {id} within {PATIENCE:?}");
    }

    fn infer(&mut self, slot: u16) -> Result<Vec<i64>, String> {
        let id = self.send(slot);
        self.answer(id)
    }

    /// Waits until this process has `n` instance threads of `model`
    /// (threads are named `<model>-<k>`).
    fn await_instances(&self, model: &str, n: usize) {
        let until = Instant::now() + PATIENCE;
        let count = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .filter(|comm| comm.trim_end().strip_prefix(model).is_some_and(|k| k.starts_with('-')))
                .count()
        };
        while count() != n {
            assert!(Instant::now() < until, "{} instance threads of {model}, not {n}", count());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(w) = self.worker.take() {
            let result = w.join().expect("the worker does not panic");
            if !std::thread::panicking() {
                result.expect("the worker stops cleanly");
            }
        }
    }
}

#[test]
fn versions_load_alongside_swap_and_unload_while_serving() {
    let mut rig = Rig::start("swap", &[("swap", 1, Ready)]);
    let name = rig.name.clone();
    assert_eq!(rig.infer(0), Ok(vec![1, 2]));
    assert_eq!(rig.infer(1), Err("no runnable model #1".into()), "beyond the table");
    assert_eq!(rig.infer(9), Err("no runnable model #9".into()), "beyond the capacity");
    rig.await_instances(&name, 2);

    // Version 2 loads alongside; until the table makes it ready it is refused.
    let g = rig.send_table(&[("swap", 1, Ready), ("swap", 2, Loading)]);
    rig.expect(Report::Applied { generation: g });
    assert_eq!(rig.loaded(1), None, "loaded and warmed up");
    rig.await_instances(&name, 4);
    await_log("loaded swap instance 1 in ");
    await_log("loaded swap version 2 (entry 1) in ");
    let e = rig.infer(1).unwrap_err();
    assert_eq!(e, "model `swap` version 2 is not loaded yet (it is loading)");
    assert_eq!(rig.infer(0), Ok(vec![1, 2]));

    // The switch: both are served, the old one for what is in flight.
    let g = rig.send_table(&[("swap", 1, Unloading), ("swap", 2, Ready)]);
    rig.expect(Report::Applied { generation: g });
    assert_eq!((rig.infer(0), rig.infer(1)), (Ok(vec![1, 2]), Ok(vec![1, 2])));

    // Version 1 unloaded: its instances stop, and it is refused.
    let g = rig.send_table(&[("swap", 1, Unloaded), ("swap", 2, Ready)]);
    rig.expect(Report::Applied { generation: g });
    rig.await_instances(&name, 2);
    await_log("unloaded swap version 1 (entry 0)");
    assert_eq!(rig.infer(0), Err("model `swap` version 1 is not loaded".into()));
    let images = rig.send_as(0, Kind::Images);
    assert_eq!(rig.answer(images), Err("model `swap` version 1 is not loaded".into()), "images too");
    assert_eq!(rig.infer(1), Ok(vec![1, 2]));

    // A load that fails at the freed index says why, and version 2 serves on.
    let g = rig.send_table(&[("broken", 1, Loading), ("swap", 2, Ready)]);
    rig.expect(Report::Applied { generation: g });
    let e = rig.loaded(0).expect("the load fails");
    assert!(e.starts_with("model `broken` version 1: ") && e.contains("cannot load model"), "{e}");
    rig.await_instances("broken", 0);
    assert_eq!(rig.infer(1), Ok(vec![1, 2]));
    let g = rig.send_table(&[("broken", 1, Unloaded), ("swap", 2, Ready)]);
    rig.expect(Report::Applied { generation: g });

    // The index loads again; a request sent before the table that unloads
    // it (a pipeline's step, say) is still served.
    rig.send_table(&[("swap", 1, Loading), ("swap", 2, Ready)]);
    assert_eq!(rig.loaded(0), None);
    let g = rig.send_table(&[("swap", 1, Ready), ("swap", 2, Ready)]);
    rig.expect(Report::Applied { generation: g });
    let id = rig.send(0);
    let g = rig.send_table(&[("swap", 1, Unloaded), ("swap", 2, Ready)]);
    assert_eq!(rig.answer(id), Ok(vec![1, 2]));
    rig.expect(Report::Applied { generation: g });
    rig.await_instances(&name, 2);
    assert_eq!(rig.infer(1), Ok(vec![1, 2]));
}

#[test]
fn a_worker_started_during_a_load_loads_it_in_the_background_and_reports_it() {
    let mut rig = Rig::start("restart", &[("restart", 1, Ready), ("restart", 2, Loading)]);
    assert_eq!(rig.infer(0), Ok(vec![1, 2]));
    assert_eq!(rig.loaded(1), None);
    let name = rig.name.clone();
    rig.await_instances(&name, 4);
}
