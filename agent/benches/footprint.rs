//! Benchmark: the agent's memory and CPU next to node_exporter's, both
//! working at a 1 s rhythm for the same time on the same host.
//!
//! - nines-agent (this package's release binary): every default sampler at
//!   `interval = "1s"`, 10 HTTP probes every second against a loopback
//!   HTTP server this bench runs, and StatsD traffic from this bench at a
//!   steady 1,000 lines/s over 100 names (counters, timers, gauges). It
//!   pushes to a loopback sink in this bench that decodes every batch
//!   (wire format, as a collector would) and answers 200.
//! - node_exporter (Debian's `prometheus-node-exporter`, default
//!   collectors), scraped over HTTP every second by this bench, as a 1 s
//!   Prometheus scrape would.
//!
//! Figures per process: peak resident memory (`VmHWM`) and resident memory
//! at the end (`VmRSS`) from /proc/PID/status, and CPU time (utime + stime
//! from /proc/PID/stat) over the measured window, which starts after a
//! warm-up of 5 s. Targets: the agent's memory and CPU at most half of
//! node_exporter's.
//!
//! Run: `cargo bench -p nines-agent --bench footprint`
//! (`NINES_BENCH_SECONDS=N` for the measured window, default 60). Only
//! 127.0.0.1 is used.

mod common;

use nines_shared::wire;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WARM_UP: Duration = Duration::from_secs(5);
const PROBES: usize = 10;
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

fn main() {
    let seconds: u64 = std::env::var("NINES_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let window = Duration::from_secs(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let dir = tempfile::tempdir().expect("temp dir");

    let sink = Sink::start(stop.clone());
    let probe_port = serve_probe_target(stop.clone());
    let statsd_port = free_udp_port();
    let listen_port = free_tcp_port();
    let cfg = dir.path().join("agent.toml");
    let mut toml = format!(
        "collector = \"http://127.0.0.1:{}\"\ninterval = \"1s\"\ninstance = \"bench\"\n\
         listen = \"127.0.0.1:{listen_port}\"\nstate_dir = \"{}\"\n\
         [statsd]\nlisten = \"127.0.0.1:{statsd_port}\"\n",
        sink.port,
        dir.path().join("state").display()
    );
    for i in 0..PROBES {
        toml.push_str(&format!(
            "[[probe]]\nname = \"p{i}\"\nkind = \"http\"\n\
             target = \"http://127.0.0.1:{probe_port}/p{i}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        ));
    }
    std::fs::write(&cfg, toml).expect("agent config");
    let agent = Command::new(env!("CARGO_BIN_EXE_nines-agent"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nines-agent");
    let agent = Running(agent);
    let node_exporter = start_node_exporter();
    let statsd = {
        let stop = stop.clone();
        std::thread::spawn(move || send_statsd(statsd_port, &stop))
    };
    let scraper = node_exporter.as_ref().map(|(_, port)| {
        let (stop, port) = (stop.clone(), *port);
        std::thread::spawn(move || scrape_every_second(port, &stop))
    });

    std::thread::sleep(WARM_UP);
    let agent_start = cpu_seconds(agent.0.id()).expect("agent running");
    let ne_start = node_exporter
        .as_ref()
        .map(|(c, _)| cpu_seconds(c.0.id()).expect("node_exporter running"));
    let batches_start = sink.batches.load(Ordering::Relaxed);
    let samples_start = sink.samples.load(Ordering::Relaxed);
    println!(
        "measuring for {seconds} s after a {} s warm-up (NINES_BENCH_SECONDS to change)",
        WARM_UP.as_secs()
    );
    std::thread::sleep(window);
    let agent_cpu = cpu_seconds(agent.0.id()).expect("agent running") - agent_start;
    let agent_mem = memory(agent.0.id()).expect("agent running");
    let ne = node_exporter.as_ref().zip(ne_start).map(|((c, _), start)| {
        let cpu = cpu_seconds(c.0.id()).expect("node_exporter running") - start;
        (cpu, memory(c.0.id()).expect("node_exporter running"))
    });
    let batches = sink.batches.load(Ordering::Relaxed) - batches_start;
    let samples = sink.samples.load(Ordering::Relaxed) - samples_start;
    // The agent goes first, so it never sees its probe target vanish.
    drop(agent);
    stop.store(true, Ordering::Relaxed);
    let _ = statsd.join();
    let scrapes = scraper.map(|s| s.join().unwrap_or_default());
    drop(node_exporter);

    assert!(
        sink.failures.load(Ordering::Relaxed) == 0,
        "the sink could not decode a batch"
    );
    let probes_seen = sink.probe_series.load(Ordering::Relaxed);
    let statsd_seen = sink.statsd_series.load(Ordering::Relaxed);
    assert!(
        batches >= seconds / 2,
        "the agent delivered only {batches} batches"
    );
    assert!(probes_seen > 0, "no probe series reached the sink");
    assert!(statsd_seen > 0, "no StatsD series reached the sink");

    let window_s = window.as_secs_f64();
    println!(
        "nines-agent:   peak RSS {:>7.1} MiB, end RSS {:>7.1} MiB, CPU {:>6.3} s ({:.2} % of one core); \
         {batches} batches, {:.0} samples/s delivered",
        mib(agent_mem.peak),
        mib(agent_mem.now),
        agent_cpu,
        agent_cpu / window_s * 100.0,
        samples as f64 / window_s,
    );
    let Some((ne_cpu, ne_mem)) = ne else {
        println!("{NODE_EXPORTER} not found (apt-get install prometheus-node-exporter): no ratio");
        return;
    };
    let (scrapes, scrape_bytes) = scrapes.unwrap_or_default();
    println!(
        "node_exporter: peak RSS {:>7.1} MiB, end RSS {:>7.1} MiB, CPU {:>6.3} s ({:.2} % of one core); \
         {scrapes} scrapes, {} bytes each",
        mib(ne_mem.peak),
        mib(ne_mem.now),
        ne_cpu,
        ne_cpu / window_s * 100.0,
        scrape_bytes / scrapes.max(1),
    );
    println!(
        "ratio nines/node_exporter: peak RSS {:.3}, end RSS {:.3}, CPU {:.3} (targets <= 0.500)",
        agent_mem.peak as f64 / ne_mem.peak as f64,
        agent_mem.now as f64 / ne_mem.now as f64,
        agent_cpu / ne_cpu,
    );
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// Resident memory now and at its peak, in bytes.
struct Memory {
    now: u64,
    peak: u64,
}

fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    Some(Memory {
        now: kib("VmRSS:")?,
        peak: kib("VmHWM:")?,
    })
}

/// utime + stime of every thread of the process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), 0-based:
    // utime 11, stime 12.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant and has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// node_exporter with its default collectors on a free port, once it
/// answers.
fn start_node_exporter() -> Option<(Running, u16)> {
    let port = free_tcp_port();
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let child = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if scrape(port).is_some() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// GET /metrics over a plain socket; the whole response.
fn scrape(port: u16) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    out.starts_with(b"HTTP/1.0 200").then_some(out)
}

/// Scrapes node_exporter on a 1 s grid until `stop`; (scrapes, bytes).
fn scrape_every_second(port: u16, stop: &AtomicBool) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let body = scrape(port).expect("node_exporter scrape");
        n += 1;
        bytes += body.len() as u64;
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    (n, bytes)
}

/// Sends StatsD lines at a steady rate, a tick of datagrams
/// ([`common::statsd_tick`]) every 100 ms.
fn send_statsd(port: u16, stop: &AtomicBool) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("statsd socket");
    socket.connect(("127.0.0.1", port)).expect("statsd connect");
    let mut i: u64 = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for datagram in common::statsd_tick(&mut i) {
            let _ = socket.send(&datagram);
        }
        next += Duration::from_millis(100);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// A loopback HTTP server the probes check: answers every request with a
/// small 200 page and closes the connection.
fn serve_probe_target(stop: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("probe target");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                // The request head; probes send no body with GET.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let body = "<html><body>ok</body></html>\n";
                let _ = (&conn).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    port
}

/// Stands in for a collector: decodes every pushed batch as a collector
/// would and acknowledges it.
struct Sink {
    port: u16,
    batches: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    probe_series: Arc<AtomicU64>,
    statsd_series: Arc<AtomicU64>,
}

impl Sink {
    fn start(stop: Arc<AtomicBool>) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("sink");
        let sink = Sink {
            port: listener.local_addr().expect("address").port(),
            batches: Arc::default(),
            samples: Arc::default(),
            failures: Arc::default(),
            probe_series: Arc::default(),
            statsd_series: Arc::default(),
        };
        let counts = sink.counts();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let counts = counts.clone();
                std::thread::spawn(move || counts.serve(conn));
            }
        });
        sink
    }

    fn counts(&self) -> SinkCounts {
        SinkCounts {
            batches: self.batches.clone(),
            samples: self.samples.clone(),
            failures: self.failures.clone(),
            probe_series: self.probe_series.clone(),
            statsd_series: self.statsd_series.clone(),
        }
    }
}

#[derive(Clone)]
struct SinkCounts {
    batches: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    probe_series: Arc<AtomicU64>,
    statsd_series: Arc<AtomicU64>,
}

impl SinkCounts {
    /// HTTP/1.1 with keep-alive: one push per request.
    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(&conn);
        loop {
            let mut length = 0usize;
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == "\r\n" {
                    break;
                }
                if first {
                    first = false;
                    continue;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            match wire::decode(&body, &wire::WireLimits::default()) {
                Ok(batch) => {
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    let samples: usize = batch.groups.iter().map(|g| g.values.len()).sum();
                    self.samples.fetch_add(samples as u64, Ordering::Relaxed);
                    for d in &batch.definitions {
                        let name = d.labels.metric_name().unwrap_or("");
                        if name.starts_with("nines_probe_") {
                            self.probe_series.fetch_add(1, Ordering::Relaxed);
                        }
                        if name.starts_with("bench_") {
                            self.statsd_series.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    eprintln!("sink: cannot decode a batch: {e}");
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            let answer =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            if (&conn).write_all(answer).is_err() {
                return;
            }
        }
    }
}
