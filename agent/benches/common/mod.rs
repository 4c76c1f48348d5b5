//! What more than one bench sends: the footprint bench's StatsD traffic.

/// Lines in one tick of StatsD traffic (ticks are 100 ms apart, so
/// 1,000 lines a second).
pub const STATSD_LINES_PER_TICK: u64 = 100;
/// Distinct StatsD names the traffic cycles over.
pub const STATSD_NAMES: u64 = 100;

/// The datagrams of one tick of StatsD traffic, lines `*i..` (advanced):
/// counters, timers and gauges over [`STATSD_NAMES`] names, cut into
/// datagrams of at most 1,400 bytes.
pub fn statsd_tick(i: &mut u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut packet = String::new();
    for _ in 0..STATSD_LINES_PER_TICK {
        let name = *i % STATSD_NAMES;
        let line = match name % 3 {
            0 => format!("bench.requests.n{name}:1|c|#route:r{}\n", *i % 4),
            1 => format!("bench.latency.n{name}:{}|ms|#route:r{}\n", *i % 400, *i % 4),
            _ => format!("bench.queue.n{name}:{}|g\n", *i % 50),
        };
        if packet.len() + line.len() > 1400 {
            out.push(std::mem::take(&mut packet).into_bytes());
        }
        packet.push_str(&line);
        *i += 1;
    }
    if !packet.is_empty() {
        out.push(packet.into_bytes());
    }
    out
}
