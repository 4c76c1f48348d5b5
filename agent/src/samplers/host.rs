//! Host sampler: CPU, memory, load, filesystems, network, boot time and the
//! wall clock of this machine, read straight from /proc (and `statvfs(3)`)
//! and reported under node_exporter 1.5's metric names, types, labels and
//! units, so that dashboards and alert rules written for node_exporter work
//! unchanged.
//!
//! Everything is read relative to a root directory (normally `/`), so tests
//! can point the sampler at a fixture tree holding `proc/...` files.
//!
//! This file must never write to the system, spawn threads or processes, or
//! panic on anything the kernel (or a fixture) hands it; and one broken
//! optional source (a mount point, /proc/net/dev, /proc/loadavg) must never
//! hide the others. Only /proc/stat and /proc/meminfo are required: without
//! them a round is reported as failed.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nines_shared::{MetricKind, is_valid_metric_name};

use super::proc_file::ProcFile;
use super::{Family, SampleError, Samples, counter, gauge};

/// USER_HZ when `sysconf` cannot tell us: the kernel fixes the tick rate it
/// exports to user space at 100 on every architecture Linux supports today.
const FALLBACK_USER_HZ: f64 = 100.0;

/// How far (in seconds) a CPU's idle time may run backwards before we take
/// it as a CPU hotplug event and start that CPU's counters afresh. Smaller
/// backward steps are kernel jitter and are hidden, as node_exporter does.
const IDLE_JUMP_BACK_SECONDS: f64 = 3.0;

/// Time columns on a per-CPU line of /proc/stat (every kernel since 2.6.33).
const CPU_COLUMNS: usize = 10;
/// The first eight columns, reported as `node_cpu_seconds_total{mode=...}`.
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];
const IDLE: usize = 3;
const GUEST: usize = 8;
const GUEST_NICE: usize = 9;

/// Filesystem types node_exporter 1.5 leaves out by default: pseudo and
/// read-only image filesystems whose sizes mean nothing for capacity alerts.
const EXCLUDED_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

const CPU_SECONDS: Family = counter(
    "node_cpu_seconds_total",
    "seconds",
    "Time each CPU spent in each mode, in seconds.",
);
const CPU_GUEST_SECONDS: Family = counter(
    "node_cpu_guest_seconds_total",
    "seconds",
    "Time each CPU spent running guests (VMs), in seconds; also counted in user and nice.",
);
const INTERRUPTS: Family = counter("node_intr_total", "", "Interrupts serviced since boot.");
const CONTEXT_SWITCHES: Family = counter(
    "node_context_switches_total",
    "",
    "Context switches since boot.",
);
const FORKS: Family = counter(
    "node_forks_total",
    "",
    "Processes and threads created since boot.",
);
const PROCS_RUNNING: Family = gauge("node_procs_running", "", "Tasks currently runnable.");
const PROCS_BLOCKED: Family = gauge(
    "node_procs_blocked",
    "",
    "Tasks currently blocked waiting for I/O.",
);
const BOOT_TIME: Family = gauge(
    "node_boot_time_seconds",
    "seconds",
    "When the host booted, in seconds since the Unix epoch.",
);

const LOAD: [Family; 3] = [
    gauge("node_load1", "", "Load average over the last minute."),
    gauge("node_load5", "", "Load average over the last 5 minutes."),
    gauge("node_load15", "", "Load average over the last 15 minutes."),
];

const FS_SIZE: Family = gauge(
    "node_filesystem_size_bytes",
    "bytes",
    "Size of the filesystem, in bytes.",
);
const FS_FREE: Family = gauge(
    "node_filesystem_free_bytes",
    "bytes",
    "Free space on the filesystem, in bytes.",
);
const FS_AVAIL: Family = gauge(
    "node_filesystem_avail_bytes",
    "bytes",
    "Space available to unprivileged users on the filesystem, in bytes.",
);
const FS_FILES: Family = gauge(
    "node_filesystem_files",
    "",
    "File nodes (inodes) on the filesystem.",
);
const FS_FILES_FREE: Family = gauge(
    "node_filesystem_files_free",
    "",
    "Free file nodes (inodes) on the filesystem.",
);
const FS_READONLY: Family = gauge(
    "node_filesystem_readonly",
    "",
    "1 if the filesystem is mounted read-only, else 0.",
);

/// One family per /proc/net/dev column, in the file's column order.
const NET_COLUMNS: [Family; 16] = [
    counter(
        "node_network_receive_bytes_total",
        "bytes",
        "Bytes received by the network device.",
    ),
    counter(
        "node_network_receive_packets_total",
        "",
        "Packets received by the network device.",
    ),
    counter(
        "node_network_receive_errs_total",
        "",
        "Receive errors on the network device.",
    ),
    counter(
        "node_network_receive_drop_total",
        "",
        "Received packets the network device dropped.",
    ),
    counter(
        "node_network_receive_fifo_total",
        "",
        "Receive FIFO overruns on the network device.",
    ),
    counter(
        "node_network_receive_frame_total",
        "",
        "Receive framing, length and CRC errors on the network device.",
    ),
    counter(
        "node_network_receive_compressed_total",
        "",
        "Compressed packets received by the network device.",
    ),
    counter(
        "node_network_receive_multicast_total",
        "",
        "Multicast frames received by the network device.",
    ),
    counter(
        "node_network_transmit_bytes_total",
        "bytes",
        "Bytes sent by the network device.",
    ),
    counter(
        "node_network_transmit_packets_total",
        "",
        "Packets sent by the network device.",
    ),
    counter(
        "node_network_transmit_errs_total",
        "",
        "Transmit errors on the network device.",
    ),
    counter(
        "node_network_transmit_drop_total",
        "",
        "Outgoing packets the network device dropped.",
    ),
    counter(
        "node_network_transmit_fifo_total",
        "",
        "Transmit FIFO errors on the network device.",
    ),
    counter(
        "node_network_transmit_colls_total",
        "",
        "Collisions seen by the network device while sending.",
    ),
    counter(
        "node_network_transmit_carrier_total",
        "",
        "Transmit carrier, abort, heartbeat and window errors on the network device.",
    ),
    counter(
        "node_network_transmit_compressed_total",
        "",
        "Compressed packets sent by the network device.",
    ),
];

const TIME: Family = gauge(
    "node_time_seconds",
    "seconds",
    "The host's wall clock, in seconds since the Unix epoch.",
);

/// Samples the CPU, memory, load, filesystem, network and clock metrics of
/// the host whose /proc is found under a root directory, in node_exporter
/// 1.5's vocabulary.
#[derive(Debug)]
pub struct HostSampler {
    root: PathBuf,
    user_hz: f64,
    /// The CPU times last reported, per CPU id, so that counters never go
    /// backwards (see [`HostSampler::monotonic_cpu_times`]). Entries of CPUs
    /// that went offline are kept so that a CPU coming back continues from
    /// where it left off; the map is bounded by the number of CPU ids.
    reported_cpu: BTreeMap<u32, [f64; CPU_COLUMNS]>,
    stat: ProcFile,
    meminfo: ProcFile,
    loadavg: ProcFile,
    /// Our own mount table, and the host's for a /proc without it.
    own_mounts: ProcFile,
    mounts: ProcFile,
    mountinfo: ProcFile,
    net_dev: ProcFile,
    /// The meminfo fields read last round, whose names the next round
    /// takes over line by line where the file has not changed shape.
    meminfo_fields: Vec<MeminfoField>,
}

impl HostSampler {
    /// A sampler that reads `<root>/proc/...` and `statvfs`es mount points
    /// under `root`. `root` is normally `/`; tests pass a fixture directory.
    /// Reads USER_HZ (the unit of /proc/stat's times) once, here.
    pub fn new(root: PathBuf) -> Self {
        Self::with_user_hz(root, user_hz())
    }

    /// A sampler with a given USER_HZ, so tests get exact values on any host.
    fn with_user_hz(root: PathBuf, user_hz: f64) -> Self {
        let proc_file = |rel: &str| ProcFile::new(root.join("proc").join(rel));
        HostSampler {
            stat: proc_file("stat"),
            meminfo: proc_file("meminfo"),
            loadavg: proc_file("loadavg"),
            own_mounts: proc_file("self/mounts"),
            mounts: proc_file("mounts"),
            mountinfo: proc_file("self/mountinfo"),
            net_dev: proc_file("net/dev"),
            root,
            user_hz,
            reported_cpu: BTreeMap::new(),
            meminfo_fields: Vec::new(),
        }
    }

    /// Reads every source once and reports its values, declaring each
    /// metric family that has values.
    ///
    /// A missing or unparsable /proc/stat or /proc/meminfo is an error, but
    /// only after every other source has been reported: a broken file costs
    /// only its own series, and the caller still learns the round was
    /// incomplete. Other sources that cannot be read (load average, mounts,
    /// a single filesystem, /proc/net/dev, single malformed lines) are left
    /// out of the round without an error.
    pub fn sample(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let stat = self.sample_stat(out);
        let meminfo = self.sample_meminfo(out);
        self.sample_loadavg(out);
        self.sample_filesystems(out);
        self.sample_network(out);
        sample_clock(out);
        stat.and(meminfo)
    }

    fn sample_stat(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let text = self.stat.text()?;
        let stat = parse_stat(&text, self.user_hz)
            .map_err(|reason| parse_error(self.stat.path(), reason))?;

        CPU_SECONDS.declare(out);
        CPU_GUEST_SECONDS.declare(out);
        for (&cpu, &now) in &stat.cpus {
            let times = self.monotonic_cpu_times(cpu, now);
            let cpu = cpu.to_string();
            for (mode, seconds) in CPU_MODES.iter().zip(times) {
                out.push(CPU_SECONDS.name, &[("cpu", &cpu), ("mode", mode)], seconds);
            }
            // The kernel already counts guest time inside user and nice;
            // node_exporter reports it separately without subtracting.
            out.push(
                CPU_GUEST_SECONDS.name,
                &[("cpu", &cpu), ("mode", "user")],
                times[GUEST],
            );
            out.push(
                CPU_GUEST_SECONDS.name,
                &[("cpu", &cpu), ("mode", "nice")],
                times[GUEST_NICE],
            );
        }

        let scalars = [
            (&INTERRUPTS, stat.interrupts),
            (&CONTEXT_SWITCHES, stat.context_switches),
            (&FORKS, stat.forks),
            (&PROCS_RUNNING, stat.procs_running),
            (&PROCS_BLOCKED, stat.procs_blocked),
            (&BOOT_TIME, stat.boot_time),
        ];
        for (family, value) in scalars {
            if let Some(value) = value {
                family.declare(out);
                out.push(family.name, &[], value);
            }
        }
        Ok(())
    }

    /// node_exporter's guard against CPU counters that step backwards: the
    /// kernel's idle and iowait accounting can jitter down by a tick or two,
    /// which `rate()` would read as a counter reset and a huge spike. Each
    /// value is kept at its previous maximum, unless idle fell by at least
    /// [`IDLE_JUMP_BACK_SECONDS`], which means the CPU was unplugged and
    /// replugged and its counters really restarted.
    fn monotonic_cpu_times(&mut self, cpu: u32, now: [f64; CPU_COLUMNS]) -> [f64; CPU_COLUMNS] {
        let mut kept = match self.reported_cpu.get(&cpu) {
            Some(before) if before[IDLE] - now[IDLE] < IDLE_JUMP_BACK_SECONDS => *before,
            _ => [0.0; CPU_COLUMNS],
        };
        for (kept, now) in kept.iter_mut().zip(now) {
            if now >= *kept {
                *kept = now;
            }
        }
        self.reported_cpu.insert(cpu, kept);
        kept
    }

    fn sample_meminfo(&mut self, out: &mut Samples) -> Result<(), SampleError> {
        let text = self.meminfo.text()?;
        let before = std::mem::take(&mut self.meminfo_fields);
        let fields = parse_meminfo_reusing(&text, before)
            .map_err(|reason| parse_error(self.meminfo.path(), reason))?;
        for field in &fields {
            // node_exporter makes a key a counter only if it ends in
            // "_total"; no kernel key does today (HugePages_Total is upper
            // case), but keep the rule so a future one is typed the same.
            let kind = if field.metric.ends_with("_total") {
                MetricKind::Counter
            } else {
                MetricKind::Gauge
            };
            let unit = if field.in_bytes { "bytes" } else { "" };
            // The help follows from the key, as the name does.
            out.family_with_help(&field.metric, kind, unit, || {
                if field.in_bytes {
                    format!("{} from /proc/meminfo, in bytes.", field.key)
                } else {
                    format!("{} from /proc/meminfo.", field.key)
                }
            });
            out.push(&field.metric, &[], field.value);
        }
        self.meminfo_fields = fields;
        Ok(())
    }

    fn sample_loadavg(&mut self, out: &mut Samples) {
        let loads = match self.loadavg.text() {
            Ok(text) => parse_loadavg(&text),
            Err(e) => {
                tracing::debug!(error = %e, "leaving load averages out");
                return;
            }
        };
        let Some(loads) = loads else {
            tracing::debug!(path = %self.loadavg.path().display(), "unparsable load averages left out");
            return;
        };
        for (family, load) in LOAD.iter().zip(loads) {
            family.declare(out);
            out.push(family.name, &[], load);
        }
    }

    fn sample_filesystems(&mut self, out: &mut Samples) {
        // Our own mount table; /proc/mounts is the same file on current
        // kernels, but an older or trimmed-down /proc may only have that.
        let table = match self.own_mounts.read() {
            Ok(table) => table,
            Err(_) => match self.mounts.read() {
                Ok(table) => table,
                Err(e) => {
                    let own = self.own_mounts.path().display();
                    tracing::debug!(path = %own, error = %e, "leaving filesystems out");
                    return;
                }
            },
        };
        let mounts = parse_mounts(table);

        // Read-only as the filesystem itself is mounted (the superblock's
        // options in mountinfo), not as this process sees it: a sandbox
        // such as systemd's ProtectSystem=strict remounts everything
        // read-only for the agent alone, which statvfs would report.
        let superblock_ro = self
            .mountinfo
            .read()
            .map(parse_mountinfo_readonly)
            .unwrap_or_default();
        let mut declared = false;
        for mount in mounts {
            if is_excluded_mount_point(&mount.mount_point) || is_excluded_fs_type(&mount.fs_type) {
                continue;
            }
            // Strip every leading '/': joining an absolute path would
            // replace `root` instead of descending into it.
            let relative = match mount.mount_path.iter().position(|&b| b != b'/') {
                Some(start) => &mount.mount_path[start..],
                None => &[][..],
            };
            let path = self.root.join(OsStr::from_bytes(relative));
            let fs = match statvfs(&path) {
                Ok(fs) => fs,
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "filesystem left out");
                    continue;
                }
            };
            if !declared {
                for family in [
                    &FS_SIZE,
                    &FS_FREE,
                    &FS_AVAIL,
                    &FS_FILES,
                    &FS_FILES_FREE,
                    &FS_READONLY,
                ] {
                    family.declare(out);
                }
                declared = true;
            }

            let labels = [
                ("device", mount.device.as_str()),
                ("fstype", mount.fs_type.as_str()),
                ("mountpoint", mount.mount_point.as_str()),
            ];
            // Block counts are in units of the fragment size (f_frsize), not
            // f_bsize; multiply as floats so huge filesystems cannot overflow.
            let fragment = fs.f_frsize as f64;
            out.push(FS_SIZE.name, &labels, fs.f_blocks as f64 * fragment);
            out.push(FS_FREE.name, &labels, fs.f_bfree as f64 * fragment);
            out.push(FS_AVAIL.name, &labels, fs.f_bavail as f64 * fragment);
            out.push(FS_FILES.name, &labels, fs.f_files as f64);
            out.push(FS_FILES_FREE.name, &labels, fs.f_ffree as f64);
            let ro = superblock_ro
                .get(&mount.mount_point)
                .copied()
                .unwrap_or(fs.f_flag & libc::ST_RDONLY != 0);
            let readonly = if ro { 1.0 } else { 0.0 };
            out.push(FS_READONLY.name, &labels, readonly);
        }
    }

    fn sample_network(&mut self, out: &mut Samples) {
        let text = match self.net_dev.text() {
            Ok(text) => text,
            Err(e) => {
                tracing::debug!(error = %e, "leaving network devices out");
                return;
            }
        };
        let devices = parse_net_dev(&text);
        if !devices.is_empty() {
            for family in &NET_COLUMNS {
                family.declare(out);
            }
        }
        for device in devices {
            for (family, value) in NET_COLUMNS.iter().zip(device.counters) {
                out.push(family.name, &[("device", &device.name)], value);
            }
        }
    }
}

fn sample_clock(out: &mut Samples) {
    // A clock set before 1970 has no meaningful value to report.
    if let Ok(since_epoch) = SystemTime::now().duration_since(UNIX_EPOCH) {
        TIME.declare(out);
        out.push(TIME.name, &[], since_epoch.as_secs_f64());
    }
}

/// The kernel's USER_HZ, the unit of the times in /proc/stat.
fn user_hz() -> f64 {
    // SAFETY: sysconf takes no pointers and only reads configuration.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { FALLBACK_USER_HZ }
}

fn parse_error(path: &Path, reason: String) -> SampleError {
    SampleError::Parse {
        path: path.display().to_string(),
        reason,
    }
}

/// An unsigned decimal count as the kernel prints it. Rejects the signs,
/// exponents, "inf" and "NaN" that `f64::from_str` would let through.
fn parse_count(s: &str) -> Option<f64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().map(|n| n as f64)
}

/// What /proc/stat says, times already in seconds.
#[derive(Debug, Default)]
struct ProcStat {
    /// Per-CPU times by CPU id; the all-CPU "cpu" line is not kept, as
    /// node_exporter reports per-CPU series only.
    cpus: BTreeMap<u32, [f64; CPU_COLUMNS]>,
    interrupts: Option<f64>,
    context_switches: Option<f64>,
    forks: Option<f64>,
    procs_running: Option<f64>,
    procs_blocked: Option<f64>,
    boot_time: Option<f64>,
}

/// Parses /proc/stat. Any malformed line we rely on fails the whole file:
/// a CPU silently missing would make every per-host CPU sum wrong.
fn parse_stat(text: &str, user_hz: f64) -> Result<ProcStat, String> {
    let mut stat = ProcStat::default();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else {
            continue;
        };
        let slot = match key {
            "intr" => &mut stat.interrupts,
            "ctxt" => &mut stat.context_switches,
            "processes" => &mut stat.forks,
            "procs_running" => &mut stat.procs_running,
            "procs_blocked" => &mut stat.procs_blocked,
            "btime" => &mut stat.boot_time,
            "cpu" => continue,
            _ => {
                if let Some(id) = key.strip_prefix("cpu") {
                    let (id, times) = parse_cpu_line(key, id, fields, user_hz)?;
                    if stat.cpus.insert(id, times).is_some() {
                        return Err(format!("{key} appears twice"));
                    }
                }
                // Lines we do not report (page, swap, softirq, ...).
                continue;
            }
        };
        let value = fields
            .next()
            .ok_or_else(|| format!("{key} line has no value"))?;
        *slot = Some(parse_count(value).ok_or_else(|| format!("{key}: {value:?} is not a count"))?);
    }
    if stat.cpus.is_empty() {
        return Err("no per-CPU lines".to_string());
    }
    Ok(stat)
}

/// Parses the values of a `cpuN` line into seconds.
fn parse_cpu_line<'a>(
    key: &str,
    id: &str,
    values: impl Iterator<Item = &'a str>,
    user_hz: f64,
) -> Result<(u32, [f64; CPU_COLUMNS]), String> {
    let id = parse_count(id)
        .filter(|&id| id <= f64::from(u32::MAX))
        .ok_or_else(|| format!("{key} is not cpu followed by a CPU number"))? as u32;
    let mut times = [0.0; CPU_COLUMNS];
    let mut seen = 0;
    // Later kernels may append columns; those are ignored. Fewer than ten
    // means the line was cut short, since 2.6.33 always prints ten.
    for (time, value) in times.iter_mut().zip(values) {
        let jiffies =
            parse_count(value).ok_or_else(|| format!("{key}: {value:?} is not a count"))?;
        *time = jiffies / user_hz;
        seen += 1;
    }
    if seen < CPU_COLUMNS {
        return Err(format!(
            "{key} has {seen} time columns, expected {CPU_COLUMNS}"
        ));
    }
    Ok((id, times))
}

/// One /proc/meminfo line, named the way node_exporter names it.
#[derive(Debug, Clone, PartialEq)]
struct MeminfoField {
    /// The kernel's key, e.g. `Active(anon)`.
    key: String,
    /// e.g. `node_memory_Active_anon_bytes`.
    metric: String,
    value: f64,
    in_bytes: bool,
}

/// Parses /proc/meminfo. Lines that do not parse are skipped one by one:
/// the fields are independent, and one odd line from a future kernel must
/// not take MemAvailable alerts down with it. A file without MemTotal is not
/// meminfo at all and is an error.
#[cfg(test)]
fn parse_meminfo(text: &str) -> Result<Vec<MeminfoField>, String> {
    parse_meminfo_reusing(text, Vec::new())
}

/// [`parse_meminfo`], taking the key and name of a field of `before` (an
/// earlier read's fields) over for the line at the same place when it has
/// the same key and unit, so a steady file costs no allocation per line.
fn parse_meminfo_reusing(
    text: &str,
    mut before: Vec<MeminfoField>,
) -> Result<Vec<MeminfoField>, String> {
    let mut fields: Vec<MeminfoField> = Vec::with_capacity(before.len());
    for line in text.lines() {
        let Some(field) = parse_meminfo_line(line, before.get_mut(fields.len())) else {
            continue;
        };
        // A key twice would make two series with the same labels.
        if !fields.iter().any(|f| f.metric == field.metric) {
            fields.push(field);
        }
    }
    if !fields.iter().any(|f| f.key == "MemTotal") {
        return Err("no MemTotal line".to_string());
    }
    Ok(fields)
}

/// One meminfo line as a field; its key and name are taken from `earlier`
/// when that is a field of the same key and unit (its strings are then
/// left empty).
fn parse_meminfo_line(line: &str, earlier: Option<&mut MeminfoField>) -> Option<MeminfoField> {
    let (key, rest) = line.split_once(':')?;
    let key = key.trim();
    let mut words = rest.split_ascii_whitespace();
    let mut value = parse_count(words.next()?)?;
    let unit = words.next();
    if words.next().is_some() {
        return None;
    }
    let in_bytes = match unit {
        None => false,
        // The kernel's "kB" is KiB.
        Some("kB") => {
            value *= 1024.0;
            true
        }
        Some(_) => return None,
    };
    let same =
        |e: &&mut MeminfoField| !e.metric.is_empty() && e.key == key && e.in_bytes == in_bytes;
    if let Some(earlier) = earlier.filter(same) {
        // The name follows from the key and unit alone: the same as
        // building it again, and valid, since it was kept.
        return Some(MeminfoField {
            key: std::mem::take(&mut earlier.key),
            metric: std::mem::take(&mut earlier.metric),
            value,
            in_bytes,
        });
    }
    let name = meminfo_metric_key(key);
    let metric = if in_bytes {
        format!("node_memory_{name}_bytes")
    } else {
        format!("node_memory_{name}")
    };
    is_valid_metric_name(&metric).then(|| MeminfoField {
        key: key.to_string(),
        metric,
        value,
        in_bytes,
    })
}

/// node_exporter's renaming: the text from the first '(' to the last ')'
/// becomes '_' plus what was inside, so `Active(anon)` is `Active_anon`.
fn meminfo_metric_key(key: &str) -> String {
    match (key.find('('), key.rfind(')')) {
        (Some(open), Some(close)) if open < close => format!(
            "{}_{}{}",
            &key[..open],
            &key[open + 1..close],
            &key[close + 1..]
        ),
        _ => key.to_string(),
    }
}

/// The 1, 5 and 15 minute load averages from /proc/loadavg.
fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut loads = text
        .split_ascii_whitespace()
        .map(|s| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0));
    Some([loads.next()??, loads.next()??, loads.next()??])
}

/// One line of the mount table, escapes decoded.
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    device: String,
    /// The mount point as a label value.
    mount_point: String,
    /// The mount point's bytes, for statvfs: paths need not be UTF-8.
    mount_path: Vec<u8>,
    fs_type: String,
}

/// Parses /proc/self/mounts (fstab format). A mount point that appears more
/// than once is kept once, with the labels of its last line: a later mount
/// on the same point hides the earlier one, and statvfs on the path sees the
/// later one. Lines with fewer than four fields are skipped.
fn parse_mounts(table: &[u8]) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = Vec::new();
    for line in table.split(|&b| b == b'\n') {
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(device), Some(mount_path), Some(fs_type), Some(_options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_path = unescape_octal(mount_path);
        let mount = Mount {
            device: String::from_utf8_lossy(&unescape_octal(device)).into_owned(),
            mount_point: String::from_utf8_lossy(&mount_path).into_owned(),
            mount_path,
            fs_type: String::from_utf8_lossy(fs_type).into_owned(),
        };
        match mounts.iter_mut().find(|m| m.mount_path == mount.mount_path) {
            Some(earlier) => *earlier = mount,
            None => mounts.push(mount),
        }
    }
    mounts
}

/// Decodes the kernel's `\ooo` escapes (it writes space, tab, newline and
/// backslash that way so fields stay whitespace-separated). Anything that is
/// not a backslash and three octal digits of a byte value stays as it is.
/// Mount point → whether its filesystem (superblock) is read-only, from
/// /proc/self/mountinfo: `id parent dev root mountpoint opts ... - fstype
/// source superopts`. The last line for a mount point wins, as in the
/// mount table. Malformed lines are skipped.
fn parse_mountinfo_readonly(text: &[u8]) -> std::collections::HashMap<String, bool> {
    let mut out = std::collections::HashMap::new();
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let (Some(mount_point), Some(super_opts)) = (fields.get(4), fields.get(sep + 3)) else {
            continue;
        };
        let mount_point = String::from_utf8_lossy(&unescape_octal(mount_point)).into_owned();
        let ro = super_opts.split(|&b| b == b',').any(|o| o == b"ro");
        out.insert(mount_point, ro);
    }
    out
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'\\' {
            if let Some(byte) = tail.get(..3).and_then(octal_byte) {
                out.push(byte);
                rest = &tail[3..];
                continue;
            }
        }
        out.push(first);
        rest = tail;
    }
    out
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u16 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u16::from(d - b'0');
    }
    u8::try_from(value).ok()
}

/// node_exporter 1.5's default mount point exclusion,
/// `^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`,
/// as plain string checks. For the `.+` branches, any non-empty rest
/// matches (`.+` can run to the end of the text).
fn is_excluded_mount_point(mount_point: &str) -> bool {
    let Some(rest) = mount_point.strip_prefix('/') else {
        return false;
    };
    let whole_dir = ["dev", "proc", "sys"].iter().any(|dir| {
        rest.strip_prefix(dir)
            .is_some_and(|after| after.is_empty() || after.starts_with('/'))
    });
    let below_dir = [
        "run/credentials/",
        "var/lib/docker/",
        "var/lib/containers/storage/",
    ]
    .iter()
    .any(|dir| {
        rest.strip_prefix(dir)
            .is_some_and(|after| !after.is_empty())
    });
    whole_dir || below_dir
}

fn is_excluded_fs_type(fs_type: &str) -> bool {
    EXCLUDED_FS_TYPES.contains(&fs_type)
}

/// Calls `statvfs(3)` on `path`. This can block forever on a hung network
/// filesystem (NFS server gone); guarding against that would need a thread
/// per call, which this sampler does not use, so it is out of scope here.
fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut buf = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `buf` is
    // writable memory of exactly the struct's size.
    let rc = unsafe { libc::statvfs(path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct.
    Ok(unsafe { buf.assume_init() })
}

/// One /proc/net/dev line.
#[derive(Debug, Clone, PartialEq)]
struct NetDevice {
    name: String,
    /// In [`NET_COLUMNS`] order.
    counters: [f64; 16],
}

/// Parses /proc/net/dev. The two header lines have no colon and are
/// skipped like any other line that does not parse; devices are independent,
/// so one bad line only loses that device.
fn parse_net_dev(text: &str) -> Vec<NetDevice> {
    text.lines()
        .filter_map(|line| {
            // Split on the colon, not on whitespace: the kernel pads names to
            // six columns and a large first counter can touch the colon
            // (`eth0:12345678901 ...`). Device names cannot contain ':'.
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            let mut values = rest.split_ascii_whitespace();
            let mut counters = [0.0; 16];
            for counter in &mut counters {
                *counter = parse_count(values.next()?)?;
            }
            Some(NetDevice {
                name: name.to_string(),
                counters,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::Observation;
    use std::collections::BTreeSet;

    const STAT: &str = "\
cpu  600 10 300 5000 20 0 7 3 40 2
cpu0 100 0 50 1000 5 0 2 0 0 0
cpu1 500 10 250 4000 15 0 5 3 40 2
intr 123456 10 0 0 3 0 0 0
ctxt 987654
btime 1700000000
processes 4321
procs_running 3
procs_blocked 1
softirq 5555 0 1 2 3 4 5 6 7 8 9
";

    const MEMINFO: &str = "\
MemTotal:          16384 kB
MemFree:            2048 kB
MemAvailable:       8192 kB
Buffers:             512 kB
Cached:             4096 kB
SwapCached:            0 kB
Active:             6000 kB
Inactive:           3000 kB
Active(anon):       1520 kB
Inactive(anon):     3668 kB
Active(file):       4480 kB
Inactive(file):        0 kB
SwapTotal:          4096 kB
SwapFree:           4000 kB
HugePages_Total:       2
HugePages_Free:        1
HugePages_Rsvd:        0
HugePages_Surp:        0
Hugepagesize:       2048 kB
DirectMap4k:      123456 kB
";

    const LOADAVG: &str = "0.37 0.75 1.50 1/83 9100\n";

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0:12345678901   4495    1    2    3     4          5         6   326293    2876    7    8    9    10      11         12
 wlan0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
  bad0: 1 2 3
";

    const MOUNTS: &str = "\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
sysfs /sys sysfs rw 0 0
devtmpfs /dev devtmpfs rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
tmpfs /run tmpfs rw 0 0
tmpfs /run/credentials/getty.service tmpfs ro 0 0
/dev/sdb1 /data xfs rw 0 0
/dev/sdc1 /mnt/my\\040disk ext4 rw 0 0
/dev/sdd1 /var/lib/docker ext4 rw 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/sde1 /var/lib/docker/volumes ext4 rw 0 0
/dev/sdf1 /devices ext4 rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/sdg1 /data xfs rw 0 0
/dev/sdh1 /gone ext4 rw 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
short line
";

    /// Directories the mount fixture's points resolve to, excluded ones
    /// included, so that exclusion is shown to be by rule and not because
    /// statvfs failed.
    const MOUNT_DIRS: &[&str] = &[
        "proc",
        "sys/fs/cgroup",
        "dev/shm",
        "run/credentials/getty.service",
        "data",
        "mnt/my disk",
        "var/lib/docker/overlay2/abc/merged",
        "var/lib/docker/volumes",
        "devices",
        "snap/core/1",
    ];

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
            f.write("proc/stat", STAT);
            f.write("proc/meminfo", MEMINFO);
            f.write("proc/loadavg", LOADAVG);
            f.write("proc/net/dev", NET_DEV);
            f.write("proc/self/mounts", MOUNTS);
            for dir in MOUNT_DIRS {
                f.mkdir(dir);
            }
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
            std::fs::remove_file(self.dir.path().join(rel)).expect("remove fixture file");
        }

        fn mkdir(&self, rel: &str) {
            std::fs::create_dir_all(self.dir.path().join(rel)).expect("create fixture dir");
        }

        fn sampler(&self) -> HostSampler {
            HostSampler::with_user_hz(self.dir.path().to_path_buf(), 100.0)
        }

        fn sample(&self) -> (Samples, Result<(), SampleError>) {
            let mut out = Samples::default();
            let result = self.sampler().sample(&mut out);
            (out, result)
        }
    }

    fn series<'a>(out: &'a Samples, metric: &str) -> Vec<&'a Observation> {
        out.observations
            .iter()
            .filter(|o| o.labels.metric_name() == Some(metric))
            .collect()
    }

    fn cpu(out: &Samples, cpu: &str, mode: &str) -> Option<f64> {
        out.value_of("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)])
    }

    #[test]
    fn cpu_times_are_jiffies_over_user_hz_per_cpu_and_mode() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        // cpu0 100 0 50 1000 5 0 2 0 0 0 at USER_HZ 100.
        let want = [
            ("user", 1.0),
            ("nice", 0.0),
            ("system", 0.5),
            ("idle", 10.0),
            ("iowait", 0.05),
            ("irq", 0.0),
            ("softirq", 0.02),
            ("steal", 0.0),
        ];
        for (mode, seconds) in want {
            assert_eq!(cpu(&out, "0", mode), Some(seconds), "mode {mode}");
        }
        assert_eq!(cpu(&out, "1", "steal"), Some(0.03));
        // 2 CPUs x 8 modes; the all-CPU "cpu" line is not a series.
        assert_eq!(series(&out, "node_cpu_seconds_total").len(), 16);
        assert!(
            series(&out, "node_cpu_seconds_total")
                .iter()
                .all(|o| o.labels.get("cpu").is_some_and(|c| c == "0" || c == "1"))
        );
    }

    #[test]
    fn guest_time_is_reported_separately_and_not_subtracted_from_user() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        // cpu1 500 10 250 4000 15 0 5 3 40 2
        assert_eq!(cpu(&out, "1", "user"), Some(5.0));
        assert_eq!(cpu(&out, "1", "nice"), Some(0.1));
        let guest = |mode| {
            out.value_of(
                "node_cpu_guest_seconds_total",
                &[("cpu", "1"), ("mode", mode)],
            )
        };
        assert_eq!(guest("user"), Some(0.4));
        assert_eq!(guest("nice"), Some(0.02));
        assert_eq!(series(&out, "node_cpu_guest_seconds_total").len(), 4);
    }

    #[test]
    fn stat_counters_gauges_and_boot_time() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        assert_eq!(out.value_of("node_intr_total", &[]), Some(123456.0));
        assert_eq!(
            out.value_of("node_context_switches_total", &[]),
            Some(987654.0)
        );
        assert_eq!(out.value_of("node_forks_total", &[]), Some(4321.0));
        assert_eq!(out.value_of("node_procs_running", &[]), Some(3.0));
        assert_eq!(out.value_of("node_procs_blocked", &[]), Some(1.0));
        assert_eq!(out.value_of("node_boot_time_seconds", &[]), Some(1.7e9));
    }

    #[test]
    fn cpu_counters_never_step_back_unless_idle_jumps_back_by_three_seconds() {
        let f = Fixture::full();
        let mut sampler = f.sampler();
        let mut out = Samples::default();
        sampler.sample(&mut out).expect("first round");

        // user one tick lower, idle one second lower: jitter, hidden. cpu1
        // has gone offline and is no longer reported.
        f.write("proc/stat", "cpu0 99 0 50 900 6 0 2 0 0 0\n");
        let mut out = Samples::default();
        sampler.sample(&mut out).expect("second round");
        assert_eq!(cpu(&out, "0", "user"), Some(1.0));
        assert_eq!(cpu(&out, "0", "idle"), Some(10.0));
        assert_eq!(cpu(&out, "0", "iowait"), Some(0.06));
        assert_eq!(cpu(&out, "1", "user"), None);

        // Idle five seconds lower: a hotplug, the counters really restarted.
        f.write("proc/stat", "cpu0 20 0 10 500 1 0 0 0 0 0\n");
        let mut out = Samples::default();
        sampler.sample(&mut out).expect("third round");
        assert_eq!(cpu(&out, "0", "user"), Some(0.2));
        assert_eq!(cpu(&out, "0", "idle"), Some(5.0));
        assert_eq!(cpu(&out, "0", "iowait"), Some(0.01));
    }

    #[test]
    fn meminfo_kilobytes_become_bytes_with_node_exporter_names() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let mem = |name: &str| out.value_of(name, &[]);
        assert_eq!(mem("node_memory_MemTotal_bytes"), Some(16_777_216.0));
        assert_eq!(mem("node_memory_MemFree_bytes"), Some(2048.0 * 1024.0));
        assert_eq!(mem("node_memory_MemAvailable_bytes"), Some(8192.0 * 1024.0));
        assert_eq!(mem("node_memory_Buffers_bytes"), Some(512.0 * 1024.0));
        assert_eq!(mem("node_memory_Cached_bytes"), Some(4096.0 * 1024.0));
        assert_eq!(mem("node_memory_SwapTotal_bytes"), Some(4096.0 * 1024.0));
        assert_eq!(mem("node_memory_SwapFree_bytes"), Some(4000.0 * 1024.0));
        assert_eq!(mem("node_memory_Active_anon_bytes"), Some(1520.0 * 1024.0));
        assert_eq!(mem("node_memory_Inactive_file_bytes"), Some(0.0));
        assert_eq!(
            mem("node_memory_DirectMap4k_bytes"),
            Some(123456.0 * 1024.0)
        );
        // Every line of the fixture is reported.
        assert_eq!(
            out.observations
                .iter()
                .filter(|o| o
                    .labels
                    .metric_name()
                    .is_some_and(|n| n.starts_with("node_memory_")))
                .count(),
            MEMINFO.lines().count()
        );
        let meta = |name: &str| out.metadata.iter().find(|m| m.name == name);
        let total = meta("node_memory_MemTotal_bytes").expect("MemTotal family");
        assert_eq!(
            (total.kind, total.unit.as_str()),
            (MetricKind::Gauge, "bytes")
        );
    }

    #[test]
    fn meminfo_read_after_another_is_parsed_as_if_alone() {
        let texts = [
            MEMINFO,
            "MemTotal: 1 kB\nActive(anon): 2 kB\nHugePages_Total: 3\n",
            "MemTotal: 1 kB\nActive(anon): 2\nHugePages_Total: 3 kB\n",
            "MemTotal: 1 kB\nActive_anon: 2 kB\nActive(anon): 5 kB\nActive(anon): 6 kB\n",
            "Active(anon): 2 kB\nMemTotal: 1 kB\n: 4 kB\n: 5 kB\n:7\n",
            "MemTotal: 1 kB\nMemFree: x kB\nMemFree: 9 kB\nBuffers: 8 kB\n",
            "MemTotal: 1 kB\n",
            "MemFree: 9 kB\n",
            // A line that takes over a field and then turns out to repeat
            // one, followed by a line with an empty key.
            "Buffers: 1 kB\nMemTotal: 1 kB\n",
            "MemTotal: 1 kB\nMemTotal: 2 kB\n: 3 kB\n",
        ];
        for a in texts {
            for b in texts {
                let alone = parse_meminfo(b);
                let before = parse_meminfo(a).unwrap_or_default();
                assert_eq!(parse_meminfo_reusing(b, before), alone, "{a:?} then {b:?}");
                // And a third read of the same text.
                let twice = parse_meminfo_reusing(b, alone.clone().unwrap_or_default());
                assert_eq!(twice, alone, "{b:?} twice");
            }
        }
    }

    #[test]
    fn meminfo_lines_without_unit_keep_their_name_without_bytes_suffix() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        assert_eq!(out.value_of("node_memory_HugePages_Total", &[]), Some(2.0));
        assert_eq!(out.value_of("node_memory_HugePages_Free", &[]), Some(1.0));
        assert_eq!(out.value_of("node_memory_HugePages_Total_bytes", &[]), None);
        assert_eq!(
            out.value_of("node_memory_Hugepagesize_bytes", &[]),
            Some(2048.0 * 1024.0)
        );
        let huge = out
            .metadata
            .iter()
            .find(|m| m.name == "node_memory_HugePages_Total")
            .expect("HugePages_Total family");
        assert_eq!((huge.kind, huge.unit.as_str()), (MetricKind::Gauge, ""));
    }

    #[test]
    fn meminfo_garbage_lines_are_skipped_and_the_rest_reported() {
        let f = Fixture::full();
        f.write(
            "proc/meminfo",
            "MemTotal:   16384 kB\n\
             this is not meminfo\n\
             MemFree:    lots kB\n\
             Weird:      5 MB\n\
             Cached: 4096 kB extra\n\
             Negative:   -5 kB\n\
             Bad-Name:   1 kB\n\
             \n\
             Buffers:  512 kB\n",
        );
        let (out, result) = f.sample();
        result.expect("sample");
        let memory: Vec<_> = out
            .observations
            .iter()
            .filter_map(|o| o.labels.metric_name())
            .filter(|n| n.starts_with("node_memory_"))
            .collect();
        assert_eq!(
            memory,
            ["node_memory_MemTotal_bytes", "node_memory_Buffers_bytes"]
        );
    }

    #[test]
    fn meminfo_without_memtotal_is_a_parse_error_and_the_rest_is_still_reported() {
        let f = Fixture::full();
        f.write("proc/meminfo", "garbage\n\u{0}\u{1}\n:::\n");
        let (out, result) = f.sample();
        match result {
            Err(SampleError::Parse { path, .. }) => assert!(path.ends_with("proc/meminfo")),
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert!(cpu(&out, "0", "user").is_some());
        assert!(out.value_of("node_load1", &[]).is_some());
        assert!(
            out.metadata
                .iter()
                .all(|m| !m.name.starts_with("node_memory_"))
        );
    }

    #[test]
    fn truncated_stat_line_is_a_parse_error_and_other_sources_are_still_reported() {
        let f = Fixture::full();
        f.write(
            "proc/stat",
            "cpu  600 10 300 5000 20 0 7 3 40 2\ncpu0 100 0\nctxt 5\n",
        );
        let (out, result) = f.sample();
        match result {
            Err(SampleError::Parse { path, reason }) => {
                assert!(path.ends_with("proc/stat"), "{path}");
                assert!(reason.contains("cpu0"), "{reason}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        // Nothing from the broken file, not even its good lines.
        assert!(series(&out, "node_cpu_seconds_total").is_empty());
        assert_eq!(out.value_of("node_context_switches_total", &[]), None);
        assert_eq!(
            out.value_of("node_memory_MemTotal_bytes", &[]),
            Some(16_777_216.0)
        );
        assert_eq!(out.value_of("node_load5", &[]), Some(0.75));
        assert!(!series(&out, "node_network_receive_bytes_total").is_empty());
    }

    #[test]
    fn malformed_stat_values_are_parse_errors() {
        for bad in [
            "cpu0 1 2 3 4 x 6 7 8 9 10\n",
            "cpu0 1 2 3 4 -5 6 7 8 9 10\n",
            "cpuX 1 2 3 4 5 6 7 8 9 10\n",
            "cpu0 1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n",
            "cpu0 1 2 3 4 5 6 7 8 9 10\nctxt\n",
            "cpu0 1 2 3 4 5 6 7 8 9 10\nbtime soon\n",
            "just garbage\n",
            "",
        ] {
            assert!(parse_stat(bad, 100.0).is_err(), "{bad:?} should not parse");
        }
        // Columns a later kernel might append are ignored.
        let stat = parse_stat("cpu3 1 2 3 4 5 6 7 8 9 10 11 12\n", 100.0).expect("parse");
        assert_eq!(stat.cpus.get(&3).map(|t| t[9]), Some(0.1));
    }

    #[test]
    fn missing_stat_or_meminfo_is_a_read_error() {
        for file in ["proc/stat", "proc/meminfo"] {
            let f = Fixture::full();
            f.remove(file);
            let (out, result) = f.sample();
            match result {
                Err(SampleError::Read { path, .. }) => assert!(path.ends_with(file), "{path}"),
                other => panic!("expected a read error for {file}, got {other:?}"),
            }
            assert!(out.value_of("node_load1", &[]).is_some());
        }
    }

    #[test]
    fn missing_optional_sources_are_left_out_without_error() {
        let f = Fixture::empty();
        f.write("proc/stat", STAT);
        f.write("proc/meminfo", MEMINFO);
        let (out, result) = f.sample();
        result.expect("only stat and meminfo are required");
        assert_eq!(out.value_of("node_load1", &[]), None);
        assert!(series(&out, "node_filesystem_size_bytes").is_empty());
        assert!(series(&out, "node_network_receive_bytes_total").is_empty());
        // No family is declared for a source that reported nothing.
        assert!(out.metadata.iter().all(|m| {
            !m.name.starts_with("node_load")
                && !m.name.starts_with("node_filesystem_")
                && !m.name.starts_with("node_network_")
        }));
    }

    #[test]
    fn load_averages() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        assert_eq!(out.value_of("node_load1", &[]), Some(0.37));
        assert_eq!(out.value_of("node_load5", &[]), Some(0.75));
        assert_eq!(out.value_of("node_load15", &[]), Some(1.5));
        assert_eq!(parse_loadavg("0.1 0.2\n"), None);
        assert_eq!(parse_loadavg("0.1 NaN 0.3\n"), None);
    }

    #[test]
    fn net_dev_counters_per_device_including_lo_and_names_touching_the_colon() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let eth0 = |metric: &str| out.value_of(metric, &[("device", "eth0")]);
        let want = [
            ("node_network_receive_bytes_total", 12_345_678_901.0),
            ("node_network_receive_packets_total", 4495.0),
            ("node_network_receive_errs_total", 1.0),
            ("node_network_receive_drop_total", 2.0),
            ("node_network_receive_fifo_total", 3.0),
            ("node_network_receive_frame_total", 4.0),
            ("node_network_receive_compressed_total", 5.0),
            ("node_network_receive_multicast_total", 6.0),
            ("node_network_transmit_bytes_total", 326_293.0),
            ("node_network_transmit_packets_total", 2876.0),
            ("node_network_transmit_errs_total", 7.0),
            ("node_network_transmit_drop_total", 8.0),
            ("node_network_transmit_fifo_total", 9.0),
            ("node_network_transmit_colls_total", 10.0),
            ("node_network_transmit_carrier_total", 11.0),
            ("node_network_transmit_compressed_total", 12.0),
        ];
        for (metric, value) in want {
            assert_eq!(eth0(metric), Some(value), "{metric}");
        }
        assert_eq!(
            out.value_of("node_network_receive_bytes_total", &[("device", "lo")]),
            Some(3193.0)
        );
        assert_eq!(
            out.value_of("node_network_transmit_bytes_total", &[("device", "wlan0")]),
            Some(20.0)
        );
        let devices: BTreeSet<_> = series(&out, "node_network_receive_bytes_total")
            .iter()
            .filter_map(|o| o.labels.get("device"))
            .collect();
        // bad0's line is short and left out.
        assert_eq!(devices, BTreeSet::from(["eth0", "lo", "wlan0"]));
    }

    #[test]
    fn mount_point_exclusions_match_node_exporters_default_pattern() {
        let cases = [
            ("/", false),
            ("/dev", true),
            ("/dev/shm", true),
            ("/devices", false),
            ("/proc", true),
            ("/proc/sys/fs/binfmt_misc", true),
            ("/processes", false),
            ("/sys", true),
            ("/sys/fs/cgroup", true),
            ("/system", false),
            ("/run", false),
            ("/run/credentials", false),
            ("/run/credentials/", false),
            ("/run/credentials/getty.service", true),
            ("/var/lib/docker", false),
            ("/var/lib/docker/", false),
            ("/var/lib/docker/overlay2/x/merged", true),
            ("/var/lib/containers/storage", false),
            ("/var/lib/containers/storage/overlay", true),
            ("/home/dev", false),
            ("dev", false),
        ];
        for (mount_point, excluded) in cases {
            assert_eq!(
                is_excluded_mount_point(mount_point),
                excluded,
                "{mount_point}"
            );
        }
        assert!(is_excluded_fs_type("cgroup2"));
        assert!(is_excluded_fs_type("squashfs"));
        assert!(!is_excluded_fs_type("tmpfs"));
        assert!(!is_excluded_fs_type("ext4"));
    }

    #[test]
    fn readonly_comes_from_the_superblock_not_the_sandboxed_view() {
        let text = b"22 1 8:1 / / ro,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
23 22 8:2 / /data ro,nosuid - xfs /dev/sdb1 ro,attr2\n\
24 22 0:5 / /with\\040space rw - tmpfs tmpfs rw\n\
garbage line\n";
        let ro = parse_mountinfo_readonly(text);
        assert_eq!(ro.get("/"), Some(&false));
        assert_eq!(ro.get("/data"), Some(&true));
        assert_eq!(ro.get("/with space"), Some(&false));
        assert_eq!(ro.len(), 3);
    }

    #[test]
    fn octal_escapes_in_mount_table_are_decoded() {
        assert_eq!(unescape_octal(br"/mnt/my\040disk"), b"/mnt/my disk");
        assert_eq!(unescape_octal(br"a\011b\012c\134d"), b"a\tb\nc\\d");
        // Not an escape: left as written.
        assert_eq!(unescape_octal(br"\9ab"), br"\9ab");
        assert_eq!(unescape_octal(br"x\04"), br"x\04");
        assert_eq!(unescape_octal(br"\777"), br"\777");
        assert_eq!(unescape_octal(br"\\040"), br"\ ");
        assert_eq!(unescape_octal(b"\\"), b"\\");

        let mounts = parse_mounts(
            b"/dev/sdc1 /mnt/my\\040disk ext4 rw 0 0\nsshfs#a@b:/x\\040y /srv fuse.sshfs rw 0 0\n",
        );
        assert_eq!(mounts[0].mount_point, "/mnt/my disk");
        assert_eq!(mounts[0].mount_path, b"/mnt/my disk");
        assert_eq!(mounts[1].device, "sshfs#a@b:/x y");
    }

    #[test]
    fn filesystems_from_fixture_mounts_with_exclusions_and_duplicates() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let reported: BTreeSet<(String, String, String)> =
            series(&out, "node_filesystem_size_bytes")
                .iter()
                .map(|o| {
                    let label = |name| o.labels.get(name).unwrap_or_default().to_string();
                    (label("mountpoint"), label("device"), label("fstype"))
                })
                .collect();
        let want: BTreeSet<(String, String, String)> = [
            ("/", "/dev/sda1", "ext4"),
            ("/run", "tmpfs", "tmpfs"),
            // Mounted twice: reported once, as the later mount.
            ("/data", "/dev/sdg1", "xfs"),
            ("/mnt/my disk", "/dev/sdc1", "ext4"),
            ("/var/lib/docker", "/dev/sdd1", "ext4"),
            ("/devices", "/dev/sdf1", "ext4"),
            // /gone has no directory, so statvfs fails and it is left out.
        ]
        .into_iter()
        .map(|(m, d, t)| (m.to_string(), d.to_string(), t.to_string()))
        .collect();
        assert_eq!(reported, want);

        for family in [
            &FS_SIZE,
            &FS_FREE,
            &FS_AVAIL,
            &FS_FILES,
            &FS_FILES_FREE,
            &FS_READONLY,
        ] {
            assert_eq!(
                series(&out, family.name).len(),
                want.len(),
                "{}",
                family.name
            );
        }
        let data = [
            ("device", "/dev/sdg1"),
            ("fstype", "xfs"),
            ("mountpoint", "/data"),
        ];
        let value = |metric| out.value_of(metric, &data).expect(metric);
        let size = value("node_filesystem_size_bytes");
        let free = value("node_filesystem_free_bytes");
        let avail = value("node_filesystem_avail_bytes");
        assert!(
            size > 0.0 && free <= size && avail <= free,
            "{size} {free} {avail}"
        );
        assert!(value("node_filesystem_files_free") <= value("node_filesystem_files"));
        // The fixture lives in a writable temp dir.
        assert_eq!(value("node_filesystem_readonly"), 0.0);
    }

    #[test]
    fn mount_table_falls_back_to_proc_mounts() {
        let f = Fixture::full();
        f.remove("proc/self/mounts");
        f.write("proc/mounts", "/dev/sdb1 /data xfs rw 0 0\n");
        let (out, result) = f.sample();
        result.expect("sample");
        let mounts: Vec<_> = series(&out, "node_filesystem_avail_bytes")
            .iter()
            .filter_map(|o| o.labels.get("mountpoint"))
            .collect();
        assert_eq!(mounts, ["/data"]);
    }

    #[test]
    fn mount_points_cannot_escape_the_root() {
        let f = Fixture::full();
        // Leading slashes are all stripped before joining onto the root, so
        // "//data" resolves inside the fixture and "//nowhere" does not
        // fall through to the real "/nowhere".
        f.write(
            "proc/self/mounts",
            "a //data ext4 rw 0 0\nb //etc ext4 rw 0 0\n",
        );
        let (out, result) = f.sample();
        result.expect("sample");
        let mounts: Vec<_> = series(&out, "node_filesystem_size_bytes")
            .iter()
            .filter_map(|o| o.labels.get("mountpoint"))
            .collect();
        assert_eq!(mounts, ["//data"]);
    }

    #[test]
    fn every_series_has_one_family_with_matching_kind_and_unit() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
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
        for m in &out.metadata {
            let want_kind = if m.name.ends_with("_total") {
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
    fn node_time_seconds_is_the_wall_clock() {
        let (out, result) = Fixture::full().sample();
        result.expect("sample");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let reported = out
            .value_of("node_time_seconds", &[])
            .expect("node_time_seconds");
        assert!((now - reported).abs() < 60.0, "{now} vs {reported}");
    }

    #[test]
    fn parsers_never_panic_on_truncated_or_garbage_input() {
        let garbage = [
            "",
            "\n\n",
            "cpu",
            "cpu0",
            "cpu18446744073709551616 1 2 3 4 5 6 7 8 9 10",
            "cpu0 99999999999999999999999 1 2 3 4 5 6 7 8 9",
            "(((:",
            ")(: 1",
            "Active(: 1 kB",
            "é(ü): 1 kB",
            "MemTotal: 99999999999999999999999 kB",
            "\\",
            "\\0",
            "a \\12",
            ":::: :: :",
            "\u{0}\u{feff}\u{10ffff}",
        ];
        let fixtures = [STAT, MEMINFO, LOADAVG, NET_DEV, MOUNTS];
        for text in fixtures.iter().chain(garbage.iter()) {
            for (end, _) in text.char_indices().chain([(text.len(), ' ')]) {
                let cut = &text[..end];
                let _ = parse_stat(cut, 100.0);
                let _ = parse_meminfo(cut);
                let _ = parse_loadavg(cut);
                let _ = parse_net_dev(cut);
                let _ = parse_mounts(cut.as_bytes());
            }
        }
    }

    /// This host's MemTotal in bytes, read independently of the sampler.
    fn live_meminfo_total() -> f64 {
        let text = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
        let line = text
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .expect("MemTotal line");
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("MemTotal value");
        kb * 1024.0
    }

    #[test]
    fn live_proc_of_this_host() {
        let mut sampler = HostSampler::new(PathBuf::from("/"));
        let mut out = Samples::default();
        sampler.sample(&mut out).expect("sample the real /proc");

        assert_eq!(
            out.value_of("node_memory_MemTotal_bytes", &[]),
            Some(live_meminfo_total())
        );
        assert!(!series(&out, "node_cpu_seconds_total").is_empty());
        let boot = out
            .value_of("node_boot_time_seconds", &[])
            .expect("node_boot_time_seconds");
        assert!(boot > 1e9, "{boot}");

        // "/" is reported unless its (topmost) mount is of an excluded type.
        let table = std::fs::read("/proc/self/mounts").expect("read /proc/self/mounts");
        let root_mount = parse_mounts(&table)
            .into_iter()
            .find(|m| m.mount_point == "/")
            .expect("a mount on /");
        let root_reported = series(&out, "node_filesystem_size_bytes")
            .iter()
            .any(|o| o.labels.get("mountpoint") == Some("/"));
        assert_eq!(root_reported, !is_excluded_fs_type(&root_mount.fs_type));
    }
}
