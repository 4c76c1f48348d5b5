//! This process's own resource use (`process_*` metrics, as the Prometheus
//! client libraries name them), read from /proc/self. Both binaries
//! register these; nothing here samples the host.

use nines_shared::telemetry::Registry;

/// Registers `process_resident_memory_bytes`, `process_cpu_seconds_total`
/// and `process_start_time_seconds`.
pub fn register(r: &Registry) {
    r.gauge_fn(
        "process_resident_memory_bytes",
        "Resident memory of this process in bytes.",
        || self_stat().map(|s| s.rss_bytes).unwrap_or(f64::NAN),
    );
    r.counter_fn(
        "process_cpu_seconds_total",
        "User and system CPU time of this process in seconds.",
        || self_stat().map(|s| s.cpu_seconds).unwrap_or(f64::NAN),
    );
    let start = self_stat()
        .map(|s| s.start_time_seconds)
        .unwrap_or(f64::NAN);
    r.gauge_fn(
        "process_start_time_seconds",
        "Start time of this process since the Unix epoch in seconds.",
        move || start,
    );
}

struct SelfStat {
    rss_bytes: f64,
    cpu_seconds: f64,
    start_time_seconds: f64,
}

fn self_stat() -> Option<SelfStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, 0-based: utime 11, stime 12, starttime 19, rss 21.
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
    // SAFETY: sysconf reads a constant and has no preconditions.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    Some(SelfStat {
        rss_bytes: num(21)? * page,
        cpu_seconds: (num(11)? + num(12)?) / hz,
        start_time_seconds: boot + num(19)? / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_resource_use_is_readable() {
        let s = self_stat().expect("/proc/self/stat");
        assert!(s.rss_bytes > 0.0);
        assert!(s.start_time_seconds > 1e9);
        let r = Registry::new();
        register(&r);
        let text = r.render();
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
