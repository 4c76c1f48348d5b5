//! Connection sampler: how many TCP sockets (IPv4 and IPv6 together) are
//! in each state, node_exporter 1.5 tcpstat's `node_tcp_connection_states`,
//! and how many established connections each local listening port serves.
//!
//! It is meant to be on by default, on hosts with tens of thousands of
//! connections, so it reads the kernel's socket table through netlink
//! sock_diag rather than the text of /proc/net/tcp: one binary dump of
//! IPv4 and IPv6 together (the kernel's TCP table holds both, and the
//! original `TCPDIAG_GETSOCK` request walks it once for both, where
//! `SOCK_DIAG_BY_FAMILY` needs one walk per family; that request is used
//! when a kernel does not answer the first), with no extension attributes,
//! and counts into fixed tables: the per-socket loop never
//! allocates, and every buffer is reused from round to round (planning a
//! split allocates a few small vectors). When netlink
//! is refused (seccomp, gVisor, a kernel without inet_diag) it falls back
//! to `<root>/proc/net/tcp` and `tcp6` for good and says so once.
//!
//! A round's cost is nearly all the kernel's: filling one message per
//! socket (about 0.6 µs of CPU each; walking the table without filling any
//! is about a sixth of the round), in the thread that reads the dump.
//! So on a host with many sockets and more than one CPU (and Linux 6.9 or
//! later, where dumps no longer take turns) a round is split: several
//! dumps run side by side, one per thread, each with an inet_diag bytecode
//! filter that keeps one range of local (or remote) ports, the ranges cut
//! from the last round's counts so that the parts are about equal and
//! together cover every port once. Each dump still walks the whole table
//! (the filter runs per socket), but fills only its part's messages: with
//! two parts a round takes about 0.6 of one walk's time and 1.2 of its
//! CPU. Our own share is small: one 64 KiB receive buffer per socket (the
//! kernel fills at most 32 KiB per read, so no read is cut short; one that
//! were is an error, seen by MSG_TRUNC), no extension attributes asked for
//! (`idiag_ext` 0; the kernel still adds a few of its own to every
//! message), and parsing that reads three fields per message (under 1% of
//! a round's profile). Measured and not taken, as no cheaper: larger reads
//! (the kernel fills at most 32 KiB per read; 8 KiB reads cost the same),
//! one dump per state (each dump walks the whole table again), and kernel
//! counters in place of listing established sockets (/proc/net/snmp's
//! CurrEstab also counts CLOSE_WAIT, and no counter gives per-port counts).
//!
//! Where the agent may load a BPF tracing program (root, or CAP_BPF and
//! CAP_PERFMON) it counts with none of that: a BPF program
//! (`connections_bpf`: a lockless walk of the TCP hash tables, else the
//! TCP iterator) counts every socket inside the kernel in one pass,
//! without a message per socket, and netlink is only its fallback (for
//! good when the program does not load, for one round when a pass fails).
//! Its counts are the same as netlink's: states of both families,
//! ESTABLISHED per local port, and the ports with a LISTEN socket.
//!
//! Netlink and the BPF iterator show the sockets of the agent's own network
//! namespace, whatever the root; only the /proc fallback reads under the
//! root (so tests can use fixture files).
//!
//! This file must never write to the system beyond sending dump requests to
//! the kernel, spawn processes or threads that outlive a round (a split
//! round's threads are scoped and joined before it returns), panic on
//! anything the kernel (or a fixture) hands it, or report an unbounded
//! number of series: listening ports beyond the configured bound are summed
//! into `port="other"`.

use std::fmt;
use std::io::{self, Read};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::connections_bpf::{BpfError, BpfSocketCounter};
use super::{Family, SampleError, Samples, gauge};

/// How many listening ports get their own series unless told otherwise.
pub const DEFAULT_MAX_PORTS: usize = 256;

/// TCP states as the kernel numbers them (include/net/tcp_states.h); both
/// sock_diag and /proc/net/tcp report these numbers.
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;
const TCP_LISTEN: u8 = 10;
/// Half-open connections awaiting the final ACK (request sockets), since
/// 4.4. The kernel already shows them as SYN_RECV in both sock_diag and
/// /proc/net/tcp; mapping them here too keeps that true if it ever stops.
const TCP_NEW_SYN_RECV: u8 = 12;

/// node_exporter tcpstat's label for each state, in the kernel's order.
const STATES: [(u8, &str); 11] = [
    (1, "established"),
    (2, "syn_sent"),
    (3, "syn_recv"),
    (4, "fin_wait1"),
    (5, "fin_wait2"),
    (6, "time_wait"),
    (7, "close"),
    (8, "close_wait"),
    (9, "last_ack"),
    (10, "listen"),
    (11, "closing"),
];

/// The states the dump asks for: ESTABLISHED (bit 1) through NEW_SYN_RECV
/// (bit 12), i.e. every socket /proc/net/tcp lists. Not "all bits": since
/// 6.5 bit 13 (TCP_BOUND_INACTIVE) would add sockets that are only bound,
/// which /proc/net/tcp and node_exporter's counts do not include.
const DUMP_STATES: u32 = ((1 << 13) - 1) & !1;

/// Label value for the connections of listening ports beyond the bound.
const OTHER_PORTS: &str = "other";

/// How long one netlink read may wait before the round gives up on it.
const NETLINK_TIMEOUT_SECONDS: libc::time_t = 10;

/// Receive buffer for netlink replies. The kernel fills at most 32 KiB per
/// dump message batch (netlink_recvmsg caps its allocation there), so one
/// read never needs more than this.
const NETLINK_BUFFER_BYTES: usize = 64 * 1024;

/// How many parts (dumps side by side) a round may be split into unless
/// told otherwise; never more than the CPUs the agent may run on.
pub const DEFAULT_PARALLELISM: usize = 4;

/// A round is split only after one that counted more sockets than this:
/// below it a round takes about a millisecond, and each part walks the
/// whole table again.
const SPLIT_MIN_SOCKETS: u64 = 2_000;

/// Sockets a netlink round must count before `auto` loads the BPF
/// iterator: on the development host the iterator cost 2.4 ms at 100
/// sockets (netlink 0.27 ms) and less than netlink at 40,000.
const BPF_MIN_SOCKETS: u64 = 2_000;

/// Each part is planned to hold at least this many sockets.
const SOCKETS_PER_PART: u64 = 1_000;

/// A split whose largest part would hold more than this share of the
/// sockets (in quarters) is not worth its extra walks: one dump instead.
const SPLIT_MAX_LARGEST_QUARTERS: u64 = 3;

/// The first Linux release whose inet_diag dumps run side by side. Before
/// 6.9 one mutex (`inet_diag_table_mutex`) was held while each batch of
/// every dump was filled, so parallel dumps only took turns, each walking
/// the whole table: there a round is never split.
const PARALLEL_DUMPS_SINCE: (u32, u32) = (6, 9);

/// Ports per bucket of the histograms parts are cut from: cuts fall on
/// multiples of this.
const PORT_BUCKET: usize = 64;
const PORT_BUCKETS: usize = (1 << 16) / PORT_BUCKET;

/// Stack of a split round's dump thread, which only makes syscalls and
/// counts into heap tables.
const DUMP_THREAD_STACK_BYTES: usize = 128 * 1024;

const CONNECTION_STATES: Family = gauge(
    "node_tcp_connection_states",
    "",
    "TCP sockets (IPv4 and IPv6) in each state.",
);
const LISTENING_PORTS: Family = gauge(
    "nines_tcp_listening_ports",
    "",
    "Distinct local TCP ports with a socket in LISTEN state.",
);
const LISTEN_PORT_CONNECTIONS: Family = gauge(
    "nines_tcp_listen_port_connections",
    "",
    "Established TCP connections whose local port is a listening port \
     (the server side); ports beyond the sampler's bound are summed as \"other\".",
);

/// Counts of one round, in fixed tables indexed by state and port so that
/// counting a socket never allocates.
struct Tally {
    /// Sockets per kernel state number; index 0 and unknown states unused.
    states: [u64; 16],
    /// ESTABLISHED sockets per local port, in 64 chunks of
    /// [`PORTS_PER_CHUNK`] ports (4 KiB each), each allocated when a
    /// socket on one of its ports is first counted in a round and freed by
    /// `clear`: a round takes memory only for the port ranges its sockets
    /// use (on most hosts a few), not 256 KiB.
    established: Vec<Option<Box<[u32; PORTS_PER_CHUNK]>>>,
    /// Ports with a LISTEN socket, as a bit set (1024 words of 64 bits).
    listening: Vec<u64>,
    /// Sockets (every state) per bucket of [`PORT_BUCKET`] local ports,
    /// and of remote ports: where the next round's parts are cut.
    local_ports: Vec<u32>,
    remote_ports: Vec<u32>,
}

/// Ports per chunk of [`Tally::established`].
const PORTS_PER_CHUNK: usize = 1024;

impl Tally {
    fn new() -> Self {
        Tally {
            states: [0; 16],
            established: vec![None; (1 << 16) / PORTS_PER_CHUNK],
            listening: vec![0; (1 << 16) / 64],
            local_ports: vec![0; PORT_BUCKETS],
            remote_ports: vec![0; PORT_BUCKETS],
        }
    }

    fn clear(&mut self) {
        self.states = [0; 16];
        self.established.fill(None);
        self.listening.fill(0);
        self.local_ports.fill(0);
        self.remote_ports.fill(0);
    }

    /// Counts one socket. The hot path of the sampler: it allocates only
    /// the first time a round counts an established socket in a range of
    /// [`PORTS_PER_CHUNK`] ports.
    fn count(&mut self, state: u8, local_port: u16, remote_port: u16) {
        let state = if state == TCP_NEW_SYN_RECV {
            TCP_SYN_RECV
        } else {
            state
        };
        if let Some(n) = self.states.get_mut(usize::from(state)) {
            *n += 1;
        }
        let port = usize::from(local_port);
        match state {
            TCP_ESTABLISHED => {
                if let Some(chunk) = self.established.get_mut(port / PORTS_PER_CHUNK) {
                    let n = &mut chunk.get_or_insert_with(|| Box::new([0; PORTS_PER_CHUNK]))
                        [port % PORTS_PER_CHUNK];
                    *n = n.saturating_add(1);
                }
            }
            TCP_LISTEN => {
                if let Some(word) = self.listening.get_mut(port / 64) {
                    *word |= 1 << (port % 64);
                }
            }
            _ => {}
        }
        if let Some(n) = self.local_ports.get_mut(port / PORT_BUCKET) {
            *n = n.saturating_add(1);
        }
        if let Some(n) = self
            .remote_ports
            .get_mut(usize::from(remote_port) / PORT_BUCKET)
        {
            *n = n.saturating_add(1);
        }
    }

    /// Adds the counts of another part of the same round. Parts hold
    /// disjoint sockets, so counts add up; listening ports are a set, so a
    /// port stays one port whichever parts its listeners were in.
    fn add(&mut self, part: &Tally) {
        for (n, m) in self.states.iter_mut().zip(&part.states) {
            *n += m;
        }
        for (mine, theirs) in self.established.iter_mut().zip(&part.established) {
            let Some(theirs) = theirs else { continue };
            let mine = mine.get_or_insert_with(|| Box::new([0; PORTS_PER_CHUNK]));
            for (n, &m) in mine.iter_mut().zip(theirs.iter()) {
                *n = n.saturating_add(m);
            }
        }
        for (word, &bits) in self.listening.iter_mut().zip(&part.listening) {
            *word |= bits;
        }
        for (n, &m) in self.local_ports.iter_mut().zip(&part.local_ports) {
            *n = n.saturating_add(m);
        }
        for (n, &m) in self.remote_ports.iter_mut().zip(&part.remote_ports) {
            *n = n.saturating_add(m);
        }
    }

    /// Sockets a netlink or /proc round counted, whatever their state (a
    /// BPF round fills no port histograms).
    fn sockets(&self) -> u64 {
        self.local_ports.iter().map(|&n| u64::from(n)).sum()
    }

    /// Listening ports in ascending order.
    fn listening_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listening.iter().enumerate().flat_map(|(i, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                u16::try_from(i * 64 + bit).ok()
            })
        })
    }

    fn established_on(&self, port: u16) -> u64 {
        let port = usize::from(port);
        self.established
            .get(port / PORTS_PER_CHUNK)
            .and_then(|chunk| chunk.as_ref())
            .map_or(0, |counts| u64::from(counts[port % PORTS_PER_CHUNK]))
    }
}

/// Whether a kernel of this release (`uname -r`, e.g. `6.12.8-amd64`)
/// fills parallel inet_diag dumps at the same time; false when the
/// release does not start with a version.
fn dumps_run_in_parallel(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= PARALLEL_DUMPS_SINCE,
        _ => false,
    }
}

/// Whether the running kernel fills parallel inet_diag dumps at the same
/// time (Linux 6.9 and later), so that a sample may be split.
pub fn kernel_splits_dumps() -> bool {
    kernel_release().is_some_and(|r| dumps_run_in_parallel(&r))
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain byte arrays, for which all-zero is valid.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid utsname for the call to fill.
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// Which port of a socket a split is cut by.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PortAxis {
    /// The socket's own (local) port: spreads the client ends of
    /// outbound connections, and listeners over their ports.
    Local,
    /// The peer's (remote) port: spreads the server ends of inbound
    /// connections, which all share the listening port. Listening
    /// sockets have remote port 0.
    Remote,
}

/// One part of a split round: the sockets whose port on `axis` lies in
/// `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PortRange {
    axis: PortAxis,
    first: u16,
    last: u16,
}

/// Cuts one axis's histogram (sockets per bucket of [`PORT_BUCKET`]
/// ports) into at most `parts` runs of buckets with about equal counts,
/// none empty unless all are: the end bucket (exclusive) and the count of
/// each run, in order, the last ending at the last bucket. Together the
/// runs cover every bucket exactly once.
fn cut_buckets(histogram: &[u32], parts: usize) -> Vec<(usize, u64)> {
    let buckets = histogram.len();
    let mut prefix = Vec::with_capacity(buckets + 1);
    prefix.push(0u64);
    for &n in histogram {
        let last = prefix.last().copied().unwrap_or(0);
        prefix.push(last + u64::from(n));
    }
    let total = prefix.last().copied().unwrap_or(0);
    let parts = parts.max(1) as u64;
    let mut runs: Vec<(usize, u64)> = Vec::new();
    let mut start = 0;
    for k in 1..=parts {
        let end = if k == parts {
            buckets
        } else {
            // The boundary whose count before it is closest to k/parts of
            // the total, strictly after the last one and before the end.
            let target = total * k / parts;
            let above = prefix.partition_point(|&p| p < target);
            let closest = [above.saturating_sub(1), above]
                .into_iter()
                .filter(|&c| c > start && c < buckets)
                .min_by_key(|&c| prefix[c].abs_diff(target));
            let Some(closest) = closest else {
                continue;
            };
            closest
        };
        let count = prefix[end] - prefix[start];
        if count == 0 && end < buckets {
            // An empty run joins the next.
            continue;
        }
        match runs.last_mut() {
            // An empty last run joins the one before.
            Some(last) if count == 0 => last.0 = end,
            _ => runs.push((end, count)),
        }
        start = end;
    }
    runs
}

/// The parts of the next round: up to `parts` ranges of one axis, cut
/// where `tally` (the last round) had about equal numbers of sockets on
/// each side, on whichever axis balances better; none (one dump) when
/// one part would not be much smaller than the whole.
fn plan_parts(tally: &Tally, parts: usize) -> Vec<PortRange> {
    let total = tally.sockets();
    if parts < 2 || total == 0 {
        return Vec::new();
    }
    let best = [
        (PortAxis::Local, &tally.local_ports),
        (PortAxis::Remote, &tally.remote_ports),
    ]
    .into_iter()
    .map(|(axis, histogram)| {
        let runs = cut_buckets(histogram, parts);
        let largest = runs.iter().map(|&(_, n)| n).max().unwrap_or(0);
        (largest, axis, runs)
    })
    .min_by_key(|(largest, _, _)| *largest);
    let Some((largest, axis, runs)) = best else {
        return Vec::new();
    };
    if runs.len() < 2 || largest * 4 > total * SPLIT_MAX_LARGEST_QUARTERS {
        return Vec::new();
    }
    let mut first = 0usize;
    runs.iter()
        .map(|&(end, _)| {
            let last = end * PORT_BUCKET - 1;
            let range = PortRange {
                axis,
                first: u16::try_from(first).unwrap_or(u16::MAX),
                last: u16::try_from(last).unwrap_or(u16::MAX),
            };
            first = last + 1;
            range
        })
        .collect()
}

/// Where the socket table is read from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    /// A BPF iterator program counting in the kernel.
    Bpf,
    Netlink,
    Proc,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Bpf => "bpf",
            Method::Netlink => "netlink",
            Method::Proc => "proc",
        }
    }
}

/// How the sampler is told to read the socket table
/// (`[samplers] connections_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionMethod {
    /// The BPF iterator where it loads, else netlink, else /proc.
    #[default]
    Auto,
    /// The BPF iterator only: failing to load it is an error at start.
    Bpf,
    /// Netlink sock_diag (then /proc if netlink is refused).
    Netlink,
    /// /proc/net/tcp and tcp6 only.
    Proc,
}

impl ConnectionMethod {
    /// Every method's name, as the config spells it.
    pub const NAMES: [&'static str; 4] = ["auto", "bpf", "netlink", "proc"];

    /// The method a config value names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => ConnectionMethod::Auto,
            "bpf" => ConnectionMethod::Bpf,
            "netlink" => ConnectionMethod::Netlink,
            "proc" => ConnectionMethod::Proc,
            _ => return None,
        })
    }
}

/// Every method a round can count with, as the method metric labels them.
pub const METHOD_NAMES: [&str; 3] = ["bpf", "netlink", "proc"];

/// What a split round's extra thread owns: its netlink socket and its
/// counts, kept from round to round like the sampler's own.
struct DumpPart {
    netlink: Option<Netlink>,
    tally: Tally,
    /// CPU time the thread spent on its last dump.
    cpu: Duration,
}

impl DumpPart {
    fn new() -> Self {
        DumpPart {
            netlink: None,
            tally: Tally::new(),
            cpu: Duration::ZERO,
        }
    }

    /// Dumps the sockets of `range` into this part's cleared tally.
    fn dump(&mut self, one_walk: bool, range: PortRange) -> io::Result<()> {
        let started = thread_cpu_time();
        self.tally.clear();
        let result = dump_into(
            &mut self.netlink,
            one_walk,
            &PortFilter::new(range),
            &mut self.tally,
        );
        self.cpu = thread_cpu_time().saturating_sub(started);
        result
    }
}

/// CPU time the calling thread has used (zero if the clock cannot be read).
fn thread_cpu_time() -> Duration {
    // SAFETY: timespec is plain integers, for which all-zero is valid.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Dumps the TCP sockets `filter` keeps into `tally`, over the netlink
/// socket in `slot` (opened if there is none, dropped after any error so
/// that a half-read dump cannot leak into the next): both families in one
/// walk, or (`one_walk` false) IPv4 then IPv6.
fn dump_into(
    slot: &mut Option<Netlink>,
    one_walk: bool,
    filter: &PortFilter,
    tally: &mut Tally,
) -> io::Result<()> {
    let netlink = match slot {
        Some(netlink) => netlink,
        None => slot.insert(Netlink::open()?),
    };
    let result = if one_walk {
        netlink.dump_both(filter, tally)
    } else {
        netlink
            .dump(libc::AF_INET as u8, filter, tally)
            .and_then(
                |()| match netlink.dump(libc::AF_INET6 as u8, filter, tally) {
                    // No inet6 sock_diag handler: a kernel without IPv6 (or
                    // booted with ipv6.disable=1) has no IPv6 sockets to count.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    other => other,
                },
            )
    };
    if result.is_err() {
        *slot = None;
    }
    result
}

/// Rounds between two rounds counted the other way than the cheaper one,
/// to see whether it still is (the socket count moves the balance: the BPF
/// iterator has a fixed cost of visiting every bucket of the kernel's
/// table, about 2 ms on a 24 GiB host, and a smaller cost per socket than
/// netlink, so it pays from some thousands of sockets on).
const REMEASURE_EVERY: u32 = 30;

/// What counting a round cost each way, for the `auto` choice.
#[derive(Debug, Default)]
struct Costs {
    bpf: Option<Duration>,
    netlink: Option<Duration>,
    rounds: u32,
}

impl Costs {
    /// Whether the next round counts with the BPF iterator: each way is
    /// measured once, then the cheaper is used, but every
    /// [`REMEASURE_EVERY`]th round counts the other way.
    fn bpf_next(&mut self) -> bool {
        self.rounds = self.rounds.wrapping_add(1);
        match (self.bpf, self.netlink) {
            (None, _) => true,
            (_, None) => false,
            (Some(bpf), Some(netlink)) => {
                let cheaper = bpf <= netlink;
                if self.rounds % REMEASURE_EVERY == 0 {
                    !cheaper
                } else {
                    cheaper
                }
            }
        }
    }
}

/// Counts TCP sockets by state and established connections per listening
/// port: with the BPF iterator (`connections_bpf`) or netlink sock_diag
/// (see [`ConnectionMethod`]), with /proc/net/tcp{,6} as the fallback.
pub struct ConnectionSampler {
    root: PathBuf,
    max_ports: usize,
    method: Method,
    /// The loaded iterator program, when the method is (or was) BPF.
    bpf: Option<BpfSocketCounter>,
    /// How the last round counted.
    last_method: Option<Method>,
    /// Kept open across rounds; dropped (closed) after any netlink error
    /// so that a half-read dump cannot leak into the next round.
    netlink: Option<Netlink>,
    /// Whether the one-walk `TCPDIAG_GETSOCK` dump works here; false once
    /// the kernel refused it, then each family is dumped on its own.
    one_walk: bool,
    /// Most parts a round is split into (1: never split).
    parallelism: usize,
    /// CPUs this process may run on, read when the sampler was made.
    cpus: usize,
    /// Whether rounds may be split: false on a kernel that serializes
    /// dumps, and once the kernel refused a filtered dump.
    split: bool,
    /// The parts of the next round, cut from the last one's counts; empty
    /// for one unfiltered dump.
    plan: Vec<PortRange>,
    /// The second and later parts' sockets and counts (the sampler's own
    /// serve the first part).
    parts: Vec<DumpPart>,
    /// Netlink dumps the last round ran side by side; 0 when it read /proc.
    last_dumps: usize,
    /// CPU time of each part of the last round, if it was split.
    parts_cpu: Vec<Duration>,
    /// `auto`: the BPF iterator is loaded once it pays (see
    /// [`Self::load_bpf_if_it_pays`]) and is then one choice among two,
    /// each round counting the way that cost less CPU when last measured.
    /// Turned off when loading fails, or when netlink is refused (the
    /// iterator then counts alone).
    auto: bool,
    /// CPU time (all threads) of the last round counted each way.
    cost: Costs,
    /// Reused for the text of /proc/net/tcp{,6}.
    text: Vec<u8>,
    tally: Tally,
}

impl fmt::Debug for ConnectionSampler {
    // Derived Debug would print the 65536-entry count tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSampler")
            .field("root", &self.root)
            .field("max_ports", &self.max_ports)
            .field("method", &self.method)
            .field("parallelism", &self.parallelism)
            .field("cpus", &self.cpus)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl ConnectionSampler {
    /// A sampler reporting up to [`DEFAULT_MAX_PORTS`] listening ports by
    /// number. `root` (normally `/`) is where the /proc fallback reads.
    pub fn new(root: PathBuf) -> Self {
        Self::with_max_ports(root, DEFAULT_MAX_PORTS)
    }

    /// A sampler reporting up to `max_ports` listening ports by number: the
    /// lowest-numbered ones, so that the set of series stays stable from
    /// round to round; connections of the rest are summed as
    /// `port="other"`.
    pub fn with_max_ports(root: PathBuf, max_ports: usize) -> Self {
        ConnectionSampler {
            root,
            max_ports,
            method: Method::Netlink,
            bpf: None,
            last_method: None,
            netlink: None,
            one_walk: true,
            parallelism: DEFAULT_PARALLELISM,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            split: kernel_splits_dumps(),
            plan: Vec::new(),
            parts: Vec::new(),
            last_dumps: 0,
            parts_cpu: Vec::new(),
            auto: false,
            cost: Costs::default(),
            text: Vec::new(),
            tally: Tally::new(),
        }
    }

    /// With `false`, never tries netlink and reads only
    /// `<root>/proc/net/tcp{,6}` (for fixture tests, or hosts where netlink
    /// is known to be unwanted).
    pub fn with_netlink(mut self, enabled: bool) -> Self {
        self.method = if enabled {
            Method::Netlink
        } else {
            Method::Proc
        };
        self
    }

    /// Reads the socket table the way `choice` says. `Auto` never fails;
    /// `Bpf` fails if the iterator program cannot be loaded here.
    pub fn with_method(self, choice: ConnectionMethod) -> Result<Self, BpfError> {
        match choice {
            ConnectionMethod::Auto => Ok(self.with_bpf_if_available()),
            ConnectionMethod::Bpf => {
                let counter = BpfSocketCounter::load()?;
                tracing::info!(
                    "connections: counting TCP sockets with {}",
                    counter.describe()
                );
                Ok(self.with_bpf(counter))
            }
            ConnectionMethod::Netlink => Ok(self.with_netlink(true)),
            ConnectionMethod::Proc => Ok(self.with_netlink(false)),
        }
    }

    /// Counts through netlink, and once a round counted more than
    /// [`BPF_MIN_SOCKETS`] sockets, also with the BPF iterator if it loads
    /// here (root, or CAP_BPF and CAP_PERFMON, on Linux 5.9 or later with
    /// BTF), each round the way that cost less; says which, once, at info
    /// level, when it tries.
    pub fn with_bpf_if_available(mut self) -> Self {
        self = self.with_netlink(true);
        self.auto = true;
        self
    }

    /// Loads the BPF iterator for `auto` once a round counted more than
    /// [`BPF_MIN_SOCKETS`] sockets: below that netlink costs less, and
    /// loading reads the kernel's BTF (some megabytes, briefly).
    fn load_bpf_if_it_pays(&mut self) {
        if !self.auto || self.bpf.is_some() || self.tally.sockets() <= BPF_MIN_SOCKETS {
            return;
        }
        // Without the capabilities, loading would read the BTF only to be
        // refused.
        let loaded = if crate::samplers::connections_bpf::privileged_with_btf() {
            BpfSocketCounter::load()
        } else {
            Err(BpfError::Unprivileged)
        };
        match loaded {
            Ok(counter) => {
                tracing::info!(
                    "connections: counting TCP sockets with {} or netlink sock_diag, whichever costs less",
                    counter.describe()
                );
                self.bpf = Some(counter);
                self.method = Method::Bpf;
            }
            Err(e) => {
                tracing::info!(
                    "connections: BPF iterator unavailable ({e}): using netlink sock_diag"
                );
                self.auto = false;
            }
        }
    }

    /// Counts with this loaded iterator program; a round it fails is
    /// counted through netlink.
    pub fn with_bpf(mut self, counter: BpfSocketCounter) -> Self {
        self.bpf = Some(counter);
        self.method = Method::Bpf;
        self.auto = false;
        self
    }

    /// How the last round counted: "bpf", "netlink" or "proc" (None before
    /// the first round, or when it failed).
    pub fn last_method(&self) -> Option<&'static str> {
        self.last_method.map(Method::name)
    }

    /// With `false`, dumps each address family on its own
    /// (`SOCK_DIAG_BY_FAMILY`, two walks of the kernel's table) even where
    /// the one-walk dump works: for comparison in the benchmark.
    pub fn with_one_walk_dump(mut self, enabled: bool) -> Self {
        self.one_walk = enabled;
        self
    }

    /// Splits a round into at most `parts` netlink dumps run side by side
    /// (default [`DEFAULT_PARALLELISM`]; 1 or 0: one dump). A round is
    /// split only on Linux 6.9 or later (before, dumps take turns), when
    /// the last one counted more than 2,000 sockets, into no more parts
    /// than the CPUs this process may run on or than leave 1,000 sockets
    /// to each.
    pub fn with_parallelism(mut self, parts: usize) -> Self {
        self.parallelism = parts.max(1);
        self
    }

    /// BPF table-walk passes that could not finish and were counted by the
    /// TCP iterator instead, since the counter was loaded.
    pub fn walk_fallbacks(&self) -> u64 {
        self.bpf
            .as_ref()
            .map_or(0, BpfSocketCounter::walk_fallbacks)
    }

    /// How many netlink dumps the last round ran side by side: 1 for one
    /// dump, more for a split round, 0 when it read /proc (or none ran).
    pub fn last_dumps(&self) -> usize {
        self.last_dumps
    }

    /// The CPU time each part of the last round took on its thread, when
    /// the round was split (else empty): the longest is the wall time the
    /// round takes when each part has a CPU to itself.
    pub fn last_parts_cpu(&self) -> &[Duration] {
        &self.parts_cpu
    }

    /// Counts every TCP socket once and reports the counts. Every state and
    /// the listening port count are always reported (0 when none).
    ///
    /// A netlink refusal switches this sampler to /proc for good; any other
    /// netlink failure falls back to /proc for this round only. If /proc
    /// cannot be read either (`tcp6` may be absent: IPv6 is disabled), the
    /// error is returned and nothing is reported: partial counts would look
    /// like a drop in connections.
    ///
    /// Counts are not an atomic snapshot: the kernel hands its table over in
    /// pieces, so a socket opened or closed during the round can be missed
    /// or counted twice (as with `ss` and node_exporter). A split round's
    /// parts are read at about the same time, and each socket is in exactly
    /// one part (its ports do not change while it exists).
    pub fn sample(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        self.tally.clear();
        self.last_dumps = 0;
        self.last_method = None;
        self.parts_cpu.clear();
        let started = thread_cpu_time();
        if self.method == Method::Bpf && (!self.auto || self.cost.bpf_next()) {
            match self.count_bpf() {
                Ok(()) => {
                    self.last_method = Some(Method::Bpf);
                    self.cost.bpf = Some(thread_cpu_time().saturating_sub(started));
                    self.report(out);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "BPF socket iterator failed; using netlink this round");
                    self.tally.clear();
                }
            }
        }
        if matches!(self.method, Method::Netlink | Method::Bpf) {
            match self.count_netlink() {
                Ok(()) => {
                    self.last_method = Some(Method::Netlink);
                    // This thread's CPU holds the first part of a split
                    // round; the other parts ran on their own threads.
                    let spent = thread_cpu_time().saturating_sub(started);
                    let others: Duration = self.parts_cpu.iter().skip(1).sum();
                    self.cost.netlink = Some(spent + others);
                    self.load_bpf_if_it_pays();
                    self.plan = self.next_plan();
                    if self.plan.len() < 2 {
                        // The parts' tables are held only while splitting.
                        self.parts = Vec::new();
                    }
                    self.report(out);
                    return Ok(());
                }
                Err(e) if is_refusal(&e) && self.bpf.is_some() => {
                    tracing::warn!(
                        error = %e,
                        "netlink sock_diag refused; counting TCP sockets with the BPF iterator alone from now on"
                    );
                    self.auto = false;
                    self.parts = Vec::new();
                }
                Err(e) if is_refusal(&e) => {
                    tracing::warn!(
                        error = %e,
                        "netlink sock_diag refused; counting TCP sockets from /proc/net/tcp from now on"
                    );
                    self.method = Method::Proc;
                    self.parts = Vec::new();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "netlink sock_diag failed; using /proc/net/tcp this round");
                }
            }
            // Whatever the failed dump had counted is incomplete.
            self.tally.clear();
            self.last_dumps = 0;
            self.plan.clear();
        }
        self.count_proc()?;
        self.last_method = Some(Method::Proc);
        self.report(out);
        Ok(())
    }

    /// One pass of the BPF iterator into the tally.
    fn count_bpf(&mut self) -> io::Result<()> {
        let Some(bpf) = self.bpf.as_mut() else {
            return Err(io::Error::other("no BPF iterator loaded"));
        };
        let counts = bpf.count()?;
        let tally = &mut self.tally;
        for family in 0..2 {
            for (state, &n) in counts.states(family).iter().enumerate() {
                // As Tally::count: request sockets count as SYN_RECV.
                let state = if state == usize::from(TCP_NEW_SYN_RECV) {
                    usize::from(TCP_SYN_RECV)
                } else {
                    state
                };
                tally.states[state] += u64::from(n);
            }
        }
        // The iterator counts ESTABLISHED sockets only on listening
        // ports, the only ones reported.
        for &(port, n) in counts.listeners() {
            let port = usize::from(port);
            tally.listening[port / 64] |= 1 << (port % 64);
            if n > 0 {
                let chunk = tally.established[port / PORTS_PER_CHUNK]
                    .get_or_insert_with(|| Box::new([0; PORTS_PER_CHUNK]));
                chunk[port % PORTS_PER_CHUNK] = n;
            }
        }
        Ok(())
    }

    /// How many parts the next round is split into, from this round's
    /// count: 1 unless there were many sockets and there are CPUs to run
    /// the parts on.
    fn wanted_parts(&self) -> usize {
        let sockets = self.tally.sockets();
        if !self.split || sockets <= SPLIT_MIN_SOCKETS {
            return 1;
        }
        let by_sockets = usize::try_from(sockets / SOCKETS_PER_PART).unwrap_or(usize::MAX);
        self.parallelism.min(self.cpus).min(by_sockets).max(1)
    }

    /// The next round's parts, cut from this round's counts.
    fn next_plan(&self) -> Vec<PortRange> {
        plan_parts(&self.tally, self.wanted_parts())
    }

    /// Dumps IPv4 and IPv6 TCP sockets into the tally: split into the
    /// planned parts if there are any, else in one dump (one walk of the
    /// kernel's table where it can, else IPv4 then IPv6).
    fn count_netlink(&mut self) -> io::Result<()> {
        if self.plan.len() > 1 {
            match self.count_split() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.parts_cpu.clear();
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        // A kernel that does not take the port filter.
                        tracing::warn!(error = %e, "split TCP socket dump refused; dumping in one piece from now on");
                        self.split = false;
                        self.parts = Vec::new();
                    } else {
                        tracing::debug!(error = %e, "split TCP socket dump failed; dumping in one piece this round");
                    }
                    self.tally.clear();
                }
            }
        }
        self.count_whole()
    }

    /// One unfiltered dump into the tally.
    fn count_whole(&mut self) -> io::Result<()> {
        self.last_dumps = 1;
        if self.one_walk {
            match dump_into(&mut self.netlink, true, &PortFilter::ALL, &mut self.tally) {
                Ok(()) => return Ok(()),
                // A kernel without the compatibility request (or a sandbox
                // that only lets SOCK_DIAG_BY_FAMILY through).
                Err(e) if is_refusal(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(error = %e, "TCPDIAG_GETSOCK refused; dumping each address family");
                    self.one_walk = false;
                    self.tally.clear();
                }
                Err(e) => return Err(e),
            }
        }
        dump_into(&mut self.netlink, false, &PortFilter::ALL, &mut self.tally)
    }

    /// The planned parts dumped side by side: the first on this thread
    /// into the tally, each other on a scoped thread of its own into its
    /// part's tally, added to the tally once all have finished. Any part
    /// failing fails the round (whose counts are then incomplete).
    fn count_split(&mut self) -> io::Result<()> {
        let Some((&first, rest)) = self.plan.split_first() else {
            return self.count_whole();
        };
        self.parts.truncate(rest.len());
        while self.parts.len() < rest.len() {
            self.parts.push(DumpPart::new());
        }
        let one_walk = self.one_walk;
        let (netlink, tally, parts, parts_cpu) = (
            &mut self.netlink,
            &mut self.tally,
            &mut self.parts,
            &mut self.parts_cpu,
        );
        std::thread::scope(|scope| {
            let mut threads = Vec::with_capacity(rest.len());
            for (part, &range) in parts.iter_mut().zip(rest) {
                let thread = std::thread::Builder::new()
                    .name("nines-tcp-dump".into())
                    .stack_size(DUMP_THREAD_STACK_BYTES)
                    .spawn_scoped(scope, move || part.dump(one_walk, range));
                match thread {
                    Ok(thread) => threads.push(thread),
                    // The threads already started finish (the scope joins
                    // them); the round is dumped again in one piece.
                    Err(e) => return Err(e),
                }
            }
            let started = thread_cpu_time();
            let mut result = dump_into(netlink, one_walk, &PortFilter::new(first), tally);
            parts_cpu.clear();
            parts_cpu.push(thread_cpu_time().saturating_sub(started));
            for thread in threads {
                let joined = thread
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a TCP socket dump thread panicked")));
                result = result.and(joined);
            }
            result
        })?;
        for part in &self.parts {
            self.tally.add(&part.tally);
            self.parts_cpu.push(part.cpu);
        }
        self.last_dumps = self.plan.len();
        Ok(())
    }

    fn count_proc(&mut self) -> Result<(), SampleError> {
        let net = self.root.join("proc/net");
        read_into(&net.join("tcp"), &mut self.text)?;
        count_proc_net_tcp(&self.text, &mut self.tally);
        match read_into(&net.join("tcp6"), &mut self.text) {
            Ok(()) => count_proc_net_tcp(&self.text, &mut self.tally),
            // IPv6 disabled: there is no tcp6 file and no IPv6 socket.
            Err(SampleError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn report(&self, out: &mut Samples) {
        CONNECTION_STATES.declare(out);
        for (state, name) in STATES {
            let count = self.tally.states[usize::from(state)];
            out.push(CONNECTION_STATES.name, &[("state", name)], count as f64);
        }

        let mut listening = 0u64;
        let mut other: Option<u64> = None;
        for port in self.tally.listening_ports() {
            let established = self.tally.established_on(port);
            if listening == 0 {
                LISTEN_PORT_CONNECTIONS.declare(out);
            }
            if listening < self.max_ports as u64 {
                let label = port.to_string();
                out.push(
                    LISTEN_PORT_CONNECTIONS.name,
                    &[("port", &label)],
                    established as f64,
                );
            } else {
                *other.get_or_insert(0) += established;
            }
            listening += 1;
        }
        if let Some(other) = other {
            out.push(
                LISTEN_PORT_CONNECTIONS.name,
                &[("port", OTHER_PORTS)],
                other as f64,
            );
        }
        LISTENING_PORTS.declare(out);
        out.push(LISTENING_PORTS.name, &[], listening as f64);
    }
}

/// Whether netlink is refused for good here, rather than failing once.
fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EPERM
                | libc::EACCES
                | libc::EPROTONOSUPPORT
                | libc::EAFNOSUPPORT
                // No inet_diag/tcp_diag handler for IPv4 at all.
                | libc::ENOENT
        )
    )
}

/// Reads a whole file into `buf`, reusing its capacity.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> Result<(), SampleError> {
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut file| file.read_to_end(buf))
        .map(|_| ())
        .map_err(|source| SampleError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// Counts the sockets listed in /proc/net/tcp or tcp6:
/// `sl local_address rem_address st ...`, where each address is
/// `HEXIP:HEXPORT` and `st` the state in hex. The header and any line that
/// does not parse are skipped; nothing is allocated.
fn count_proc_net_tcp(text: &[u8], tally: &mut Tally) {
    for line in text.split(|&b| b == b'\n') {
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(_slot), Some(local), Some(remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let state = parse_hex(state, 2).and_then(|s| u8::try_from(s).ok());
        if let (Some(local), Some(state)) = (port_of(local), state) {
            // The remote port only guides how a round is split.
            tally.count(state, local, port_of(remote).unwrap_or(0));
        }
    }
}

/// The port of a /proc/net/tcp address, `HEXIP:HEXPORT`.
fn port_of(address: &[u8]) -> Option<u16> {
    let colon = address.iter().rposition(|&b| b == b':')?;
    parse_hex(&address[colon + 1..], 4).and_then(|p| u16::try_from(p).ok())
}

/// 1 to `max_digits` hex digits.
fn parse_hex(digits: &[u8], max_digits: usize) -> Option<u32> {
    if digits.is_empty() || digits.len() > max_digits {
        return None;
    }
    digits.iter().try_fold(0u32, |value, &d| {
        let d = char::from(d).to_digit(16)?;
        Some(value << 4 | d)
    })
}

// Netlink sock_diag wire format. The structs mirror the kernel's UAPI
// headers field for field; requests are sent as these structs, and replies
// are read at the offsets these structs define (replies arrive as bytes,
// aligned only to 4).

/// `struct nlmsghdr` from linux/netlink.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid` from linux/inet_diag.h. Ports and addresses
/// are big-endian (`__be16`, `__be32`); byte arrays keep that visible.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2` from linux/inet_diag.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg` from linux/inet_diag.h: the fixed start of every
/// dumped socket. Only used for its layout: replies are read at its
/// offsets rather than cast, as netlink only aligns them to 4 bytes.
#[repr(C)]
#[allow(dead_code)] // Layout only; see above.
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `struct inet_diag_req` from linux/inet_diag.h, the request's first
/// version: sent as `TCPDIAG_GETSOCK`, the kernel dumps every TCP socket
/// whatever its family (it sets `AF_UNSPEC`) in one walk of its table.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReq {
    family: u8,
    src_len: u8,
    dst_len: u8,
    ext: u8,
    id: InetDiagSockId,
    states: u32,
    dbs: u32,
}

/// `struct nlattr` from linux/netlink.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct NlAttr {
    len: u16,
    kind: u16,
}

/// One dump request (header, `body`: [`InetDiagReqV2`], or [`InetDiagReq`]
/// for `TCPDIAG_GETSOCK`) with room for a port filter attribute after it;
/// only its first `header.len` bytes are sent, as one datagram.
#[repr(C)]
#[derive(Clone, Copy)]
struct DumpRequest<B> {
    header: NlMsgHdr,
    body: B,
    filter: NlAttr,
    bytecode: [u8; FILTER_MAX_BYTES],
}

// The kernel's sizes; also proves there is no padding, so every byte of a
// request is initialized when it is sent.
const _: () = assert!(size_of::<NlMsgHdr>() == 16);
const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);
const _: () = assert!(size_of::<InetDiagReq>() == 60);
const _: () = assert!(size_of::<NlAttr>() == 4);
const _: () = assert!(size_of::<DumpRequest<InetDiagReqV2>>() == 16 + 56 + 4 + FILTER_MAX_BYTES);
const _: () = assert!(size_of::<DumpRequest<InetDiagReq>>() == 16 + 60 + 4 + FILTER_MAX_BYTES);

/// A socket id of all zeros: no exact socket, no exact port.
const ANY_SOCKET: InetDiagSockId = InetDiagSockId {
    sport: [0; 2],
    dport: [0; 2],
    src: [[0; 4]; 4],
    dst: [[0; 4]; 4],
    interface: 0,
    cookie: [0; 2],
};

/// linux/inet_diag.h: the request attribute carrying a filter, and the
/// filter operations used here. A filter is a program of 4-byte
/// `struct inet_diag_bc_op {code: u8, yes: u8, no: u16}`: the kernel runs
/// it for each socket from the start, going on `yes` bytes further when
/// the op's condition holds and `no` bytes when not; it keeps the socket
/// when it lands exactly on the end, and drops it when it jumps past. A
/// port comparison takes its port from the `no` field of the op after it.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const INET_DIAG_BC_D_GE: u8 = 4;
const INET_DIAG_BC_D_LE: u8 = 5;
/// Two comparisons of two ops each.
const FILTER_MAX_BYTES: usize = 16;

/// The inet_diag bytecode keeping the sockets of one [`PortRange`]: "port
/// at least first" (left out when first is 0) then "port at most last"
/// (left out when last is 65535), each dropping the socket when it fails.
#[derive(Clone, Copy)]
struct PortFilter {
    bytes: [u8; FILTER_MAX_BYTES],
    len: usize,
}

impl PortFilter {
    /// No filter: every socket.
    const ALL: PortFilter = PortFilter {
        bytes: [0; FILTER_MAX_BYTES],
        len: 0,
    };

    fn new(range: PortRange) -> Self {
        let (ge, le) = match range.axis {
            PortAxis::Local => (INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE),
            PortAxis::Remote => (INET_DIAG_BC_D_GE, INET_DIAG_BC_D_LE),
        };
        let mut ops: [(u8, u16); 2] = [(0, 0); 2];
        let mut count = 0;
        if range.first > 0 {
            ops[count] = (ge, range.first);
            count += 1;
        }
        if range.last < u16::MAX {
            ops[count] = (le, range.last);
            count += 1;
        }
        let mut filter = PortFilter::ALL;
        filter.len = count * 8;
        for (i, &(code, port)) in ops[..count].iter().enumerate() {
            let at = i * 8;
            // Holds: on to the next comparison (or the end: keep). Fails:
            // 4 bytes past the end (drop).
            let past_end = (filter.len - at + 4) as u16;
            filter.bytes[at] = code;
            filter.bytes[at + 1] = 8;
            filter.bytes[at + 2..at + 4].copy_from_slice(&past_end.to_ne_bytes());
            // The operand op: only its `no` field is read.
            filter.bytes[at + 6..at + 8].copy_from_slice(&port.to_ne_bytes());
        }
        filter
    }

    fn bytecode(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

const NLMSG_HDR_LEN: usize = size_of::<NlMsgHdr>();
/// linux/netlink.h: NLMSG_ALIGNTO.
const NLMSG_ALIGN: usize = 4;
/// linux/netlink.h message types (NLMSG_NOOP, 1, is skipped like any
/// type not listed).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// linux/netlink.h flags: a request, for a dump (NLM_F_ROOT | NLM_F_MATCH).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x100 | 0x200;
/// linux/sock_diag.h: the message type of sock_diag requests and replies.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// linux/inet_diag.h: the first inet_diag request for TCP sockets; its
/// replies carry the same type.
const TCPDIAG_GETSOCK: u16 = 18;

const STATE_OFFSET: usize = offset_of!(InetDiagMsg, state);
const SPORT_OFFSET: usize = offset_of!(InetDiagMsg, id) + offset_of!(InetDiagSockId, sport);
const DPORT_OFFSET: usize = offset_of!(InetDiagMsg, id) + offset_of!(InetDiagSockId, dport);

/// An open NETLINK_SOCK_DIAG socket with its receive buffer.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A dump is answered at once; the timeout only keeps a wedged
        // kernel (or a broken sandbox) from hanging the sampling thread.
        let timeout = libc::timeval {
            tv_sec: NETLINK_TIMEOUT_SECONDS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; NETLINK_BUFFER_BYTES],
        })
    }

    /// Dumps the TCP sockets of one address family that `filter` keeps
    /// into `tally` (`SOCK_DIAG_BY_FAMILY`), asking for no extensions: the
    /// kernel's per-socket work, not ours, is what a round costs, and
    /// every extension (tcp_info above all) adds to it.
    fn dump(&mut self, family: u8, filter: &PortFilter, tally: &mut Tally) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let body = InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: DUMP_STATES,
            id: ANY_SOCKET,
        };
        self.send(&self.request(SOCK_DIAG_BY_FAMILY, body, filter))?;
        self.receive_dump(tally)
    }

    /// Dumps the TCP sockets of both families that `filter` keeps in one
    /// walk of the kernel's table (`TCPDIAG_GETSOCK`), asking for no
    /// extensions.
    fn dump_both(&mut self, filter: &PortFilter, tally: &mut Tally) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let body = InetDiagReq {
            family: libc::AF_UNSPEC as u8,
            src_len: 0,
            dst_len: 0,
            ext: 0,
            id: ANY_SOCKET,
            states: DUMP_STATES,
            dbs: 0,
        };
        self.send(&self.request(TCPDIAG_GETSOCK, body, filter))?;
        self.receive_dump(tally)
    }

    /// A dump request of type `kind` with `body` and, unless it keeps
    /// every socket, `filter`, numbered with the current sequence number.
    fn request<B: Copy>(&self, kind: u16, body: B, filter: &PortFilter) -> DumpRequest<B> {
        let bytecode = filter.bytecode();
        let attr_len = if bytecode.is_empty() {
            0
        } else {
            size_of::<NlAttr>() + bytecode.len()
        };
        let mut request = DumpRequest {
            header: NlMsgHdr {
                len: (NLMSG_HDR_LEN + size_of::<B>() + attr_len) as u32,
                kind,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq: self.seq,
                pid: 0,
            },
            body,
            filter: NlAttr {
                len: attr_len as u16,
                kind: INET_DIAG_REQ_BYTECODE,
            },
            bytecode: [0; FILTER_MAX_BYTES],
        };
        request.bytecode[..bytecode.len()].copy_from_slice(bytecode);
        request
    }

    /// Reads the replies to the dump just requested into `tally`.
    fn receive_dump(&mut self, tally: &mut Tally) -> io::Result<()> {
        loop {
            let n = self.receive()?;
            let Some(batch) = self.buf.get(..n) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink reply larger than the receive buffer",
                ));
            };
            if parse_batch(batch, self.seq, tally)? == Batch::Done {
                return Ok(());
            }
        }
    }

    /// Sends the first `header.len` bytes of one request to the kernel
    /// as one datagram.
    fn send<B: Copy>(&self, request: &DumpRequest<B>) -> io::Result<()> {
        let len = (request.header.len as usize).min(size_of::<DumpRequest<B>>());
        // The kernel is port id 0.
        let kernel = kernel_address();
        loop {
            // SAFETY: `request` is a padding-free repr(C) struct (asserted
            // above), so all of its bytes are initialized, and `len` is at
            // most its size; `kernel` is a valid sockaddr_nl; both outlive
            // the call and their exact sizes are passed.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::from_ref(request).cast(),
                    len,
                    0,
                    (&raw const kernel).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reads one datagram from the kernel into the buffer and returns its
    /// full length (which exceeds the buffer if it was cut short).
    /// Datagrams from any other sender are dropped.
    fn receive(&mut self) -> io::Result<usize> {
        loop {
            let mut from = kernel_address();
            let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` is writable for its whole length and `from` for
            // `from_len` bytes; MSG_TRUNC only changes the return value.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink dump ended without NLMSG_DONE",
                ));
            }
            if from.nl_pid != 0 {
                continue;
            }
            return Ok(n as usize);
        }
    }
}

/// The netlink address of the kernel (port id 0, no multicast groups).
fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers, for which all-zero is valid.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address
}

/// Whether a dump goes on after a batch of messages.
#[derive(Debug, PartialEq)]
enum Batch {
    More,
    Done,
}

fn ne_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn ne_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink reply: {what}"),
    )
}

/// An error the kernel reported as a negative errno.
fn kernel_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.saturating_neg())
}

/// Counts the sockets in one datagram of a sock_diag dump with sequence
/// number `seq`. Messages of other sequence numbers (a stale dump) are
/// skipped. The loop over sockets allocates nothing.
fn parse_batch(mut rest: &[u8], seq: u32, tally: &mut Tally) -> io::Result<Batch> {
    while !rest.is_empty() {
        let (Some(len), Some(kind), Some(msg_seq)) = (
            ne_u32(rest, offset_of!(NlMsgHdr, len)),
            ne_u16(rest, offset_of!(NlMsgHdr, kind)),
            ne_u32(rest, offset_of!(NlMsgHdr, seq)),
        ) else {
            return Err(malformed("truncated header"));
        };
        let len = len as usize;
        let Some(payload) = rest.get(NLMSG_HDR_LEN..len) else {
            return Err(malformed("bad message length"));
        };
        if msg_seq == seq {
            match kind {
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                    let port_at = |at: usize| {
                        payload
                            .get(at..at + 2)
                            .and_then(|b| b.try_into().ok())
                            .map(u16::from_be_bytes)
                    };
                    let (Some(&state), Some(local), Some(remote)) = (
                        payload.get(STATE_OFFSET),
                        port_at(SPORT_OFFSET),
                        port_at(DPORT_OFFSET),
                    ) else {
                        return Err(malformed("short inet_diag_msg"));
                    };
                    tally.count(state, local, remote);
                }
                NLMSG_DONE => {
                    // The payload is the dump's final status (0 or -errno).
                    return match ne_i32(payload, 0) {
                        Some(code) if code < 0 => Err(kernel_error(code)),
                        _ => Ok(Batch::Done),
                    };
                }
                NLMSG_ERROR => {
                    // struct nlmsgerr: -errno, then the offending header. 0
                    // would be an acknowledgement, which a dump does not
                    // ask for; skip it all the same.
                    match ne_i32(payload, 0) {
                        Some(0) => {}
                        Some(code) => return Err(kernel_error(code)),
                        None => return Err(malformed("short NLMSG_ERROR")),
                    }
                }
                NLMSG_OVERRUN => return Err(malformed("NLMSG_OVERRUN")),
                // NLMSG_NOOP, and any type a later kernel might add.
                _ => {}
            }
        }
        let advance = len.next_multiple_of(NLMSG_ALIGN).min(rest.len());
        rest = &rest[advance..];
    }
    Ok(Batch::More)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// /proc/net/tcp with two listeners (22 on all addresses, 8080 on
    /// loopback), two inbound ssh connections, one outbound HTTPS
    /// connection (local port 40000, not a listening port) and one socket
    /// in each of several other states; the TIME_WAIT and SYN_RECV lines
    /// have the kernel's shorter formats.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 16384 1 0000000000000000 100 0 0 10 0                     
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 16385 1 0000000000000000 100 0 0 10 0                     
   2: 0F00000A:0016 0100000A:D431 01 00000000:00000000 02:0008E3F2 00000000     0        0 16390 4 0000000000000000 20 4 31 10 20                    
   3: 0F00000A:0016 0200000A:C350 01 00000024:00000000 01:00000014 00000000     0        0 16391 2 0000000000000000 20 4 1 10 -1                     
   4: 0F00000A:9C40 22D8B85D:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 16392 1 0000000000000000 20 4 30 10 -1                    
   5: 0F00000A:0016 0300000A:C351 06 00000000:00000000 03:000012D4 00000000     0        0 0 3 0000000000000000                                      
   6: 0F00000A:0016 0400000A:C352 03 00000000:00000000 01:000000C8 00000000     0        0 0 0 0000000000000000                                      
   7: 0F00000A:A000 22D8B85D:01BB 02 00000001:00000000 01:000000C8 00000002  1000        0 16395 2 0000000000000000 200 0 0 10 -1                    
   8: 0F00000A:0016 0500000A:C353 08 00000000:00000000 00:00000000 00000000     0        0 16396 1 0000000000000000 20 4 0 10 -1                     
";

    /// /proc/net/tcp6: dual-stack listeners on 443 and 22 (22 is also
    /// listened on over IPv4), one IPv4-mapped connection to 443, and
    /// sockets closing in the remaining states.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23457 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000F00000A:01BB 0000000000000000FFFF00000900000A:E0F2 01 00000000:00000000 02:00000A3C 00000000    33        0 23460 2 0000000000000000 21 4 30 10 -1
   3: 0000000000000000FFFF00000F00000A:01BB 0000000000000000FFFF00000800000A:E0F3 04 00000001:00000000 01:00000014 00000000     0        0 0 3 0000000000000000 21 4 30 10 -1
   4: 0000000000000000FFFF00000F00000A:01BB 0000000000000000FFFF00000700000A:E0F4 05 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000 21 4 30 10 -1
   5: 0000000000000000FFFF00000F00000A:01BB 0000000000000000FFFF00000600000A:E0F5 09 00000001:00000000 01:00000014 00000000     0        0 23463 2 0000000000000000 21 4 30 10 -1
   6: 0000000000000000FFFF00000F00000A:01BB 0000000000000000FFFF00000500000A:E0F6 0B 00000001:00000000 01:00000014 00000000     0        0 23464 2 0000000000000000 21 4 30 10 -1
   7: 0000000000000000FFFF00000F00000A:01BB 0000000000000000FFFF00000400000A:E0F7 07 00000000:00000000 00:00000000 00000000     0        0 23465 2 0000000000000000 21 4 30 10 -1
";

    /// A temporary root holding `proc/net/tcp{,6}`.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let f = Fixture {
                dir: tempfile::tempdir().expect("create temp dir"),
            };
            f.write("proc/net/tcp", TCP);
            f.write("proc/net/tcp6", TCP6);
            f
        }

        fn write(&self, rel: &str, content: &str) {
            let path = self.dir.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create fixture dir");
            }
            std::fs::write(path, content).expect("write fixture file");
        }

        fn sampler(&self, max_ports: usize) -> ConnectionSampler {
            ConnectionSampler::with_max_ports(self.dir.path().to_path_buf(), max_ports)
                .with_netlink(false)
        }
    }

    fn state(out: &Samples, name: &str) -> Option<f64> {
        out.value_of("node_tcp_connection_states", &[("state", name)])
    }

    fn port_value(out: &Samples, port: &str) -> Option<f64> {
        out.value_of("nines_tcp_listen_port_connections", &[("port", port)])
    }

    fn port_series(out: &Samples) -> Vec<(String, f64)> {
        out.observations
            .iter()
            .filter(|o| o.labels.metric_name() == Some("nines_tcp_listen_port_connections"))
            .map(|o| {
                (
                    o.labels.get("port").unwrap_or_default().to_string(),
                    o.value,
                )
            })
            .collect()
    }

    #[test]
    fn proc_fallback_counts_states_of_ipv4_and_ipv6_together() {
        let f = Fixture::new();
        let mut out = Samples::default();
        f.sampler(DEFAULT_MAX_PORTS)
            .sample(&mut out)
            .expect("sample");
        let want = [
            ("established", 4.0),
            ("syn_sent", 1.0),
            ("syn_recv", 1.0),
            ("fin_wait1", 1.0),
            ("fin_wait2", 1.0),
            ("time_wait", 1.0),
            ("close", 1.0),
            ("close_wait", 1.0),
            ("last_ack", 1.0),
            ("listen", 4.0),
            ("closing", 1.0),
        ];
        for (name, count) in want {
            assert_eq!(state(&out, name), Some(count), "{name}");
        }
        let states = out
            .observations
            .iter()
            .filter(|o| o.labels.metric_name() == Some("node_tcp_connection_states"))
            .count();
        assert_eq!(states, 11);

        // 22 listens on both families but is one port; 40000 is the local
        // end of an outbound connection, not a listening port.
        assert_eq!(out.value_of("nines_tcp_listening_ports", &[]), Some(3.0));
        assert_eq!(
            port_series(&out),
            [
                ("22".to_string(), 2.0),
                ("443".to_string(), 1.0),
                ("8080".to_string(), 0.0),
            ]
        );
    }

    #[test]
    fn every_state_is_reported_even_when_there_are_no_sockets() {
        let f = Fixture::new();
        f.write("proc/net/tcp", TCP.lines().next().unwrap_or_default());
        f.write("proc/net/tcp6", "");
        let mut out = Samples::default();
        f.sampler(DEFAULT_MAX_PORTS)
            .sample(&mut out)
            .expect("sample");
        for (_, name) in STATES {
            assert_eq!(state(&out, name), Some(0.0), "{name}");
        }
        assert_eq!(out.value_of("nines_tcp_listening_ports", &[]), Some(0.0));
        assert!(port_series(&out).is_empty());
        assert!(
            !out.metadata
                .iter()
                .any(|m| m.name == "nines_tcp_listen_port_connections")
        );
    }

    #[test]
    fn ports_beyond_the_bound_are_summed_as_other() {
        let f = Fixture::new();
        let mut out = Samples::default();
        f.sampler(1).sample(&mut out).expect("sample");
        // The lowest port keeps its series; 443 and 8080 go to "other".
        assert_eq!(
            port_series(&out),
            [("22".to_string(), 2.0), ("other".to_string(), 1.0)]
        );
        assert_eq!(out.value_of("nines_tcp_listening_ports", &[]), Some(3.0));

        let mut out = Samples::default();
        f.sampler(0).sample(&mut out).expect("sample");
        assert_eq!(port_series(&out), [("other".to_string(), 3.0)]);

        // Exactly at the bound: no "other" series.
        let mut out = Samples::default();
        f.sampler(3).sample(&mut out).expect("sample");
        assert_eq!(port_value(&out, "other"), None);
        assert_eq!(port_series(&out).len(), 3);
    }

    #[test]
    fn many_listening_ports_stay_bounded() {
        let f = Fixture::new();
        let mut tcp = String::from(TCP.lines().next().unwrap_or_default());
        for p in 1000..3000u32 {
            tcp.push_str(&format!(
                "\n 0: 00000000:{p:04X} 00000000:0000 0A 0:0 0:0 0 0 0 1"
            ));
            tcp.push_str(&format!(
                "\n 0: 0100007F:{p:04X} 0100007F:8000 01 0:0 0:0 0 0 0 1"
            ));
        }
        f.write("proc/net/tcp", &tcp);
        f.write("proc/net/tcp6", "");
        let mut sampler = f.sampler(DEFAULT_MAX_PORTS);
        for _ in 0..2 {
            // Twice: the tables are reused, not added to.
            let mut out = Samples::default();
            sampler.sample(&mut out).expect("sample");
            let ports = port_series(&out);
            assert_eq!(ports.len(), DEFAULT_MAX_PORTS + 1);
            assert_eq!(ports.first(), Some(&("1000".to_string(), 1.0)));
            assert_eq!(ports.last(), Some(&("other".to_string(), 1744.0)));
            assert_eq!(out.value_of("nines_tcp_listening_ports", &[]), Some(2000.0));
            assert_eq!(state(&out, "established"), Some(2000.0));
        }
    }

    #[test]
    fn missing_tcp6_is_no_ipv6_but_missing_tcp_is_an_error() {
        let f = Fixture::new();
        std::fs::remove_file(f.dir.path().join("proc/net/tcp6")).expect("remove tcp6");
        let mut out = Samples::default();
        f.sampler(DEFAULT_MAX_PORTS)
            .sample(&mut out)
            .expect("tcp6 is optional");
        assert_eq!(state(&out, "listen"), Some(2.0));
        assert_eq!(port_value(&out, "22"), Some(2.0));

        std::fs::remove_file(f.dir.path().join("proc/net/tcp")).expect("remove tcp");
        let mut out = Samples::default();
        match f.sampler(DEFAULT_MAX_PORTS).sample(&mut out) {
            Err(SampleError::Read { path, .. }) => {
                assert!(path.ends_with("proc/net/tcp"), "{path}")
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        assert!(out.observations.is_empty() && out.metadata.is_empty());
    }

    #[test]
    fn proc_lines_that_do_not_parse_are_skipped() {
        let mut tally = Tally::new();
        count_proc_net_tcp(
            b"0: 0100007F:1F90 0:0 0A\n\
              0: 0100007F:11F90 0:0 0A\n\
              0: 0100007F: 0:0 0A\n\
              0: 0100007F 0:0 0A\n\
              0: 0100007F:1F9G 0:0 0A\n\
              0: 0100007F:0050 0:0 100\n\
              0: 0100007F:0050 0:0 -1\n\
              0: 0100007F:0051 0:0 0F\n\
              0: 0100007F:0052 0:0\n",
            &mut tally,
        );
        assert_eq!(tally.listening_ports().collect::<Vec<_>>(), [8080]);
        // State 15 is unknown: counted nowhere reported, but no harm.
        assert_eq!(tally.states[15], 1);
        assert_eq!(tally.states.iter().sum::<u64>(), 2);
    }

    #[test]
    fn hex_fields() {
        assert_eq!(parse_hex(b"1F90", 4), Some(8080));
        assert_eq!(parse_hex(b"ffff", 4), Some(65535));
        assert_eq!(parse_hex(b"0A", 2), Some(10));
        assert_eq!(parse_hex(b"", 4), None);
        assert_eq!(parse_hex(b"10000", 4), None);
        assert_eq!(parse_hex(b"+1", 4), None);
        assert_eq!(parse_hex(b"\xff", 4), None);
    }

    #[test]
    fn tally_edges() {
        let mut tally = Tally::new();
        for port in [65535, 0, 64, 63, 65535] {
            tally.count(TCP_LISTEN, port, 0);
            tally.count(TCP_ESTABLISHED, port, 40000);
        }
        tally.count(TCP_NEW_SYN_RECV, 1, 65535);
        tally.count(200, 1, 2);
        assert_eq!(
            tally.listening_ports().collect::<Vec<_>>(),
            [0, 63, 64, 65535]
        );
        assert_eq!(tally.established_on(65535), 2);
        assert_eq!(tally.states[usize::from(TCP_SYN_RECV)], 1);
        // Every socket is in the histograms, whatever its state.
        assert_eq!(tally.sockets(), 12);
        assert_eq!(tally.local_ports[0], 6); // ports 0, 1 and 63
        assert_eq!(tally.local_ports[1], 2);
        assert_eq!(tally.local_ports[PORT_BUCKETS - 1], 4);
        assert_eq!(tally.remote_ports[0], 6);
        assert_eq!(tally.remote_ports[40000 / PORT_BUCKET], 5);
        assert_eq!(tally.remote_ports[PORT_BUCKETS - 1], 1);
        tally.clear();
        assert_eq!(tally.listening_ports().count(), 0);
        assert_eq!(tally.established_on(65535), 0);
        assert_eq!(tally.states, [0; 16]);
        assert_eq!(tally.sockets(), 0);
    }

    #[test]
    fn parts_add_up_to_the_whole() {
        let mut whole = Tally::new();
        let mut a = Tally::new();
        let mut b = Tally::new();
        let sockets = [
            (TCP_LISTEN, 80, 0),
            (TCP_LISTEN, 80, 0), // IPv4 and IPv6 listeners
            (TCP_ESTABLISHED, 80, 50000),
            (TCP_ESTABLISHED, 80, 50001),
            (TCP_ESTABLISHED, 50000, 80),
            (6, 443, 40000),
            (TCP_LISTEN, 443, 0),
        ];
        for (i, &(state, local, remote)) in sockets.iter().enumerate() {
            whole.count(state, local, remote);
            let part = if i % 2 == 0 { &mut a } else { &mut b };
            part.count(state, local, remote);
        }
        a.add(&b);
        assert_eq!(a.states, whole.states);
        assert_eq!(a.established, whole.established);
        assert_eq!(a.listening, whole.listening);
        assert_eq!(a.local_ports, whole.local_ports);
        assert_eq!(a.remote_ports, whole.remote_ports);
        assert_eq!(a.listening_ports().collect::<Vec<_>>(), [80, 443]);
        assert_eq!(a.established_on(80), 2);
    }

    /// What the kernel checks of a filter before it starts a dump
    /// (inet_diag_bc_audit in net/ipv4/inet_diag.c), for the operations
    /// used here: every jump 4-aligned, at least past its op (and operand),
    /// at most 4 bytes past the end, and a `no` jump that stays inside
    /// landing on an op that the `yes` chain from the start reaches.
    fn kernel_accepts_filter(bc: &[u8]) -> bool {
        let op = |at: usize| -> Option<(u8, usize, usize)> {
            let b = bc.get(at..at + 4)?;
            Some((
                b[0],
                usize::from(b[1]),
                usize::from(u16::from_ne_bytes([b[2], b[3]])),
            ))
        };
        let reached_by_yes = |target_left: usize| {
            let (mut left, mut at) = (bc.len(), 0);
            loop {
                if target_left > left {
                    return false;
                }
                if target_left == left {
                    return true;
                }
                match op(at) {
                    Some((_, yes, _)) if yes >= 4 && yes % 4 == 0 => {
                        left -= yes.min(left);
                        at += yes;
                    }
                    _ => return false,
                }
            }
        };
        let (mut left, mut at) = (bc.len(), 0);
        while left > 0 {
            let Some((code, yes, no)) = op(at) else {
                return false;
            };
            let min_len = match code {
                INET_DIAG_BC_S_GE | INET_DIAG_BC_S_LE | INET_DIAG_BC_D_GE | INET_DIAG_BC_D_LE => 8,
                0 | 1 => 4, // NOP, JMP
                _ => return false,
            };
            if left < min_len {
                return false;
            }
            if code != 0 {
                if no < min_len || no > left + 4 || no % 4 != 0 {
                    return false;
                }
                if no < left && !reached_by_yes(left - no) {
                    return false;
                }
            }
            if yes < min_len || yes > left + 4 || yes % 4 != 0 {
                return false;
            }
            if yes > left {
                return false;
            }
            left -= yes;
            at += yes;
        }
        true
    }

    /// Whether the kernel keeps a socket with these ports under `bc`
    /// (inet_diag_bc_run): from the start, on `yes` bytes when the op
    /// holds and `no` when not; kept when landing exactly on the end.
    fn filter_keeps(bc: &[u8], local: u16, remote: u16) -> bool {
        let mut left = bc.len() as i64;
        let mut at = 0usize;
        while left > 0 {
            let code = bc[at];
            let operand = || u16::from_ne_bytes([bc[at + 6], bc[at + 7]]);
            let holds = match code {
                0 => true,
                1 => false,
                INET_DIAG_BC_S_GE => local >= operand(),
                INET_DIAG_BC_S_LE => local <= operand(),
                INET_DIAG_BC_D_GE => remote >= operand(),
                INET_DIAG_BC_D_LE => remote <= operand(),
                other => panic!("op {other} not used here"),
            };
            let step = if holds {
                i64::from(bc[at + 1])
            } else {
                i64::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]]))
            };
            left -= step;
            at += step as usize;
        }
        left == 0
    }

    fn range(axis: PortAxis, first: u16, last: u16) -> PortRange {
        PortRange { axis, first, last }
    }

    #[test]
    fn port_filters_pass_the_kernels_check_and_keep_exactly_their_range() {
        for axis in [PortAxis::Local, PortAxis::Remote] {
            for (first, last) in [
                (0, 0),
                (0, 1023),
                (1, 65535),
                (1024, 65535),
                (443, 443),
                (32768, 40959),
                (65535, 65535),
                (0, 65535),
            ] {
                let filter = PortFilter::new(range(axis, first, last));
                let bc = filter.bytecode();
                let ops = usize::from(first > 0) + usize::from(last < u16::MAX);
                assert_eq!(bc.len(), ops * 8, "{first}..={last}");
                assert!(kernel_accepts_filter(bc), "{first}..={last}: {bc:?}");
                for port in 0..=u16::MAX {
                    let other = port ^ 0x5a5a;
                    let (local, remote) = match axis {
                        PortAxis::Local => (port, other),
                        PortAxis::Remote => (other, port),
                    };
                    assert_eq!(
                        filter_keeps(bc, local, remote),
                        (first..=last).contains(&port),
                        "{axis:?} {first}..={last}, port {port}"
                    );
                }
            }
        }
        // The encoding, op by op (native byte order, as the kernel reads).
        let bc = PortFilter::new(range(PortAxis::Local, 1024, 2047));
        let mut want = vec![INET_DIAG_BC_S_GE, 8];
        want.extend(20u16.to_ne_bytes());
        want.extend([0, 0]);
        want.extend(1024u16.to_ne_bytes());
        want.extend([INET_DIAG_BC_S_LE, 8]);
        want.extend(12u16.to_ne_bytes());
        want.extend([0, 0]);
        want.extend(2047u16.to_ne_bytes());
        assert_eq!(bc.bytecode(), want);
    }

    #[test]
    fn a_filtered_request_carries_the_filter_after_the_body() {
        let netlink = Netlink {
            fd: std::fs::File::open("/dev/null")
                .expect("open /dev/null")
                .into(),
            seq: 9,
            buf: Vec::new(),
        };
        let filter = PortFilter::new(range(PortAxis::Remote, 100, 200));
        let body = InetDiagReq {
            family: 0,
            src_len: 0,
            dst_len: 0,
            ext: 0,
            id: ANY_SOCKET,
            states: DUMP_STATES,
            dbs: 0,
        };
        let request = netlink.request(TCPDIAG_GETSOCK, body, &filter);
        assert_eq!(request.header.len, 16 + 60 + 4 + 16);
        assert_eq!(request.header.seq, 9);
        assert_eq!(request.filter.len, 4 + 16);
        assert_eq!(request.filter.kind, INET_DIAG_REQ_BYTECODE);
        assert_eq!(&request.bytecode[..], filter.bytecode());
        // Without a filter only header and body are sent.
        let request = netlink.request(TCPDIAG_GETSOCK, body, &PortFilter::ALL);
        assert_eq!(request.header.len, 16 + 60);
    }

    #[test]
    fn buckets_are_cut_into_balanced_runs() {
        let flat = vec![10u32; PORT_BUCKETS];
        let runs = cut_buckets(&flat, 4);
        assert_eq!(runs, [(256, 2560), (512, 2560), (768, 2560), (1024, 2560)]);
        // Nothing counted: one run over everything.
        assert_eq!(cut_buckets(&vec![0; PORT_BUCKETS], 3), [(PORT_BUCKETS, 0)]);
        // One heavy bucket cannot be cut: two runs around it at most.
        let mut heavy = vec![0u32; PORT_BUCKETS];
        heavy[6] = 1000;
        assert_eq!(cut_buckets(&heavy, 4), [(PORT_BUCKETS, 1000)]);
        heavy[900] = 1000;
        assert_eq!(cut_buckets(&heavy, 4), [(7, 1000), (PORT_BUCKETS, 1000)]);
    }

    #[test]
    fn the_plan_cuts_by_the_axis_that_balances() {
        // A web server: 4,000 server ends on local port 443 from spread-out
        // client ports. Cut by local port, one part would hold them all.
        let mut tally = Tally::new();
        tally.count(TCP_LISTEN, 443, 0);
        for i in 0..4000u16 {
            tally.count(TCP_ESTABLISHED, 443, 32768 + i * 7);
        }
        let plan = plan_parts(&tally, 2);
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan.iter().all(|r| r.axis == PortAxis::Remote), "{plan:?}");
        // The client side of the same connections: cut by local port.
        let mut tally = Tally::new();
        for i in 0..4000u16 {
            tally.count(TCP_ESTABLISHED, 32768 + i * 7, 443);
        }
        let plan = plan_parts(&tally, 4);
        assert_eq!(plan.len(), 4, "{plan:?}");
        assert!(plan.iter().all(|r| r.axis == PortAxis::Local), "{plan:?}");
        // Every socket between one pair of ports: nothing to split.
        let mut tally = Tally::new();
        for _ in 0..4000 {
            tally.count(TCP_ESTABLISHED, 5432, 40000);
        }
        assert!(plan_parts(&tally, 4).is_empty());
        // Three quarters or more in one part is not worth a second walk.
        let mut tally = Tally::new();
        for i in 0..4000u16 {
            let port = if i % 5 == 0 { 1000 + i } else { 60000 };
            tally.count(TCP_ESTABLISHED, port, port);
        }
        assert!(plan_parts(&tally, 2).is_empty());
        assert!(plan_parts(&Tally::new(), 4).is_empty());
        assert!(plan_parts(&tally, 1).is_empty());
    }

    #[test]
    fn only_kernels_that_fill_dumps_side_by_side_get_split_rounds() {
        for (release, parallel) in [
            ("6.9.0", true),
            ("6.18.44-fc-v509", true),
            ("6.12.8-amd64", true),
            ("7.0-rc1", true),
            ("10.1.0", true),
            ("6.8.12-generic", false),
            ("6.1.0-28-amd64", false),
            ("5.15.0-1048-aws", false),
            ("4.18.0-553.el8_10.x86_64", false),
            ("6", false),
            ("", false),
            ("linux", false),
        ] {
            assert_eq!(dumps_run_in_parallel(release), parallel, "{release}");
        }
        assert!(kernel_release().is_some_and(|r| r.contains('.')));
    }

    #[test]
    fn a_round_is_split_only_with_many_sockets_and_cpus_to_spare() {
        let mut sampler = ConnectionSampler::new(PathBuf::from("/"));
        sampler.split = true; // whatever the kernel running the test
        sampler.cpus = 2;
        let spread = |tally: &mut Tally, n: u32| {
            tally.clear();
            for i in 0..n {
                tally.count(TCP_ESTABLISHED, (1024 + i * 13 % 60000) as u16, 443);
            }
        };
        spread(&mut sampler.tally, 40_000);
        assert_eq!(sampler.wanted_parts(), 2);
        assert_eq!(sampler.next_plan().len(), 2);
        sampler.cpus = 16;
        assert_eq!(sampler.wanted_parts(), DEFAULT_PARALLELISM);
        sampler.parallelism = 8;
        assert_eq!(sampler.wanted_parts(), 8);
        sampler.parallelism = 1;
        assert_eq!(sampler.wanted_parts(), 1);
        assert!(sampler.next_plan().is_empty());
        sampler.parallelism = 4;
        spread(&mut sampler.tally, 2_000);
        assert_eq!(sampler.wanted_parts(), 1);
        spread(&mut sampler.tally, 3_500);
        assert_eq!(sampler.wanted_parts(), 3);
        sampler.cpus = 1;
        assert_eq!(sampler.wanted_parts(), 1);
        sampler.cpus = 4;
        sampler.split = false;
        assert_eq!(sampler.wanted_parts(), 1);
        assert_eq!(
            ConnectionSampler::new(PathBuf::from("/"))
                .with_parallelism(0)
                .parallelism,
            1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the last round counted, the parts of the next are
        /// ranges of one axis that cover every port exactly once, and
        /// each port is kept by exactly one part's filter.
        #[test]
        fn every_port_is_in_exactly_one_part(
            local in proptest::collection::vec((0..PORT_BUCKETS, 0u32..5000), 0..24),
            remote in proptest::collection::vec((0..PORT_BUCKETS, 0u32..5000), 0..24),
            parts in 2usize..=4,
        ) {
            let mut tally = Tally::new();
            for (bucket, n) in local {
                tally.local_ports[bucket] += n;
            }
            for (bucket, n) in remote {
                tally.remote_ports[bucket] += n;
            }
            // The two histograms count the same sockets.
            let (l, r): (u64, u64) = (
                tally.local_ports.iter().map(|&n| u64::from(n)).sum(),
                tally.remote_ports.iter().map(|&n| u64::from(n)).sum(),
            );
            if l < r {
                tally.local_ports[0] += (r - l) as u32;
            } else {
                tally.remote_ports[0] += (l - r) as u32;
            }
            let plan = plan_parts(&tally, parts);
            if plan.is_empty() {
                return Ok(());
            }
            proptest::prop_assert!(plan.len() >= 2 && plan.len() <= parts, "{plan:?}");
            proptest::prop_assert!(plan.iter().all(|r| r.axis == plan[0].axis));
            proptest::prop_assert_eq!(plan[0].first, 0);
            proptest::prop_assert_eq!(plan[plan.len() - 1].last, u16::MAX);
            for pair in plan.windows(2) {
                proptest::prop_assert_eq!(u32::from(pair[0].last) + 1, u32::from(pair[1].first));
            }
            let filters: Vec<PortFilter> = plan.iter().map(|&r| PortFilter::new(r)).collect();
            for filter in &filters {
                proptest::prop_assert!(kernel_accepts_filter(filter.bytecode()));
            }
            for port in 0..=u16::MAX {
                let (local, remote) = match plan[0].axis {
                    PortAxis::Local => (port, 7),
                    PortAxis::Remote => (7, port),
                };
                let keeping = filters
                    .iter()
                    .filter(|f| filter_keeps(f.bytecode(), local, remote))
                    .count();
                proptest::prop_assert_eq!(keeping, 1, "port {}", port);
            }
        }
    }

    #[test]
    fn auto_counts_the_cheaper_way_and_measures_the_other_now_and_then() {
        let mut c = Costs::default();
        assert!(c.bpf_next(), "the iterator is measured first");
        c.bpf = Some(Duration::from_micros(2_400));
        assert!(!c.bpf_next(), "then netlink");
        c.netlink = Some(Duration::from_micros(300));
        let ways: Vec<bool> = (0..60).map(|_| c.bpf_next()).collect();
        assert_eq!(ways.iter().filter(|&&b| b).count(), 2, "{ways:?}");
        // Many sockets later, netlink costs more: the iterator wins.
        c.netlink = Some(Duration::from_millis(40));
        assert!((0..60).filter(|_| c.bpf_next()).count() >= 58);
    }

    #[test]
    fn a_round_holds_counts_only_for_the_port_ranges_its_sockets_use() {
        let mut tally = Tally::new();
        let rounds: [(&[u16], &[usize]); 2] = [
            (&[0, 1023, 1024, 40_000, 40_001, 65_535], &[0, 1, 39, 63]),
            (&[5_000, 5_000, 33_000], &[4, 32]),
        ];
        for (ports, chunks) in rounds {
            for &port in ports {
                tally.count(TCP_ESTABLISHED, port, 0);
            }
            tally.count(TCP_LISTEN, 2_000, 0);
            let held: Vec<usize> = (0..tally.established.len())
                .filter(|&i| tally.established[i].is_some())
                .collect();
            assert_eq!(held, chunks);
            for &port in ports {
                let n = ports.iter().filter(|&&p| p == port).count() as u64;
                assert_eq!(tally.established_on(port), n, "port {port}");
            }
            assert_eq!(tally.established_on(2_000), 0);
            tally.clear();
            assert!(tally.established.iter().all(Option::is_none));
            assert_eq!(tally.established_on(ports[0]), 0);
        }
    }

    /// One netlink message: header, then `payload`, padded to 4 bytes.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR_LEN + payload.len()) as u32;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&len.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&4242u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        while bytes.len() % NLMSG_ALIGN != 0 {
            bytes.push(0);
        }
        bytes
    }

    /// An inet_diag_msg for a socket, followed by attributes as a kernel
    /// would append (here 8 bytes of INET_DIAG_SHUTDOWN and 5 bytes of
    /// something unaligned, to exercise the padding).
    fn socket(seq: u32, state: u8, port: u16) -> Vec<u8> {
        let mut payload = vec![0u8; size_of::<InetDiagMsg>()];
        payload[0] = libc::AF_INET as u8;
        payload[STATE_OFFSET] = state;
        payload[SPORT_OFFSET..SPORT_OFFSET + 2].copy_from_slice(&port.to_be_bytes());
        payload[DPORT_OFFSET..DPORT_OFFSET + 2]
            .copy_from_slice(&port.wrapping_add(1).to_be_bytes());
        payload.extend_from_slice(&[8, 0, 8, 0, 0, 0, 0, 0, 5, 0, 9, 0, 1]);
        message(SOCK_DIAG_BY_FAMILY, seq, &payload)
    }

    fn status(code: i32) -> Vec<u8> {
        code.to_ne_bytes().to_vec()
    }

    #[test]
    fn netlink_batches_are_counted_until_done() {
        let mut tally = Tally::new();
        let mut batch = Vec::new();
        batch.extend(socket(7, TCP_LISTEN, 443));
        batch.extend(socket(7, TCP_ESTABLISHED, 443));
        batch.extend(socket(7, TCP_ESTABLISHED, 443));
        // A stale message from an earlier dump is not counted.
        batch.extend(socket(6, TCP_ESTABLISHED, 443));
        batch.extend(message(1, 7, &[])); // NLMSG_NOOP
        batch.extend(socket(7, 6, 50000));
        assert_eq!(parse_batch(&batch, 7, &mut tally).ok(), Some(Batch::More));
        assert_eq!(
            parse_batch(&message(NLMSG_DONE, 7, &status(0)), 7, &mut tally).ok(),
            Some(Batch::Done)
        );
        assert_eq!(tally.listening_ports().collect::<Vec<_>>(), [443]);
        assert_eq!(tally.established_on(443), 2);
        assert_eq!(tally.states[usize::from(TCP_ESTABLISHED)], 2);
        assert_eq!(tally.states[6], 1);
        // Local and remote ports (big-endian on the wire) feed the split.
        assert_eq!(tally.local_ports[443 / PORT_BUCKET], 3);
        assert_eq!(tally.remote_ports[444 / PORT_BUCKET], 3);
        assert_eq!(tally.remote_ports[50001 / PORT_BUCKET], 1);

        // DONE ends the batch even if more follows.
        let mut batch = message(NLMSG_DONE, 7, &status(0));
        batch.extend(socket(7, TCP_ESTABLISHED, 1));
        assert_eq!(parse_batch(&batch, 7, &mut tally).ok(), Some(Batch::Done));
        assert_eq!(tally.established_on(1), 0);
        // A stale DONE does not end this dump.
        assert_eq!(
            parse_batch(&message(NLMSG_DONE, 3, &status(0)), 7, &mut tally).ok(),
            Some(Batch::More)
        );
    }

    #[test]
    fn netlink_errors_carry_the_kernels_errno() {
        let mut tally = Tally::new();
        let mut nlmsgerr = status(-libc::EPERM);
        nlmsgerr.extend_from_slice(&[0; NLMSG_HDR_LEN]);
        let e = parse_batch(&message(NLMSG_ERROR, 1, &nlmsgerr), 1, &mut tally)
            .expect_err("NLMSG_ERROR");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(is_refusal(&e));

        let e = parse_batch(
            &message(NLMSG_DONE, 1, &status(-libc::EINTR)),
            1,
            &mut tally,
        )
        .expect_err("failed dump");
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
        assert!(!is_refusal(&e));

        // An acknowledgement is not an error; i32::MIN does not overflow.
        assert_eq!(
            parse_batch(&message(NLMSG_ERROR, 1, &status(0)), 1, &mut tally).ok(),
            Some(Batch::More)
        );
        assert!(parse_batch(&message(NLMSG_ERROR, 1, &status(i32::MIN)), 1, &mut tally).is_err());
        assert!(parse_batch(&message(NLMSG_OVERRUN, 1, &[]), 1, &mut tally).is_err());
        assert!(parse_batch(&message(NLMSG_ERROR, 1, &[1]), 1, &mut tally).is_err());

        for refused in [
            libc::EPERM,
            libc::EACCES,
            libc::EPROTONOSUPPORT,
            libc::EAFNOSUPPORT,
        ] {
            assert!(is_refusal(&io::Error::from_raw_os_error(refused)));
        }
        assert!(!is_refusal(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!is_refusal(&io::Error::other("no errno")));
    }

    #[test]
    fn malformed_netlink_replies_are_errors_not_panics() {
        let mut tally = Tally::new();
        // A header claiming less than itself would loop forever if trusted.
        let mut zero = message(SOCK_DIAG_BY_FAMILY, 1, &[]);
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_batch(&zero, 1, &mut tally).is_err());
        // Longer than the datagram.
        let mut long = socket(1, TCP_LISTEN, 80);
        long[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(parse_batch(&long, 1, &mut tally).is_err());
        // Too short for an inet_diag_msg.
        assert!(parse_batch(&message(SOCK_DIAG_BY_FAMILY, 1, &[1, 2, 3]), 1, &mut tally).is_err());

        let mut batch = Vec::new();
        batch.extend(socket(1, TCP_LISTEN, 80));
        batch.extend(socket(1, TCP_ESTABLISHED, 80));
        let mut nlmsgerr = status(-libc::ENOBUFS);
        nlmsgerr.extend_from_slice(&[0; NLMSG_HDR_LEN]);
        batch.extend(message(NLMSG_ERROR, 1, &nlmsgerr));
        batch.extend(message(NLMSG_DONE, 1, &status(0)));
        for end in 0..=batch.len() {
            let _ = parse_batch(&batch[..end], 1, &mut tally);
        }
        // And every single-byte corruption.
        for i in 0..batch.len() {
            let mut bad = batch.clone();
            bad[i] ^= 0xff;
            let _ = parse_batch(&bad, 1, &mut tally);
        }
    }

    #[test]
    fn proc_parser_never_panics_on_prefixes_or_garbage() {
        let mut tally = Tally::new();
        for text in [
            TCP,
            TCP6,
            "",
            ":",
            "::::",
            "a b c d",
            "0: :: : :",
            "0: \u{10ffff}:ff x ff",
        ] {
            for (end, _) in text.char_indices().chain([(text.len(), ' ')]) {
                count_proc_net_tcp(&text.as_bytes()[..end], &mut tally);
            }
        }
        // Invalid UTF-8 is just bytes here.
        count_proc_net_tcp(b"0: \xff\xfe:\xff 0:0 \xff\n", &mut tally);
    }

    /// A listener on 127.0.0.1 with `k` accepted connections; all sockets
    /// are returned so they stay open.
    fn loopback_connections(k: usize) -> (TcpListener, Vec<TcpStream>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        connected(listener, k)
    }

    /// As [`loopback_connections`] on [::1]; None where IPv6 loopback is
    /// off (ipv6.disable=1).
    fn loopback6_connections(k: usize) -> Option<(TcpListener, Vec<TcpStream>, Vec<TcpStream>)> {
        TcpListener::bind("[::1]:0").ok().map(|l| connected(l, k))
    }

    /// `k` connections to `listener`: it, their client and server ends.
    fn connected(listener: TcpListener, k: usize) -> (TcpListener, Vec<TcpStream>, Vec<TcpStream>) {
        let addr = listener.local_addr().expect("listener address");
        let mut clients = Vec::with_capacity(k);
        let mut servers = Vec::with_capacity(k);
        for _ in 0..k {
            clients.push(TcpStream::connect(addr).expect("connect"));
            servers.push(listener.accept().expect("accept").0);
        }
        (listener, clients, servers)
    }

    /// Netlink counts, or None (with a note) where netlink is refused.
    fn netlink_sampler_or_skip(max_ports: usize) -> Option<ConnectionSampler> {
        let mut sampler = ConnectionSampler::with_max_ports(PathBuf::from("/"), max_ports);
        match sampler.count_netlink() {
            Ok(()) => Some(sampler),
            Err(e) if is_refusal(&e) => {
                eprintln!("netlink sock_diag refused here ({e}); netlink checks skipped");
                None
            }
            Err(e) => panic!("netlink sock_diag failed: {e}"),
        }
    }

    #[test]
    fn live_netlink_agrees_with_proc_for_a_port_with_known_connections() {
        const K: usize = 40;
        let (listener, _clients, _servers) = loopback_connections(K);
        let port = listener.local_addr().expect("address").port();
        let label = port.to_string();

        let Some(mut netlink) = netlink_sampler_or_skip(1 << 16) else {
            return;
        };
        assert!(netlink.tally.listening_ports().any(|p| p == port));
        // Both ends of each connection are established sockets.
        assert!(netlink.tally.states[usize::from(TCP_ESTABLISHED)] >= 2 * K as u64);

        // Neither source is a snapshot: both are read in several pieces,
        // and sockets other tests open and close meanwhile can shift the
        // kernel's table so that one of ours is listed twice or not at all.
        // So the two must agree in one of a few attempts, not every time.
        let mut seen = Vec::new();
        for _ in 0..10 {
            let mut via_netlink = Samples::default();
            netlink
                .sample(&mut via_netlink)
                .expect("sample via netlink");
            assert_eq!(netlink.method, Method::Netlink, "no fallback happened");
            let mut via_proc = Samples::default();
            ConnectionSampler::with_max_ports(PathBuf::from("/"), 1 << 16)
                .with_netlink(false)
                .sample(&mut via_proc)
                .expect("sample via /proc");
            for (_, name) in STATES {
                assert!(state(&via_netlink, name).is_some(), "{name}");
            }
            assert!(state(&via_netlink, "listen").is_some_and(|n| n >= 1.0));

            let counts = (
                port_value(&via_netlink, &label),
                port_value(&via_proc, &label),
            );
            if counts.0.is_some_and(|n| n >= K as f64) && counts.0 == counts.1 {
                return;
            }
            seen.push(counts);
        }
        panic!("netlink and /proc never agreed on at least {K}: {seen:?}");
    }

    #[test]
    fn one_walk_dump_counts_ipv4_and_ipv6_as_the_per_family_dumps_do() {
        const K: usize = 5;
        let (v4, _c4, _s4) = loopback_connections(K);
        // IPv6 loopback may be off (ipv6.disable=1): then only IPv4 is
        // checked.
        let v6 = loopback6_connections(K);
        let mut ports = vec![v4.local_addr().expect("address").port()];
        ports.extend(
            v6.as_ref()
                .map(|(l, _, _)| l.local_addr().expect("address").port()),
        );

        let Some(mut one_walk) = netlink_sampler_or_skip(1 << 16) else {
            return;
        };
        assert!(one_walk.one_walk, "TCPDIAG_GETSOCK refused by this kernel");
        let mut per_family = ConnectionSampler::with_max_ports(PathBuf::from("/"), 1 << 16);
        per_family.one_walk = false;
        // Exact in at least one round: see the note on churn above.
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (mut a, mut b) = (Samples::default(), Samples::default());
            one_walk.sample(&mut a).expect("one-walk sample");
            per_family.sample(&mut b).expect("per-family sample");
            assert!(one_walk.one_walk && !per_family.one_walk);
            assert_eq!(one_walk.method, Method::Netlink, "no fallback happened");
            let counts: Vec<_> = ports
                .iter()
                .map(|p| {
                    let label = p.to_string();
                    (port_value(&a, &label), port_value(&b, &label))
                })
                .collect();
            if counts
                .iter()
                .all(|&(x, y)| x == Some(K as f64) && y == Some(K as f64))
            {
                return;
            }
            seen.push(counts);
        }
        panic!("the dumps never both counted {K} per port: {seen:?}");
    }

    #[test]
    fn live_sampler_reuses_its_socket_and_buffers_across_rounds() {
        let (listener, _clients, _servers) = loopback_connections(3);
        let label = listener.local_addr().expect("address").port().to_string();
        let Some(mut sampler) = netlink_sampler_or_skip(1 << 16) else {
            return;
        };
        let fd = sampler.netlink.as_ref().map(|n| n.fd.as_raw_fd());
        // Exact in at least one round: see the note on churn above.
        let mut counts = Vec::new();
        for _ in 0..3 {
            let mut out = Samples::default();
            sampler.sample(&mut out).expect("sample");
            counts.push(port_value(&out, &label));
        }
        assert!(counts.iter().all(Option::is_some), "{counts:?}");
        assert!(counts.contains(&Some(3.0)), "{counts:?}");
        assert_eq!(sampler.netlink.as_ref().map(|n| n.fd.as_raw_fd()), fd);
    }

    #[test]
    fn split_rounds_count_what_one_dump_counts() {
        const K: usize = 12;
        let (a, _ca, _sa) = loopback_connections(K);
        let (b, _cb, _sb) = loopback_connections(K);
        let mut ports = [
            a.local_addr().expect("address").port(),
            b.local_addr().expect("address").port(),
        ];
        ports.sort_unstable();
        // IPv6 loopback may be off (ipv6.disable=1): then only IPv4.
        let v6 = loopback6_connections(K);
        let mut labels: Vec<String> = ports.iter().map(u16::to_string).collect();
        labels.extend(
            v6.as_ref()
                .map(|(l, _, _)| l.local_addr().expect("address").port().to_string()),
        );
        let Some(mut whole) = netlink_sampler_or_skip(1 << 16) else {
            return;
        };
        let mut split = ConnectionSampler::with_max_ports(PathBuf::from("/"), 1 << 16);
        // Filtered dumps work the same on a kernel that runs them in turn.
        split.split = true;
        // Cut between the two listeners (each with its server ends on one
        // side), by remote port (the server ends' peers, the client ends'
        // listeners), into four, and through the listeners' own ports.
        let between = ports[0] + 1;
        let plans = [
            vec![
                range(PortAxis::Local, 0, between - 1),
                range(PortAxis::Local, between, u16::MAX),
            ],
            vec![
                range(PortAxis::Remote, 0, between - 1),
                range(PortAxis::Remote, between, u16::MAX),
            ],
            vec![
                range(PortAxis::Local, 0, 16383),
                range(PortAxis::Local, 16384, 32767),
                range(PortAxis::Local, 32768, 49151),
                range(PortAxis::Local, 49152, u16::MAX),
            ],
            vec![
                range(PortAxis::Remote, 0, ports[0]),
                range(PortAxis::Remote, ports[0] + 1, ports[1]),
                range(PortAxis::Remote, ports[1].saturating_add(1), u16::MAX),
            ],
        ];
        // Each plan in one walk and, as a kernel without TCPDIAG_GETSOCK
        // gets it, per family.
        for (plan, one_walk) in plans
            .iter()
            .flat_map(|p| [(p.clone(), true), (p.clone(), false)])
        {
            if plan.windows(2).any(|p| p[0].last >= p[1].first) {
                continue; // a listener on port 65535
            }
            split.one_walk = one_walk;
            // Exact in at least one round: see the note on churn above.
            let mut seen = Vec::new();
            let agreed = (0..10).any(|_| {
                split.plan = plan.clone();
                let (mut x, mut y) = (Samples::default(), Samples::default());
                split.sample(&mut x).expect("split sample");
                assert_eq!(split.method, Method::Netlink, "no fallback happened");
                assert_eq!(split.last_dumps(), plan.len(), "split as planned");
                assert_eq!(split.last_parts_cpu().len(), plan.len());
                assert!(split.split, "the kernel took the filters");
                whole.sample(&mut y).expect("whole sample");
                assert_eq!(whole.last_dumps(), 1);
                assert!(whole.last_parts_cpu().is_empty());
                let counts: Vec<_> = labels
                    .iter()
                    .map(|l| (port_value(&x, l), port_value(&y, l)))
                    .collect();
                let exact = counts
                    .iter()
                    .all(|&c| c == (Some(K as f64), Some(K as f64)));
                seen.push(counts);
                exact
            });
            assert!(
                agreed,
                "{plan:?} (one walk: {one_walk}): split and whole never both counted {K}: {seen:?}"
            );
        }
        // Few sockets here: the next round is planned in one piece again.
        if split.tally.sockets() <= SPLIT_MIN_SOCKETS {
            assert!(split.plan.is_empty());
            assert!(split.parts.is_empty(), "the parts' tables are freed");
        }
    }

    /// A sampler counting with the BPF iterator, or None (with a note)
    /// where it cannot load; in CI as root it must load.
    fn bpf_sampler_or_skip() -> Option<ConnectionSampler> {
        match BpfSocketCounter::load() {
            Ok(counter) => Some(
                ConnectionSampler::with_max_ports(PathBuf::from("/"), 1 << 16).with_bpf(counter),
            ),
            Err(e) if !super::super::connections_bpf::must_load_here() => {
                eprintln!("the BPF iterator cannot load here ({e}); BPF checks skipped");
                None
            }
            Err(e) => panic!("the BPF iterator does not load: {e}"),
        }
    }

    /// A sample's state counts, listening ports' counts and listening port
    /// count.
    type Everything = (Vec<Option<f64>>, Vec<(String, f64)>, Option<f64>);

    /// Every state count and every listening port's count of a sample.
    fn everything(out: &Samples) -> Everything {
        (
            STATES.iter().map(|&(_, name)| state(out, name)).collect(),
            port_series(out),
            out.value_of("nines_tcp_listening_ports", &[]),
        )
    }

    #[test]
    fn live_bpf_counts_what_netlink_counts() {
        const K: usize = 6;
        // Two IPv4 listeners, with K connections each.
        let (a, _ca, _sa) = loopback_connections(K);
        let (b, _cb, _sb) = loopback_connections(K);
        let mut expected = vec![
            (a.local_addr().expect("address").port(), K),
            (b.local_addr().expect("address").port(), K),
        ];
        // IPv6 (when loopback has it): a listener of its own, and one on
        // the same port as an IPv4 listener, K connections to each family.
        let mut keep = Vec::new();
        let mut v6_listeners = Vec::new();
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let both = a.local_addr().expect("address").port();
            expected.push((v6.local_addr().expect("address").port(), K));
            v6_listeners.push(v6);
            if let Ok(same) = TcpListener::bind(("::1", both)) {
                expected[0].1 += K;
                v6_listeners.push(same);
            }
            for l in &v6_listeners {
                let addr = l.local_addr().expect("address");
                for _ in 0..K {
                    let c = TcpStream::connect(addr).expect("connect [::1]");
                    keep.push((c, l.accept().expect("accept").0));
                }
            }
        }
        // Some TIME_WAIT sockets: the client closes first, then the server.
        let (tw, tw_clients, tw_servers) = loopback_connections(K);
        drop(tw_clients);
        drop(tw_servers);
        drop(tw);

        let Some(mut netlink) = netlink_sampler_or_skip(1 << 16) else {
            return;
        };
        let Some(mut bpf) = bpf_sampler_or_skip() else {
            return;
        };
        // Exact in at least one round: see the note on churn above.
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (mut x, mut y) = (Samples::default(), Samples::default());
            bpf.sample(&mut x).expect("BPF sample");
            assert_eq!(bpf.last_method(), Some("bpf"), "no fallback happened");
            assert_eq!(bpf.last_dumps(), 0);
            netlink.sample(&mut y).expect("netlink sample");
            assert_eq!(netlink.last_method(), Some("netlink"));
            let (bx, ny) = (everything(&x), everything(&y));
            let ours_right = expected
                .iter()
                .all(|&(p, n)| port_value(&x, &p.to_string()) == Some(n as f64));
            let time_wait = state(&x, "time_wait").unwrap_or(0.0);
            if bx == ny && ours_right && time_wait >= K as f64 {
                return;
            }
            seen.push((bx, ny));
        }
        panic!("BPF and netlink never agreed, or missed {expected:?}: {seen:?}");
    }
}
