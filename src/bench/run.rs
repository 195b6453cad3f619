//! One run of the load generator: for each class, the connections (closed
//! loop) or the arrival schedule (open loop); the measurement windows, which
//! every class shares; and the stability rule. Everything runs on one thread.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{Arrivals, Body, Class, Load, Plan};

/// The answers of one measurement window.
pub struct Tally {
    /// Latency in µs of every answer, whatever its status.
    pub hist: Histogram<u64>,
    /// Latency of 2xx answers only (under overload, 429s come back at once).
    pub ok_hist: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connection refused or reset).
    pub errors: u64,
}

impl Tally {
    pub fn new() -> Tally {
        let h = || Histogram::new(3).expect("3 significant digits is valid");
        Tally { hist: h(), ok_hist: h(), statuses: BTreeMap::new(), errors: 0 }
    }

    pub fn add(&mut self, o: &Tally) {
        let _ = self.hist.add(&o.hist);
        let _ = self.ok_hist.add(&o.ok_hist);
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.errors += o.errors;
    }

    pub fn ok(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum()
    }
}

/// What a run measured for one class: the windows the figures come from.
pub struct Outcome {
    pub tally: Tally,
    /// Seconds the reported windows span.
    pub seconds: f64,
    /// Whether the last three windows met the stability rule.
    pub stable: bool,
    /// Windows measured in all (the figures are from the last three).
    pub windows: usize,
    /// Most connections open at once.
    pub connections: usize,
}

/// One class's state, shared by its load tasks and the controller.
struct Shared {
    host: String,
    port: u16,
    path: String,
    bodies: Vec<Body>,
    measure_start: Instant,
    window: Duration,
    /// Requests are counted in the window they were sent (scheduled) in.
    tallies: Vec<Mutex<Tally>>,
    /// Requests sent in each window and not answered yet.
    pending: Vec<AtomicI64>,
    stop: AtomicBool,
    completed: AtomicU64,
    connections: AtomicI64,
    peak_connections: AtomicI64,
}

impl Shared {
    fn window_of(&self, sent: Instant) -> Option<usize> {
        let since = sent.checked_duration_since(self.measure_start)?;
        let i = (since.as_nanos() / self.window.as_nanos().max(1)) as usize;
        (i < self.tallies.len()).then_some(i)
    }

    fn begin(&self, sent: Instant) -> Option<usize> {
        let w = self.window_of(sent);
        if let Some(i) = w {
            self.pending[i].fetch_add(1, Ordering::Relaxed);
        }
        w
    }

    fn finish(&self, w: Option<usize>, sent: Instant, result: &Result<u16, ()>) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let Some(i) = w else { return };
        {
            let mut t = self.tallies[i].lock().expect("tally lock is never poisoned");
            match result {
                Ok(status) => {
                    let us = sent.elapsed().as_micros() as u64;
                    let _ = t.hist.record(us);
                    if (200..300).contains(status) {
                        let _ = t.ok_hist.record(us);
                    }
                    *t.statuses.entry(*status).or_default() += 1;
                }
                Err(()) => t.errors += 1,
            }
        }
        self.pending[i].fetch_sub(1, Ordering::Relaxed);
    }

    async fn connect(&self) -> Option<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connections.fetch_max(n, Ordering::Relaxed);
        Some(sender)
    }

    async fn send(&self, sender: &mut SendRequest<Full<Bytes>>, body: &Body) -> Result<u16, ()> {
        let mut req = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, body.content_type.as_str());
        if let Some(n) = body.header_len {
            req = req.header("inference-header-content-length", n);
        }
        let req = req.body(Full::new(body.bytes.clone())).map_err(|_| ())?;
        sender.ready().await.map_err(|_| ())?;
        let resp = sender.send_request(req).await.map_err(|_| ())?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|_| ())?;
        Ok(status)
    }

    fn closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A closed-loop connection: sends its next request when the last answer
/// arrives; reconnects after an error.
async fn closed_loop(sh: Arc<Shared>, mut next_body: usize) {
    while !sh.stop.load(Ordering::Relaxed) {
        let Some(mut sender) = sh.connect().await else {
            let w = sh.begin(Instant::now());
            sh.finish(w, Instant::now(), &Err(()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !sh.stop.load(Ordering::Relaxed) {
            let body = &sh.bodies[next_body % sh.bodies.len()];
            next_body += 1;
            let sent = Instant::now();
            let w = sh.begin(sent);
            let r = sh.send(&mut sender, body).await;
            sh.finish(w, sent, &r);
            if r.is_err() {
                break;
            }
        }
        sh.closed();
    }
}

/// One open-loop request: waits for a connection (that wait counts in its
/// latency, measured from the time it was scheduled).
async fn open_request(
    sh: Arc<Shared>,
    scheduled: Instant,
    body: usize,
    pool: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    let w = sh.begin(scheduled);
    let Ok(_permit) = permits.acquire_owned().await else { return };
    let pooled = loop {
        let s = pool.lock().expect("pool lock is never poisoned").pop();
        match s {
            Some(s) if s.is_closed() => sh.closed(),
            other => break other,
        }
    };
    let mut sender = match pooled {
        Some(s) => s,
        None => match sh.connect().await {
            Some(s) => s,
            None => return sh.finish(w, scheduled, &Err(())),
        },
    };
    let r = sh.send(&mut sender, &sh.bodies[body % sh.bodies.len()]).await;
    sh.finish(w, scheduled, &r);
    if r.is_ok() {
        pool.lock().expect("pool lock is never poisoned").push(sender);
    } else {
        sh.closed();
    }
}

/// The open-loop schedule: `rate` requests a second, at constant intervals
/// or as a Poisson process (exponential gaps, seeded).
async fn open_loop(sh: Arc<Shared>, rate: f64, arrivals: Arrivals, max_connections: usize) {
    let pool = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut next = Instant::now();
    let mut i = 0usize;
    while !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        tokio::spawn(open_request(sh.clone(), next, i, pool.clone(), permits.clone()));
        i += 1;
        let gap = match arrivals {
            Arrivals::Constant => 1.0 / rate,
            Arrivals::Poisson => -uniform().ln() / rate,
        };
        next += Duration::from_secs_f64(gap);
    }
}

/// Whether the windows' throughput and mean latency are each within
/// `tolerance` of their mean.
fn stable(windows: &[&Tally], window: Duration, tolerance: f64) -> bool {
    if tolerance <= 0.0 {
        return true;
    }
    let within = |v: Vec<f64>| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        mean > 0.0 && v.iter().all(|x| (x - mean).abs() <= tolerance * mean)
    };
    within(windows.iter().map(|t| t.hist.len() as f64 / window.as_secs_f64()).collect())
        && within(windows.iter().map(|t| t.hist.mean()).collect())
}

/// A one-line progress report on a terminal (standard error).
async fn progress(classes: Vec<Arc<Shared>>, what: String) {
    let Some(first) = classes.first().cloned() else { return };
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let done: u64 = classes.iter().map(|c| c.completed.load(Ordering::Relaxed)).sum();
        let now = Instant::now();
        let phase = match now.checked_duration_since(first.measure_start) {
            None => "warm-up".to_string(),
            Some(d) => format!("window {}", d.as_nanos() / first.window.as_nanos().max(1) + 1),
        };
        eprint!("\r\x1b[K  {what}: {phase}, {} req/s, {done} answers", (done - last) * 2);
        last = done;
    }
}

fn describe(load: Load) -> String {
    match load {
        Load::Closed { concurrency } => format!("concurrency {concurrency}"),
        Load::Open { rate, .. } => format!("{rate:.0} req/s offered"),
    }
}

fn start(class: &Class, measure_start: Instant, plan: &Plan) -> Arc<Shared> {
    let slots = plan.max_windows + 1;
    let sh = Arc::new(Shared {
        host: class.host.clone(),
        port: class.port,
        path: class.path.clone(),
        bodies: class.bodies.clone(),
        measure_start,
        window: plan.window,
        tallies: (0..slots).map(|_| Mutex::new(Tally::new())).collect(),
        pending: (0..slots).map(|_| AtomicI64::new(0)).collect(),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        connections: AtomicI64::new(0),
        peak_connections: AtomicI64::new(0),
    });
    match class.load {
        Load::Closed { concurrency } => {
            for c in 0..concurrency {
                // Connections start at different bodies so a directory of
                // images is not sent in lockstep.
                tokio::spawn(closed_loop(sh.clone(), c));
            }
        }
        Load::Open { rate, arrivals, max_connections } => {
            tokio::spawn(open_loop(sh.clone(), rate, arrivals, max_connections));
        }
    }
    sh
}

/// Runs every class of `plan` at once; returns their outcomes in order.
pub fn run(plan: &Plan) -> anyhow::Result<Vec<Outcome>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let measure_start = Instant::now() + plan.warmup;
        let classes: Vec<Arc<Shared>> = plan.classes.iter().map(|c| start(c, measure_start, plan)).collect();
        let what = match &plan.classes[..] {
            [one] => describe(one.load),
            many => format!("{} classes", many.len()),
        };
        let progress = std::io::stderr().is_terminal().then(|| tokio::spawn(progress(classes.clone(), what)));
        // Window k is complete once its time is over and every request sent
        // in it is answered (bounded: a hung server does not hang the run).
        // The run is stable when every class is.
        let mut k = 3;
        let stable_now = loop {
            tokio::time::sleep_until(measure_start + plan.window * k as u32).await;
            let patience = Instant::now() + Duration::from_secs(30);
            while classes.iter().any(|sh| sh.pending[k - 1].load(Ordering::Relaxed) > 0) && Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let ok = classes.iter().all(|sh| {
                let locked: Vec<_> =
                    sh.tallies[k - 3..k].iter().map(|t| t.lock().expect("tally lock is never poisoned")).collect();
                let refs: Vec<&Tally> = locked.iter().map(|g| &**g).collect();
                stable(&refs, plan.window, plan.stability)
            });
            if ok || k >= plan.max_windows {
                break ok;
            }
            k += 1;
        };
        for sh in &classes {
            sh.stop.store(true, Ordering::Relaxed);
        }
        if let Some(p) = progress {
            p.abort();
            eprint!("\r\x1b[K");
        }
        Ok(classes
            .iter()
            .map(|sh| {
                let mut tally = Tally::new();
                for t in &sh.tallies[k - 3..k] {
                    tally.add(&t.lock().expect("tally lock is never poisoned"));
                }
                Outcome {
                    tally,
                    seconds: plan.window.as_secs_f64() * 3.0,
                    stable: stable_now,
                    windows: k,
                    connections: sh.peak_connections.load(Ordering::Relaxed).max(0) as usize,
                }
            })
            .collect())
    })
}
