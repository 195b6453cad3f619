//! `--class name=live,rate=10,priority=1`: one class of a multi-class run.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::{Args, Class, Load, bodies, split_url};

/// Every `--class` of `args`, with the run-wide flags as defaults.
pub fn parse_all(args: &Args) -> anyhow::Result<Vec<Class>> {
    if args.rate.is_some() || args.concurrency.is_some() {
        bail!("with --class, give each class its load (concurrency=N or rate=R) instead of --concurrency/--rate");
    }
    let classes = args.class.iter().map(|spec| parse(spec, args)).collect::<anyhow::Result<Vec<Class>>>()?;
    let mut names: Vec<&str> = classes.iter().filter_map(|c| c.name.as_deref()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two classes are named `{}`; each needs its own name", w[0]);
    }
    Ok(classes)
}

/// One `--class` spec.
fn parse(spec: &str, args: &Args) -> anyhow::Result<Class> {
    let what = || format!("--class `{spec}`");
    let (mut name, mut url, mut tensor) = (None, None, None);
    let mut files: Vec<PathBuf> = Vec::new();
    let (mut concurrency, mut rate, mut arrivals) = (None, None, args.arrivals);
    let mut query: Vec<String> = Vec::new();
    for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{}: `{pair}` is not KEY=VALUE", what());
        };
        let (key, value) = (key.trim(), value.trim());
        let number = |v: &str| -> anyhow::Result<f64> {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .with_context(|| format!("{}: {key}={v} is not a positive number", what()))
        };
        match key {
            "name" => name = Some(value.to_string()),
            "url" => url = Some(value.to_string()),
            "file" => files.push(PathBuf::from(value)),
            "tensor" => tensor = Some(value.to_string()),
            "concurrency" => concurrency = Some(number(value)?.round().max(1.0) as usize),
            "rate" => rate = Some(number(value)?),
            "arrivals" => {
                arrivals = <super::Arrivals as clap::ValueEnum>::from_str(value, true)
                    .map_err(|_| anyhow::anyhow!("{}: arrivals={value}; accepted: constant, poisson", what()))?
            }
            "priority" | "timeout" => {
                let n: u64 =
                    value.parse().with_context(|| format!("{}: {key}={value} is not a whole number", what()))?;
                query.push(format!("{key}={n}"));
            }
            other => bail!(
                "{}: unknown key `{other}`; accepted: name, url, file, tensor, concurrency, rate, arrivals, priority, \
                 timeout",
                what()
            ),
        }
    }
    let Some(name) = name else {
        bail!("{}: every class needs a name (name=...)", what());
    };
    let load = match (concurrency, rate) {
        (Some(_), Some(_)) => bail!("{}: give concurrency or rate, not both", what()),
        (_, Some(rate)) => Load::Open { rate, arrivals, max_connections: args.max_connections.max(1) },
        (c, None) => Load::Closed { concurrency: c.unwrap_or(1) },
    };
    let url = url.unwrap_or_else(|| args.url.clone());
    let (host, port, mut path) = split_url(&url, &what())?;
    if !query.is_empty() {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&query.join("&"));
    }
    let own_inputs = !files.is_empty() || tensor.is_some();
    let (bodies, inputs) = if own_inputs {
        bodies(&files, None, tensor.as_deref(), args.content_type.as_deref())
    } else {
        bodies(&args.file, args.dir.as_ref(), args.tensor.as_deref(), args.content_type.as_deref())
    }
    .with_context(what)?;
    Ok(Class { name: Some(name), url, host, port, path, bodies, inputs, load })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["bench", "--tensor", "x:FP32:1,2"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn classes_carry_their_load_priority_and_timeout() {
        let a = args(&[
            "--url",
            "http://h:9/v2/models/m/infer",
            "--class",
            "name=live,rate=10,priority=1,timeout=50000",
            "--class",
            "name=bulk,concurrency=24,priority=2,url=http://h:9/v2/models/n/infer?x=1",
        ]);
        let c = parse_all(&a).unwrap();
        assert_eq!(c[0].name.as_deref(), Some("live"));
        assert_eq!(c[0].path, "/v2/models/m/infer?priority=1&timeout=50000");
        assert!(matches!(c[0].load, Load::Open { rate, .. } if rate == 10.0));
        assert_eq!((c[1].host.as_str(), c[1].port), ("h", 9));
        assert_eq!(c[1].path, "/v2/models/n/infer?x=1&priority=2");
        assert!(matches!(c[1].load, Load::Closed { concurrency: 24 }));
        assert_eq!(c[1].inputs, "a generated tensor");
    }

    #[test]
    fn bad_classes_say_what_is_wrong() {
        for (extra, says) in [
            (&["--class", "rate=10"][..], "needs a name"),
            (&["--class", "name=a,rate=1,concurrency=2"][..], "not both"),
            (&["--class", "name=a,speed=3"][..], "unknown key `speed`"),
            (&["--class", "name=a,priority=high"][..], "priority=high"),
            (&["--class", "name=a", "--class", "name=a"][..], "two classes are named `a`"),
            (&["--class", "name=a", "--rate", "5"][..], "give each class its load"),
            (&["--class", "name=a,arrivals=bursty"][..], "constant, poisson"),
        ] {
            let e = parse_all(&args(extra)).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{extra:?}: {e:#}");
        }
    }
}
