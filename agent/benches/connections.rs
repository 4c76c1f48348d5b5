//! Benchmark: one TCP connection sample with 20,000 open loopback
//! connections, next to node_exporter's tcpstat collector scraped on the
//! same host (Debian's prometheus-node-exporter with
//! `--collector.disable-defaults --collector.tcpstat
//! --web.disable-exporter-metrics`, so a scrape does the tcpstat work and
//! nothing else). Target: at most one fifth of node_exporter's time.
//!
//! The sampler is timed as the agent runs it by default (`auto`: BPF
//! counting in the kernel where it loads, as root; the line says which
//! method it picked), with each of the two BPF ways on its own (the walk
//! of the TCP hash tables and the TCP iterator, with their ratio), through
//! netlink split into parallel dumps (one
//! per CPU up to four, cut from the round before; the default without the
//! BPF iterator), and in one netlink walk (`connections_parallelism = 1`); the
//! per-family netlink dump (two walks of the kernel's table, what the
//! sampler falls back to) and the /proc fallback are timed too. Each is
//! timed in wall time and in CPU time of the process doing the work: for
//! this process its CPU clock (`CLOCK_PROCESS_CPUTIME_ID`, which keeps the
//! time of a split round's threads after they end), for node_exporter all
//! of its threads (from /proc/<pid>/task/*/schedstat); medians over the
//! rounds. The samplers' first round (opening their sockets, planning the
//! split) is not timed, and neither is node_exporter's first scrape. The
//! established count is checked against `ss` first, for both samplers.
//!
//! Two raw dumps bound what any one-walk sampler can reach here: the
//! kernel walking its table without sending a message (a filter that
//! refuses every socket), and only the server ends of the connections
//! (ESTABLISHED with a local port among the listening ones), the fewest
//! messages from which exact per-port counts can be made.
//!
//! Run: `cargo bench -p nines-agent --bench connections`
//! (`NINES_BENCH_CONNECTIONS=N` to change the count). The server ends of
//! the connections wait in listeners' accept queues and the client ends
//! are held by forked children, so no process needs more descriptors than
//! a default hard limit allows. Only 127.0.0.1 is used.

use nines_agent::samplers::Samples;
use nines_agent::samplers::connections::ConnectionSampler;
use nines_agent::samplers::connections_bpf::{BpfSocketCounter, Way};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 30;

/// What one way of counting cost per round: wall time, and CPU time (on
/// every thread of the process doing the work: this process's CPU clock,
/// node_exporter's threads' schedstat). On a
/// shared machine the wall time includes waits for a CPU; the CPU time
/// does not, so both are printed.
#[derive(Default)]
struct Timings {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Timings {
    fn medians(&mut self) -> Option<(Duration, Duration)> {
        self.wall.sort();
        self.cpu.sort();
        Some((
            *self.wall.get(self.wall.len() / 2)?,
            *self.cpu.get(self.cpu.len() / 2)?,
        ))
    }
}

/// Times `work` in wall time and in the CPU time of `pid`'s threads.
fn timed(pid: u32, into: &mut Timings, work: impl FnOnce()) {
    let cpu = cpu_time(pid);
    let t = Instant::now();
    work();
    into.wall.push(t.elapsed());
    into.cpu.push(cpu_time(pid).saturating_sub(cpu));
}

/// Times `work` in wall time and in this process's CPU time, which
/// includes threads that ended meanwhile.
fn timed_here(into: &mut Timings, work: impl FnOnce()) {
    let cpu = own_cpu_time();
    let t = Instant::now();
    work();
    into.wall.push(t.elapsed());
    into.cpu.push(own_cpu_time().saturating_sub(cpu));
}

/// CPU time so far of this process, every thread it ran, ended or not.
fn own_cpu_time() -> Duration {
    // SAFETY: all-zero is a valid timespec, which the call fills.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The 1-minute load average, for the record.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// CPU time so far of all threads of `pid`: the first field of each
/// `/proc/<pid>/task/<tid>/schedstat`, in nanoseconds.
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the task list");
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

fn main() {
    let n: usize = std::env::var("NINES_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{cpus} CPUs available, load average {}", load_average());
    let started = Instant::now();
    let (listeners, children) = connections_in_children(n, 8, 5000);
    println!("{n} loopback connections open ({:.1?})", started.elapsed());

    let root = PathBuf::from("/");
    // The two BPF ways, each on its own: the table walk and the iterator.
    let mut bpf_ways: Vec<(Way, ConnectionSampler)> = Vec::new();
    match BpfSocketCounter::load() {
        Ok(counter) => {
            println!("BPF loads here: {}", counter.describe());
            for way in [Way::Walk, Way::Iterator] {
                if let Ok(mut counter) = BpfSocketCounter::load()
                    && counter.set_way(way)
                {
                    bpf_ways.push((way, ConnectionSampler::new(root.clone()).with_bpf(counter)));
                }
            }
        }
        Err(e) => println!("BPF unavailable here ({e}): the default is netlink"),
    }
    let mut default = ConnectionSampler::new(root.clone()).with_bpf_if_available();
    let mut parallel = ConnectionSampler::new(root.clone());
    let mut one_walk = ConnectionSampler::new(root.clone()).with_parallelism(1);
    let mut per_family = ConnectionSampler::new(root.clone())
        .with_parallelism(1)
        .with_one_walk_dump(false);
    let mut procfs = ConnectionSampler::new(root).with_netlink(false);
    let ne = start_node_exporter();

    // Both ends of each connection are sockets of this host: the counts
    // must show 2n established sockets, as `ss` does, split or not.
    let established = |out: &Samples| {
        out.value_of("node_tcp_connection_states", &[("state", "established")])
            .unwrap_or_default()
    };
    let mut first = Samples::default();
    one_walk.sample(&mut first).expect("netlink round");
    let ours = established(&first);
    parallel
        .sample(&mut Samples::default())
        .expect("first parallel round");
    let mut split = Samples::default();
    parallel.sample(&mut split).expect("split round");
    let ours_split = established(&split);
    let mut by_default = Samples::default();
    default.sample(&mut by_default).expect("default round");
    let method = default.last_method().unwrap_or("none");
    let ours_default = established(&by_default);
    let theirs = ss_established();
    println!(
        "established sockets: nines {ours} (split in {}: {ours_split}; default, {method}: {ours_default}), ss {theirs:?}",
        parallel.last_dumps()
    );
    assert!(ours >= (2 * n) as f64, "both ends of every connection");
    assert!(
        ours_default >= (2 * n) as f64,
        "both ends of every connection, default method"
    );
    assert!(
        ours_split >= (2 * n) as f64,
        "both ends of every connection, split"
    );

    let listening: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect();
    let raw = RawDump::open();
    for (way, sampler) in &mut bpf_ways {
        let mut out = Samples::default();
        sampler.sample(&mut out).expect("BPF round");
        assert_eq!(sampler.last_method(), Some("bpf"), "{way:?}");
        assert!(
            established(&out) >= (2 * n) as f64,
            "both ends of every connection, {way:?}"
        );
    }
    let mut bpf_t: Vec<Timings> = bpf_ways.iter().map(|_| Timings::default()).collect();
    let mut default_t = Timings::default();
    let mut default_ways: Vec<(&str, usize)> = Vec::new();
    let mut parallel_t = Timings::default();
    let mut one_walk_t = Timings::default();
    let mut proc_t = Timings::default();
    let mut per_family_t = Timings::default();
    let mut ne_t = Timings::default();
    let mut walk_t = Timings::default();
    let mut server_ends_t = Timings::default();
    let mut server_ends = 0;
    let mut dumps = Vec::new();
    // Per round, the CPU time of the split sample's longest part: its wall
    // time when every part has a CPU to itself, whatever else runs here.
    let mut longest_part: Vec<Duration> = Vec::new();
    for _ in 0..ROUNDS {
        // Alternate, so load from elsewhere hits all of them alike.
        timed_here(&mut default_t, || {
            default
                .sample(&mut Samples::default())
                .expect("default round")
        });
        // auto counts each round the cheaper way (measuring the other now
        // and then): tell how often each way was taken.
        let way = default.last_method().unwrap_or("none");
        match default_ways.iter_mut().find(|(m, _)| *m == way) {
            Some((_, n)) => *n += 1,
            None => default_ways.push((way, 1)),
        }
        for ((_, sampler), t) in bpf_ways.iter_mut().zip(&mut bpf_t) {
            timed_here(t, || {
                sampler.sample(&mut Samples::default()).expect("BPF round")
            });
        }
        timed_here(&mut parallel_t, || {
            parallel
                .sample(&mut Samples::default())
                .expect("parallel round")
        });
        dumps.push(parallel.last_dumps());
        longest_part.extend(parallel.last_parts_cpu().iter().max().copied());
        timed_here(&mut one_walk_t, || {
            one_walk
                .sample(&mut Samples::default())
                .expect("one-walk round")
        });
        timed_here(&mut proc_t, || {
            procfs.sample(&mut Samples::default()).expect("/proc round")
        });
        timed_here(&mut per_family_t, || {
            per_family
                .sample(&mut Samples::default())
                .expect("per-family netlink round")
        });
        timed_here(&mut walk_t, || {
            assert_eq!(raw.dump(ALL_STATES, &refuse_all()), 0, "refused");
        });
        timed_here(&mut server_ends_t, || {
            server_ends = raw.dump(1 << 1, &local_port_in(&listening));
        });
        if let Some((child, port)) = &ne {
            timed(child.id(), &mut ne_t, || {
                let body = scrape(*port);
                assert!(
                    body.contains("node_tcp_connection_states"),
                    "tcpstat output"
                );
            });
        }
    }
    for pid in children {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    dumps.sort_unstable();
    dumps.dedup();
    let line = |what: &str, t: &mut Timings| {
        let (wall, cpu) = t.medians().unwrap_or_default();
        println!("{what:<42} median wall {wall:>9.2?}  cpu {cpu:>9.2?}");
        (wall, cpu)
    };
    println!(
        "medians over {ROUNDS} rounds (load average now {}):",
        load_average()
    );
    let ways: Vec<String> = default_ways
        .iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    println!("default (auto) rounds by method: {}", ways.join(", "));
    let method = default_ways
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or("none", |(m, _)| *m);
    let by_default = line(
        &format!("nines connection sample (default: {method})"),
        &mut default_t,
    );
    let ours = line(
        &format!("nines connection sample (netlink, {dumps:?} dumps)"),
        &mut parallel_t,
    );
    longest_part.sort_unstable();
    let longest = longest_part
        .get(longest_part.len() / 2)
        .copied()
        .unwrap_or_default();
    println!(
        "{:<42}                        cpu {longest:>9.2?}",
        "  its longest part"
    );
    let bpf: Vec<(Way, (Duration, Duration))> = bpf_ways
        .iter()
        .zip(&mut bpf_t)
        .map(|((way, _), t)| {
            let what = match way {
                Way::Walk => "nines connection sample (BPF table walk)",
                Way::Iterator => "nines connection sample (BPF iterator)",
            };
            (*way, line(what, t))
        })
        .collect();
    if let [(_, walk), (_, iter)] = bpf[..] {
        println!(
            "ratio table walk / iterator                  wall {:.3}, cpu {:.3}",
            walk.0.as_secs_f64() / iter.0.as_secs_f64(),
            walk.1.as_secs_f64() / iter.1.as_secs_f64()
        );
    }
    let single = line("nines connection sample (one walk)", &mut one_walk_t);
    line("nines connection sample (per family)", &mut per_family_t);
    line("nines connection sample (/proc)", &mut proc_t);
    let walk = line("floor: kernel walk, no message", &mut walk_t);
    let ends = line(
        &format!("floor: {server_ends} server ends only"),
        &mut server_ends_t,
    );
    match ne {
        Some((mut child, _)) => {
            let _ = child.kill();
            let _ = child.wait();
            let theirs = line("node_exporter tcpstat scrape", &mut ne_t);
            let ratio = |what: &str, a: (Duration, Duration)| {
                let wall = a.0.as_secs_f64() / theirs.0.as_secs_f64();
                let cpu = a.1.as_secs_f64() / theirs.1.as_secs_f64();
                println!("ratio {what:<34} wall {wall:.3}, cpu {cpu:.3}");
            };
            println!("nines / node_exporter (target: wall <= 0.200)");
            ratio(&format!("nines sample (default: {method})"), by_default);
            for &(way, t) in &bpf {
                ratio(&format!("nines sample (BPF {way:?})"), t);
            }
            ratio("nines sample (netlink split)", ours);
            // With a CPU free for each part the split sample's wall time
            // is its longest part's CPU time; node_exporter's wall time was
            // never below its CPU time here.
            println!(
                "ratio {:<34} {:.3} (its CPU / node_exporter's wall), {:.3} (/ node_exporter's CPU)",
                "  longest part, a CPU per part",
                longest.as_secs_f64() / theirs.0.as_secs_f64(),
                longest.as_secs_f64() / theirs.1.as_secs_f64()
            );
            ratio("nines sample (one walk)", single);
            ratio("floor walk", walk);
            ratio("floor server ends", ends);
        }
        None => {
            println!("node_exporter not found (apt-get install prometheus-node-exporter): no ratio")
        }
    }
}

/// Established TCP sockets as `ss -tanH state established` lists them, or
/// None without `ss`.
fn ss_established() -> Option<usize> {
    let out = Command::new("ss")
        .args(["-tanH", "state", "established"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    })
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

/// Every TCP state the sampler asks for (ESTABLISHED through
/// NEW_SYN_RECV).
const ALL_STATES: u32 = ((1 << 13) - 1) & !1;

/// linux/inet_diag.h: bytecode operations and the request attribute.
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_REQ_BYTECODE: u16 = 1;

/// `struct inet_diag_bc_op`: code, then the byte offsets to go on at when
/// the condition holds (`yes`) and when not (`no`); jumping 4 bytes past
/// the end refuses the socket, landing on the end accepts it.
fn op(code: u8, yes: u8, no: u16) -> [u8; 4] {
    let [a, b] = no.to_ne_bytes();
    [code, yes, a, b]
}

/// A filter that refuses every socket: the kernel walks its table and
/// checks each socket, but fills no message.
fn refuse_all() -> Vec<u8> {
    op(INET_DIAG_BC_JMP, 4, 8).to_vec()
}

/// A filter accepting sockets whose local port is one of `ports`: per
/// port, "local port == p" (with p in the next op's `no`) then a jump to
/// the end (accept); a mismatch goes on to the next port, the last one's
/// past the end (refuse).
fn local_port_in(ports: &[u16]) -> Vec<u8> {
    let total = ports.len() * 12;
    let mut bc = Vec::with_capacity(total);
    for (i, &port) in ports.iter().enumerate() {
        let left = (total - i * 12) as u16;
        let no = if i + 1 == ports.len() { left + 4 } else { 12 };
        bc.extend(op(INET_DIAG_BC_S_EQ, 8, no));
        bc.extend(op(0, 0, port));
        bc.extend(op(INET_DIAG_BC_JMP, 4, left - 8));
    }
    bc
}

/// A NETLINK_SOCK_DIAG socket for the floor dumps.
struct RawDump {
    fd: std::os::fd::OwnedFd,
}

impl RawDump {
    fn open() -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        assert!(fd >= 0, "netlink socket");
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        RawDump {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        }
    }

    /// A `TCPDIAG_GETSOCK` dump of both families in `states` with no
    /// extensions, filtered by `bytecode`; the number of sockets listed.
    fn dump(&self, states: u32, bytecode: &[u8]) -> usize {
        // nlmsghdr (16), inet_diag_req (60), then the bytecode attribute.
        let len = 16 + 60 + 4 + bytecode.len();
        let mut req = Vec::with_capacity(len);
        req.extend((len as u32).to_ne_bytes());
        req.extend(18u16.to_ne_bytes()); // TCPDIAG_GETSOCK
        req.extend((0x1u16 | 0x300).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
        req.extend(1u32.to_ne_bytes()); // seq
        req.extend(0u32.to_ne_bytes()); // pid
        req.extend([libc::AF_UNSPEC as u8, 0, 0, 0]); // family, src_len, dst_len, ext
        req.extend([0u8; 48]); // inet_diag_sockid
        req.extend(states.to_ne_bytes());
        req.extend(0u32.to_ne_bytes()); // dbs
        req.extend(((4 + bytecode.len()) as u16).to_ne_bytes());
        req.extend(INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        req.extend(bytecode);
        // SAFETY: all-zero is a valid sockaddr_nl; the kernel is port 0.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `kernel` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, len as isize, "send the dump request");
        let mut buf = vec![0u8; 64 * 1024];
        let mut sockets = 0;
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 0, "netlink read: {}", std::io::Error::last_os_error());
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                match kind {
                    3 => return sockets, // NLMSG_DONE
                    2 => {
                        let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                        panic!("dump refused: {}", std::io::Error::from_raw_os_error(-code));
                    }
                    _ => sockets += 1,
                }
                rest = &rest[len.next_multiple_of(4).clamp(16, rest.len())..];
            }
        }
    }
}
