//! Benchmark: the CPU one sampling round costs the agent, in its parts,
//! with the label sets of the round before reused as the agent reuses
//! them.
//!
//! - `host+system`: the host and system samplers reading this host's
//!   /proc and /sys (files kept open, re-read each round).
//! - `connections`: the connection sampler counting this host's TCP
//!   sockets in one netlink dump.
//! - `histograms`: 33 latency histograms without labels (StatsD timers in
//!   the footprint bench) and 10 with `probe` and `phase` labels (probe
//!   durations), each reported as 19 buckets, `+Inf`, sum and count.
//! - `observe`: 1,000 histogram observations spread over the 33 timers
//!   (a second of the footprint bench's StatsD traffic).
//! - `statsd lines`: a second of the footprint bench's StatsD traffic
//!   (1,000 lines in datagrams of up to 1,400 bytes) applied to the
//!   listener's state, per line.
//! - `statsd report`: the round reporting the series that traffic made.
//!
//! Each part is timed in this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`,
//! so other processes on the host change it little); the figure is the
//! median over the rounds, after 20 rounds not timed.
//!
//! Run: `cargo bench -p nines-agent --bench sampling`
//! (`NINES_BENCH_ROUNDS=N` for the rounds timed, default 2,000).

mod common;

use nines_agent::samplers::histogram::Histogram;
use nines_agent::samplers::statsd::{StatsdConfig, StatsdState};
use nines_agent::samplers::{SamplerSet, SamplerToggles, Samples};
use nines_shared::MetricKind;
use std::path::PathBuf;
use std::time::Duration;

const WARM_UP_ROUNDS: usize = 20;
const TIMERS: usize = 33;
const PROBES: usize = 10;
const OBSERVATIONS: usize = 1_000;

fn main() {
    let rounds: usize = std::env::var("NINES_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let only = |host: bool, connections: bool| SamplerToggles {
        host,
        system: host,
        connections,
        connections_method: nines_agent::samplers::connections::ConnectionMethod::Netlink,
        // One dump, in this thread, so its CPU clock sees all of it.
        connections_parallelism: 1,
        ..SamplerToggles::default()
    };
    let root = PathBuf::from("/");
    let mut host = SamplerSet::with(root.clone(), &only(true, false), None, Vec::new())
        .expect("host samplers load nothing");
    let mut connections = SamplerSet::with(root, &only(false, true), None, Vec::new())
        .expect("netlink loads nothing");
    let timer_names: Vec<String> = (0..TIMERS).map(|i| format!("timer_{i}_seconds")).collect();
    let probe_names: Vec<String> = (0..PROBES).map(|i| format!("p{i}")).collect();
    let mut timers: Vec<Histogram> = (0..TIMERS).map(|_| Histogram::latency()).collect();
    let mut probes: Vec<Histogram> = (0..PROBES).map(|_| Histogram::latency()).collect();
    for (i, p) in probes.iter_mut().enumerate() {
        p.observe(0.001 * (i + 1) as f64);
    }

    let statsd = StatsdState::new(&StatsdConfig::default());
    let mut line = 0;
    let second: Vec<Vec<u8>> = (0..10)
        .flat_map(|_| common::statsd_tick(&mut line))
        .collect();
    let mut statsd_out = Samples::default();
    let mut host_out = Samples::default();
    let mut connections_out = Samples::default();
    let mut histograms_out = Samples::default();
    let mut times: [Vec<Duration>; 6] = Default::default();
    let mut series = [0usize; 3];
    for round in 0..WARM_UP_ROUNDS + rounds {
        let timed = round >= WARM_UP_ROUNDS;
        let mut time = |part: usize, f: &mut dyn FnMut()| {
            let start = thread_cpu();
            f();
            if timed {
                times[part].push(thread_cpu().saturating_sub(start));
            }
        };
        host_out = host_out.recycle();
        time(0, &mut || {
            let failed = host.sample(&mut host_out);
            assert!(failed.is_empty(), "host samplers failed: {failed:?}");
        });
        connections_out = connections_out.recycle();
        time(1, &mut || {
            let failed = connections.sample(&mut connections_out);
            assert!(failed.is_empty(), "connection sampler failed: {failed:?}");
        });
        histograms_out = histograms_out.recycle();
        time(2, &mut || {
            for (name, h) in timer_names.iter().zip(&timers) {
                histograms_out.family(name, MetricKind::Histogram, "A timer.", "seconds");
                h.report(&mut histograms_out, name, &[]);
            }
            let name = "nines_probe_duration_seconds";
            histograms_out.family(name, MetricKind::Histogram, "Probe time.", "seconds");
            for (probe, h) in probe_names.iter().zip(&probes) {
                h.report(
                    &mut histograms_out,
                    name,
                    &[("probe", probe), ("phase", "total")],
                );
            }
        });
        time(3, &mut || {
            for i in 0..OBSERVATIONS {
                // Spread over the buckets as request latencies are: most
                // small, a few seconds long.
                let v = 0.002 * ((i * 7919 + round) % 600) as f64;
                timers[i % TIMERS].observe_n(v, 1);
            }
        });
        time(4, &mut || {
            for datagram in &second {
                statsd.ingest(datagram);
            }
        });
        statsd_out = statsd_out.recycle();
        time(5, &mut || statsd.sample(&mut statsd_out));
        series = [
            host_out.observations.len(),
            connections_out.observations.len(),
            histograms_out.observations.len(),
        ];
    }
    for (i, part) in ["host+system", "connections", "histograms", "observe"]
        .iter()
        .enumerate()
    {
        let what = match i {
            3 => format!("{OBSERVATIONS} observations"),
            _ => format!("{} series", series[i]),
        };
        println!(
            "{part:<13} {:>8.1} us CPU per round (median of {rounds}; {what})",
            median(&mut times[i]).as_secs_f64() * 1e6
        );
    }
    assert_eq!(
        statsd_out.value_of(
            "nines_statsd_dropped_lines_total",
            &[("reason", "parse_error")]
        ),
        Some(0.0),
        "the bench's StatsD lines all parse"
    );
    let lines = (line as f64).max(1.0);
    println!(
        "{:<13} {:>8.1} ns CPU per line (median of {rounds} seconds of traffic, {line} lines each)",
        "statsd lines",
        median(&mut times[4]).as_secs_f64() * 1e9 / lines
    );
    println!(
        "{:<13} {:>8.1} us CPU per round (median of {rounds}; {} series)",
        "statsd report",
        median(&mut times[5]).as_secs_f64() * 1e6,
        statsd_out.observations.len()
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives
    // across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
