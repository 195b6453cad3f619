//! `highserve bench`: the load generator, in the spirit of Triton's
//! perf_analyzer. It drives any KServe v2 or plain image-POST endpoint:
//!
//! - inputs: one or more files, a directory of images / v2 requests, or a
//!   generated tensor sent as a v2 binary-tensor request;
//! - closed loop at a fixed concurrency or a sweep (`-c 1:64:x2`), or open
//!   loop at a request rate (`--rate 200`, `--rate 100:800:+100`), constant
//!   or Poisson arrivals, latency measured from the scheduled send time (no
//!   coordinated omission);
//! - warm-up, then a measurement in windows with a stability rule: it
//!   measures `--duration` in three windows and, if their throughput or mean
//!   latency differ by more than `--stability` from their mean, adds windows
//!   (up to `--max-duration`) until the last three agree; the figures are
//!   those of the last three windows;
//! - prints throughput, p50/p90/p99/p99.9 (HDR histogram), error counts by
//!   status, a progress line on a terminal, and writes JSON, CSV and an SVG
//!   latency-vs-throughput chart.
//!
//! - several classes of load in one run (`--class`), each with its own
//!   inputs, load, priority and timeout (e.g. a paced "live" class beside a
//!   closed-loop "bulk" one), reported class by class.
//!
//! It runs on one thread and reports its own CPU time per request: on a
//! 2-core machine the generator competes with the server it measures.

mod class;
mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Endpoint to POST to.
    #[arg(long, default_value = "http://127.0.0.1:8000/v2/models/ppocr_cls/infer")]
    pub url: String,
    /// Request body: an image, or a v2 JSON request; repeat to cycle through
    /// several.
    #[arg(long)]
    pub file: Vec<PathBuf>,
    /// A directory whose .jpg/.jpeg/.png/.json files are the request bodies,
    /// sent in turn.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A generated input instead of files, sent as a v2 binary-tensor
    /// request: `NAME:DATATYPE:DIMS`, e.g. `x:FP32:1,3,48,192` (random data,
    /// seeded).
    #[arg(long)]
    pub tensor: Option<String>,
    /// Content-Type for --file/--dir bodies; default from the extension
    /// (.jpg/.jpeg, .png, .json).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Closed loop: connections, each with one request in flight (default
    /// 16); a sweep is `START:END:xFACTOR` or `START:END:+STEP` (e.g. `1:64:x2`).
    #[arg(long, short)]
    pub concurrency: Option<String>,
    /// Open loop instead: requests per second (or a sweep, as for
    /// --concurrency), sent on schedule whatever the answers do.
    #[arg(long)]
    pub rate: Option<String>,
    /// Open-loop arrivals: `constant` intervals or `poisson`.
    #[arg(long, default_value = "constant")]
    pub arrivals: Arrivals,
    /// Open loop: most connections to open (requests beyond wait for one,
    /// and that wait counts in their latency).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds of measurement (at least; see --stability).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most seconds of measurement while waiting for stability (default:
    /// twice --duration).
    #[arg(long)]
    pub max_duration: Option<f64>,
    /// Stability rule: the last three windows' throughput and mean latency
    /// within this fraction of their mean (0 turns the rule off).
    #[arg(long, default_value_t = 0.1)]
    pub stability: f64,
    /// Seconds of load before measuring (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Write the figures as JSON: an object for one run, an array for a sweep.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the figures as CSV, a row per run.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write an SVG chart of p50 and p99 latency against throughput.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// A class of load, all classes running at once (repeat the flag):
    /// `name=live,rate=10,priority=1` or `name=bulk,concurrency=24,priority=2`.
    /// Keys: name (required), url, file (repeatable), tensor, concurrency or
    /// rate (default concurrency 1), arrivals, priority and timeout (sent as
    /// the `?priority=N&timeout=US` query parameters). Inputs default to
    /// --file/--dir/--tensor, the URL to --url. No sweeps with classes.
    #[arg(long)]
    pub class: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    Constant,
    Poisson,
}

/// One request body with its headers.
#[derive(Clone, Debug)]
pub struct Body {
    pub bytes: Bytes,
    pub content_type: String,
    /// For v2 binary-tensor requests: the JSON header's length.
    pub header_len: Option<usize>,
}

/// How load is applied in one run.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64, arrivals: Arrivals, max_connections: usize },
}

/// One class of load: where it goes, what it sends and how.
#[derive(Clone, Debug)]
pub struct Class {
    /// `None` for the one class of a run without `--class`.
    pub name: Option<String>,
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    pub bodies: Vec<Body>,
    /// What the bodies are, for the report.
    pub inputs: String,
    pub load: Load,
}

/// What one run needs: its classes, all running at once, and the timing.
pub struct Plan {
    pub classes: Vec<Class>,
    pub warmup: Duration,
    pub window: Duration,
    pub max_windows: usize,
    pub stability: f64,
}

fn content_type(flag: Option<&str>, file: &std::path::Path) -> String {
    if let Some(c) = flag {
        return c.to_string();
    }
    match file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "image/png".into(),
        Some("json") => "application/json".into(),
        _ => "image/jpeg".into(),
    }
}

/// A v2 binary-tensor request for `NAME:DATATYPE:DIMS` with seeded data.
fn tensor_body(spec: &str) -> anyhow::Result<Body> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, dtype, dims] = parts[..] else {
        bail!("--tensor `{spec}`: expected NAME:DATATYPE:DIMS, e.g. x:FP32:1,3,224,224");
    };
    let dims: Vec<u64> = dims
        .split(',')
        .map(|d| d.trim().parse::<u64>().with_context(|| format!("--tensor `{spec}`: `{d}` is not a dimension")))
        .collect::<anyhow::Result<_>>()?;
    let elem = match dtype {
        "FP32" | "INT32" | "UINT32" => 4,
        "FP16" | "BF16" | "INT16" | "UINT16" => 2,
        "FP64" | "INT64" | "UINT64" => 8,
        "UINT8" | "INT8" | "BOOL" => 1,
        other => bail!(
            "--tensor `{spec}`: datatype {other} is not one of FP32 FP16 BF16 FP64 INT8..INT64 UINT8..UINT64 BOOL"
        ),
    };
    let count: u64 = dims.iter().product();
    let len = usize::try_from(count * elem).context("--tensor: too large")?;
    if len > 1 << 30 {
        bail!("--tensor `{spec}`: {len} bytes; at most 1 GiB");
    }
    // Values in [0, 1) for floats (a normalized image), small integers
    // otherwise; a fixed xorshift seed makes runs repeatable.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data = Vec::with_capacity(len);
    match dtype {
        "FP32" => (0..count)
            .for_each(|_| data.extend_from_slice(&((next() >> 40) as f32 / (1u64 << 24) as f32).to_le_bytes())),
        _ => (0..len).for_each(|_| data.push((next() >> 60) as u8)),
    }
    let header = serde_json::json!({
        "inputs": [{ "name": name, "datatype": dtype, "shape": dims, "parameters": { "binary_data_size": len } }],
        "outputs": [],
    });
    let mut bytes = serde_json::to_vec(&header)?;
    let header_len = bytes.len();
    bytes.extend_from_slice(&data);
    Ok(Body {
        bytes: Bytes::from(bytes),
        content_type: "application/octet-stream".into(),
        header_len: Some(header_len),
    })
}

/// The bodies `files`, `dir` and `tensor` name, and what they are for the
/// report.
fn bodies(
    files: &[PathBuf],
    dir: Option<&PathBuf>,
    tensor: Option<&str>,
    content_type_flag: Option<&str>,
) -> anyhow::Result<(Vec<Body>, String)> {
    let mut files = files.to_vec();
    let mut names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    if let Some(dir) = dir {
        names.push(format!("{}/*", dir.display()));
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read --dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png" | "json"))
            })
            .collect();
        found.sort();
        if found.is_empty() {
            bail!("--dir {} has no .jpg, .jpeg, .png or .json files", dir.display());
        }
        files.extend(found);
    }
    let mut out = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        out.push(Body {
            bytes: Bytes::from(bytes),
            content_type: content_type(content_type_flag, f),
            header_len: None,
        });
    }
    if let Some(spec) = tensor {
        out.push(tensor_body(spec)?);
        names.push("a generated tensor".into());
    }
    if out.is_empty() {
        bail!("nothing to send: give --file, --dir or --tensor");
    }
    Ok((out, names.join(", ")))
}

/// `16` → [16]; `1:64:x2` → 1, 2, 4, ... 64; `100:400:+100` → 100, 200, 300, 400.
pub fn sweep(spec: &str) -> anyhow::Result<Vec<f64>> {
    let bad = || anyhow::anyhow!("`{spec}`: expected N, START:END:xFACTOR or START:END:+STEP");
    let parts: Vec<&str> = spec.split(':').collect();
    let num = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0).ok_or_else(bad);
    match parts[..] {
        [one] => Ok(vec![num(one)?]),
        [start, end, step] => {
            let (start, end) = (num(start)?, num(end)?);
            if end < start {
                return Err(bad());
            }
            let mut v = vec![start];
            let next: Box<dyn Fn(f64) -> f64> = if let Some(f) = step.strip_prefix('x') {
                let f = num(f)?;
                if f <= 1.0 {
                    return Err(bad());
                }
                Box::new(move |x| x * f)
            } else if let Some(s) = step.strip_prefix('+') {
                let s = num(s)?;
                Box::new(move |x| x + s)
            } else {
                return Err(bad());
            };
            while v.len() < 1000 {
                let n = next(*v.last().expect("starts non-empty"));
                if n > end * (1.0 + 1e-9) {
                    break;
                }
                v.push(n);
            }
            Ok(v)
        }
        _ => Err(bad()),
    }
}

/// Host, port and path-and-query of a URL.
fn split_url(url: &str, flag: &str) -> anyhow::Result<(String, u16, String)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("{flag} `{url}` is not a URL"))?;
    let Some(host) = uri.host().map(str::to_string) else {
        bail!("{flag} `{url}` needs a host");
    };
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    Ok((host, port, path))
}

pub fn main(args: Args) -> anyhow::Result<()> {
    if args.duration <= 0.0 || args.warmup < 0.0 {
        bail!("--duration must be positive and --warmup not negative");
    }
    let window = Duration::from_secs_f64(args.duration / 3.0);
    let max_duration = args.max_duration.unwrap_or(2.0 * args.duration).max(args.duration);
    let max_windows = ((max_duration / window.as_secs_f64()).round() as usize).max(3);
    let plan = |classes| Plan {
        classes,
        warmup: Duration::from_secs_f64(args.warmup),
        window,
        max_windows,
        stability: args.stability,
    };
    let plans: Vec<Plan> = if args.class.is_empty() {
        let (host, port, path) = split_url(&args.url, "--url")?;
        let (bodies, inputs) =
            bodies(&args.file, args.dir.as_ref(), args.tensor.as_deref(), args.content_type.as_deref())?;
        let loads: Vec<Load> = match &args.rate {
            Some(r) => sweep(r)?
                .into_iter()
                .map(|rate| Load::Open { rate, arrivals: args.arrivals, max_connections: args.max_connections.max(1) })
                .collect(),
            None => sweep(args.concurrency.as_deref().unwrap_or("16"))?
                .into_iter()
                .map(|c| Load::Closed { concurrency: c.round().max(1.0) as usize })
                .collect(),
        };
        loads
            .into_iter()
            .map(|load| {
                let (host, path, bodies, inputs) = (host.clone(), path.clone(), bodies.clone(), inputs.clone());
                plan(vec![Class { name: None, url: args.url.clone(), host, port, path, bodies, inputs, load }])
            })
            .collect()
    } else {
        vec![plan(class::parse_all(&args)?)]
    };
    let mut results = Vec::new();
    for plan in plans {
        let cpu_before = report::own_cpu_seconds();
        let outcomes = run::run(&plan)?;
        let cpu = report::own_cpu_seconds() - cpu_before;
        let requests: u64 = outcomes.iter().map(|o| o.tally.hist.len()).sum();
        for (class, outcome) in plan.classes.iter().zip(&outcomes) {
            let point = report::Point::new(class, outcome, cpu, requests);
            point.print();
            results.push(point);
        }
    }
    if results.len() > 1 {
        report::print_summary(&results);
    }
    report::write_files(&args, &results)
}
