//! Socket-free tests of the frontend as a whole: the router called as a
//! function over a `State` built on a heap region (as the supervisor would
//! build it, with real eventfds), the receive loop on its thread, and
//! threads standing in for the workers.

mod admission;
mod client_shm;
mod control;
mod dispatch;
mod routing;
mod table;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use model_repo::control::{Secret, Upstream};
use model_repo::{Model, ModelConfig, ModelState, Repository};
use shm::mailbox::Wiring;
use shm::region::ProcState;
use shm::{Inbox, LayoutParams, Peers, ProcId, Region, SlotClass, Topology};

use crate::dispatch::{Dispatch, Receiver};
use crate::state::{Control, Limits, State};
use tokio::sync::mpsc::UnboundedReceiver;

/// A tensor model: two FP32 numbers in, two out; one request at a time.
pub const ADD: &str = "max_batch_size = 4\nmax_inflight = 1\n\
                       [[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
                       [[output]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [2]\n";

/// A v2 JSON request for `add`.
pub const ADD_JSON: &[u8] = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;

/// An image classifier: images in, labels out (post-processed to JSON).
pub const CLS: &str = "max_batch_size = 4\n\
                       [[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [3, 8, 8]\n\
                       [[output]]\nname = \"probs\"\ndatatype = \"FP32\"\ndims = [2]\n\
                       [preprocess]\nresize = \"stretch\"\nwidth = 8\nheight = 8\n\
                       [postprocess]\nkind = \"classification\"\ntop_k = 1\nlabels = [\"no\", \"yes\"]\n";

pub fn model(name: &str, config: &str) -> Model {
    Model {
        name: name.into(),
        dir: PathBuf::from("/nonexistent"),
        versions: vec![1],
        config: ModelConfig::parse(config, name).expect("the test config parses"),
        state: Default::default(),
    }
}

/// Version `version` of `name`, in `state`.
pub fn version(name: &str, config: &str, version: u64, state: ModelState) -> Model {
    Model { versions: vec![version], state, ..model(name, config) }
}

pub fn limits() -> Limits {
    Limits {
        max_body_bytes: 1 << 20,
        max_inflight: 64,
        max_inflight_bytes: 16 << 20,
        priority_headroom: 0.1,
        request_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
    }
}

/// A frontend over a heap region of one inference worker and one preproc
/// worker (both ready), serving `add` (index 0) and `cls` (index 1), with
/// room for four entries; what it sends the supervisor is kept.
pub struct Harness {
    pub state: Arc<State>,
    region: Arc<Region>,
    efds: Vec<Arc<OwnedFd>>,
    upstream: Mutex<UnboundedReceiver<Upstream>>,
    _receiver: Receiver,
}

impl Harness {
    pub fn new(limits: Limits) -> Harness {
        Harness::with_token(limits, None)
    }

    /// One whose load and unload need `token`, when given.
    pub fn with_token(limits: Limits, token: Option<&str>) -> Harness {
        let topology = Topology { gpus: 1, preprocs: 1 };
        let classes = [SlotClass { size: 64 << 10, count: 8 }];
        let params = LayoutParams::new(topology, 4, 8, &classes).unwrap();
        let region = Arc::new(Region::heap(&params).unwrap());
        let efds: Vec<Arc<OwnedFd>> = (0..topology.procs())
            .map(|_| Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap()))
            .collect();
        for p in [topology.gpu(0), topology.preproc(0)] {
            region.set_proc_state(p, ProcState::Ready);
        }
        let wiring = Wiring::new(region.clone(), ProcId::FRONTEND, efds.clone()).unwrap();
        let dispatch = Arc::new(Dispatch::new(&wiring));
        let receiver = Receiver::spawn(dispatch.clone(), &wiring, Duration::ZERO).unwrap();
        let repository = Arc::new(Repository {
            root: PathBuf::from("/nonexistent"),
            models: vec![model("add", ADD), model("cls", CLS)],
            generation: 0,
            failures: Default::default(),
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let control = Control {
            notify: Arc::new(move |u| {
                let _ = tx.send(u);
            }),
            admin_token: token.map(|t| Secret::new(t.into())),
            allow_client_shm: true,
        };
        let state = Arc::new(State::new(dispatch, repository, limits, control));
        Harness { state, region, efds, upstream: Mutex::new(rx), _receiver: receiver }
    }

    /// Applies a table of `models` (generation: the last one's plus one),
    /// as the supervisor's `Models` command does.
    pub fn apply(&self, models: Vec<Model>) {
        let old = self.state.table();
        let table = Repository { models, generation: old.generation + 1, ..(*old).clone() };
        self.state.apply(Arc::new(table));
    }

    /// What the frontend sent the supervisor so far and was not taken yet.
    pub fn sent(&self) -> Vec<Upstream> {
        let mut rx = self.upstream.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The next thing the frontend sends the supervisor (within 10 s).
    pub async fn next_sent(&self) -> Upstream {
        for _ in 0..1000 {
            if let Ok(u) = self.upstream.lock().unwrap().try_recv() {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the frontend sent nothing upstream within 10 s");
    }

    pub fn topology(&self) -> Topology {
        self.region.layout().topology()
    }

    /// What worker `p` sees: its inbox, and its lanes out.
    pub fn worker(&self, p: ProcId) -> (Inbox, Peers) {
        let wiring = Wiring::new(self.region.clone(), p, self.efds.clone()).unwrap();
        (wiring.inbox(), Peers::new(&wiring))
    }

    pub fn set_state(&self, p: ProcId, state: ProcState) {
        self.region.set_proc_state(p, state);
    }

    /// Sends a request through the router, as a connection would.
    pub async fn call(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = crate::http::router::route(&self.state, req).await;
        let (parts, body) = resp.into_parts();
        Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, &[], b"").await
    }

    /// The metrics text, as scraped.
    pub fn metrics(&self) -> String {
        crate::metrics::render(&self.state.scrape())
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The `error` of an error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error in {}", self.text())).to_string()
    }
}
