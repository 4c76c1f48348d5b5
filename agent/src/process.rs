//! This process's own resource use (`process_*` metrics, as the Prometheus
//! client libraries name them), read from /proc/self. Both binaries
//! register these; nothing here samples the host.

use nines_shared::telemetry::{FnKind, Registry};

/// Registers `process_resident_memory_bytes`, `process_cpu_seconds_total`
/// and `process_start_time_seconds`. The first two come from one read of
/// /proc/self/stat whenever the registry is rendered; the start time,
/// fixed, is read once here (it needs the boot time from /proc/stat, a
/// dearer file).
pub fn register(r: &Registry) {
    r.fn_group(
        &[
            (
                "process_resident_memory_bytes",
                "Resident memory of this process in bytes.",
                FnKind::Gauge,
            ),
            (
                "process_cpu_seconds_total",
                "User and system CPU time of this process in seconds.",
                FnKind::Counter,
            ),
        ],
        || match self_stat() {
            Some(s) => vec![s.rss_bytes, s.cpu_seconds],
            None => vec![f64::NAN, f64::NAN],
        },
    );
    let start = start_time_seconds().unwrap_or(f64::NAN);
    r.gauge_fn(
        "process_start_time_seconds",
        "Start time of this process since the Unix epoch in seconds.",
        move || start,
    );
}

struct SelfStat {
    rss_bytes: f64,
    cpu_seconds: f64,
    /// Clock ticks from boot to this process's start.
    start_ticks: f64,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant and has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn self_stat() -> Option<SelfStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    // Fields after the name, 0-based: utime 11, stime 12, starttime 19, rss 21.
    let mut num = |skip: usize| f.nth(skip).and_then(|s| s.parse::<f64>().ok());
    let (utime, stime) = (num(11)?, num(0)?);
    let (start_ticks, rss_pages) = (num(6)?, num(1)?);
    // SAFETY: sysconf reads a constant and has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) as f64 };
    Some(SelfStat {
        rss_bytes: rss_pages * page,
        cpu_seconds: (utime + stime) / clock_ticks_per_second(),
        start_ticks,
    })
}

/// When this process started, in seconds since the Unix epoch.
fn start_time_seconds() -> Option<f64> {
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    Some(boot + self_stat()?.start_ticks / clock_ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_resource_use_is_readable() {
        let s = self_stat().expect("/proc/self/stat");
        assert!(s.rss_bytes > 0.0);
        assert!(s.cpu_seconds >= 0.0);
        let start = start_time_seconds().expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start > 1e9 && start <= now + 1.0, "{start}");
        let r = Registry::new();
        register(&r);
        let text = r.render();
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
