//! What the frontend itself saw: answers by status, requests shed and timed
//! out, cancellations, what is in flight, and readiness.

use super::counters::load;
use super::{Labelled, Out, Scrape};
use shm::stats::sum;

pub(super) fn render(out: &mut Out, models: &[Labelled<'_>], scrape: &Scrape<'_>) {
    out.family("highserve_requests_total", "counter", "Inference requests answered, by HTTP status code");
    for m in models {
        for (k, n) in m.counters.codes.iter().enumerate() {
            let n = load(n);
            if n > 0 {
                out.sample("highserve_requests_total", &format!("{},code=\"{}\"", m.labels, k + 100), n);
            }
        }
    }
    out.family("highserve_rejected_total", "counter", "Requests shed with 429 (admission limits full)");
    for m in models {
        out.sample("highserve_rejected_total", &m.labels, m.counters.code(429));
    }
    out.family("highserve_timeouts_total", "counter", "Requests that timed out (504)");
    for m in models {
        out.sample("highserve_timeouts_total", &m.labels, m.counters.code(504));
    }
    out.family(
        "highserve_cancelled_total",
        "counter",
        "Requests whose client went away before compute, skipped by the batcher",
    );
    for m in models {
        out.sample("highserve_cancelled_total", &m.labels, sum(scrape.region, m.index, |s| load(&s.cancel_count)));
    }
    out.family("highserve_inflight_requests", "gauge", "Inference requests in flight");
    for m in models {
        out.sample("highserve_inflight_requests", &m.labels, m.counters.inflight());
    }
    out.family("highserve_inflight_bytes", "gauge", "Request body bytes in flight (admission)");
    out.sample("highserve_inflight_bytes", "", scrape.admission.inflight_bytes());
    out.family("highserve_ready", "gauge", "1 when every process is ready to serve");
    out.sample("highserve_ready", "", u8::from(scrape.ready));
}
