//! Health: whether every ready child's main loop still turns, and the
//! systemd watchdog pings that depend on it.

use shm::ProcId;
use shm::region::ProcState;

use super::Supervisor;

impl Supervisor {
    /// Why a child counts as hung: it is up (ready) but its main loop has not
    /// turned within `supervisor.heartbeat_timeout_ms`. A child that is down
    /// and being restarted is not hung: restarting it is this supervisor's
    /// job, and too many crashes end the daemon anyway.
    fn hung(&self) -> Option<String> {
        let limit = self.cfg.supervisor.heartbeat_timeout_ms.saturating_mul(1_000_000);
        let mut procs: Vec<&ProcId> = self.children.keys().collect();
        procs.sort_by_key(|p| p.0);
        procs.into_iter().find_map(|&p| {
            let child = &self.children[&p];
            if child.pid.is_none() || self.region.proc_state(p) != ProcState::Ready {
                return None;
            }
            let age = self.region.heartbeat_age_ns(p)?;
            (age > limit).then(|| format!("{} has not made progress for {:.1} s", child.role.name(), age as f64 / 1e9))
        })
    }

    /// Logs changes of health and, when `ping`, sends the systemd watchdog
    /// ping only while healthy: a hung worker stops the pings, and systemd
    /// restarts the service once `WatchdogSec` passes without one.
    pub(super) fn check_health(&mut self, ping: bool) {
        let hung = self.hung();
        match (&hung, &self.unhealthy) {
            (Some(why), None) => tracing::error!(
                "{why}; {}",
                if ping { "withholding the systemd watchdog ping" } else { "it looks hung" }
            ),
            (None, Some(_)) => tracing::info!("every process is making progress again"),
            _ => {}
        }
        self.unhealthy = hung;
        if ping
            && self.unhealthy.is_none()
            && let Some(n) = &self.notifier
        {
            n.send("WATCHDOG=1");
        }
    }
}
