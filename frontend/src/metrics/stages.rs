//! Beyond Triton: a latency histogram per request stage and model
//! (aggregatable across replicas), the batch-size distribution, and the time
//! in each pipeline step.

use model_repo::Repository;
use shm::Region;
use shm::stats::{BATCH_BUCKETS, HIST_BUCKETS, Stage};

use super::counters::load;
use super::{Labelled, Out};
use shm::stats::sum;

pub(super) fn render(out: &mut Out, models: &[Labelled<'_>], repo: &Repository, region: &Region) {
    out.family(
        "highserve_stage_duration_seconds",
        "histogram",
        "Time in each stage of a request: receive (reading the body), decode, preprocess, queue (in the batcher), \
         compute (per batch), postprocess, total (end to end, successful requests)",
    );
    for m in models {
        let l = &m.labels;
        let mut acc = ([0u64; HIST_BUCKETS], 0u64);
        m.counters.receive.add_to(&mut acc);
        out.histogram("highserve_stage_duration_seconds", &format!("{l},stage=\"receive\""), &acc);
        for stage in Stage::ALL {
            let mut acc = ([0u64; HIST_BUCKETS], 0u64);
            if let Some(h) = shm::stats::stage_histogram(region, m.index, stage) {
                h.add_to(&mut acc);
            }
            out.histogram("highserve_stage_duration_seconds", &format!("{l},stage=\"{}\"", stage.name()), &acc);
        }
        let mut acc = ([0u64; HIST_BUCKETS], 0u64);
        m.counters.total.add_to(&mut acc);
        out.histogram("highserve_stage_duration_seconds", &format!("{l},stage=\"total\""), &acc);
    }
    out.family("highserve_batch_size", "histogram", "Rows per executed batch");
    for m in models {
        let l = &m.labels;
        let counts: Vec<u64> = (0..BATCH_BUCKETS).map(|b| sum(region, m.index, |s| load(&s.batch_sizes[b]))).collect();
        let mut cumulative = 0;
        let mut total = 0;
        let mut next = 1;
        for (b, n) in counts.iter().enumerate() {
            cumulative += n;
            total += b as u64 * n;
            if b == next && b < BATCH_BUCKETS - 1 {
                out.sample("highserve_batch_size_bucket", &format!("{l},le=\"{b}\""), cumulative);
                next *= 2;
            }
        }
        out.sample("highserve_batch_size_bucket", &format!("{l},le=\"+Inf\""), cumulative);
        out.sample("highserve_batch_size_sum", l, total);
        out.sample("highserve_batch_size_count", l, cumulative);
    }
    out.family("highserve_pipeline_step_seconds_total", "counter", "Time in each pipeline step (CPU steps: CPU time)");
    out.family("highserve_pipeline_step_total", "counter", "Executions of each pipeline step");
    for m in models {
        let (Some(p), Some(stats)) =
            (repo.models[m.index as usize].config.pipeline.as_ref(), shm::stats::step_stats(region, m.index))
        else {
            continue;
        };
        let steps = std::iter::once(("decode".to_string(), shm::stats::MAX_STEPS - 1))
            .chain(p.steps.iter().enumerate().map(|(k, s)| (s.name().to_string(), k)));
        for (name, k) in steps {
            let ls = format!("{},step=\"{name}\"", m.labels);
            out.sample("highserve_pipeline_step_seconds_total", &ls, load(&stats[k].ns) as f64 / 1e9);
            out.sample("highserve_pipeline_step_total", &ls, load(&stats[k].count));
        }
    }
}
