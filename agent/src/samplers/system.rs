//! System sampler: the host health signals beyond CPU, memory and
//! filesystems — block device I/O (/proc/diskstats), pressure stall
//! information (/proc/pressure), file handle use (/proc/sys/fs/file-nr),
//! the kernel's IP/TCP/UDP/ICMP counters (/proc/net/snmp, /proc/net/netstat,
//! /proc/net/snmp6) and the NTP discipline of the kernel clock
//! (`adjtimex(2)`), under node_exporter 1.5's metric names, types, labels
//! and units so that existing dashboards and alert rules work unchanged.
//!
//! Files are read relative to a root directory (normally `/`) so tests can
//! point the sampler at a fixture tree; the kernel clock is a system call
//! and not a file, so it can be switched off for fixture tests.
//!
//! This file must never write to the system (`adjtimex` is called with
//! `modes == 0`, which only reads), spawn threads or processes, or panic on
//! anything the kernel (or a fixture) hands it; and one unreadable source
//! must never hide the others. Context switches and forks come from
//! [`super::host::HostSampler`] and must not be reported here as well.

use std::io;
use std::mem::MaybeUninit;
use std::path::PathBuf;

use nines_shared::{MetricKind, is_valid_metric_name};

use super::proc_file::ProcFile;
use super::{Family, SampleError, Samples, counter, gauge};

/// The unit of the sector counts in /proc/diskstats: always 512 bytes,
/// whatever the device's real sector size (block/stat.rst).
const DISKSTATS_SECTOR_BYTES: f64 = 512.0;

/// Statistics columns every kernel since 2.6 prints for a whole disk (the
/// line has 14 fields with major, minor and name).
const DISK_BASE_STATS: usize = 11;
/// With the four discard columns of kernel 4.18+ (18 fields).
const DISK_DISCARD_STATS: usize = 15;
/// With the two flush columns of kernel 5.5+ (20 fields).
const DISK_FLUSH_STATS: usize = 17;

/// How a /proc/diskstats column becomes a reported value.
#[derive(Clone, Copy)]
enum Scale {
    /// Reported as counted.
    Count,
    /// 512-byte sectors, reported in bytes.
    Sectors,
    /// Milliseconds, reported in seconds.
    Millis,
}

impl Scale {
    fn apply(self, raw: u64) -> f64 {
        let raw = raw as f64;
        match self {
            Scale::Count => raw,
            Scale::Sectors => raw * DISKSTATS_SECTOR_BYTES,
            // Divide rather than multiply by 0.001 so that whole
            // milliseconds give the correctly rounded number of seconds.
            Scale::Millis => raw / 1000.0,
        }
    }
}

/// One family per /proc/diskstats statistics column, in column order
/// (Documentation/admin-guide/iostats.rst and block/stat.rst).
const DISK_COLUMNS: [(Family, Scale); DISK_FLUSH_STATS] = [
    (
        counter(
            "node_disk_reads_completed_total",
            "",
            "Reads completed successfully by the block device.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_reads_merged_total",
            "",
            "Adjacent reads merged into one by the block device's queue.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_read_bytes_total",
            "bytes",
            "Bytes read successfully from the block device.",
        ),
        Scale::Sectors,
    ),
    (
        counter(
            "node_disk_read_time_seconds_total",
            "seconds",
            "Time all reads from the block device took, in seconds.",
        ),
        Scale::Millis,
    ),
    (
        counter(
            "node_disk_writes_completed_total",
            "",
            "Writes completed successfully by the block device.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_writes_merged_total",
            "",
            "Adjacent writes merged into one by the block device's queue.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_written_bytes_total",
            "bytes",
            "Bytes written successfully to the block device.",
        ),
        Scale::Sectors,
    ),
    (
        counter(
            "node_disk_write_time_seconds_total",
            "seconds",
            "Time all writes to the block device took, in seconds.",
        ),
        Scale::Millis,
    ),
    (
        gauge(
            "node_disk_io_now",
            "",
            "I/O requests currently in flight on the block device.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_io_time_seconds_total",
            "seconds",
            "Time the block device had I/O in flight, in seconds.",
        ),
        Scale::Millis,
    ),
    (
        counter(
            "node_disk_io_time_weighted_seconds_total",
            "seconds",
            "I/O time of the block device weighted by the requests in flight, in seconds.",
        ),
        Scale::Millis,
    ),
    (
        counter(
            "node_disk_discards_completed_total",
            "",
            "Discards completed successfully by the block device.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_discards_merged_total",
            "",
            "Adjacent discards merged into one by the block device's queue.",
        ),
        Scale::Count,
    ),
    (
        // node_exporter reports this one in sectors, not bytes.
        counter(
            "node_disk_discarded_sectors_total",
            "",
            "512-byte sectors discarded successfully on the block device.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_discard_time_seconds_total",
            "seconds",
            "Time all discards on the block device took, in seconds.",
        ),
        Scale::Millis,
    ),
    (
        counter(
            "node_disk_flush_requests_total",
            "",
            "Flush requests completed successfully by the block device.",
        ),
        Scale::Count,
    ),
    (
        counter(
            "node_disk_flush_requests_time_seconds_total",
            "seconds",
            "Time all flush requests on the block device took, in seconds.",
        ),
        Scale::Millis,
    ),
];

/// /proc/pressure files and the families of their "some" and "full" lines.
/// node_exporter 1.5 reports no "full" line for the CPU (it is all zeros at
/// the system level and only exists since 5.13).
const PRESSURE: [(&str, Family, Option<Family>); 3] = [
    (
        "cpu",
        counter(
            "node_pressure_cpu_waiting_seconds_total",
            "seconds",
            "Time at least some runnable tasks waited for a CPU, in seconds.",
        ),
        None,
    ),
    (
        "memory",
        counter(
            "node_pressure_memory_waiting_seconds_total",
            "seconds",
            "Time at least some tasks were stalled waiting for memory, in seconds.",
        ),
        Some(counter(
            "node_pressure_memory_stalled_seconds_total",
            "seconds",
            "Time all non-idle tasks were stalled waiting for memory at once, in seconds.",
        )),
    ),
    (
        "io",
        counter(
            "node_pressure_io_waiting_seconds_total",
            "seconds",
            "Time at least some tasks were stalled waiting for I/O, in seconds.",
        ),
        Some(counter(
            "node_pressure_io_stalled_seconds_total",
            "seconds",
            "Time all non-idle tasks were stalled waiting for I/O at once, in seconds.",
        )),
    ),
];

const FILEFD_ALLOCATED: Family = gauge(
    "node_filefd_allocated",
    "",
    "File handles the kernel has allocated.",
);
const FILEFD_MAXIMUM: Family = gauge(
    "node_filefd_maximum",
    "",
    "Most file handles the kernel will allocate (fs.file-max).",
);

const TIMEX_SYNC_STATUS: Family = gauge(
    "node_timex_sync_status",
    "",
    "1 if the kernel clock is synchronized to a reliable time source, else 0.",
);
const TIMEX_OFFSET: Family = gauge(
    "node_timex_offset_seconds",
    "seconds",
    "Time offset between the kernel clock and its time source, in seconds.",
);
const TIMEX_MAXERROR: Family = gauge(
    "node_timex_maxerror_seconds",
    "seconds",
    "Maximum error of the kernel clock, in seconds.",
);
const TIMEX_ESTERROR: Family = gauge(
    "node_timex_estimated_error_seconds",
    "seconds",
    "Estimated error of the kernel clock, in seconds.",
);

/// Samples disk I/O, pressure stalls, file handles, network protocol
/// counters and the kernel clock of the host whose /proc is found under a
/// root directory, in node_exporter 1.5's vocabulary.
#[derive(Debug)]
pub struct SystemSampler {
    /// Whether to ask the running kernel for its clock discipline.
    kernel_clock: bool,
    diskstats: ProcFile,
    /// One per entry of [`PRESSURE`].
    pressure: Vec<ProcFile>,
    file_nr: ProcFile,
    snmp: ProcFile,
    netstat: ProcFile,
    snmp6: ProcFile,
    /// The protocol statistics of the round before, whose strings the
    /// next round takes over where the files have not changed shape.
    netstats: Vec<NetStat>,
}

impl SystemSampler {
    /// A sampler that reads `<root>/proc/...`; `root` is normally `/`,
    /// tests pass a fixture directory. It also reports the running kernel's
    /// clock discipline, which no root can redirect; see
    /// [`SystemSampler::with_kernel_clock`].
    pub fn new(root: PathBuf) -> Self {
        let proc_file = |rel: &str| ProcFile::new(root.join("proc").join(rel));
        SystemSampler {
            kernel_clock: true,
            diskstats: proc_file("diskstats"),
            pressure: PRESSURE
                .iter()
                .map(|(resource, _, _)| proc_file(&format!("pressure/{resource}")))
                .collect(),
            file_nr: proc_file("sys/fs/file-nr"),
            snmp: proc_file("net/snmp"),
            netstat: proc_file("net/netstat"),
            snmp6: proc_file("net/snmp6"),
            netstats: Vec::new(),
        }
    }

    /// Turns the `node_timex_*` metrics on or off. They come from the
    /// `adjtimex(2)` system call of the kernel the agent runs on, not from
    /// a file under the root, so fixture tests turn them off to get
    /// results that do not depend on the machine running the test.
    pub fn with_kernel_clock(mut self, enabled: bool) -> Self {
        self.kernel_clock = enabled;
        self
    }

    /// Reads every source once and reports its values, declaring each
    /// metric family that has values.
    ///
    /// /proc/diskstats, /proc/sys/fs/file-nr, /proc/net/snmp and
    /// /proc/net/netstat exist on every Linux this agent supports: if one
    /// cannot be read (or file-nr not parsed), the round returns the first
    /// such error, but only after every other source has been reported.
    /// /proc/pressure (kernels before 4.20, or `psi=0`), /proc/net/snmp6
    /// (IPv6 disabled) and the kernel clock are optional and are left out
    /// silently. Single malformed lines are left out without an error.
    pub fn sample(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let disks = self.sample_diskstats(out);
        self.sample_pressure(out);
        let filefd = self.sample_filefd(out);
        let netstat = self.sample_netstat(out);
        if self.kernel_clock {
            sample_kernel_clock(out);
        }
        disks.and(filefd).and(netstat)
    }

    fn sample_diskstats(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let text = self.diskstats.text()?;
        let disks: Vec<Disk> = parse_diskstats(&text)
            .into_iter()
            .filter(|d| !is_excluded_disk(&d.name))
            .collect();
        // Declare a family only if some device has that column: older
        // kernels have no discard or flush columns at all.
        for (i, (family, _)) in DISK_COLUMNS.iter().enumerate() {
            if disks.iter().any(|d| i < d.columns) {
                family.declare(out);
            }
        }
        for disk in &disks {
            let labels = [("device", disk.name.as_str())];
            for ((family, scale), &raw) in DISK_COLUMNS.iter().zip(&disk.stats).take(disk.columns) {
                out.push(family.name, &labels, scale.apply(raw));
            }
        }
        Ok(())
    }

    fn sample_pressure(&mut self, out: &mut Samples) {
        for ((_, some, full), file) in PRESSURE.iter().zip(&mut self.pressure) {
            // Absent before 4.20 and with psi=0 (reading then fails with
            // EOPNOTSUPP): both mean "no pressure information", not a fault.
            let text = match file.text() {
                Ok(text) => text,
                Err(e) => {
                    tracing::debug!(error = %e, "leaving pressure out");
                    continue;
                }
            };
            let totals = parse_pressure(&text);
            for (family, value) in [(Some(some), totals.some), (full.as_ref(), totals.full)] {
                if let (Some(family), Some(value)) = (family, value) {
                    family.declare(out);
                    out.push(family.name, &[], value);
                }
            }
        }
    }

    fn sample_filefd(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let text = self.file_nr.text()?;
        let (allocated, maximum) = parse_file_nr(&text).ok_or_else(|| SampleError::Parse {
            path: self.file_nr.path().display().to_string(),
            reason: "expected three counts".to_string(),
        })?;
        FILEFD_ALLOCATED.declare(out);
        out.push(FILEFD_ALLOCATED.name, &[], allocated);
        FILEFD_MAXIMUM.declare(out);
        out.push(FILEFD_MAXIMUM.name, &[], maximum);
        Ok(())
    }

    fn sample_netstat(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let mut before = std::mem::take(&mut self.netstats);
        let mut stats = Vec::with_capacity(before.len());
        let snmp = self
            .snmp
            .text()
            .map(|t| parse_netstat_pairs(&t, &mut stats, &mut before));
        let netstat = self
            .netstat
            .text()
            .map(|t| parse_netstat_pairs(&t, &mut stats, &mut before));
        match self.snmp6.text() {
            Ok(text) => parse_snmp6(&text, &mut stats, &mut before),
            Err(e) => tracing::debug!(error = %e, "leaving IPv6 protocol counters out"),
        }
        for stat in &stats {
            // node_exporter exposes these untyped: some are counters, some
            // gauges (CurrEstab, Forwarding), and it does not tell them apart.
            out.family_with_help(&stat.metric, MetricKind::Unknown, "", || {
                format!("Statistic {}{}.", stat.protocol, stat.field)
            });
            out.push(&stat.metric, &[], stat.value);
        }
        self.netstats = stats;
        snmp.and(netstat)
    }
}

/// Reads the running kernel's clock discipline and reports it; on failure
/// (seccomp, an emulated kernel) the `node_timex_*` series are left out.
fn sample_kernel_clock(out: &mut Samples) {
    let clock = match read_kernel_clock() {
        Ok(clock) => clock,
        Err(e) => {
            tracing::debug!(error = %e, "leaving the kernel clock out");
            return;
        }
    };
    let values = [
        (&TIMEX_SYNC_STATUS, if clock.synced { 1.0 } else { 0.0 }),
        (&TIMEX_OFFSET, clock.offset_seconds),
        (&TIMEX_MAXERROR, clock.maxerror_seconds),
        (&TIMEX_ESTERROR, clock.esterror_seconds),
    ];
    for (family, value) in values {
        family.declare(out);
        out.push(family.name, &[], value);
    }
}

/// An unsigned decimal count as the kernel prints it. Rejects the signs,
/// exponents, "inf" and "NaN" that `f64::from_str` would let through.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One /proc/diskstats line.
#[derive(Debug, Clone, PartialEq)]
struct Disk {
    name: String,
    /// In [`DISK_COLUMNS`] order; only the first `columns` are meaningful.
    stats: [u64; DISK_FLUSH_STATS],
    /// 11, 15 or 17: how many of the columns this kernel printed.
    columns: usize,
}

/// Parses /proc/diskstats: `major minor name` and 11 (before 4.18), 15
/// (4.18+, discards) or 17 (5.5+, flushes) counters. Columns a later kernel
/// appends are ignored; a line with fewer than 11 counters (the 4-counter
/// partition lines of 2.6.24 and older) or a non-numeric one is left out,
/// as is a device named twice, which would make two identical series.
fn parse_diskstats(text: &str) -> Vec<Disk> {
    let mut disks: Vec<Disk> = Vec::new();
    for line in text.lines() {
        let Some(disk) = parse_diskstats_line(line) else {
            continue;
        };
        if !disks.iter().any(|d| d.name == disk.name) {
            disks.push(disk);
        }
    }
    disks
}

fn parse_diskstats_line(line: &str) -> Option<Disk> {
    let mut fields = line.split_ascii_whitespace();
    parse_u64(fields.next()?)?;
    parse_u64(fields.next()?)?;
    let name = fields.next()?;
    let mut stats = [0; DISK_FLUSH_STATS];
    let mut columns = 0;
    for (stat, field) in stats.iter_mut().zip(fields) {
        *stat = parse_u64(field)?;
        columns += 1;
    }
    // A group of columns counts only if the kernel printed all of it.
    let columns = match columns {
        n if n >= DISK_FLUSH_STATS => DISK_FLUSH_STATS,
        n if n >= DISK_DISCARD_STATS => DISK_DISCARD_STATS,
        n if n >= DISK_BASE_STATS => DISK_BASE_STATS,
        _ => return None,
    };
    Some(Disk {
        name: name.to_string(),
        stats,
        columns,
    })
}

/// node_exporter 1.5's default device exclusion,
/// `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`: RAM disks, loop
/// devices, floppies and partitions (whose I/O is already counted on the
/// whole disk). Every alternative before the final `\d+` ends in a
/// non-digit, so the name splits uniquely into a stem and a trailing run
/// of digits, and only the stem needs matching.
fn is_excluded_disk(name: &str) -> bool {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == name.len() {
        return false;
    }
    let letter_after_d = |prefix: &str| {
        stem.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 1 && rest.bytes().all(|b| b.is_ascii_lowercase()))
    };
    matches!(stem, "ram" | "loop" | "fd")
        || ["hd", "sd", "vd", "xvd"].into_iter().any(letter_after_d)
        || is_nvme_partition_stem(stem)
}

/// `nvme\d+n\d+p`: an NVMe controller and namespace, before the partition
/// number.
fn is_nvme_partition_stem(stem: &str) -> bool {
    let Some(rest) = stem.strip_prefix("nvme").and_then(|r| r.strip_suffix('p')) else {
        return false;
    };
    let Some((controller, namespace)) = rest.split_once('n') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(controller) && digits(namespace)
}

/// The `total=` stall times of a /proc/pressure file, in seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct PressureTotals {
    some: Option<f64>,
    full: Option<f64>,
}

/// Parses `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` and the
/// matching `full` line. `total` is in microseconds.
fn parse_pressure(text: &str) -> PressureTotals {
    let mut totals = PressureTotals::default();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let slot = match words.next() {
            Some("some") => &mut totals.some,
            Some("full") => &mut totals.full,
            _ => continue,
        };
        let total = words
            .filter_map(|w| w.strip_prefix("total="))
            .find_map(parse_u64);
        if let Some(micros) = total {
            *slot = Some(micros as f64 / 1e6);
        }
    }
    totals
}

/// /proc/sys/fs/file-nr: allocated handles, allocated-but-unused handles
/// (always 0 since 2.6) and the maximum. Returns (allocated, maximum).
fn parse_file_nr(text: &str) -> Option<(f64, f64)> {
    let mut words = text.split_ascii_whitespace().map(parse_u64);
    let allocated = words.next()??;
    let _unused = words.next()??;
    let maximum = words.next()??;
    Some((allocated as f64, maximum as f64))
}

/// One selected kernel protocol statistic.
#[derive(Debug, Clone, PartialEq)]
struct NetStat {
    /// As the kernel names it: `Tcp`, `TcpExt`, `Udp6`, ...
    protocol: String,
    /// As the kernel names it: `ActiveOpens`, ...
    field: String,
    /// `node_netstat_<protocol>_<field>`.
    metric: String,
    value: f64,
}

/// Whether node_exporter 1.5 reports `<protocol>_<field>` by default, with
/// nines' two additions. node_exporter's default selection is the pattern
/// `^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|
/// Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|
/// TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|
/// RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|
/// RcvbufErrors|SndbufErrors))$`, written out here as plain comparisons.
/// nines also reports `Tcp_EstabResets` and `Tcp_AttemptFails` (failed and
/// reset connections), which that pattern leaves out.
fn is_reported_netstat_field(protocol: &str, field: &str) -> bool {
    if matches!(field, "InErrors" | "InErrs") {
        return true;
    }
    match protocol {
        "Ip" => field == "Forwarding",
        "Ip6" | "IpExt" => matches!(field, "InOctets" | "OutOctets"),
        "Icmp" | "Icmp6" => matches!(field, "InMsgs" | "OutMsgs"),
        "TcpExt" => {
            field.starts_with("Listen")
                || field.starts_with("Syncookies")
                || matches!(field, "TCPSynRetrans" | "TCPTimeouts")
        }
        "Tcp" => matches!(
            field,
            "ActiveOpens"
                | "InSegs"
                | "OutSegs"
                | "OutRsts"
                | "PassiveOpens"
                | "RetransSegs"
                | "CurrEstab"
                | "EstabResets"
                | "AttemptFails"
        ),
        "Udp" | "Udp6" => matches!(
            field,
            "InDatagrams" | "OutDatagrams" | "NoPorts" | "RcvbufErrors" | "SndbufErrors"
        ),
        _ => false,
    }
}

/// A protocol counter as the kernel prints it: unsigned, or signed for the
/// few that can be negative (`Tcp: MaxConn` is -1).
fn parse_stat_value(s: &str) -> Option<f64> {
    match s.strip_prefix('-') {
        Some(digits) => parse_u64(digits).map(|n| -(n as f64)),
        None => parse_u64(s).map(|n| n as f64),
    }
}

/// Adds one selected statistic, unless it is already there (a protocol
/// printed twice would make two identical series) or would not make a
/// valid metric name. The strings of the statistic at the same place in
/// `before` (an earlier read's) are taken over when it is the same one.
fn add_netstat(
    stats: &mut Vec<NetStat>,
    before: &mut [NetStat],
    protocol: &str,
    field: &str,
    value: &str,
) {
    if !is_reported_netstat_field(protocol, field) {
        return;
    }
    let Some(value) = parse_stat_value(value) else {
        return;
    };
    let earlier = before
        .get_mut(stats.len())
        .filter(|e| !e.metric.is_empty() && e.protocol == protocol && e.field == field);
    if let Some(earlier) = earlier {
        // Its name follows from protocol and field: valid, since kept.
        if !stats.iter().any(|s| s.metric == earlier.metric) {
            stats.push(NetStat {
                protocol: std::mem::take(&mut earlier.protocol),
                field: std::mem::take(&mut earlier.field),
                metric: std::mem::take(&mut earlier.metric),
                value,
            });
        }
        return;
    }
    let metric = format!("node_netstat_{protocol}_{field}");
    if !is_valid_metric_name(&metric) || stats.iter().any(|s| s.metric == metric) {
        return;
    }
    stats.push(NetStat {
        protocol: protocol.to_string(),
        field: field.to_string(),
        metric,
        value,
    });
}

/// Parses /proc/net/snmp or /proc/net/netstat: per protocol, a line of
/// field names and then a line of values, both starting `Proto:`. A pair
/// whose lengths differ is left out whole, since values could not be
/// matched to names; so is a header without its values line.
fn parse_netstat_pairs(text: &str, stats: &mut Vec<NetStat>, before: &mut [NetStat]) {
    let mut header: Option<(&str, &str)> = None;
    for line in text.lines() {
        let Some((protocol, rest)) = line.split_once(':') else {
            header = None;
            continue;
        };
        match header.take() {
            Some((head_protocol, names)) if head_protocol == protocol => {
                let names = names.split_ascii_whitespace();
                if names.clone().count() != rest.split_ascii_whitespace().count() {
                    tracing::debug!(protocol, "names and values differ in length; left out");
                    continue;
                }
                for (name, value) in names.zip(rest.split_ascii_whitespace()) {
                    add_netstat(stats, before, protocol, name, value);
                }
            }
            _ => header = Some((protocol, rest)),
        }
    }
}

/// Parses /proc/net/snmp6: one `Udp6InDatagrams  123` per line. The
/// protocol is the name up to and including its first '6' (`Ip6`,
/// `Icmp6`, `Udp6`, `UdpLite6`), the field the rest.
fn parse_snmp6(text: &str, stats: &mut Vec<NetStat>, before: &mut [NetStat]) {
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some(six) = name.find('6') else {
            continue;
        };
        let (protocol, field) = name.split_at(six + 1);
        if !field.is_empty() {
            add_netstat(stats, before, protocol, field, value);
        }
    }
}

/// The kernel clock's NTP state, in node_exporter's units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct KernelClock {
    synced: bool,
    offset_seconds: f64,
    maxerror_seconds: f64,
    esterror_seconds: f64,
}

impl KernelClock {
    /// From `adjtimex`'s return value (the clock state) and its `status`,
    /// `offset`, `maxerror` and `esterror` fields.
    fn from_timex(state: i32, status: i32, offset: f64, maxerror: f64, esterror: f64) -> Self {
        // The kernel returns TIME_ERROR while STA_UNSYNC is set (and on
        // clock hardware faults); checking the bit too costs nothing and
        // covers a kernel that reports the two separately.
        let synced = state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0;
        // `offset` is in nanoseconds once someone set STA_NANO, else in
        // microseconds; the error bounds are always microseconds.
        let offset_unit = if status & libc::STA_NANO != 0 {
            1e9
        } else {
            1e6
        };
        KernelClock {
            synced,
            offset_seconds: offset / offset_unit,
            maxerror_seconds: maxerror / 1e6,
            esterror_seconds: esterror / 1e6,
        }
    }
}

/// Asks the running kernel for its clock discipline, changing nothing.
fn read_kernel_clock() -> io::Result<KernelClock> {
    // All-zero is a valid timex (plain integers), and `modes == 0` is the
    // read-only request: no privilege needed, nothing adjusted.
    let mut timex = MaybeUninit::<libc::timex>::zeroed();
    // SAFETY: `timex` is writable memory of exactly the struct's size, all
    // zero, so modes is 0 and the kernel only fills the struct in.
    let state = unsafe { libc::adjtimex(timex.as_mut_ptr()) };
    if state == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed memory is a valid timex, and the kernel wrote the rest.
    let timex = unsafe { timex.assume_init() };
    Ok(KernelClock::from_timex(
        state,
        timex.status,
        timex.offset as f64,
        timex.maxerror as f64,
        timex.esterror as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::Observation;
    use std::collections::BTreeSet;

    /// A 4.14 kernel: 11 counters per line, partitions included.
    const DISKSTATS_14: &str = "\
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0
   7       0 loop0 57 0 2082 8 0 0 0 0 0 12 8
   8       0 sda 114268 2330 4854914 52644 56436 70283 3219152 58912 0 57032 111168
   8       1 sda1 114100 2330 4850458 52600 56436 70283 3219152 58912 0 57000 111124
 253       0 dm-0 1000 0 8000 50 2000 0 16000 300 2 250 350
";

    /// A 4.19 kernel: four discard counters appended.
    const DISKSTATS_18: &str = "\
 259       0 nvme0n1 93219 41 6316538 26402 310497 186423 12062818 386410 0 132972 365704 1200 3 2457600 150
 259       1 nvme0n1p1 300 0 10000 60 2 0 16 1 0 70 61 0 0 0 0
   9       0 md0 5 0 40 0 0 0 0 0 0 0 0 0 0 0 0
";

    /// A 6.x kernel (vda is from a real VM): two flush counters appended.
    const DISKSTATS_20: &str = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 311263 9097 12809482 303061 28409 55032 31005832 105464 0 18636 410912 14161 46 6649256 2329 1615 57
 254       1 vda1 311000 9097 12800000 303000 28409 55032 31005832 105464 0 18600 410800 14161 46 6649256 2329 0 0
 253       0 zram0 4 0 32 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 179       0 mmcblk0 10 0 80 1 0 0 0 0 0 1 1 0 0 0 0 0 0
 179       1 mmcblk0p1 9 0 72 1 0 0 0 0 0 1 1 0 0 0 0 0 0
 202       0 xvda 7 0 56 2 3 0 24 4 1 5 6 0 0 0 0 8 9
 202       1 xvda1 7 0 56 2 3 0 24 4 0 5 6 0 0 0 0 8 9
   8      16 sdb 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
   8      17 sdb1 1 2 3
 bad line
";

    const PRESSURE_CPU: &str = "\
some avg10=31.32 avg60=9.54 avg300=10.26 total=476348608
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
";
    const PRESSURE_MEMORY: &str = "\
some avg10=0.58 avg60=0.18 avg300=0.12 total=6930624
full avg10=0.00 avg60=0.01 avg300=0.04 total=4420605
";
    const PRESSURE_IO: &str = "\
some avg10=1.00 avg60=2.00 avg300=3.00 total=123456789012
full avg10=0.50 avg60=1.00 avg300=1.50 total=1500000
";

    const FILE_NR: &str = "538\t0\t2466190\n";

    /// From a 6.x kernel; the Udp pair is cut short to show it is skipped
    /// whole, and UdpLite shows a protocol that is selected by InErrors only.
    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 10731 0 0 0 0 0 10731 8943 0 0 0 0 0 0 0 0 0 8943
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 11 3 0 1 0 0 0 0 0 0 0 0 0 0 12 0 0 0 0 0 0 0 0 0 0 0 0 0 0
IcmpMsg: InType3 OutType3
IcmpMsg: 1 12
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 617 564 3 46 7 10627 9051 5 2 51 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 103 4 1 104 2 3 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 9 0 0 0 0 0 0
";

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled TW DelayedACKs ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans TCPOFOQueue TCPRcvQDrop
TcpExt: 21 22 23 0 0 566 149 24 25 26 27 28 29
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps
IpExt: 0 0 0 0 0 0 129924773 20829428 0 0 0 0 0 10739 0 0 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX
MPTcpExt: 0 0
";

    const SNMP6: &str = "\
Ip6InReceives                   \t1
Ip6InHdrErrors                  \t0
Ip6InOctets                     \t128
Ip6OutOctets                    \t880
Icmp6InMsgs                     \t31
Icmp6InErrors                   \t32
Icmp6OutMsgs                    \t33
Icmp6InType133                  \t4
Udp6InDatagrams                 \t41
Udp6NoPorts                     \t42
Udp6InErrors                    \t43
Udp6OutDatagrams                \t44
Udp6RcvbufErrors                \t45
Udp6SndbufErrors                \t46
Udp6InCsumErrors                \t47
UdpLite6InErrors                \t48
";

    /// A temporary root holding `proc/...` files.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn empty() -> Self {
            Fixture {
                dir: tempfile::tempdir().expect("create temp dir"),
            }
        }

        /// Every source present, with the contents above.
        fn full() -> Self {
            let f = Fixture::empty();
            f.write("proc/diskstats", DISKSTATS_20);
            f.write("proc/pressure/cpu", PRESSURE_CPU);
            f.write("proc/pressure/memory", PRESSURE_MEMORY);
            f.write("proc/pressure/io", PRESSURE_IO);
            f.write("proc/sys/fs/file-nr", FILE_NR);
            f.write("proc/net/snmp", SNMP);
            f.write("proc/net/netstat", NETSTAT);
            f.write("proc/net/snmp6", SNMP6);
            f
        }

        fn write(&self, rel: &str, content: &str) {
            let path = self.dir.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create fixture dir");
            }
            std::fs::write(path, content).expect("write fixture file");
        }

        fn remove(&self, rel: &str) {
            let path = self.dir.path().join(rel);
            if path.is_dir() {
                std::fs::remove_dir_all(path).expect("remove fixture dir");
            } else {
                std::fs::remove_file(path).expect("remove fixture file");
            }
        }

        fn sample(&self) -> (Samples, Result<(), SampleError>) {
            let mut out = Samples::default();
            let result = SystemSampler::new(self.dir.path().to_path_buf())
                .with_kernel_clock(false)
                .sample(&mut out);
            (out, result)
        }
    }

    fn series<'a>(out: &'a Samples, metric: &str) -> Vec<&'a Observation> {
        out.observations
            .iter()
            .filter(|o| o.labels.metric_name() == Some(metric))
            .collect()
    }

    fn devices(out: &Samples, metric: &str) -> BTreeSet<String> {
        series(out, metric)
            .iter()
            .filter_map(|o| o.labels.get("device"))
            .map(str::to_string)
            .collect()
    }

    fn declared(out: &Samples, metric: &str) -> bool {
        out.metadata.iter().any(|m| m.name == metric)
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn diskstats_with_20_fields_gives_every_column_in_node_exporter_units() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let vda = |metric: &str| out.value_of(metric, &[("device", "vda")]);
        // 254 0 vda 311263 9097 12809482 303061 28409 55032 31005832 105464
        //           0 18636 410912 14161 46 6649256 2329 1615 57
        let want = [
            ("node_disk_reads_completed_total", 311_263.0),
            ("node_disk_reads_merged_total", 9097.0),
            ("node_disk_read_bytes_total", 12_809_482.0 * 512.0),
            ("node_disk_read_time_seconds_total", 303.061),
            ("node_disk_writes_completed_total", 28_409.0),
            ("node_disk_writes_merged_total", 55_032.0),
            ("node_disk_written_bytes_total", 31_005_832.0 * 512.0),
            ("node_disk_write_time_seconds_total", 105.464),
            ("node_disk_io_now", 0.0),
            ("node_disk_io_time_seconds_total", 18.636),
            ("node_disk_io_time_weighted_seconds_total", 410.912),
            ("node_disk_discards_completed_total", 14_161.0),
            ("node_disk_discards_merged_total", 46.0),
            ("node_disk_discarded_sectors_total", 6_649_256.0),
            ("node_disk_discard_time_seconds_total", 2.329),
            ("node_disk_flush_requests_total", 1615.0),
            ("node_disk_flush_requests_time_seconds_total", 0.057),
        ];
        for (metric, value) in want {
            assert_eq!(vda(metric), Some(value), "{metric}");
            assert!(declared(&out, metric), "{metric}");
        }
        assert_eq!(
            out.value_of("node_disk_io_now", &[("device", "xvda")]),
            Some(1.0)
        );
        // Extra columns from a future kernel are ignored.
        assert_eq!(
            out.value_of(
                "node_disk_flush_requests_time_seconds_total",
                &[("device", "sdb")]
            ),
            Some(0.017)
        );
        // loop0, vda1 and xvda1 match the exclusion; zram, mmcblk
        // partitions and sdb1's short line do not (sdb1 is left out as
        // unparsable, which the exclusion would also do).
        assert_eq!(
            devices(&out, "node_disk_reads_completed_total"),
            set(&["vda", "zram0", "mmcblk0", "mmcblk0p1", "xvda", "sdb"])
        );
    }

    #[test]
    fn diskstats_with_14_fields_has_no_discard_or_flush_families() {
        let f = Fixture::full();
        f.write("proc/diskstats", DISKSTATS_14);
        let (out, result) = f.sample();
        result.expect("sample");
        let sda = |metric: &str| out.value_of(metric, &[("device", "sda")]);
        assert_eq!(sda("node_disk_reads_completed_total"), Some(114_268.0));
        assert_eq!(sda("node_disk_read_bytes_total"), Some(4_854_914.0 * 512.0));
        assert_eq!(sda("node_disk_read_time_seconds_total"), Some(52.644));
        assert_eq!(
            sda("node_disk_io_time_weighted_seconds_total"),
            Some(111.168)
        );
        assert_eq!(
            out.value_of("node_disk_io_now", &[("device", "dm-0")]),
            Some(2.0)
        );
        assert_eq!(
            devices(&out, "node_disk_io_now"),
            set(&["sda", "dm-0"]),
            "ram0, loop0 and sda1 are excluded"
        );
        for metric in [
            "node_disk_discards_completed_total",
            "node_disk_discarded_sectors_total",
            "node_disk_flush_requests_total",
        ] {
            assert!(series(&out, metric).is_empty(), "{metric}");
            assert!(!declared(&out, metric), "{metric}");
        }
        // 11 families x 2 devices.
        let disk_series = out
            .observations
            .iter()
            .filter(|o| {
                o.labels
                    .metric_name()
                    .is_some_and(|n| n.starts_with("node_disk_"))
            })
            .count();
        assert_eq!(disk_series, 22);
    }

    #[test]
    fn diskstats_with_18_fields_has_discards_but_no_flushes() {
        let f = Fixture::full();
        f.write("proc/diskstats", DISKSTATS_18);
        let (out, result) = f.sample();
        result.expect("sample");
        let nvme = |metric: &str| out.value_of(metric, &[("device", "nvme0n1")]);
        assert_eq!(nvme("node_disk_writes_completed_total"), Some(310_497.0));
        assert_eq!(
            nvme("node_disk_written_bytes_total"),
            Some(12_062_818.0 * 512.0)
        );
        assert_eq!(nvme("node_disk_discards_completed_total"), Some(1200.0));
        assert_eq!(nvme("node_disk_discards_merged_total"), Some(3.0));
        assert_eq!(nvme("node_disk_discarded_sectors_total"), Some(2_457_600.0));
        assert_eq!(nvme("node_disk_discard_time_seconds_total"), Some(0.15));
        assert_eq!(nvme("node_disk_flush_requests_total"), None);
        assert!(!declared(&out, "node_disk_flush_requests_total"));
        assert_eq!(
            devices(&out, "node_disk_discards_completed_total"),
            set(&["nvme0n1", "md0"])
        );
    }

    #[test]
    fn missing_discard_columns_on_some_lines_only_lose_those_columns() {
        let f = Fixture::full();
        f.write(
            "proc/diskstats",
            " 8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n 8 16 sdb 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
        );
        let (out, result) = f.sample();
        result.expect("sample");
        assert_eq!(
            devices(&out, "node_disk_discards_completed_total"),
            set(&["sdb"])
        );
        assert!(!declared(&out, "node_disk_flush_requests_total"));
        assert_eq!(
            devices(&out, "node_disk_reads_completed_total"),
            set(&["sda", "sdb"])
        );
    }

    #[test]
    fn disk_exclusion_matches_node_exporters_default_pattern() {
        let cases = [
            ("ram0", true),
            ("ram15", true),
            ("ram", false),
            ("zram0", false),
            ("loop0", true),
            ("loop12", true),
            ("fd0", true),
            ("hda1", true),
            ("sda1", true),
            ("sdz9", true),
            ("vda1", true),
            ("xvda1", true),
            ("sda", false),
            ("sdaa1", false),
            ("sdA1", false),
            ("xvdb", false),
            ("nvme0n1p1", true),
            ("nvme10n12p3", true),
            ("nvme0n1", false),
            ("nvmen1p1", false),
            ("nvme0np1", false),
            ("nvme0n1p", false),
            ("nvme0c0n1", false),
            ("mmcblk0p1", false),
            ("dm-0", false),
            ("md127", false),
            ("sr0", false),
            ("", false),
            ("1", false),
        ];
        for (name, excluded) in cases {
            assert_eq!(is_excluded_disk(name), excluded, "{name:?}");
        }
    }

    #[test]
    fn pressure_totals_are_microseconds_to_seconds() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let want = [
            ("node_pressure_cpu_waiting_seconds_total", 476.348608),
            ("node_pressure_memory_waiting_seconds_total", 6.930624),
            ("node_pressure_memory_stalled_seconds_total", 4.420605),
            ("node_pressure_io_waiting_seconds_total", 123_456.789012),
            ("node_pressure_io_stalled_seconds_total", 1.5),
        ];
        for (metric, value) in want {
            assert_eq!(out.value_of(metric, &[]), Some(value), "{metric}");
        }
        // The cpu file's "full" line is not reported, as in node_exporter 1.5.
        assert!(
            out.metadata
                .iter()
                .filter(|m| m.name.starts_with("node_pressure_"))
                .count()
                == 5
        );
    }

    #[test]
    fn absent_or_unsupported_pressure_is_left_out_silently() {
        let f = Fixture::full();
        f.remove("proc/pressure");
        let (out, result) = f.sample();
        result.expect("pressure is optional");
        assert!(
            out.metadata
                .iter()
                .all(|m| !m.name.starts_with("node_pressure_"))
        );

        // Pre-5.13 cpu file without "full", and an io file with garbage.
        let f = Fixture::full();
        f.write(
            "proc/pressure/cpu",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
        );
        f.write("proc/pressure/io", "some total=x\nfull\n");
        f.remove("proc/pressure/memory");
        let (out, result) = f.sample();
        result.expect("sample");
        assert_eq!(
            out.value_of("node_pressure_cpu_waiting_seconds_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            out.value_of("node_pressure_io_waiting_seconds_total", &[]),
            None
        );
        assert!(!declared(&out, "node_pressure_io_stalled_seconds_total"));
        assert!(!declared(
            &out,
            "node_pressure_memory_waiting_seconds_total"
        ));
    }

    #[test]
    fn file_nr_gives_allocated_and_maximum() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        assert_eq!(out.value_of("node_filefd_allocated", &[]), Some(538.0));
        assert_eq!(out.value_of("node_filefd_maximum", &[]), Some(2_466_190.0));
        // The kernel's real maximum on 64-bit is LONG_MAX-sized.
        assert_eq!(
            parse_file_nr("1024 0 9223372036854775807\n"),
            Some((1024.0, 9_223_372_036_854_775_807.0))
        );
        for bad in ["", "1 0", "1 0 x", "-1 0 5", "1 0 1e9"] {
            assert_eq!(parse_file_nr(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn required_sources_fail_the_round_only_after_the_rest_is_reported() {
        for (file, content) in [
            ("proc/diskstats", None),
            ("proc/sys/fs/file-nr", None),
            ("proc/sys/fs/file-nr", Some("garbage\n")),
            ("proc/net/snmp", None),
            ("proc/net/netstat", None),
        ] {
            let f = Fixture::full();
            match content {
                Some(text) => f.write(file, text),
                None => f.remove(file),
            }
            let (out, result) = f.sample();
            let path = match result {
                Err(SampleError::Read { path, .. }) if content.is_none() => path,
                Err(SampleError::Parse { path, .. }) if content.is_some() => path,
                other => panic!("{file}: unexpected {other:?}"),
            };
            assert!(path.ends_with(file), "{path}");
            // Everything else is still there.
            assert!(
                out.value_of("node_pressure_io_stalled_seconds_total", &[])
                    .is_some()
            );
            assert!(out.value_of("node_netstat_Udp6_InDatagrams", &[]).is_some());
        }
    }

    #[test]
    fn netstat_reports_node_exporters_default_fields_untyped() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let want = [
            ("Ip_Forwarding", 2.0),
            ("Icmp_InMsgs", 11.0),
            ("Icmp_InErrors", 3.0),
            ("Icmp_OutMsgs", 12.0),
            ("Tcp_ActiveOpens", 617.0),
            ("Tcp_PassiveOpens", 564.0),
            ("Tcp_AttemptFails", 3.0),
            ("Tcp_EstabResets", 46.0),
            ("Tcp_CurrEstab", 7.0),
            ("Tcp_InSegs", 10627.0),
            ("Tcp_OutSegs", 9051.0),
            ("Tcp_RetransSegs", 5.0),
            ("Tcp_InErrs", 2.0),
            ("Tcp_OutRsts", 51.0),
            ("Udp_InDatagrams", 103.0),
            ("Udp_NoPorts", 4.0),
            ("Udp_InErrors", 1.0),
            ("Udp_OutDatagrams", 104.0),
            ("Udp_RcvbufErrors", 2.0),
            ("Udp_SndbufErrors", 3.0),
            ("UdpLite_InErrors", 9.0),
            ("TcpExt_SyncookiesSent", 21.0),
            ("TcpExt_SyncookiesRecv", 22.0),
            ("TcpExt_SyncookiesFailed", 23.0),
            ("TcpExt_ListenOverflows", 24.0),
            ("TcpExt_ListenDrops", 25.0),
            ("TcpExt_TCPTimeouts", 26.0),
            ("TcpExt_TCPSynRetrans", 27.0),
            ("IpExt_InOctets", 129_924_773.0),
            ("IpExt_OutOctets", 20_829_428.0),
            ("Ip6_InOctets", 128.0),
            ("Ip6_OutOctets", 880.0),
            ("Icmp6_InMsgs", 31.0),
            ("Icmp6_InErrors", 32.0),
            ("Icmp6_OutMsgs", 33.0),
            ("Udp6_InDatagrams", 41.0),
            ("Udp6_NoPorts", 42.0),
            ("Udp6_InErrors", 43.0),
            ("Udp6_OutDatagrams", 44.0),
            ("Udp6_RcvbufErrors", 45.0),
            ("Udp6_SndbufErrors", 46.0),
            ("UdpLite6_InErrors", 48.0),
        ];
        for (field, value) in want {
            let metric = format!("node_netstat_{field}");
            assert_eq!(out.value_of(&metric, &[]), Some(value), "{metric}");
        }
        let reported: BTreeSet<String> = out
            .observations
            .iter()
            .filter_map(|o| o.labels.metric_name())
            .filter(|n| n.starts_with("node_netstat_"))
            .map(str::to_string)
            .collect();
        let wanted: BTreeSet<String> = want
            .iter()
            .map(|(f, _)| format!("node_netstat_{f}"))
            .collect();
        assert_eq!(reported, wanted, "nothing else, e.g. TcpExt_TCPOFOQueue");
        let tcp = out
            .metadata
            .iter()
            .find(|m| m.name == "node_netstat_Tcp_ActiveOpens")
            .expect("metadata");
        assert_eq!(tcp.kind, MetricKind::Unknown);
        assert_eq!(tcp.help, "Statistic TcpActiveOpens.");
        assert_eq!(tcp.unit, "");
    }

    #[test]
    fn protocol_statistics_read_after_others_are_parsed_as_if_alone() {
        // (snmp, netstat, snmp6) as one round reads them.
        let parse = |texts: [&str; 3], before: &mut Vec<NetStat>| {
            let mut stats = Vec::new();
            parse_netstat_pairs(texts[0], &mut stats, before);
            parse_netstat_pairs(texts[1], &mut stats, before);
            parse_snmp6(texts[2], &mut stats, before);
            stats
        };
        let rounds = [
            [SNMP, NETSTAT, SNMP6],
            [SNMP, "", SNMP6],
            ["", NETSTAT, SNMP6],
            [NETSTAT, SNMP, ""],
            // Same fields in another order; repeated; another protocol.
            [
                "Tcp: InSegs ActiveOpens\nTcp: 1 2\n",
                "Tcp: ActiveOpens InSegs\nTcp: 3 4\n",
                "Udp6InErrors 5\nUdp6InErrors 6\n",
            ],
            [
                "Tcp: ActiveOpens InSegs\nTcp: 3 4\n",
                "Udp: InSegs ActiveOpens\nUdp: 1 2\n",
                "Udp6InErrors 5\nIcmp6InErrors 6\n",
            ],
        ];
        for a in rounds {
            for b in rounds {
                let alone = parse(b, &mut Vec::new());
                let mut before = parse(a, &mut Vec::new());
                assert_eq!(parse(b, &mut before), alone, "{a:?} then {b:?}");
                let mut before = alone.clone();
                assert_eq!(parse(b, &mut before), alone, "{b:?} twice");
            }
        }
    }

    #[test]
    fn netstat_pairs_that_do_not_line_up_are_skipped_whole() {
        let mut stats = Vec::new();
        parse_netstat_pairs(
            "Tcp: ActiveOpens PassiveOpens\nTcp: 1\n\
             Udp: InDatagrams\nIcmp: InMsgs\nIcmp: 5\n\
             Ip: Forwarding\nIp: x\n\
             Udp: NoPorts InErrors\nUdp: 3 4\nUdp: NoPorts\nUdp: 9\n",
            &mut stats,
            &mut [],
        );
        let got: Vec<(&str, f64)> = stats.iter().map(|s| (s.metric.as_str(), s.value)).collect();
        assert_eq!(
            got,
            [
                ("node_netstat_Icmp_InMsgs", 5.0),
                ("node_netstat_Udp_NoPorts", 3.0),
                ("node_netstat_Udp_InErrors", 4.0),
            ],
            "short pair, header without values and non-numeric value left out; \
             the first of two identical fields wins"
        );
        assert_eq!(parse_stat_value("-1"), Some(-1.0));
        assert_eq!(parse_stat_value("--1"), None);
        assert_eq!(parse_stat_value("-"), None);
    }

    #[test]
    fn ipv6_counters_are_optional() {
        let f = Fixture::full();
        f.remove("proc/net/snmp6");
        let (out, result) = f.sample();
        result.expect("snmp6 is optional");
        assert_eq!(out.value_of("node_netstat_Udp6_InDatagrams", &[]), None);
        assert_eq!(
            out.value_of("node_netstat_Udp_InDatagrams", &[]),
            Some(103.0)
        );
    }

    #[test]
    fn kernel_clock_state_and_units() {
        const OK: i32 = libc::TIME_OK;
        // Microsecond offsets.
        let clock = KernelClock::from_timex(OK, 0, 1500.0, 16_000.0, 250.0);
        assert_eq!(
            clock,
            KernelClock {
                synced: true,
                offset_seconds: 0.0015,
                maxerror_seconds: 0.016,
                esterror_seconds: 0.00025,
            }
        );
        // STA_NANO: the offset is in nanoseconds, the errors are not.
        let clock = KernelClock::from_timex(OK, libc::STA_NANO | libc::STA_PLL, -1500.0, 16.0, 2.0);
        assert_eq!(clock.offset_seconds, -0.0000015);
        assert_eq!(clock.maxerror_seconds, 0.000016);
        assert!(clock.synced);
        // Either signal of an unsynchronized clock means unsynced.
        assert!(!KernelClock::from_timex(libc::TIME_ERROR, 0, 0.0, 0.0, 0.0).synced);
        assert!(!KernelClock::from_timex(OK, libc::STA_UNSYNC, 0.0, 0.0, 0.0).synced);
        // Leap second states are still synchronized.
        assert!(KernelClock::from_timex(libc::TIME_INS, 0, 0.0, 0.0, 0.0).synced);
    }

    #[test]
    fn kernel_clock_is_off_in_fixture_tests_and_on_by_default() {
        let (out, _) = Fixture::full().sample();
        assert!(
            out.metadata
                .iter()
                .all(|m| !m.name.starts_with("node_timex_"))
        );

        let f = Fixture::full();
        let mut out = Samples::default();
        SystemSampler::new(f.dir.path().to_path_buf())
            .sample(&mut out)
            .expect("sample");
        let sync = out
            .value_of("node_timex_sync_status", &[])
            .expect("node_timex_sync_status");
        assert!(sync == 0.0 || sync == 1.0, "{sync}");
        for metric in [
            "node_timex_offset_seconds",
            "node_timex_maxerror_seconds",
            "node_timex_estimated_error_seconds",
        ] {
            let value = out.value_of(metric, &[]).expect(metric);
            assert!(value.is_finite(), "{metric} {value}");
        }
        // The kernel caps maxerror at NTP_PHASE_LIMIT (16 s).
        let maxerror = out.value_of("node_timex_maxerror_seconds", &[]);
        assert!(
            maxerror.is_some_and(|m| (0.0..=16.0).contains(&m)),
            "{maxerror:?}"
        );
    }

    #[test]
    fn every_series_has_one_family_with_matching_kind_and_unit() {
        let f = Fixture::full();
        let mut out = Samples::default();
        SystemSampler::new(f.dir.path().to_path_buf())
            .sample(&mut out)
            .expect("sample");
        let names: Vec<&str> = out.metadata.iter().map(|m| m.name.as_str()).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "a family declared twice");
        for o in &out.observations {
            let name = o.labels.metric_name().expect("metric name");
            assert!(unique.contains(name), "{name} has no family");
            assert!(
                o.labels.validate(&Default::default()).is_ok(),
                "{}",
                o.labels
            );
        }
        let identities: BTreeSet<String> = out
            .observations
            .iter()
            .map(|o| o.labels.to_string())
            .collect();
        assert_eq!(identities.len(), out.observations.len(), "a series twice");
        for m in &out.metadata {
            let want_kind = if m.name.starts_with("node_netstat_") {
                MetricKind::Unknown
            } else if m.name.ends_with("_total") {
                MetricKind::Counter
            } else {
                MetricKind::Gauge
            };
            assert_eq!(m.kind, want_kind, "{}", m.name);
            let base = m.name.trim_end_matches("_total");
            let want_unit = if base.ends_with("_bytes") {
                "bytes"
            } else if base.ends_with("_seconds") {
                "seconds"
            } else {
                ""
            };
            assert_eq!(m.unit, want_unit, "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
        }
    }

    #[test]
    fn parsers_never_panic_on_truncated_or_garbage_input() {
        let garbage = [
            "",
            "\n\n",
            ":",
            "::\n::",
            "Tcp:\nTcp:",
            "Tcp: a\nTcp: 99999999999999999999999",
            "6",
            "Ip6 1",
            "666 6",
            "some total=",
            "full total=-1 total=1",
            "1 2 x 1 2 3 4 5 6 7 8 9 10 11",
            "1 2 sda 99999999999999999999999 2 3 4 5 6 7 8 9 10 11",
            "\u{0}\u{feff}\u{10ffff}",
            "é6é 1",
        ];
        let fixtures = [
            DISKSTATS_14,
            DISKSTATS_18,
            DISKSTATS_20,
            PRESSURE_CPU,
            PRESSURE_MEMORY,
            PRESSURE_IO,
            FILE_NR,
            SNMP,
            NETSTAT,
            SNMP6,
        ];
        for text in fixtures.iter().chain(garbage.iter()) {
            for (end, _) in text.char_indices().chain([(text.len(), ' ')]) {
                let cut = &text[..end];
                let _ = parse_diskstats(cut);
                let _ = parse_pressure(cut);
                let _ = parse_file_nr(cut);
                let mut stats = Vec::new();
                parse_netstat_pairs(cut, &mut stats, &mut []);
                parse_snmp6(cut, &mut stats, &mut []);
                for name in cut.split_whitespace() {
                    let _ = is_excluded_disk(name);
                }
            }
        }
    }

    #[test]
    fn live_proc_of_this_host() {
        let mut out = Samples::default();
        SystemSampler::new(PathBuf::from("/"))
            .sample(&mut out)
            .expect("sample the real /proc");

        // Devices: exactly the non-excluded names of /proc/diskstats.
        let text = std::fs::read_to_string("/proc/diskstats").expect("read /proc/diskstats");
        let want: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .filter(|name| !is_excluded_disk(name))
            .map(str::to_string)
            .collect();
        assert_eq!(devices(&out, "node_disk_reads_completed_total"), want);

        // fs.file-max does not change while the test runs.
        let file_nr = std::fs::read_to_string("/proc/sys/fs/file-nr").expect("read file-nr");
        let maximum: f64 = file_nr
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("file-nr maximum");
        assert_eq!(out.value_of("node_filefd_maximum", &[]), Some(maximum));
        assert!(
            out.value_of("node_filefd_allocated", &[])
                .is_some_and(|a| a > 0.0)
        );

        for metric in [
            "node_netstat_Ip_Forwarding",
            "node_netstat_Tcp_ActiveOpens",
            "node_netstat_Tcp_CurrEstab",
            "node_netstat_TcpExt_ListenOverflows",
            "node_netstat_Udp_InDatagrams",
            "node_netstat_IpExt_InOctets",
        ] {
            assert!(out.value_of(metric, &[]).is_some(), "{metric}");
        }
        let forwarding = out.value_of("node_netstat_Ip_Forwarding", &[]);
        assert!(
            forwarding == Some(1.0) || forwarding == Some(2.0),
            "{forwarding:?}"
        );

        let psi = std::path::Path::new("/proc/pressure/io").exists();
        assert_eq!(
            out.value_of("node_pressure_io_waiting_seconds_total", &[])
                .is_some(),
            psi && std::fs::read("/proc/pressure/io").is_ok()
        );
        assert!(out.value_of("node_timex_sync_status", &[]).is_some());
    }
}
