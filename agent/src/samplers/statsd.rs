//! StatsD / DogStatsD listener: receives UDP datagrams from applications on
//! this host and keeps cumulative Prometheus-style counters, gauges and
//! histograms that a sampling round snapshots with [`StatsdState::sample`].
//!
//! Wire format: `name:value[:value...]|type[|@rate][|#tag:v,tag2]`, one
//! metric per line, lines separated by `\n`. Types and how they are exposed:
//!
//! | type | meaning | exposed as |
//! |---|---|---|
//! | `c` | counter increment, scaled by `1/rate` | counter `<name>_total` |
//! | `g` | gauge; a `+`/`-` prefix is a delta | gauge `<name>` |
//! | `ms` | timer in milliseconds | histogram `<name>_seconds` (converted to seconds) |
//! | `h`, `d` | DogStatsD histogram / distribution, no unit | histogram `<name>` (values as sent) |
//! | `s` | set member | gauge `<name>`: distinct members in the last round |
//!
//! Histograms use [`LATENCY_BUCKETS_SECONDS`](super::histogram::LATENCY_BUCKETS_SECONDS);
//! a sample rate multiplies a timer's observation count by `1/rate`
//! (rounded, at least 1). Names and tag names are made Prometheus-valid
//! (every character outside `[a-zA-Z0-9_]` becomes `_`, a leading digit gets
//! a `_` prefix); a tag without a value becomes the label value `"true"`.
//! DogStatsD events (`_e{`) and service checks (`_sc|`) are not metrics and
//! are dropped as `unsupported_type`.
//!
//! This listener must never let a sender grow the agent's memory without
//! bound, crash the agent, or silently lose data: every line is either
//! applied or counted in `nines_statsd_dropped_lines_total{reason}`, and
//! datagrams the kernel dropped before the listener read them (its
//! receive buffer was full) are counted there as
//! `reason="receive_buffer_full"`, one per datagram. It never sends
//! anything and never expires series (counters must stay cumulative while
//! the agent runs).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nines_shared::MetricKind;
use tokio::sync::watch;

use super::Samples;
use super::histogram::{Histogram, LATENCY_BUCKETS_SECONDS};

/// Where the listener receives datagrams unless configured otherwise:
/// StatsD's usual port, on loopback only, since the wire format has no
/// authentication.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8125));

/// Most distinct set members remembered per round across all sets. Past
/// it, set gauges stop growing until the next round: members are kept as
/// 8-byte hashes, so this bounds set memory to a few tens of MiB.
const SET_MEMBER_BUDGET: usize = 1_000_000;

/// How long the receive loop pauses after a socket error, so a persistent
/// error cannot spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Settings of the StatsD listener.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsdConfig {
    /// UDP address to receive on. Default [`DEFAULT_LISTEN`] (127.0.0.1:8125).
    pub listen: SocketAddr,
    /// Most Prometheus series kept (a histogram counts as its buckets plus
    /// `_sum` and `_count`, as that is what gets stored). Lines that would
    /// create more are dropped as `too_many_series`. Default 10 000.
    pub max_series: usize,
    /// Longest metric name, tag name or tag value accepted, in bytes; longer
    /// lines are dropped as `name_too_long`. Default 200.
    pub max_name_len: usize,
    /// Most tags on one line; lines with more are dropped as
    /// `too_many_tags`. Default 16.
    pub max_tags: usize,
    /// Largest datagram read whole; of a larger one only the lines ending
    /// within the limit are applied, and the rest is dropped as one
    /// `parse_error` line. Default 65 535.
    pub max_packet_bytes: usize,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            listen: DEFAULT_LISTEN,
            max_series: 10_000,
            max_name_len: 200,
            max_tags: 16,
            max_packet_bytes: 65_535,
        }
    }
}

/// The bound UDP socket plus the state it feeds. Create it at start (so a
/// port already in use stops the agent early), hand [`StatsdListener::state`]
/// to the sampling round, then spawn [`StatsdListener::run`].
#[derive(Debug)]
pub struct StatsdListener {
    socket: std::net::UdpSocket,
    state: StatsdState,
}

impl StatsdListener {
    /// Binds `cfg.listen`. Uses a std socket so that binding works outside
    /// a Tokio runtime; [`StatsdListener::run`] moves it onto Tokio.
    pub fn bind(cfg: StatsdConfig) -> Result<StatsdListener, io::Error> {
        let socket = std::net::UdpSocket::bind(cfg.listen)?;
        socket.set_nonblocking(true)?;
        match set_receive_buffer(&socket, RECEIVE_BUFFER_BYTES) {
            Ok(granted) => tracing::debug!(bytes = granted, "statsd receive buffer"),
            Err(e) => tracing::debug!(error = %e, "statsd receive buffer left at the default"),
        }
        let mut state = StatsdState::new(&cfg);
        // A second descriptor of the same socket, for the round to drain
        // and read the kernel's drop count from while the receive task
        // owns the first.
        state.socket = Some(Arc::new(socket.try_clone()?));
        Ok(StatsdListener { socket, state })
    }

    /// The address actually bound (useful when binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// A handle on the aggregated data, to sample from.
    pub fn state(&self) -> StatsdState {
        self.state.clone()
    }

    /// Receives datagrams and applies them until `stop` turns true (or its
    /// sender is dropped, as then nothing could ever stop us).
    ///
    /// While datagrams flow, the task sleeps for the pause [`Pacing`]
    /// sets, then reads every datagram queued, [`RECEIVE_BATCH`] per
    /// system call, under one lock of the state, and sleeps again: one
    /// wake-up per pause, however many bursts arrived during it. The
    /// socket is not registered with the runtime's poller meanwhile, so
    /// arrivals do not wake the thread either. Only when a drain finds
    /// nothing does the task register it and wait for it to turn readable
    /// (then it pauses before reading, as bursts come in several
    /// datagrams). The sampling round drains the socket too before it
    /// reports (see [`StatsdState::sample`]), so the pause never delays a
    /// value past the round after it was sent.
    ///
    /// Socket errors are logged and the loop goes on: StatsD is
    /// fire-and-forget, and one bad datagram must not end the listener.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut pacing = Pacing::new();
        // Whether the last drain found datagrams (more are likely on
        // their way) and whether it stopped at DRAIN_MAX with more
        // queued.
        let (mut flowing, mut capped) = (false, false);
        loop {
            if *stop.borrow() {
                return;
            }
            let ready_at = if flowing {
                None
            } else {
                let ready = tokio::select! {
                    changed = stop.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                    ready = readable(&self.socket) => ready,
                };
                if let Err(e) = ready {
                    tracing::warn!(error = %e, "statsd socket cannot be waited on");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                Some(Instant::now())
            };
            let pause = if capped {
                Duration::ZERO
            } else {
                pacing.pause()
            };
            if pause.is_zero() {
                // Heavy traffic: read on, but let other tasks run first.
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => continue,
                }
            }
            // A drain that goes on from a capped one says nothing of the
            // rate: what it finds gathered before the one just done.
            let measure = (!capped).then_some(&mut pacing);
            match self.state.drain_listener(&self.socket, ready_at, measure) {
                Ok(read) => {
                    flowing = read > 0;
                    capped = read >= DRAIN_MAX;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "statsd receive failed");
                    (flowing, capped) = (false, false);
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }
}

/// Waits until `socket` has a datagram queued. The socket is registered
/// with the runtime's poller only for the wait, so that datagrams that
/// arrive while the listener pauses do not wake the thread.
async fn readable(socket: &std::net::UdpSocket) -> io::Result<()> {
    use std::os::fd::{AsRawFd, RawFd};
    /// The socket's descriptor, borrowed for the wait.
    struct Borrowed(RawFd);
    impl AsRawFd for Borrowed {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    // SAFETY: the descriptor is the socket's, which `socket` keeps open
    // and unchanged until after the AsyncFd is dropped at the end of this
    // function.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            Borrowed(socket.as_raw_fd()),
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(io::Error::from)?;
    // Registering reports datagrams already queued at once.
    let mut guard = fd.readable().await?;
    // Nothing is read here: the drain reads, without the poller.
    guard.retain_ready();
    Ok(())
}

/// How long the listener lets datagrams gather in the socket's receive
/// buffer before it reads them, from how fast the buffer filled lately.
///
/// The policy: after each drain, the rate at which the buffer filled is
/// the kernel's count of buffer bytes queued (`SO_MEMINFO`: what the
/// datagrams really cost it, payload plus per-datagram overhead) over the
/// time since the last drain, the listener's or the round's (or since
/// the socket turned readable, if the listener had found it empty and
/// waited for it). The estimate is that rate, or
/// half the previous estimate if that is more, so it follows a rise at
/// once and a fall over a few drains. The next pause is the time the
/// estimate takes to fill a quarter of the buffer (`SO_RCVBUF` as
/// granted, which may be far below [`RECEIVE_BUFFER_BYTES`]), at most
/// [`PAUSE_MAX`]; under [`PAUSE_MIN`] there is no pause (the traffic is
/// heavy: each wake-up finds plenty to read anyway). A steady rate thus
/// keeps the buffer under a quarter full, and a rate that jumps fourfold
/// between two drains still fits in it. A jump from a low rate to one
/// that fills the buffer within [`PAUSE_MAX`] can overflow it once: the
/// kernel's drops are counted (`receive_buffer_full`), and the next pause
/// is short. The first pause is [`PAUSE_FIRST`], and a pause at most
/// doubles from one drain to the next.
///
/// StatsD values are only read once a sampling round, and the round
/// drains the socket itself first, so the pause costs no freshness.
#[derive(Debug)]
struct Pacing {
    /// Estimated rate the receive buffer fills at, in bytes per second.
    bytes_per_second: f64,
    /// The receive buffer's size as last read (`SO_RCVBUF`), in bytes.
    buffer_bytes: f64,
}

/// The longest pause: at low rates the listener wakes once per this span
/// while datagrams keep coming (its timer), and twice per quiet spell
/// (the datagram that makes the socket readable, then the timer).
const PAUSE_MAX: Duration = Duration::from_millis(250);

/// A pause shorter than this is not taken: a timer wake-up would cost
/// about what the reads it saves cost.
const PAUSE_MIN: Duration = Duration::from_millis(2);

/// The pause before the first drain, when no rate is known yet.
const PAUSE_FIRST: Duration = Duration::from_millis(20);

/// The part of the receive buffer a pause is sized to fill at the
/// estimated rate: a quarter.
const FILL_TARGET: f64 = 0.25;

impl Pacing {
    fn new() -> Self {
        // Any buffer size works here: the first estimate is set so that
        // it gives PAUSE_FIRST, and each drain reads the real size.
        let buffer_bytes = f64::from(RECEIVE_BUFFER_BYTES);
        Pacing {
            bytes_per_second: buffer_bytes * FILL_TARGET / PAUSE_FIRST.as_secs_f64(),
            buffer_bytes,
        }
    }

    /// The pause before the next drain.
    fn pause(&self) -> Duration {
        let seconds = self.buffer_bytes * FILL_TARGET / self.bytes_per_second;
        if seconds.is_nan() || seconds < PAUSE_MIN.as_secs_f64() {
            // Also a zero buffer: read at once.
            return Duration::ZERO;
        }
        Duration::from_secs_f64(seconds.min(PAUSE_MAX.as_secs_f64()))
    }

    /// Takes in what a drain found: `queued` bytes of the receive buffer
    /// (of `buffer` in all) used by datagrams that arrived over `window`.
    fn drained(&mut self, queued: u32, buffer: u32, window: Duration) {
        // A window too short to measure says the traffic is heavy.
        let seconds = window.as_secs_f64().max(1e-6);
        let rate = f64::from(queued) / seconds;
        self.bytes_per_second = rate.max(self.bytes_per_second / 2.0);
        if buffer > 0 {
            self.buffer_bytes = f64::from(buffer);
        }
    }
}

/// The receive buffer asked for: room for the datagrams of a pause at
/// high rates. With `CAP_NET_ADMIN` the kernel grants it whole
/// (`SO_RCVBUFFORCE`), otherwise at most its `net.core.rmem_max`
/// (often 208 KiB), which [`Pacing`] then sizes its pauses to.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;

/// Most datagrams one system call reads (`recvmmsg`). Each has a buffer
/// of `max_packet_bytes + 1` bytes, allocated on the first read; the
/// pages of one are only made resident as datagrams fill them.
const RECEIVE_BATCH: usize = 32;

/// Most datagrams read at one wake-up before the listener lets other
/// tasks run (it then reads on), and at most one sampling round reads.
const DRAIN_MAX: usize = 8 * RECEIVE_BATCH;

/// The aggregated StatsD data, shared between the receive task and the
/// sampling round. Cheap to clone (a shared handle).
#[derive(Debug, Clone)]
pub struct StatsdState {
    inner: Arc<Mutex<Intake>>,
    /// The listener's socket, which each round drains and reads the
    /// kernel's drop count of.
    socket: Option<Arc<std::net::UdpSocket>>,
}

/// What the receive task and the sampling round share under one lock:
/// the registry, the buffers datagrams are read into, and when they were
/// last read.
#[derive(Debug)]
struct Intake {
    registry: Registry,
    buffers: ReceiveBuffers,
    /// When a drain last ended, whoever ran it.
    last_drain: Option<Instant>,
}

impl StatsdState {
    /// Empty state with `cfg`'s limits (its `listen` is not used).
    pub fn new(cfg: &StatsdConfig) -> Self {
        StatsdState {
            inner: Arc::new(Mutex::new(Intake {
                registry: Registry::new(cfg),
                buffers: ReceiveBuffers::new(cfg.max_packet_bytes),
                last_drain: None,
            })),
            socket: None,
        }
    }

    /// Applies one datagram: each `\n`-separated line is applied or counted
    /// as dropped. Of a datagram over `max_packet_bytes`, what follows the
    /// last newline within the limit is dropped as one `parse_error` line.
    pub fn ingest(&self, packet: &[u8]) {
        self.lock().registry.ingest_packet(packet);
    }

    /// The listener's drain: reads and applies the datagrams queued on
    /// `socket` (up to [`DRAIN_MAX`]) under one lock, and tells `pacing`
    /// (if given) how full the buffer was for the time since the last
    /// drain (or since `ready_at`, when the socket turned readable after
    /// a drain that found nothing). Returns how many datagrams it read.
    fn drain_listener(
        &self,
        socket: &std::net::UdpSocket,
        ready_at: Option<Instant>,
        pacing: Option<&mut Pacing>,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let mut intake = self.lock();
        let now = Instant::now();
        let since = match (ready_at, intake.last_drain) {
            (Some(r), Some(d)) => Some(r.max(d)),
            (r, d) => r.or(d),
        };
        if let (Some(pacing), Some(since), Some(info)) = (pacing, since, meminfo(fd)) {
            pacing.drained(
                info[libc::SK_MEMINFO_RMEM_ALLOC as usize],
                info[libc::SK_MEMINFO_RCVBUF as usize],
                now.saturating_duration_since(since),
            );
        }
        let Intake {
            registry,
            buffers,
            last_drain,
        } = &mut *intake;
        let drained = buffers.drain(fd, registry);
        *last_drain = Some(Instant::now());
        drained
    }

    /// Reports the listener's own counters and every series' current
    /// cumulative value into `out`, after reading what the socket holds
    /// (up to [`DRAIN_MAX`] datagrams), so a round includes everything
    /// sent before it. Set gauges report the distinct members seen since
    /// the previous call and then start over, so exactly one sampling
    /// round should call this.
    pub fn sample(&self, out: &mut Samples) {
        let mut intake = self.lock();
        if let Some(socket) = self.socket.as_deref() {
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            let Intake {
                registry,
                buffers,
                last_drain,
            } = &mut *intake;
            if let Err(e) = buffers.drain(fd, registry) {
                tracing::warn!(error = %e, "statsd receive failed");
            }
            *last_drain = Some(Instant::now());
            if let Some(info) = meminfo(fd) {
                registry.note_kernel_drops(info[libc::SK_MEMINFO_DROPS as usize]);
            }
        }
        intake.registry.sample(out);
    }

    fn lock(&self) -> MutexGuard<'_, Intake> {
        // A panic while holding the lock cannot leave the registry half
        // updated in a way that matters more than losing all of it would.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Buffers that datagrams are read into, [`RECEIVE_BATCH`] at a time.
#[derive(Debug)]
struct ReceiveBuffers {
    /// [`RECEIVE_BATCH`] slots of `slot` bytes; empty until the first
    /// read.
    bytes: Vec<u8>,
    /// One byte more than the largest datagram read whole, to tell a
    /// datagram of exactly the limit from one the kernel cut to fit.
    slot: usize,
}

impl ReceiveBuffers {
    fn new(max_packet_bytes: usize) -> Self {
        ReceiveBuffers {
            bytes: Vec::new(),
            slot: max_packet_bytes.saturating_add(1),
        }
    }

    /// Reads and applies the datagrams queued on `fd`, up to
    /// [`DRAIN_MAX`]; how many it read. Stops at the first call that
    /// reads fewer than [`RECEIVE_BATCH`] (recvmmsg stops when the kernel
    /// has no more), so an empty queue costs no extra call.
    fn drain(&mut self, fd: std::os::fd::RawFd, registry: &mut Registry) -> io::Result<usize> {
        let mut read = 0;
        while read < DRAIN_MAX {
            match self.receive(fd, registry) {
                Ok(n) => {
                    read += n;
                    if n < RECEIVE_BATCH {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(read)
    }

    /// Reads up to [`RECEIVE_BATCH`] queued datagrams from `fd` with one
    /// `recvmmsg` call and applies each to `registry`; how many it read.
    /// `WouldBlock` when none was queued.
    fn receive(&mut self, fd: std::os::fd::RawFd, registry: &mut Registry) -> io::Result<usize> {
        if self.bytes.is_empty() {
            // Zeroed, so a large allocation (pages of its own) only
            // becomes resident where datagrams land.
            self.bytes = vec![0; self.slot.saturating_mul(RECEIVE_BATCH)];
        }
        // SAFETY: all-zero iovecs and mmsghdrs are valid (null pointers,
        // zero lengths); they are filled in below.
        let mut iovecs: [libc::iovec; RECEIVE_BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; RECEIVE_BATCH] = unsafe { std::mem::zeroed() };
        for ((iov, header), slot) in iovecs
            .iter_mut()
            .zip(headers.iter_mut())
            .zip(self.bytes.chunks_exact_mut(self.slot))
        {
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = slot.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each header points at one iovec, each iovec at a
        // distinct slot of `self.bytes` of the length it gives; all of
        // them live and are not otherwise used across the call, and the
        // count passed is the number of headers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                RECEIVE_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        for (header, slot) in headers
            .iter()
            .zip(self.bytes.chunks_exact(self.slot))
            .take(n)
        {
            // A datagram longer than the slot was cut to it (MSG_TRUNC):
            // it then has `max_packet_bytes + 1` bytes, which
            // `ingest_packet` treats as over the limit.
            let len = if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                slot.len()
            } else {
                header.msg_len as usize
            };
            registry.ingest_packet(slot.get(..len).unwrap_or(slot));
        }
        Ok(n)
    }
}

/// Why a line was not applied: the `reason` label of
/// `nines_statsd_dropped_lines_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum DropReason {
    #[error("parse_error")]
    ParseError,
    #[error("too_many_series")]
    TooManySeries,
    #[error("name_too_long")]
    NameTooLong,
    #[error("too_many_tags")]
    TooManyTags,
    #[error("unsupported_type")]
    UnsupportedType,
    /// The exposed name is already used by a series of another type (say a
    /// gauge `x` after a set `x`, or a counter `a_sum` beside a histogram
    /// `a`): Prometheus cannot hold both under one name.
    #[error("type_conflict")]
    TypeConflict,
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        DropReason::ParseError,
        DropReason::TooManySeries,
        DropReason::NameTooLong,
        DropReason::TooManyTags,
        DropReason::UnsupportedType,
        DropReason::TypeConflict,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::ParseError => "parse_error",
            DropReason::TooManySeries => "too_many_series",
            DropReason::NameTooLong => "name_too_long",
            DropReason::TooManyTags => "too_many_tags",
            DropReason::UnsupportedType => "unsupported_type",
            DropReason::TypeConflict => "type_conflict",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A StatsD type letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatsdType {
    Counter,
    Gauge,
    Timer,
    Histogram,
    Distribution,
    Set,
}

/// One value of a line, already checked for its type.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    /// A counter increment or a timer/histogram observation: finite, >= 0.
    Number(f64),
    /// A gauge's new value.
    GaugeSet(f64),
    /// A gauge delta (`+3`, `-2`).
    GaugeDelta(f64),
    /// A set member, as sent.
    Member(&'a str),
}

/// One parsed line, names and tags still raw.
#[derive(Debug, Clone, PartialEq)]
struct Line<'a> {
    name: &'a str,
    kind: StatsdType,
    values: Vec<Value<'a>>,
    /// In (0, 1]; 1 when absent.
    rate: f64,
    /// Tag name and value (`None` for a bare tag), in the order sent.
    tags: Vec<(&'a str, Option<&'a str>)>,
}

/// Parses one line (without its `\n`). Never panics; anything it does not
/// understand is an error with the reason to count.
fn parse_line(line: &str) -> Result<Line<'_>, DropReason> {
    if line.starts_with("_e{") || line.starts_with("_sc|") {
        return Err(DropReason::UnsupportedType);
    }
    let mut fields = line.split('|');
    let head = fields.next().unwrap_or_default();
    let (name, raw_values) = head.split_once(':').ok_or(DropReason::ParseError)?;
    if name.is_empty() {
        return Err(DropReason::ParseError);
    }
    let kind = match fields.next() {
        Some("c") => StatsdType::Counter,
        Some("g") => StatsdType::Gauge,
        Some("ms") => StatsdType::Timer,
        Some("h") => StatsdType::Histogram,
        Some("d") => StatsdType::Distribution,
        Some("s") => StatsdType::Set,
        None | Some("") => return Err(DropReason::ParseError),
        Some(_) => return Err(DropReason::UnsupportedType),
    };
    let mut rate = 1.0;
    let mut tags = Vec::new();
    // Fields after the type are told apart by their first character, as
    // DogStatsD adds new ones over time.
    for field in fields {
        if let Some(r) = field.strip_prefix('@') {
            rate = parse_rate(r)?;
        } else if let Some(list) = field.strip_prefix('#') {
            for tag in list.split(',').filter(|t| !t.is_empty()) {
                tags.push(match tag.split_once(':') {
                    Some((k, v)) => (k, Some(v)),
                    None => (tag, None),
                });
            }
        }
        // Anything else (`c:` container id, `T` timestamp, `e:` external
        // data) carries nothing we expose; ignoring it keeps newer clients'
        // metrics flowing.
    }
    let values = raw_values
        .split(':')
        .map(|v| parse_value(kind, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Line {
        name,
        kind,
        values,
        rate,
        tags,
    })
}

/// Parses a sample rate (after its `@`): in (0, 1].
fn parse_rate(r: &str) -> Result<f64, DropReason> {
    r.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1.0)
        .ok_or(DropReason::ParseError)
}

/// Parses one value for `kind`.
fn parse_value(kind: StatsdType, v: &str) -> Result<Value<'_>, DropReason> {
    if v.is_empty() {
        return Err(DropReason::ParseError);
    }
    let number = |s: &str| {
        plain_decimal(s)
            .or_else(|| s.parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .ok_or(DropReason::ParseError)
    };
    match kind {
        StatsdType::Set => Ok(Value::Member(v)),
        StatsdType::Gauge => {
            // A sign makes a gauge value a delta; "+-3" is not a number.
            let (sign, rest) = match v.as_bytes().first() {
                Some(b'+') => (Some(1.0), &v[1..]),
                Some(b'-') => (Some(-1.0), &v[1..]),
                _ => (None, v),
            };
            if sign.is_some() && rest.starts_with(['+', '-']) {
                return Err(DropReason::ParseError);
            }
            let x = number(rest)?;
            Ok(match sign {
                Some(s) => Value::GaugeDelta(s * x),
                None => Value::GaugeSet(x),
            })
        }
        // Counters must never decrease, and timings and sizes below zero
        // would make `_sum` go backwards; both are refused.
        _ => {
            let x = number(v)?;
            if x < 0.0 {
                return Err(DropReason::ParseError);
            }
            Ok(Value::Number(x))
        }
    }
}

/// Powers of ten that are exact as f64.
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The value of `s` when it is digits with at most one `.` among them
/// and at most 15 digits in all (`42`, `12.5`, `.5`, `3.`), the shapes
/// StatsD values mostly take; `None` for anything else, which
/// `str::parse` then reads. The digits make an integer below 2^53 and
/// the divisor is a power of ten up to 10^15, both exact as f64, so the
/// one division is correctly rounded: the same value `str::parse` gives,
/// for far fewer instructions.
fn plain_decimal(s: &str) -> Option<f64> {
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut fraction: Option<usize> = None;
    for &b in s.as_bytes() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                digits += 1;
                if let Some(f) = fraction.as_mut() {
                    *f += 1;
                }
            }
            b'.' if fraction.is_none() => fraction = Some(0),
            _ => return None,
        }
        if digits > 15 {
            return None;
        }
    }
    if digits == 0 {
        return None;
    }
    let scale = POWERS_OF_TEN.get(fraction.unwrap_or(0))?;
    Some(mantissa as f64 / scale)
}

/// Makes `raw` a valid Prometheus metric or label name: every character
/// outside `[a-zA-Z0-9_]` becomes `_` and a leading digit gets a `_`
/// prefix. Empty in, empty out.
#[cfg(test)]
fn sanitize(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len() + 1);
    sanitize_into(raw, &mut s);
    s
}

/// [`sanitize`] into `s` (cleared first), reusing its allocation.
fn sanitize_into(raw: &str, s: &mut String) {
    s.clear();
    if raw.starts_with(|c: char| c.is_ascii_digit()) {
        s.push('_');
    }
    s.extend(raw.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
}

/// What an exposed family is, which decides its name, type and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeriesKind {
    Counter,
    Gauge,
    Set,
    /// `ms`, exposed in seconds.
    Timer,
    /// `h` and `d`, exposed as sent.
    Histogram,
}

impl SeriesKind {
    fn of(t: StatsdType) -> Self {
        match t {
            StatsdType::Counter => SeriesKind::Counter,
            StatsdType::Gauge => SeriesKind::Gauge,
            StatsdType::Set => SeriesKind::Set,
            StatsdType::Timer => SeriesKind::Timer,
            StatsdType::Histogram | StatsdType::Distribution => SeriesKind::Histogram,
        }
    }

    /// The family name for a sanitized StatsD name, into `family`
    /// (cleared first). A suffix the name already has is not added twice
    /// (`requests_total` stays as it is).
    fn family_name_into(self, name: &str, family: &mut String) {
        let suffix = match self {
            SeriesKind::Counter => "_total",
            SeriesKind::Timer => "_seconds",
            _ => "",
        };
        family.clear();
        family.push_str(name);
        if !name.ends_with(suffix) {
            family.push_str(suffix);
        }
    }

    fn is_histogram(self) -> bool {
        matches!(self, SeriesKind::Timer | SeriesKind::Histogram)
    }

    /// The sample names a family of this kind writes.
    fn sample_names(self, family: &str) -> Vec<String> {
        if self.is_histogram() {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{family}{s}"))
                .chain(std::iter::once(family.to_string()))
                .collect()
        } else {
            vec![family.to_string()]
        }
    }

    /// Prometheus series one series of this kind costs.
    fn cost(self) -> usize {
        if self.is_histogram() {
            LATENCY_BUCKETS_SECONDS.len() + 3
        } else {
            1
        }
    }

    fn metric_kind(self) -> MetricKind {
        match self {
            SeriesKind::Counter => MetricKind::Counter,
            SeriesKind::Gauge | SeriesKind::Set => MetricKind::Gauge,
            SeriesKind::Timer | SeriesKind::Histogram => MetricKind::Histogram,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            SeriesKind::Timer => "seconds",
            _ => "",
        }
    }

    fn help(self) -> &'static str {
        match self {
            SeriesKind::Counter => {
                "StatsD counter (type c): increments received since the agent started, each scaled by 1/sample rate."
            }
            SeriesKind::Gauge => {
                "StatsD gauge (type g): the last value set, plus any deltas since."
            }
            SeriesKind::Set => {
                "StatsD set (type s): distinct members received during the last sampling round."
            }
            SeriesKind::Timer => {
                "StatsD timer (type ms) in seconds, since the agent started; sampled timings count 1/rate times."
            }
            SeriesKind::Histogram => {
                "DogStatsD histogram or distribution (type h or d) in the sender's unit, since the agent started."
            }
        }
    }
}

/// The current value of one series.
#[derive(Debug)]
enum SeriesValue {
    Counter(f64),
    Gauge(f64),
    /// Hashes of the members seen this round: fixed size per member
    /// whatever the sender puts in a member.
    Set(HashSet<u64>),
    /// Not boxed: a timer line then reaches its counts through one
    /// pointer fewer, which matters when they are not in the CPU's cache
    /// (lines of one series arrive far apart).
    Histogram(Histogram),
}

/// A label set: sanitized names, sorted, unique.
type LabelSet = Vec<(String, String)>;

#[derive(Debug)]
struct Family {
    kind: SeriesKind,
    /// Each series' index in [`Registry::values`].
    series: BTreeMap<LabelSet, usize>,
}

/// How a line's name, type and tags were resolved before: which series
/// they write and the type its values are parsed as.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    series: usize,
    kind: StatsdType,
}

/// Most lines' resolution kept in [`Registry::resolved`] (and never more
/// than twice `max_series`); past it, lines of new shapes take the full
/// path every time.
const RESOLVED_MAX_ENTRIES: usize = 20_000;

/// Longest resolution key kept: a line whose name, type and tags take
/// more bytes takes the full path every time.
const RESOLVED_MAX_KEY: usize = 256;

/// The listener's own counters.
const PACKETS: &str = "nines_statsd_packets_total";
const LINES: &str = "nines_statsd_lines_total";
const DROPPED: &str = "nines_statsd_dropped_lines_total";
/// The `reason` of datagrams the kernel dropped (their lines are unknown).
const KERNEL_DROPS: &str = "receive_buffer_full";

/// Everything received so far, plus the listener's own counters.
#[derive(Debug)]
struct Registry {
    max_series: usize,
    max_name_len: usize,
    max_tags: usize,
    max_packet_bytes: usize,
    /// By family name, so rounds report in a stable order.
    families: BTreeMap<String, Family>,
    /// Every series' value, by the index its family holds. Series never
    /// go away, so an index stays valid.
    values: Vec<SeriesValue>,
    /// A line's name, `|`, type and its `#` tag fields as sent, to the
    /// series it writes: a line of a shape seen before (the usual line)
    /// is applied with one hash lookup, without sanitising its names,
    /// building its label set or searching the families. Only lines that
    /// were applied are here, and a key holds everything the checks
    /// before the values look at, so a line found here passes them again.
    resolved: HashMap<ResolutionKey, Resolved, KeyHashing>,
    /// Most entries `resolved` may hold ([`RESOLVED_MAX_ENTRIES`]).
    resolved_max: usize,
    /// Every sample name in use (and the listener's own), so that two
    /// families never write the same name.
    owners: HashSet<String>,
    /// Prometheus series held (see [`StatsdConfig::max_series`]).
    series: usize,
    /// Set members remembered this round, across all sets.
    set_members: usize,
    packets: u64,
    lines: u64,
    dropped: [u64; DropReason::ALL.len()],
    /// Datagrams the kernel dropped before the listener read them, and
    /// the kernel's own 32-bit count when last read.
    kernel_dropped: u64,
    kernel_count: Option<u32>,
    /// The resolution key of the line being applied, kept between lines
    /// so that building it allocates nothing.
    key: Vec<u8>,
    /// Buffers a line's names are built in, kept between lines so a line
    /// for a series that exists allocates nothing for them.
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    name: String,
    family: String,
    labels: LabelSet,
}

impl Registry {
    fn new(cfg: &StatsdConfig) -> Self {
        let owners = [PACKETS, LINES, DROPPED]
            .iter()
            .map(|n| n.to_string())
            .collect();
        Registry {
            max_series: cfg.max_series,
            max_name_len: cfg.max_name_len,
            max_tags: cfg.max_tags,
            max_packet_bytes: cfg.max_packet_bytes,
            families: BTreeMap::new(),
            values: Vec::new(),
            resolved: HashMap::with_hasher(KeyHashing::new()),
            resolved_max: RESOLVED_MAX_ENTRIES.min(cfg.max_series.saturating_mul(2)),
            owners,
            series: 0,
            set_members: 0,
            packets: 0,
            lines: 0,
            dropped: [0; DropReason::ALL.len()],
            kernel_dropped: 0,
            kernel_count: None,
            key: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    fn ingest_packet(&mut self, packet: &[u8]) {
        self.packets += 1;
        // Past the limit, only the lines that end within it are whole; the
        // rest (one line cut short, perhaps more) counts as one bad line.
        let (whole, cut) = if packet.len() > self.max_packet_bytes {
            let within = packet.get(..self.max_packet_bytes).unwrap_or(packet);
            let end = within
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            packet.split_at(end)
        } else {
            (packet, &[][..])
        };
        let mut rest = whole;
        while !rest.is_empty() {
            let (piece, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            rest = next;
            let piece = piece.trim_ascii();
            if piece.is_empty() {
                // Trailing newlines and blank lines are framing, not lines.
                continue;
            }
            self.lines += 1;
            let applied = std::str::from_utf8(piece)
                .map_err(|_| DropReason::ParseError)
                .and_then(|line| self.apply_line(line));
            if let Err(reason) = applied {
                self.drop_line(reason, piece);
            }
        }
        if !cut.trim_ascii().is_empty() {
            self.lines += 1;
            self.drop_line(DropReason::ParseError, cut);
        }
    }

    /// Takes the kernel's drop count of the socket (it wraps at 2^32).
    fn note_kernel_drops(&mut self, now: u32) {
        let before = self.kernel_count.replace(now).unwrap_or(0);
        let new = now.wrapping_sub(before);
        if new > 0 && self.kernel_dropped == 0 {
            tracing::warn!(
                datagrams = new,
                "statsd: the kernel dropped datagrams before the agent read them \
                 (the socket's receive buffer was full); counted in \
                 nines_statsd_dropped_lines_total{{reason=\"{KERNEL_DROPS}\"}}"
            );
        }
        self.kernel_dropped += u64::from(new);
    }

    fn drop_line(&mut self, reason: DropReason, line: &[u8]) {
        self.dropped[reason.index()] += 1;
        tracing::trace!(%reason, line = %String::from_utf8_lossy(line), "statsd line dropped");
    }

    fn apply_line(&mut self, line: &str) -> Result<(), DropReason> {
        let shape = resolution_key(line, &mut self.key);
        if let Some(shape) = shape {
            if let Some(&resolved) = self.resolved.get(self.key.as_slice()) {
                return self.apply_resolved(resolved, shape);
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let applied = self.apply_parsed(line, &mut scratch);
        self.scratch = scratch;
        let resolved = applied?;
        if shape.is_some()
            && self.resolved.len() < self.resolved_max
            && self.key.len() <= RESOLVED_MAX_KEY
        {
            self.resolved
                .insert(ResolutionKey::new(&self.key), resolved);
        }
        Ok(())
    }

    /// Applies a line whose name, type and tags resolved to a series
    /// before: only its rate and values are left to check, as
    /// [`parse_line`] checks them.
    fn apply_resolved(&mut self, resolved: Resolved, shape: Shape<'_>) -> Result<(), DropReason> {
        let mut rate = 1.0;
        if shape.fields.as_bytes().contains(&b'@') {
            for field in shape.fields.split('|') {
                if let Some(r) = field.strip_prefix('@') {
                    rate = parse_rate(r)?;
                }
            }
        }
        let kind = SeriesKind::of(resolved.kind);
        let Some(series) = self.values.get_mut(resolved.series) else {
            // Cannot happen: series are never removed.
            return Err(DropReason::ParseError);
        };
        if !shape.values.as_bytes().contains(&b':') {
            let v = parse_value(resolved.kind, shape.values)?;
            apply_value(series, &v, kind, rate, &mut self.set_members);
            return Ok(());
        }
        // Every value is checked before any is applied: a line is applied
        // whole or dropped whole.
        for v in shape.values.split(':') {
            parse_value(resolved.kind, v)?;
        }
        for v in shape.values.split(':') {
            let v = parse_value(resolved.kind, v)?;
            apply_value(series, &v, kind, rate, &mut self.set_members);
        }
        Ok(())
    }

    /// Parses and checks a whole line, creating its series if need be,
    /// and applies it; how the line resolved.
    fn apply_parsed(&mut self, line: &str, scratch: &mut Scratch) -> Result<Resolved, DropReason> {
        let line = parse_line(line)?;
        let too_long = |s: &str| s.len() > self.max_name_len;
        if too_long(line.name)
            || line
                .tags
                .iter()
                .any(|(k, v)| too_long(k) || v.is_some_and(too_long))
        {
            return Err(DropReason::NameTooLong);
        }
        if line.tags.len() > self.max_tags {
            return Err(DropReason::TooManyTags);
        }
        sanitize_into(line.name, &mut scratch.name);
        if scratch.name.starts_with("__") {
            // Reserved for Prometheus's own use.
            return Err(DropReason::ParseError);
        }
        let kind = SeriesKind::of(line.kind);
        kind.family_name_into(&scratch.name, &mut scratch.family);
        let family = scratch.family.as_str();
        label_set_into(&line.tags, kind, &mut scratch.labels);
        let labels = &scratch.labels;
        let existing = self
            .families
            .get(family)
            .filter(|f| f.kind == kind)
            .and_then(|f| f.series.get(labels))
            .copied();
        let series = match existing {
            Some(i) => i,
            None => {
                self.claim(family, kind)?;
                if self.series + kind.cost() > self.max_series {
                    return Err(DropReason::TooManySeries);
                }
                self.series += kind.cost();
                self.owners.extend(kind.sample_names(family));
                let i = self.values.len();
                self.values.push(match kind {
                    SeriesKind::Counter => SeriesValue::Counter(0.0),
                    SeriesKind::Gauge => SeriesValue::Gauge(0.0),
                    SeriesKind::Set => SeriesValue::Set(HashSet::new()),
                    SeriesKind::Timer | SeriesKind::Histogram => {
                        SeriesValue::Histogram(Histogram::latency())
                    }
                });
                self.families
                    .entry(family.to_string())
                    .or_insert_with(|| Family {
                        kind,
                        series: BTreeMap::new(),
                    })
                    .series
                    .insert(labels.clone(), i);
                i
            }
        };
        if let Some(value) = self.values.get_mut(series) {
            for v in &line.values {
                apply_value(value, v, kind, line.rate, &mut self.set_members);
            }
        }
        Ok(Resolved {
            series,
            kind: line.kind,
        })
    }

    /// Checks that `family` of `kind` may be written: either it exists with
    /// that kind, or none of its sample names is taken by another family.
    fn claim(&self, family: &str, kind: SeriesKind) -> Result<(), DropReason> {
        if let Some(f) = self.families.get(family) {
            return if f.kind == kind {
                Ok(())
            } else {
                Err(DropReason::TypeConflict)
            };
        }
        // The family does not exist, so any owner of its names is another.
        if kind
            .sample_names(family)
            .iter()
            .any(|n| self.owners.contains(n))
        {
            return Err(DropReason::TypeConflict);
        }
        Ok(())
    }

    fn sample(&mut self, out: &mut Samples) {
        out.family(
            PACKETS,
            MetricKind::Counter,
            "StatsD datagrams received by the agent.",
            "",
        );
        out.push(PACKETS, &[], self.packets as f64);
        out.family(
            LINES,
            MetricKind::Counter,
            "StatsD lines received by the agent, applied or dropped.",
            "",
        );
        out.push(LINES, &[], self.lines as f64);
        out.family(
            DROPPED,
            MetricKind::Counter,
            "StatsD lines the agent did not apply, by reason; receive_buffer_full counts \
             datagrams the kernel dropped before the agent read them, whose lines it never saw.",
            "",
        );
        for r in DropReason::ALL {
            out.push(
                DROPPED,
                &[("reason", r.label())],
                self.dropped[r.index()] as f64,
            );
        }
        out.push(
            DROPPED,
            &[("reason", KERNEL_DROPS)],
            self.kernel_dropped as f64,
        );

        // One label list for every series, refilled for each.
        let mut labels: Vec<(&str, &str)> = Vec::new();
        for (name, family) in &self.families {
            let kind = family.kind;
            out.family(name, kind.metric_kind(), kind.help(), kind.unit());
            for (set, &i) in &family.series {
                let Some(value) = self.values.get_mut(i) else {
                    continue;
                };
                labels.clear();
                labels.extend(set.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                match value {
                    SeriesValue::Counter(c) => out.push(name, &labels, *c),
                    SeriesValue::Gauge(g) => out.push(name, &labels, *g),
                    SeriesValue::Set(members) => {
                        out.push(name, &labels, members.len() as f64);
                        // A set counts distinct members per round.
                        members.clear();
                    }
                    SeriesValue::Histogram(h) => h.report(out, name, &labels),
                }
            }
        }
        self.set_members = 0;
    }
}

/// Applies one value of a line sent at `rate` to its series;
/// `set_members` counts set members remembered this round, across all
/// sets.
fn apply_value(
    series: &mut SeriesValue,
    v: &Value<'_>,
    kind: SeriesKind,
    rate: f64,
    set_members: &mut usize,
) {
    match (series, v) {
        (SeriesValue::Counter(c), Value::Number(x)) => *c += x / rate,
        (SeriesValue::Gauge(g), Value::GaugeSet(x)) => *g = *x,
        (SeriesValue::Gauge(g), Value::GaugeDelta(d)) => *g += d,
        (SeriesValue::Set(members), Value::Member(m)) => {
            // Past the budget the set stops growing until the round
            // ends, rather than memory.
            let room = *set_members < SET_MEMBER_BUDGET;
            *set_members += usize::from(room && members.insert(hash(m)));
        }
        (SeriesValue::Histogram(h), Value::Number(x)) => {
            let x = if kind == SeriesKind::Timer {
                x / 1000.0
            } else {
                *x
            };
            // A sampled event stands for 1/rate events; histograms count
            // whole observations, so at least one.
            let times = if rate == 1.0 {
                1
            } else {
                (1.0 / rate).round().max(1.0) as u64
            };
            h.observe_n(x, times);
        }
        // Cannot happen: parse_value only yields values of the line's
        // type, and `claim` only lets a line into a family of its own
        // kind.
        _ => {}
    }
}

/// A line split as [`resolution_key`] splits it.
#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    /// What follows the name up to the first `|`: the values.
    values: &'a str,
    /// The fields after the type, `|`-separated.
    fields: &'a str,
}

/// Writes into `key` what decides which series a line writes and whether
/// its name and tags pass the checks: the name, `|`, the type and each
/// `#` field with its `|`, as sent (none of them can hold a `|`, so two
/// lines have one key only if all of those are equal). `None` for a line
/// without a name, values and type, which only the full parse judges.
fn resolution_key<'a>(line: &'a str, key: &mut Vec<u8>) -> Option<Shape<'a>> {
    let bytes = line.as_bytes();
    // All the separators are ASCII, so each index is a char boundary.
    let bar = bytes.iter().position(|&b| b == b'|')?;
    let colon = bytes[..bar].iter().position(|&b| b == b':')?;
    let kind_end = bytes[bar + 1..]
        .iter()
        .position(|&b| b == b'|')
        .map_or(bytes.len(), |i| bar + 1 + i);
    key.clear();
    key.extend_from_slice(&bytes[..colon]);
    key.extend_from_slice(&bytes[bar..kind_end]);
    let fields = line.get(kind_end + 1..).unwrap_or_default();
    if !fields.is_empty() {
        for field in fields.as_bytes().split(|&b| b == b'|') {
            if field.first() == Some(&b'#') {
                key.push(b'|');
                key.extend_from_slice(field);
            }
        }
    }
    Some(Shape {
        values: &line[colon + 1..bar],
        fields,
    })
}

/// Longest resolution key held in a [`Registry::resolved`] entry itself;
/// longer ones are held on the heap. Most keys (a name, a type and a tag
/// or two) fit, so a lookup compares bytes that sit next to the entry
/// rather than behind a pointer, which matters when the table is not in
/// the CPU's cache (bursts come a hundred milliseconds apart or more).
const INLINE_KEY_BYTES: usize = 46;

/// A key of [`Registry::resolved`]: the bytes [`resolution_key`] builds.
/// Hashes and compares as those bytes.
#[derive(Debug, Clone)]
enum ResolutionKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl ResolutionKey {
    fn new(key: &[u8]) -> Self {
        if key.len() > INLINE_KEY_BYTES {
            return ResolutionKey::Heap(key.into());
        }
        let mut bytes = [0; INLINE_KEY_BYTES];
        bytes[..key.len()].copy_from_slice(key);
        ResolutionKey::Inline {
            len: key.len() as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            ResolutionKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            ResolutionKey::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for ResolutionKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for ResolutionKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ResolutionKey {}

impl Hash for ResolutionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the bytes hash, so that a lookup by `&[u8]` finds it.
        self.as_bytes().hash(state);
    }
}

/// The hashing of [`Registry::resolved`]'s keys: a multiply-and-fold
/// over 8-byte words, keyed with random seeds drawn per registry. It is
/// several times cheaper than the standard library's SipHash on keys of
/// a few dozen bytes; keys come from processes on this host, and the
/// seeds keep those from choosing keys that collide.
#[derive(Debug, Clone, Copy)]
struct KeyHashing {
    seed: u64,
    key: u64,
}

impl KeyHashing {
    fn new() -> Self {
        use std::hash::BuildHasher;
        // The standard library's random per-map keys, as seeds.
        let random = std::collections::hash_map::RandomState::new();
        KeyHashing {
            seed: random.hash_one(1u64),
            key: random.hash_one(2u64),
        }
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            state: self.seed,
            key: self.key,
        }
    }
}

/// One hash of [`KeyHashing`].
#[derive(Debug)]
struct KeyHasher {
    state: u64,
    key: u64,
}

/// Odd constants (digits of pi) that keep a zero state or word from
/// zeroing a product.
const HASH_MIX: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7345];

/// The 128-bit product of `a` and `b`, its halves xored: every bit of
/// either input reaches every bit of the result.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl KeyHasher {
    fn mix(&mut self, word: u64) {
        self.state = folded_multiply(word ^ self.key, self.state ^ HASH_MIX[0]);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.mix(u64::from_le_bytes(word));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            // Zero-padded; the length, hashed first by `[u8]`'s Hash,
            // tells "a" from "a\0".
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        folded_multiply(self.state, HASH_MIX[1])
    }
}

/// Builds the label set of a line's tags into `set` (reusing the strings
/// it holds): sanitized names, bare tags
/// valued `"true"`, reserved (`__`) and empty names or values left out,
/// the first of repeated names kept. Names the agent sets itself
/// (`instance`, `job`, and `le` on histograms) become `exported_<name>`,
/// as Prometheus renames clashing target labels, so a sender cannot
/// impersonate another host.
fn label_set_into(tags: &[(&str, Option<&str>)], kind: SeriesKind, set: &mut LabelSet) {
    let mut n = 0;
    for &(k, v) in tags {
        let value = v.unwrap_or("true");
        if value.is_empty() {
            continue;
        }
        if set.len() == n {
            set.push(Default::default());
        }
        let name = &mut set[n].0;
        sanitize_into(k, name);
        if name.is_empty() || name.starts_with("__") {
            continue;
        }
        if name == "instance" || name == "job" || (name == "le" && kind.is_histogram()) {
            name.insert_str(0, "exported_");
        }
        if set[..n].iter().all(|(other, _)| *other != set[n].0) {
            let val = &mut set[n].1;
            val.clear();
            val.push_str(value);
            n += 1;
        }
    }
    set.truncate(n);
    set.sort();
}

/// Asks for a receive buffer of `bytes`: whole if the process may
/// (`SO_RCVBUFFORCE`, with `CAP_NET_ADMIN`), else capped by the kernel at
/// `net.core.rmem_max` (`SO_RCVBUF`). Returns the size granted, as the
/// kernel counts it (twice the payload asked for, to cover overhead).
fn set_receive_buffer(socket: &std::net::UdpSocket, bytes: libc::c_int) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let set = |option| {
        // SAFETY: the descriptor is open for the call, and the option
        // value is a c_int living across it, of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))?;
    Ok(meminfo(socket.as_raw_fd()).map_or(0, |info| info[libc::SK_MEMINFO_RCVBUF as usize]))
}

/// The kernel's memory figures of the socket `fd` (`SO_MEMINFO`, indexed
/// by `SK_MEMINFO_*`): bytes queued for reading, the receive buffer's
/// size, datagrams dropped since it was opened (mostly for want of room
/// in that buffer; the count wraps at 2^32), and more. `None` where the
/// kernel does not give them all.
fn meminfo(fd: std::os::fd::RawFd) -> Option<[u32; 16]> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the buffer and its length are valid for writing; the kernel
    // writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let drops = libc::SK_MEMINFO_DROPS as usize;
    (rc == 0 && len as usize >= (drops + 1) * 4).then_some(info)
}

/// A set member's fingerprint. Collisions (2^-64 per pair) would only
/// undercount a set by one.
fn hash(member: &str) -> u64 {
    let mut h = DefaultHasher::new();
    member.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
