//! `highserve bench`: a closed-loop load generator (a fixed number of
//! connections, each sending its next request when the previous answer
//! arrives) that prints throughput and latency percentiles. It runs on one
//! thread so that it costs the machine under test little CPU.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Endpoint to POST to.
    #[arg(long, default_value = "http://127.0.0.1:8000/v2/models/ppocr_cls/infer")]
    pub url: String,
    /// Request body (an image, or a v2 JSON request).
    #[arg(long)]
    pub file: PathBuf,
    /// Content-Type; default from the file extension (.jpg/.jpeg, .png, .json).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Connections, each with one request in flight.
    #[arg(long, short, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Write the figures as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Tally {
    /// Latency of every answer, whatever its status.
    hist: Histogram<u64>,
    /// Latency of 2xx answers only (under overload, 429s come back at once).
    ok_hist: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        let h = || Histogram::new(3).expect("3 significant digits is valid");
        Tally { hist: h(), ok_hist: h(), statuses: BTreeMap::new(), errors: 0 }
    }
}

fn content_type(args: &Args) -> String {
    if let Some(c) = &args.content_type {
        return c.clone();
    }
    match args.file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "png" => "image/png".into(),
        "json" => "application/json".into(),
        _ => "image/jpeg".into(),
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let body = Bytes::from(std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?);
    let uri: hyper::Uri = args.url.parse().context("--url is not a URL")?;
    let (Some(host), Some(port)) = (uri.host().map(str::to_string), uri.port_u16().or(Some(80))) else {
        bail!("--url needs a host");
    };
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    let ctype = content_type(&args);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(args.warmup);
    let stop = warm_until + Duration::from_secs_f64(args.duration);
    let tallies = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (host, path, ctype, body) = (host.clone(), path.clone(), ctype.clone(), body.clone());
            tasks.push(tokio::spawn(
                async move { connection(&host, port, &path, &ctype, body, warm_until, stop).await },
            ));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await?);
        }
        anyhow::Ok(out)
    })?;
    let mut total = Tally::new();
    for t in tallies {
        total.hist.add(&t.hist)?;
        total.ok_hist.add(&t.ok_hist)?;
        for (s, n) in t.statuses {
            *total.statuses.entry(s).or_default() += n;
        }
        total.errors += t.errors;
    }
    report(&args, &total)
}

async fn connection(
    host: &str,
    port: u16,
    path: &str,
    ctype: &str,
    body: Bytes,
    warm_until: Instant,
    stop: Instant,
) -> Tally {
    let mut t = Tally::new();
    while Instant::now() < stop {
        let Ok(stream) = tokio::net::TcpStream::connect((host, port)).await else {
            t.errors += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            t.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < stop {
            let req = hyper::Request::post(path)
                .header("host", host)
                .header("content-type", ctype)
                .body(Full::new(body.clone()))
                .expect("request parts are valid");
            let sent = Instant::now();
            let result = async {
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                anyhow::Ok(status)
            }
            .await;
            let done = Instant::now();
            let measured = sent >= warm_until && done <= stop;
            match result {
                Ok(status) if measured => {
                    *t.statuses.entry(status).or_default() += 1;
                    let us = (done - sent).as_micros() as u64;
                    let _ = t.hist.record(us);
                    if (200..300).contains(&status) {
                        let _ = t.ok_hist.record(us);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if measured {
                        t.errors += 1;
                    }
                    break; // reconnect
                }
            }
        }
    }
    t
}

fn report(args: &Args, t: &Tally) -> anyhow::Result<()> {
    let n = t.hist.len();
    let ok: u64 = t.statuses.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum();
    let rps = n as f64 / args.duration;
    let ms = |q: f64| t.hist.value_at_quantile(q) as f64 / 1000.0;
    println!("{} for {:.1} s at concurrency {} ({})", args.url, args.duration, args.concurrency, args.file.display());
    println!("  requests  {n} ({ok} 2xx), {rps:.1} req/s, connection errors {}", t.errors);
    println!(
        "  latency   p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        t.hist.max() as f64 / 1000.0
    );
    let statuses: Vec<String> = t.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("  statuses  {}", statuses.join(", "));
    let ok_ms = |q: f64| t.ok_hist.value_at_quantile(q) as f64 / 1000.0;
    if ok < n {
        println!(
            "  2xx only  {:.1} req/s, p50 {:.2} ms, p99 {:.2} ms",
            ok as f64 / args.duration,
            ok_ms(0.5),
            ok_ms(0.99)
        );
    }
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "url": args.url, "file": args.file, "concurrency": args.concurrency, "duration_s": args.duration,
            "requests": n, "ok": ok, "req_per_s": rps, "connection_errors": t.errors,
            "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
            "max_ms": t.hist.max() as f64 / 1000.0, "statuses": t.statuses,
            "ok_per_s": ok as f64 / args.duration, "ok_p50_ms": ok_ms(0.5), "ok_p99_ms": ok_ms(0.99),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}
