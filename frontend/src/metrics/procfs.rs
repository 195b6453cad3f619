//! Reading a process's CPU time and resident memory from `/proc`.

/// CPU seconds and resident bytes of `pid`, from `/proc` (Linux reports CPU
/// in USER_HZ = 100 ticks per second).
pub(super) fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((ticks as f64 / 100.0, rss_kb * 1024))
}
