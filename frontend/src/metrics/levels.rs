//! By priority level, for each model: requests in flight (admitted and not
//! yet answered: queued or computing), the time from admission to the
//! answer of successful ones (their time queued and computing), and the
//! requests shed by level and reason. These show whether priority holds
//! when the daemon is full.

use super::{Labelled, Out};
use crate::admission::Admission;

pub(super) fn render(out: &mut Out, models: &[Labelled<'_>], admission: &Admission) {
    out.family(
        "highserve_level_inflight_requests",
        "gauge",
        "Requests in flight (queued or computing) by priority level; 255 is no level asked for",
    );
    for m in models {
        for (level, n) in admission.inflight_by_level(m.index) {
            out.sample("highserve_level_inflight_requests", &format!("{},level=\"{level}\"", m.labels), n);
        }
    }
    out.family(
        "highserve_level_duration_seconds",
        "histogram",
        "Time from admission to the answer of successful requests (queued and computing), by priority level",
    );
    for m in models {
        for (level, acc) in m.counters.by_level() {
            out.histogram("highserve_level_duration_seconds", &format!("{},level=\"{level}\"", m.labels), &acc);
        }
    }
    out.family(
        "highserve_shed_total",
        "counter",
        "Requests refused at admission, by priority level and reason (max_inflight, model_max_inflight, \
         max_inflight_bytes, level_share, deadline, expired)",
    );
    for m in models {
        for ((level, why), n) in admission.shed(m.index) {
            out.sample("highserve_shed_total", &format!("{},level=\"{level}\",reason=\"{}\"", m.labels, why.name()), n);
        }
    }
}
