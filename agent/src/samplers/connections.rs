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
//! allocates, and every buffer is reused from round to round. When netlink
//! is refused (seccomp, gVisor, a kernel without inet_diag) it falls back
//! to `<root>/proc/net/tcp` and `tcp6` for good and says so once.
//!
//! A round's cost is nearly all the kernel's: filling one message per
//! socket (about 0.6 µs of CPU each; walking the table without filling any
//! is about a seventh of the round). Measured and not taken, as no
//! cheaper: larger reads (the kernel fills at most 32 KiB per read; 8 KiB
//! reads cost the same), one dump per state (each dump walks the whole
//! table again), and kernel counters in place of listing established
//! sockets (/proc/net/snmp's CurrEstab also counts CLOSE_WAIT, and no
//! counter gives per-port counts).
//!
//! Netlink shows the sockets of the agent's own network namespace, whatever
//! the root; only the /proc fallback reads under the root (so tests can use
//! fixture files).
//!
//! This file must never write to the system beyond sending dump requests to
//! the kernel, spawn threads or processes, panic on anything the kernel (or
//! a fixture) hands it, or report an unbounded number of series: listening
//! ports beyond the configured bound are summed into `port="other"`.

use std::fmt;
use std::io::{self, Read};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

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
}

/// Ports per chunk of [`Tally::established`].
const PORTS_PER_CHUNK: usize = 1024;

impl Tally {
    fn new() -> Self {
        Tally {
            states: [0; 16],
            established: vec![None; (1 << 16) / PORTS_PER_CHUNK],
            listening: vec![0; (1 << 16) / 64],
        }
    }

    fn clear(&mut self) {
        self.states = [0; 16];
        self.established.fill(None);
        self.listening.fill(0);
    }

    /// Counts one socket. The hot path of the sampler: it allocates only
    /// the first time a round counts an established socket in a range of
    /// [`PORTS_PER_CHUNK`] ports.
    fn count(&mut self, state: u8, local_port: u16) {
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

/// Where the socket table is read from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Netlink,
    Proc,
}

/// Counts TCP sockets by state and established connections per listening
/// port, through netlink sock_diag with /proc/net/tcp{,6} as the fallback.
pub struct ConnectionSampler {
    root: PathBuf,
    max_ports: usize,
    method: Method,
    /// Kept open across rounds; dropped (closed) after any netlink error
    /// so that a half-read dump cannot leak into the next round.
    netlink: Option<Netlink>,
    /// Whether the one-walk `TCPDIAG_GETSOCK` dump works here; false once
    /// the kernel refused it, then each family is dumped on its own.
    one_walk: bool,
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
            netlink: None,
            one_walk: true,
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

    /// With `false`, dumps each address family on its own
    /// (`SOCK_DIAG_BY_FAMILY`, two walks of the kernel's table) even where
    /// the one-walk dump works: for comparison in the benchmark.
    pub fn with_one_walk_dump(mut self, enabled: bool) -> Self {
        self.one_walk = enabled;
        self
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
    /// or counted twice (as with `ss` and node_exporter).
    pub fn sample(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        self.tally.clear();
        if self.method == Method::Netlink {
            match self.count_netlink() {
                Ok(()) => {
                    self.report(out);
                    return Ok(());
                }
                Err(e) if is_refusal(&e) => {
                    tracing::warn!(
                        error = %e,
                        "netlink sock_diag refused; counting TCP sockets from /proc/net/tcp from now on"
                    );
                    self.method = Method::Proc;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "netlink sock_diag failed; using /proc/net/tcp this round");
                }
            }
            // Whatever the failed dump had counted is incomplete.
            self.tally.clear();
        }
        self.count_proc()?;
        self.report(out);
        Ok(())
    }

    /// Dumps IPv4 and IPv6 TCP sockets into the tally: in one walk of the
    /// kernel's table where it can, else IPv4 then IPv6.
    fn count_netlink(&mut self) -> io::Result<()> {
        if self.one_walk {
            let netlink = match &mut self.netlink {
                Some(netlink) => netlink,
                None => self.netlink.insert(Netlink::open()?),
            };
            match netlink.dump_both(&mut self.tally) {
                Ok(()) => return Ok(()),
                // A kernel without the compatibility request (or a sandbox
                // that only lets SOCK_DIAG_BY_FAMILY through).
                Err(e) if is_refusal(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(error = %e, "TCPDIAG_GETSOCK refused; dumping each address family");
                    self.one_walk = false;
                    self.netlink = None;
                    self.tally.clear();
                }
                Err(e) => {
                    self.netlink = None;
                    return Err(e);
                }
            }
        }
        let netlink = match &mut self.netlink {
            Some(netlink) => netlink,
            None => self.netlink.insert(Netlink::open()?),
        };
        let mut result = netlink.dump(libc::AF_INET as u8, &mut self.tally);
        if result.is_ok() {
            result = match netlink.dump(libc::AF_INET6 as u8, &mut self.tally) {
                // No inet6 sock_diag handler: a kernel without IPv6 (or
                // booted with ipv6.disable=1) has no IPv6 sockets to count.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                other => other,
            };
        }
        if result.is_err() {
            self.netlink = None;
        }
        result
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
/// `sl local_address rem_address st ...`, where the local address is
/// `HEXIP:HEXPORT` and `st` the state in hex. The header and any line that
/// does not parse are skipped; nothing is allocated.
fn count_proc_net_tcp(text: &[u8], tally: &mut Tally) {
    for line in text.split(|&b| b == b'\n') {
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(_slot), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(colon) = local.iter().rposition(|&b| b == b':') else {
            continue;
        };
        let port = parse_hex(&local[colon + 1..], 4).and_then(|p| u16::try_from(p).ok());
        let state = parse_hex(state, 2).and_then(|s| u8::try_from(s).ok());
        if let (Some(port), Some(state)) = (port, state) {
            tally.count(state, port);
        }
    }
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

/// One dump request: header and body, sent as one datagram.
#[repr(C)]
#[derive(Clone, Copy)]
struct DumpRequest {
    header: NlMsgHdr,
    body: InetDiagReqV2,
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

/// A `TCPDIAG_GETSOCK` dump request, sent as one datagram.
#[repr(C)]
#[derive(Clone, Copy)]
struct CompatDumpRequest {
    header: NlMsgHdr,
    body: InetDiagReq,
}

// The kernel's sizes; also proves there is no padding, so every byte of a
// request is initialized when it is sent.
const _: () = assert!(size_of::<NlMsgHdr>() == 16);
const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);
const _: () = assert!(size_of::<DumpRequest>() == 72);
const _: () = assert!(size_of::<InetDiagReq>() == 60);
const _: () = assert!(size_of::<CompatDumpRequest>() == 76);

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

    /// Dumps the TCP sockets of one address family into `tally`, asking
    /// for no extensions: the kernel's per-socket work, not ours, is what
    /// a round costs, and every extension (tcp_info above all) adds to it.
    fn dump(&mut self, family: u8, tally: &mut Tally) -> io::Result<()> {
        self.dump_with(family, 0, DUMP_STATES, tally)
    }

    /// Dumps the TCP sockets of both families in one walk of the kernel's
    /// table (`TCPDIAG_GETSOCK`), asking for no extensions.
    fn dump_both(&mut self, tally: &mut Tally) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = CompatDumpRequest {
            header: NlMsgHdr {
                len: size_of::<CompatDumpRequest>() as u32,
                kind: TCPDIAG_GETSOCK,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq: self.seq,
                pid: 0,
            },
            body: InetDiagReq {
                family: libc::AF_UNSPEC as u8,
                src_len: 0,
                dst_len: 0,
                ext: 0,
                id: InetDiagSockId {
                    sport: [0; 2],
                    dport: [0; 2],
                    src: [[0; 4]; 4],
                    dst: [[0; 4]; 4],
                    interface: 0,
                    cookie: [0; 2],
                },
                states: DUMP_STATES,
                dbs: 0,
            },
        };
        self.send(&request)?;
        self.receive_dump(tally)
    }

    /// A dump with the given extension bits (`idiag_ext`) and state mask;
    /// other values than [`Netlink::dump`]'s are for the benchmark, which
    /// times the request node_exporter sends.
    fn dump_with(&mut self, family: u8, ext: u8, states: u32, tally: &mut Tally) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.send_request(family, ext, states)?;
        self.receive_dump(tally)
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

    fn send_request(&self, family: u8, ext: u8, states: u32) -> io::Result<()> {
        let request = DumpRequest {
            header: NlMsgHdr {
                len: size_of::<DumpRequest>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq: self.seq,
                pid: 0,
            },
            body: InetDiagReqV2 {
                family,
                protocol: libc::IPPROTO_TCP as u8,
                ext,
                pad: 0,
                states,
                id: InetDiagSockId {
                    sport: [0; 2],
                    dport: [0; 2],
                    src: [[0; 4]; 4],
                    dst: [[0; 4]; 4],
                    interface: 0,
                    cookie: [0; 2],
                },
            },
        };
        self.send(&request)
    }

    /// Sends one request datagram to the kernel. `T` is one of the
    /// request structs, which have no padding (asserted above).
    fn send<T: Copy>(&self, request: &T) -> io::Result<()> {
        // The kernel is port id 0.
        let kernel = kernel_address();
        loop {
            // SAFETY: `request` is a padding-free repr(C) struct (asserted
            // above), so all of its bytes are initialized; `kernel` is a
            // valid sockaddr_nl; both outlive the call and their exact sizes
            // are passed.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::from_ref(request).cast(),
                    size_of::<T>(),
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
                    let (Some(&state), Some(port)) = (
                        payload.get(STATE_OFFSET),
                        payload
                            .get(SPORT_OFFSET..SPORT_OFFSET + 2)
                            .and_then(|b| b.try_into().ok())
                            .map(u16::from_be_bytes),
                    ) else {
                        return Err(malformed("short inet_diag_msg"));
                    };
                    tally.count(state, port);
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
            tally.count(TCP_LISTEN, port);
            tally.count(TCP_ESTABLISHED, port);
        }
        tally.count(TCP_NEW_SYN_RECV, 1);
        tally.count(200, 1);
        assert_eq!(
            tally.listening_ports().collect::<Vec<_>>(),
            [0, 63, 64, 65535]
        );
        assert_eq!(tally.established_on(65535), 2);
        assert_eq!(tally.states[usize::from(TCP_SYN_RECV)], 1);
        tally.clear();
        assert_eq!(tally.listening_ports().count(), 0);
        assert_eq!(tally.established_on(65535), 0);
        assert_eq!(tally.states, [0; 16]);
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
                tally.count(TCP_ESTABLISHED, port);
            }
            tally.count(TCP_LISTEN, 2_000);
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
        let v6 = TcpListener::bind("[::1]:0").ok().map(|l| {
            let addr = l.local_addr().expect("address");
            let pairs: Vec<(TcpStream, TcpStream)> = (0..K)
                .map(|_| {
                    let c = TcpStream::connect(addr).expect("connect [::1]");
                    (c, l.accept().expect("accept").0)
                })
                .collect();
            (l, pairs)
        });
        let mut ports = vec![v4.local_addr().expect("address").port()];
        ports.extend(
            v6.as_ref()
                .map(|(l, _)| l.local_addr().expect("address").port()),
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
}
