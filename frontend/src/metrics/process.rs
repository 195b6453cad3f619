//! The processes: worker restarts by role, and each process's CPU time and
//! resident memory (read from `/proc`).

use std::sync::atomic::Ordering;

use shm::{ProcId, Region, Topology};

use super::Out;
use super::procfs::proc_usage;

pub(super) fn render(out: &mut Out, region: &Region) {
    let topo = region.layout().topology();
    out.family("highserve_worker_restarts_total", "counter", "Worker processes restarted after a crash, by role");
    for role in ["inference", "preproc"] {
        let n: u64 = (0..topo.procs() as u16)
            .map(ProcId)
            .filter(|&p| role_name(topo, p) == role)
            .filter_map(|p| region.proc(p))
            .map(|e| e.restarts.load(Ordering::Relaxed) as u64)
            .sum();
        out.sample("highserve_worker_restarts_total", &format!("role=\"{role}\""), n);
    }
    let mut procs: Vec<(&str, String, u32)> =
        vec![("supervisor", "supervisor".into(), std::os::unix::process::parent_id())];
    for p in (0..topo.procs() as u16).map(ProcId) {
        let pid = region.proc(p).map_or(0, |e| e.pid.load(Ordering::Relaxed));
        procs.push((role_name(topo, p), proc_name(topo, p), pid));
    }
    out.family("highserve_process_cpu_seconds_total", "counter", "CPU time (user + system) of each process");
    out.family("highserve_process_resident_memory_bytes", "gauge", "Resident memory of each process");
    for (role, name, pid) in procs {
        let Some((cpu, rss)) = proc_usage(pid) else { continue };
        let ls = format!("role=\"{role}\",process=\"{name}\"");
        out.sample("highserve_process_cpu_seconds_total", &ls, cpu);
        out.sample("highserve_process_resident_memory_bytes", &ls, rss);
    }
}

fn role_name(topo: Topology, p: ProcId) -> &'static str {
    topo.role(p).map_or("unknown", |r| r.kind())
}

/// How logs, metrics and `ps` name process `p` (`gpu0`, `preproc1`, ...).
pub(super) fn proc_name(topo: Topology, p: ProcId) -> String {
    topo.role(p).map_or_else(|| format!("proc{}", p.0), |r| r.name())
}
