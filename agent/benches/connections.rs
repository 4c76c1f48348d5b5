//! Benchmark: one TCP connection sample with 20,000 open loopback
//! connections, next to node_exporter's tcpstat collector scraped on the
//! same host (Debian's prometheus-node-exporter with
//! `--collector.disable-defaults --collector.tcpstat
//! --web.disable-exporter-metrics`, so a scrape does the tcpstat work and
//! nothing else). Target: at most one fifth of node_exporter's time. The
//! per-family netlink dump (two walks of the kernel's table, what the
//! sampler falls back to) is timed too.
//!
//! Run: `cargo bench -p nines-agent --bench connections`
//! (`NINES_BENCH_CONNECTIONS=N` to change the count). The server ends of
//! the connections wait in listeners' accept queues and the client ends
//! are held by forked children, so no process needs more descriptors than
//! a default hard limit allows. Only 127.0.0.1 is used.

use nines_agent::samplers::Samples;
use nines_agent::samplers::connections::ConnectionSampler;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 30;

fn main() {
    let n: usize = std::env::var("NINES_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let started = Instant::now();
    let (_listeners, children) = connections_in_children(n, 8, 5000);
    println!("{n} loopback connections open ({:.1?})", started.elapsed());

    let root = PathBuf::from("/");
    let mut netlink = ConnectionSampler::new(root.clone());
    let mut per_family = ConnectionSampler::new(root.clone()).with_one_walk_dump(false);
    let mut procfs = ConnectionSampler::new(root).with_netlink(false);
    let ne = start_node_exporter();

    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..ROUNDS {
        // Alternate, so load from elsewhere hits all three alike.
        let t = Instant::now();
        netlink
            .sample(&mut Samples::default())
            .expect("netlink round");
        times[0].push(t.elapsed());
        let t = Instant::now();
        procfs.sample(&mut Samples::default()).expect("/proc round");
        times[1].push(t.elapsed());
        let t = Instant::now();
        per_family
            .sample(&mut Samples::default())
            .expect("per-family netlink round");
        times[3].push(t.elapsed());
        if let Some((_, port)) = &ne {
            let t = Instant::now();
            let body = scrape(*port);
            times[2].push(t.elapsed());
            assert!(
                body.contains("node_tcp_connection_states"),
                "tcpstat output"
            );
        }
    }
    for pid in children {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let ours = median(&mut times[0]).unwrap_or_default();
    let ours_proc = median(&mut times[1]).unwrap_or_default();
    println!("nines connection sample (netlink):   median {ours:>10.2?} over {ROUNDS} rounds");
    let ours_per_family = median(&mut times[3]).unwrap_or_default();
    println!("nines connection sample (per family): median {ours_per_family:>9.2?}");
    println!("nines connection sample (/proc):     median {ours_proc:>10.2?}");
    match (ne, median(&mut times[2])) {
        (Some((mut child, _)), Some(theirs)) => {
            let _ = child.kill();
            let _ = child.wait();
            println!("node_exporter tcpstat scrape:        median {theirs:>10.2?}");
            println!(
                "ratio nines/node_exporter: {:.3} (target <= 0.200)",
                ours.as_secs_f64() / theirs.as_secs_f64()
            );
        }
        _ => {
            println!("node_exporter not found (apt-get install prometheus-node-exporter): no ratio")
        }
    }
}

/// Starts node_exporter with only tcpstat on a free port.
fn start_node_exporter() -> Option<(Child, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("prometheus-node-exporter")
        .args([
            "--collector.disable-defaults",
            "--collector.tcpstat",
            "--web.disable-exporter-metrics",
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // One scrape to warm it up.
            scrape(port);
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// GET /metrics over a plain socket; the whole body.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect node_exporter");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// Opens `n` loopback connections whose server ends stay in the accept
/// queues of `listeners` listeners and whose client ends are held by forked
/// children, `per_child` each. Returns the listeners and the children.
fn connections_in_children(
    n: usize,
    listeners: usize,
    per_child: usize,
) -> (Vec<TcpListener>, Vec<libc::pid_t>) {
    let listeners: Vec<TcpListener> = (0..listeners)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut addresses = Vec::new();
    for listener in &listeners {
        // A longer accept queue than std's default; Linux allows listen()
        // again on a listening socket to change it.
        // SAFETY: the descriptor is a listening socket we own.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        assert_eq!(rc, 0, "listen");
        let port = listener.local_addr().expect("address").port();
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        address.sin_family = libc::AF_INET as libc::sa_family_t;
        address.sin_port = port.to_be();
        address.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        addresses.push(address);
    }
    assert!(
        n.div_ceil(listeners.len()) <= 4096,
        "accept queues too small"
    );
    let mut ready = [0 as libc::c_int; 2];
    // SAFETY: `ready` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0, "pipe");
    let mut children = Vec::new();
    let mut opened = 0;
    while opened < n {
        let count = per_child.min(n - opened);
        let first = opened;
        // SAFETY: this process is single-threaded here; the child makes
        // only plain syscalls on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for i in first..first + count {
                let address = &addresses[i % addresses.len()];
                // SAFETY: plain syscalls; `address` is a valid sockaddr_in.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let connected = fd >= 0
                        && libc::connect(
                            fd,
                            (address as *const libc::sockaddr_in).cast(),
                            size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        ) == 0;
                    if !connected {
                        libc::_exit(1);
                    }
                }
            }
            // SAFETY: plain syscalls; the child never returns.
            unsafe {
                libc::write(ready[1], b"x".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        assert!(pid > 0, "fork");
        children.push(pid);
        opened += count;
    }
    for _ in &children {
        let mut byte = 0u8;
        // SAFETY: reading one byte into `byte`.
        let got = unsafe { libc::read(ready[0], (&raw mut byte).cast(), 1) };
        assert_eq!(got, 1, "a child could not open its connections");
    }
    // SAFETY: closing the two pipe descriptors we created.
    unsafe {
        libc::close(ready[0]);
        libc::close(ready[1]);
    }
    (listeners, children)
}
