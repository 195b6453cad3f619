//! The load generator's figures: printed, and written as JSON, CSV and an
//! SVG chart of latency against throughput.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::run::Outcome;
use super::{Args, Class, Load};

/// The figures of one class of one run (one point of a sweep).
#[derive(Debug, Serialize)]
pub struct Point {
    /// The class's name, in a multi-class run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub url: String,
    /// What was sent.
    #[serde(skip)]
    inputs: String,
    pub mode: &'static str,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub arrivals: Option<super::Arrivals>,
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub req_per_s: f64,
    pub ok_per_s: f64,
    pub connection_errors: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub ok_p50_ms: f64,
    pub ok_p99_ms: f64,
    pub statuses: BTreeMap<u16, u64>,
    pub stable: bool,
    pub windows: usize,
    pub connections: usize,
    /// The generator's own CPU time per request, in ms.
    pub generator_cpu_ms: f64,
}

impl Point {
    /// `cpu_s` is the generator's CPU time for the run, which sent
    /// `run_requests` requests over all its classes.
    pub fn new(class: &Class, o: &Outcome, cpu_s: f64, run_requests: u64) -> Point {
        let t = &o.tally;
        let n = t.hist.len();
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let (mode, concurrency, rate, arrivals) = match class.load {
            Load::Closed { concurrency } => ("closed", Some(concurrency), None, None),
            Load::Open { rate, arrivals, .. } => ("open", None, Some(rate), Some(arrivals)),
        };
        Point {
            class: class.name.clone(),
            url: class.url.clone(),
            inputs: class.inputs.clone(),
            mode,
            concurrency,
            rate,
            arrivals,
            duration_s: o.seconds,
            requests: n,
            ok: t.ok(),
            req_per_s: n as f64 / o.seconds,
            ok_per_s: t.ok() as f64 / o.seconds,
            connection_errors: t.errors,
            mean_ms: t.hist.mean() / 1000.0,
            p50_ms: ms(&t.hist, 0.5),
            p90_ms: ms(&t.hist, 0.9),
            p99_ms: ms(&t.hist, 0.99),
            p999_ms: ms(&t.hist, 0.999),
            max_ms: t.hist.max() as f64 / 1000.0,
            ok_p50_ms: ms(&t.ok_hist, 0.5),
            ok_p99_ms: ms(&t.ok_hist, 0.99),
            statuses: t.statuses.clone(),
            stable: o.stable,
            windows: o.windows,
            connections: o.connections,
            generator_cpu_ms: if run_requests > 0 { cpu_s * 1000.0 / run_requests as f64 } else { 0.0 },
        }
    }

    fn load(&self) -> String {
        let load = match (self.concurrency, self.rate) {
            (Some(c), _) => format!("concurrency {c}"),
            (_, Some(r)) => format!("{r:.0} req/s offered ({:?} arrivals)", self.arrivals.expect("open loop")),
            _ => String::new(),
        };
        match &self.class {
            Some(name) => format!("{name}: {load}"),
            None => load,
        }
    }

    pub fn print(&self) {
        println!("{} for {:.1} s at {} ({})", self.url, self.duration_s, self.load(), self.inputs);
        println!(
            "  requests  {} ({} 2xx), {:.1} req/s, connection errors {}",
            self.requests, self.ok, self.req_per_s, self.connection_errors
        );
        println!(
            "  latency   p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        println!("  statuses  {}", statuses.join(", "));
        if self.ok < self.requests {
            println!(
                "  2xx only  {:.1} req/s, p50 {:.2} ms, p99 {:.2} ms",
                self.ok_per_s, self.ok_p50_ms, self.ok_p99_ms
            );
        }
        println!(
            "  windows   {} of {:.1} s, {}; {} connections; generator CPU {:.3} ms per request",
            self.windows,
            self.duration_s / 3.0,
            if self.stable { "stable over the last 3" } else { "NOT stable (figures from the last 3)" },
            self.connections,
            self.generator_cpu_ms
        );
    }
}

pub fn print_summary(points: &[Point]) {
    println!("\n| load | req/s | 2xx/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | stable |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for p in points {
        let errors = p.requests - p.ok + p.connection_errors;
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {errors} | {} |",
            p.load(),
            p.req_per_s,
            p.ok_per_s,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            if p.stable { "yes" } else { "no" }
        );
    }
}

pub fn write_files(args: &Args, points: &[Point]) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let v = match points {
            [one] => serde_json::to_vec_pretty(one)?,
            many => serde_json::to_vec_pretty(many)?,
        };
        std::fs::write(path, v)?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(points))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(points, &args.url))?;
    }
    Ok(())
}

fn csv(points: &[Point]) -> String {
    let mut s = String::from(
        "mode,concurrency,rate,duration_s,requests,ok,req_per_s,ok_per_s,connection_errors,mean_ms,p50_ms,p90_ms,\
         p99_ms,p999_ms,max_ms,ok_p50_ms,ok_p99_ms,non_2xx,stable,generator_cpu_ms\n",
    );
    for p in points {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{},{:.2},{:.2},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{:.4}",
            p.mode,
            opt(p.concurrency.map(|c| c.to_string())),
            opt(p.rate.map(|r| format!("{r}"))),
            p.duration_s,
            p.requests,
            p.ok,
            p.req_per_s,
            p.ok_per_s,
            p.connection_errors,
            p.mean_ms,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms,
            p.ok_p50_ms,
            p.ok_p99_ms,
            p.requests - p.ok,
            p.stable,
            p.generator_cpu_ms
        );
    }
    s
}

/// A self-contained SVG: p50 and p99 latency (ms) against 2xx throughput,
/// one marker per run, each labelled with its load.
fn svg(points: &[Point], title: &str) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 70.0, 30.0, 40.0, 50.0);
    let max_x = points.iter().map(|p| p.ok_per_s).fold(0.0, f64::max).max(1.0) * 1.1;
    let max_y = points.iter().map(|p| p.p99_ms).fold(0.0, f64::max).max(0.001) * 1.1;
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{left}" y="22" font-size="14">{}</text>"#, escape(title));
    // Axes with five ticks each.
    let _ = writeln!(s, r#"<path d="M{left},{top} V{} H{}" stroke="black" fill="none"/>"#, h - bottom, w - right);
    for i in 0..=5 {
        let (vx, vy) = (max_x * i as f64 / 5.0, max_y * i as f64 / 5.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{vx:.0}</text>"#, x(vx), h - bottom + 16.0);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{vy:.1}</text>"#, left - 6.0, y(vy) + 4.0);
        let _ = writeln!(s, r##"<path d="M{left},{:.1} H{}" stroke="#ddd"/>"##, y(vy), w - right);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">throughput (2xx per second)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (ms)</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (name, color, f) in [("p50", "#1f77b4", 0usize), ("p99", "#d62728", 1)] {
        let pick = |p: &Point| if f == 0 { p.p50_ms } else { p.p99_ms };
        let path: Vec<String> = points.iter().map(|p| format!("{:.1},{:.1}", x(p.ok_per_s), y(pick(p)))).collect();
        let _ = writeln!(s, r#"<polyline points="{}" stroke="{color}" fill="none" stroke-width="2"/>"#, path.join(" "));
        for p in points {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(p.ok_per_s), y(pick(p)));
        }
        let ly = top + 16.0 * (f as f64 + 1.0);
        let _ = writeln!(s, r#"<text x="{}" y="{ly}" fill="{color}">{name}</text>"#, w - right - 40.0);
    }
    for p in points {
        let label = p.concurrency.map(|c| format!("c={c}")).or(p.rate.map(|r| format!("{r:.0}/s"))).unwrap_or_default();
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#555">{label}</text>"##,
            x(p.ok_per_s) + 5.0,
            y(p.p99_ms) - 5.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// CPU seconds (user + system) this process has used, from /proc (USER_HZ
/// is 100 on Linux).
pub fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::super::sweep;

    #[test]
    fn sweeps_parse() {
        assert_eq!(sweep("16").unwrap(), vec![16.0]);
        assert_eq!(sweep("1:64:x2").unwrap(), vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        assert_eq!(sweep("100:400:+100").unwrap(), vec![100.0, 200.0, 300.0, 400.0]);
        assert_eq!(sweep("1:10:x4").unwrap(), vec![1.0, 4.0]);
        for bad in ["0", "a", "8:4:x2", "1:8:x1", "1:8:2", "1:8", "-3"] {
            assert!(sweep(bad).is_err(), "{bad}");
        }
    }
}
