//! Access-log tailer: follows one web server access log (nginx, Apache or a
//! custom layout) and keeps cumulative request counters and a request
//! latency histogram that a sampling round snapshots with
//! [`AccessLogTailer::sample`].
//!
//! It reads only complete lines, from where it left off: the position
//! (file identity, offset, and the last bytes of the lines counted up to
//! it) is saved in a small state file after every chunk, so a restarted
//! agent neither counts a line twice nor skips one. It follows rotation by
//! rename (the old file is read to its end, then the new one from its
//! start) and by copy-truncate (a file shorter than the position, or whose
//! bytes just before the position are no longer the ones read there, is
//! read again from its start), whether the agent was running or stopped
//! when it happened.
//!
//! This file must never write to the log, hold more than one line (plus a
//! read buffer) in memory, let the log's content choose unbounded label
//! values (methods and virtual hosts are capped), or panic on any byte a
//! log holds. A missing log is not an error: it is picked up when it
//! appears.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nines_shared::MetricKind;
use regex::bytes::Regex;

use super::histogram::Histogram;
use super::{SampleError, Samples};

/// The `$request` field and the rest of the combined layout after the
/// client's address, identity, user and time. Quoted fields allow `\"`
/// escapes (Apache writes them; nginx writes `\x22`). Byte mode (`-u`),
/// as logs may hold any bytes.
const COMBINED: &str = r#"\S+ \S+ \S+ \[[^\]]*\] "(?:(?P<method>[A-Za-z]+) )?(?:[^"\\]|\\.)*" (?P<status>[0-9]{3}) \S+ "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*""#;

/// A request time in seconds with an optional fraction (`0.004`, `3`).
const SECONDS_FIELD: &str = r" (?P<request_time>[0-9]+(?:\.[0-9]+)?)\s*$";

/// A request time in whole microseconds (Apache `%D`).
const MICROSECONDS_FIELD: &str = r" (?P<request_time_us>[0-9]+)\s*$";

/// Longest line kept in memory while waiting for its newline; a longer one
/// is counted as unparsed without being held.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Bytes read per chunk; the position is saved after each.
const CHUNK_BYTES: usize = 256 * 1024;

/// Most bytes read from one file per poll, so a huge backlog is spread
/// over several rounds instead of stalling one.
const MAX_BYTES_PER_POLL: u64 = 64 * 1024 * 1024;

/// How many of the last bytes read are kept to recognise the file's
/// content at the read position: a copy-truncate that has grown past the
/// position by the next poll (or by the agent's restart) has other bytes
/// there (log lines carry times).
const FINGERPRINT_BYTES: usize = 64;

/// Longest virtual host name taken from a log (DNS names are at most 253).
const MAX_VHOST_LEN: usize = 253;

/// Methods reported by name; any other becomes `other`, so a client
/// sending made-up methods cannot create series.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Metric names.
const REQUESTS: &str = "nines_http_requests_total";
const DURATION: &str = "nines_http_request_duration_seconds";
const LINES: &str = "nines_access_log_lines_total";
const UNPARSED: &str = "nines_access_log_unparsed_lines_total";
const ROTATIONS: &str = "nines_access_log_rotations_total";
const PRESENT: &str = "nines_access_log_file_present";

/// The unit of a log's request-time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// Seconds, possibly fractional: nginx `$request_time`, Apache `%T`.
    Seconds,
    /// Milliseconds: Apache `%{ms}T`.
    Milliseconds,
    /// Microseconds: Apache `%D`, `%{us}T`.
    Microseconds,
}

impl TimeUnit {
    fn to_seconds(self, v: f64) -> f64 {
        match self {
            TimeUnit::Seconds => v,
            TimeUnit::Milliseconds => v / 1e3,
            TimeUnit::Microseconds => v / 1e6,
        }
    }
}

/// How the log's lines are laid out.
///
/// The presets all start from the "combined" layout
/// (`$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent"`, Apache's
/// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"`) with the
/// request time appended as the last field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// `nginx_combined_rt`: combined, then nginx `$request_time` (seconds).
    NginxCombinedRt,
    /// `apache_combined_d`: combined, then Apache `%D` (microseconds).
    ApacheCombinedD,
    /// `vhost_combined_rt`: `$host` first, then combined, then
    /// `$request_time` (seconds).
    VhostCombinedRt,
    /// A regular expression (Rust `regex` syntax, matched against the raw
    /// bytes of a line without its newline; start it with `(?-u)` if the
    /// log may hold bytes that are not UTF-8) with named groups: `status`
    /// (required, three digits), exactly one of `request_time` (seconds) or
    /// `request_time_us` (microseconds), and optionally `method` and
    /// `vhost`. A line the expression does not match is unparsed.
    Custom(String),
}

impl LogFormat {
    /// The preset called `name` (`nginx_combined_rt`, `apache_combined_d`,
    /// `vhost_combined_rt`), for configuration files.
    pub fn preset(name: &str) -> Option<LogFormat> {
        match name {
            "nginx_combined_rt" => Some(LogFormat::NginxCombinedRt),
            "apache_combined_d" => Some(LogFormat::ApacheCombinedD),
            "vhost_combined_rt" => Some(LogFormat::VhostCombinedRt),
            _ => None,
        }
    }

    fn regex_source(&self) -> String {
        match self {
            LogFormat::NginxCombinedRt => format!("(?-u)^{COMBINED}{SECONDS_FIELD}"),
            LogFormat::ApacheCombinedD => format!("(?-u)^{COMBINED}{MICROSECONDS_FIELD}"),
            LogFormat::VhostCombinedRt => {
                format!(r"(?-u)^(?P<vhost>\S+) {COMBINED}{SECONDS_FIELD}")
            }
            LogFormat::Custom(re) => re.clone(),
        }
    }
}

/// Settings of one access-log tailer.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// The log file. Also the `path` label of the tailer's own metrics.
    pub path: PathBuf,
    /// Its layout.
    pub format: LogFormat,
    /// The `vhost` label when the layout has no `vhost` group (or a line
    /// leaves it empty). `None`: no `vhost` label.
    pub vhost: Option<String>,
    /// The unit of the request-time field, when not the layout's own:
    /// `request_time` is seconds and `request_time_us` microseconds unless
    /// this says otherwise (say milliseconds for Apache `%{ms}T`).
    pub time_unit: Option<TimeUnit>,
    /// Most distinct `vhost` values taken from the log; requests of later
    /// ones are reported as `vhost="other"`. Default 64.
    pub max_vhosts: usize,
    /// With no saved position, read a log that exists at start from its
    /// beginning (`true`) or from its end (`false`, the default: old lines
    /// would be counted as if they had just happened).
    pub read_existing: bool,
}

impl AccessLogConfig {
    /// Settings for `path` in `format`, everything else default.
    pub fn new(path: impl Into<PathBuf>, format: LogFormat) -> Self {
        AccessLogConfig {
            path: path.into(),
            format,
            vhost: None,
            time_unit: None,
            max_vhosts: 64,
            read_existing: false,
        }
    }
}

/// Which file a path names: the same path may name another file after a
/// rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> Self {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// The last bytes (at most [`FINGERPRINT_BYTES`]) of a file before some
/// offset, held inline so that a [`Position`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u8,
    bytes: [u8; FINGERPRINT_BYTES],
}

impl Fingerprint {
    const EMPTY: Fingerprint = Fingerprint {
        len: 0,
        bytes: [0; FINGERPRINT_BYTES],
    };

    /// The last [`FINGERPRINT_BYTES`] of `bytes`.
    fn of(bytes: &[u8]) -> Self {
        let mut f = Fingerprint::EMPTY;
        f.extend(bytes);
        f
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes that follow are `more`: keeps the last
    /// [`FINGERPRINT_BYTES`] of the two together.
    fn extend(&mut self, more: &[u8]) {
        if more.len() >= FINGERPRINT_BYTES {
            self.bytes
                .copy_from_slice(&more[more.len() - FINGERPRINT_BYTES..]);
            self.len = FINGERPRINT_BYTES as u8;
            return;
        }
        let keep = usize::from(self.len).min(FINGERPRINT_BYTES - more.len());
        let from = usize::from(self.len) - keep;
        self.bytes.copy_within(from..from + keep, 0);
        self.bytes[keep..keep + more.len()].copy_from_slice(more);
        self.len = (keep + more.len()) as u8;
    }

    /// Lower-case hex, for the state file.
    fn to_hex(self) -> String {
        self.as_slice().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<Self> {
        if text.len() % 2 != 0
            || text.len() > 2 * FINGERPRINT_BYTES
            || !text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let mut f = Fingerprint::EMPTY;
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            f.bytes[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        f.len = (text.len() / 2) as u8;
        Some(f)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// Where to go on reading a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    id: FileId,
    /// Start of the first line not yet counted.
    offset: u64,
    /// The last bytes before `offset` (the end of the lines counted), to
    /// tell on a restart whether the file still holds them there; empty
    /// when not known (a state file written before they were saved).
    before: Fingerprint,
}

/// One open log file being read.
#[derive(Debug)]
struct Tail {
    file: File,
    id: FileId,
    /// Bytes read from the file so far (its read position).
    offset: u64,
    /// Start of the line in progress: the resume point.
    line_start: u64,
    /// The line in progress, while shorter than [`MAX_LINE_BYTES`].
    partial: Vec<u8>,
    /// The line in progress grew past [`MAX_LINE_BYTES`]: its bytes are
    /// dropped until its newline, then it is counted as unparsed.
    overlong: bool,
    /// The last bytes read (at most [`FINGERPRINT_BYTES`]), ending at
    /// `offset`.
    seen: Fingerprint,
    /// The last bytes of the lines counted, ending at `line_start`.
    counted: Fingerprint,
}

impl Tail {
    fn position(&self) -> Position {
        Position {
            id: self.id,
            offset: self.line_start,
            before: self.counted,
        }
    }
}

/// What a line yielded.
struct Request<'a> {
    method: &'static str,
    status_class: &'static str,
    vhost: Option<&'a [u8]>,
    seconds: f64,
}

/// A compiled layout.
#[derive(Debug)]
struct LineParser {
    regex: Regex,
    time_group: &'static str,
    unit: TimeUnit,
}

impl LineParser {
    fn new(format: &LogFormat, unit: Option<TimeUnit>) -> Result<Self, String> {
        let regex = Regex::new(&format.regex_source()).map_err(|e| e.to_string())?;
        let has = |g: &str| regex.capture_names().flatten().any(|n| n == g);
        if !has("status") {
            return Err("the format has no `status` group".into());
        }
        let (time_group, own_unit) = match (has("request_time"), has("request_time_us")) {
            (true, false) => ("request_time", TimeUnit::Seconds),
            (false, true) => ("request_time_us", TimeUnit::Microseconds),
            _ => {
                return Err(
                    "the format needs exactly one of the groups `request_time` (seconds) and `request_time_us` (microseconds)"
                        .into(),
                );
            }
        };
        Ok(LineParser {
            regex,
            time_group,
            unit: unit.unwrap_or(own_unit),
        })
    }

    /// The request a line describes, or `None` if it does not match or its
    /// status or time is not a number.
    fn parse<'a>(&self, line: &'a [u8]) -> Option<Request<'a>> {
        let caps = self.regex.captures(line)?;
        let status = caps.name("status")?.as_bytes();
        if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let time = caps.name(self.time_group)?.as_bytes();
        let seconds = std::str::from_utf8(time)
            .ok()?
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| self.unit.to_seconds(t))?;
        let method = caps
            .name("method")
            .and_then(|m| METHODS.iter().find(|k| k.as_bytes() == m.as_bytes()))
            .copied()
            .unwrap_or("other");
        Some(Request {
            method,
            status_class: status_class(status[0]),
            vhost: caps.name("vhost").map(|v| v.as_bytes()),
            seconds,
        })
    }
}

fn status_class(first_digit: u8) -> &'static str {
    match first_digit {
        b'2' => "2xx",
        b'3' => "3xx",
        b'4' => "4xx",
        b'5' => "5xx",
        _ => "other",
    }
}

/// Follows one access log and counts its requests. Call
/// [`AccessLogTailer::poll`] to read what is new and
/// [`AccessLogTailer::sample`] to report; both do blocking file I/O.
///
/// Limits: lines a server writes to a log after the agent stopped and
/// before that log was rotated away (renamed, or copied and truncated) are
/// not read (the restarted agent finds another file, or other content, at
/// the path and starts it from its beginning); a copy-truncate is told
/// from appends by the last [`FINGERPRINT_BYTES`] bytes before the
/// position, so new content that is exactly as long as the old position
/// and ends in the same bytes would be taken for the old (log lines carry
/// times, so it does not); and the counters start from zero with the agent
/// process, as Prometheus counters do, so only the position survives a
/// restart. Two tailers reporting the same `vhost` would report the same
/// series: give each log its own `vhost`.
#[derive(Debug)]
pub struct AccessLogTailer {
    path: PathBuf,
    path_label: String,
    parser: LineParser,
    static_vhost: String,
    max_vhosts: usize,
    state_file: PathBuf,
    /// The file the path named when last looked at.
    current: Option<Tail>,
    /// The file the path named before a rotation, kept open until a poll
    /// finds nothing new in it, for lines the server wrote before it
    /// reopened its log.
    draining: Option<Tail>,
    /// Where to start in the first file opened, if it is that file: from
    /// the state file, or the end of the log found at start.
    resume: Option<Position>,
    /// Last position written to the state file.
    saved: Option<Position>,
    buf: Vec<u8>,
    present: bool,
    /// Problems already logged, so a lasting one is logged once (and a
    /// different or renewed one again).
    logged_missing: bool,
    logged_error: Option<io::ErrorKind>,
    error_this_poll: bool,
    logged_save_error: bool,
    lines: u64,
    unparsed: u64,
    rotations: u64,
    requests: BTreeMap<(String, &'static str, &'static str), u64>,
    durations: BTreeMap<String, Histogram>,
}

impl AccessLogTailer {
    /// A tailer for `cfg.path` keeping its position under `state_dir`
    /// (created if needed) in `access-log-<hash of the path>.pos`. Reads
    /// nothing from the log yet. Fails if the format is not usable (bad
    /// regex, missing groups) or the state directory cannot be created.
    pub fn new(cfg: AccessLogConfig, state_dir: &Path) -> Result<Self, SampleError> {
        let path_label = cfg.path.display().to_string();
        let parser =
            LineParser::new(&cfg.format, cfg.time_unit).map_err(|reason| SampleError::Parse {
                path: path_label.clone(),
                reason,
            })?;
        fs::create_dir_all(state_dir).map_err(|source| SampleError::Read {
            path: state_dir.display().to_string(),
            source,
        })?;
        let state_file = state_dir.join(format!(
            "access-log-{:016x}.pos",
            fnv1a(cfg.path.as_os_str().as_bytes())
        ));
        let saved = load_position(&state_file, &path_label);
        let resume = match saved {
            Some(p) => Some(p),
            None if cfg.read_existing => None,
            None => end_of(&cfg.path),
        };
        let mut tailer = AccessLogTailer {
            path: cfg.path,
            path_label,
            parser,
            static_vhost: cfg.vhost.unwrap_or_default(),
            max_vhosts: cfg.max_vhosts,
            state_file,
            current: None,
            draining: None,
            resume,
            saved,
            buf: vec![0; CHUNK_BYTES],
            present: false,
            logged_missing: false,
            logged_error: None,
            error_this_poll: false,
            logged_save_error: false,
            lines: 0,
            unparsed: 0,
            rotations: 0,
            requests: BTreeMap::new(),
            durations: BTreeMap::new(),
        };
        // Starting at the end of an existing log is a decision to keep:
        // after a restart before the first poll, lines written meanwhile
        // must still be read.
        if let Some(p) = resume.filter(|_| saved.is_none()) {
            tailer.save(p);
        }
        Ok(tailer)
    }

    /// Reads every complete line added since the last poll (up to 64 MiB
    /// per file per poll), following rotation, and saves the position.
    /// Problems (unreadable file, state not writable) are logged once and
    /// retried on the next poll.
    pub fn poll(&mut self) {
        self.error_this_poll = false;
        // The file rotated away last time: what the server still wrote to
        // it before reopening its log.
        if let Some(mut old) = self.draining.take() {
            match self.read_new(&mut old, false) {
                Ok(0) | Err(_) => self.finish(old),
                Ok(_) => self.draining = Some(old),
            }
        }
        // Look at the path before reading the current file to its end, so
        // that lines written to it up to a rename are all read before the
        // switch.
        let at_path = fs::metadata(&self.path);
        let mut current_read = 0;
        if let Some(mut cur) = self.current.take() {
            self.check_truncation(&mut cur);
            match self.read_new(&mut cur, true) {
                Ok(n) => current_read = n,
                Err(e) => self.log_error(&e),
            }
            self.current = Some(cur);
        }
        match at_path {
            Ok(meta) => {
                self.present = true;
                self.logged_missing = false;
                if self.current.as_ref().map(|c| c.id) != Some(FileId::of(&meta)) {
                    self.switch();
                }
            }
            Err(e) => {
                self.present = false;
                if e.kind() == io::ErrorKind::NotFound {
                    if !self.logged_missing {
                        tracing::info!(path = %self.path_label, "access log not there (yet); waiting for it");
                        self.logged_missing = true;
                    }
                } else {
                    self.log_error(&e);
                }
                // A deleted log nobody writes to any more would pin its
                // disk space for as long as it stays open.
                let deleted = self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.file.metadata().is_ok_and(|m| m.nlink() == 0));
                if deleted && current_read == 0 {
                    if let Some(cur) = self.current.take() {
                        self.finish(cur);
                    }
                }
            }
        }
        if !self.error_this_poll {
            self.logged_error = None;
        }
    }

    /// Opens the file the path names now; the one open so far (if any)
    /// goes on being drained.
    fn switch(&mut self) {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                // Rotated again between the look and the open, or not
                // readable: the next poll tries again.
                self.log_error(&e);
                return;
            }
        };
        let id = match file.metadata() {
            Ok(m) => FileId::of(&m),
            Err(e) => {
                self.log_error(&e);
                return;
            }
        };
        if let Some(old) = self.current.take() {
            self.rotations += 1;
            tracing::info!(path = %self.path_label, "access log rotated; following the new file");
            // Rotations faster than polls: the oldest file is done.
            if let Some(older) = self.draining.replace(old) {
                self.finish(older);
            }
        }
        // Resume only in the very file the position belongs to: any other
        // file is new since, and read from its start.
        let start = self.resume.take().filter(|p| p.id == id);
        let mut tail = Tail {
            file,
            id,
            offset: 0,
            line_start: 0,
            partial: Vec::new(),
            overlong: false,
            seen: Fingerprint::EMPTY,
            counted: Fingerprint::EMPTY,
        };
        if let Some(p) = start.filter(|p| p.offset > 0) {
            match tail.file.seek(SeekFrom::Start(p.offset)) {
                Ok(_) => {
                    tail.offset = p.offset;
                    tail.line_start = p.offset;
                    // What was read before the position, as saved then:
                    // not what the file holds there now.
                    tail.seen = p.before;
                    tail.counted = p.before;
                }
                Err(e) => self.log_error(&e),
            }
        }
        // A position past the end, or other bytes before it than the ones
        // counted there, means the file was truncated meanwhile.
        self.check_truncation(&mut tail);
        self.save(tail.position());
        if let Err(e) = self.read_new(&mut tail, true) {
            self.log_error(&e);
        }
        self.current = Some(tail);
    }

    /// Starts a file over from its beginning if it was truncated since the
    /// last read (copy-truncate rotation): it is now shorter than what was
    /// read, or it has grown past that again but the bytes just before the
    /// read position are not the ones read there. Lines written between
    /// the last read and the truncation are lost; nothing can see them.
    fn check_truncation(&mut self, tail: &mut Tail) {
        let Ok(meta) = tail.file.metadata() else {
            return;
        };
        let shorter = meta.len() < tail.offset;
        if !shorter && !self.rewritten(tail) {
            return;
        }
        if let Err(e) = tail.file.seek(SeekFrom::Start(0)) {
            self.log_error(&e);
            return;
        }
        if shorter {
            tracing::info!(path = %self.path_label, "access log truncated; reading it from the start");
        } else {
            tracing::info!(path = %self.path_label, "access log truncated and written past the last position; reading it from the start");
        }
        self.rotations += 1;
        tail.offset = 0;
        tail.line_start = 0;
        tail.partial.clear();
        tail.overlong = false;
        tail.seen = Fingerprint::EMPTY;
        tail.counted = Fingerprint::EMPTY;
        self.save(tail.position());
    }

    /// Whether the bytes before `tail`'s read position differ from the
    /// ones read there. A file that cannot be read there now is left to
    /// the next read to report.
    fn rewritten(&self, tail: &Tail) -> bool {
        if tail.seen.is_empty() {
            return false;
        }
        match bytes_before(&tail.file, tail.offset, tail.seen.as_slice().len()) {
            Ok(now) => now != tail.seen.as_slice(),
            Err(_) => false,
        }
    }

    /// Reads and counts what is new in `tail`, saving the position after
    /// each chunk if `save`. Returns the bytes read.
    fn read_new(&mut self, tail: &mut Tail, save: bool) -> io::Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut total = 0u64;
        let result = loop {
            if total >= MAX_BYTES_PER_POLL {
                break Ok(total);
            }
            let n = match tail.file.read(&mut buf) {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            let chunk = buf.get(..n).unwrap_or(&buf);
            self.consume(tail, chunk);
            total += n as u64;
            if save {
                self.save(tail.position());
            }
        };
        self.buf = buf;
        result
    }

    /// Splits `chunk` (the next bytes of `tail`) into lines and counts the
    /// complete ones; the rest waits for its newline.
    fn consume(&mut self, tail: &mut Tail, chunk: &[u8]) {
        let base = tail.offset;
        tail.offset += chunk.len() as u64;
        // The lines counted from this chunk end at its last newline.
        if let Some(last) = chunk.iter().rposition(|&b| b == b'\n') {
            tail.counted = tail.seen;
            tail.counted.extend(&chunk[..=last]);
        }
        tail.seen.extend(chunk);
        let mut rest = chunk;
        let mut consumed = 0u64;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (piece, after) = rest.split_at(i);
            if tail.overlong {
                tail.overlong = false;
                self.lines += 1;
                self.unparsed += 1;
            } else if tail.partial.is_empty() {
                self.line(piece);
            } else {
                let mut line = std::mem::take(&mut tail.partial);
                line.extend_from_slice(piece);
                self.line(&line);
                // Keep the allocation for the next partial line.
                line.clear();
                tail.partial = line;
            }
            consumed += i as u64 + 1;
            tail.line_start = base + consumed;
            rest = after.get(1..).unwrap_or_default();
        }
        if tail.overlong {
            return;
        }
        if tail.partial.len() + rest.len() > MAX_LINE_BYTES {
            tail.partial = Vec::new();
            tail.overlong = true;
        } else {
            tail.partial.extend_from_slice(rest);
        }
    }

    /// Closes a file that will not grow any more; a last line without a
    /// newline is counted, as it will never get one.
    fn finish(&mut self, tail: Tail) {
        if tail.overlong {
            self.lines += 1;
            self.unparsed += 1;
        } else if !tail.partial.is_empty() {
            self.line(&tail.partial);
        }
    }

    /// Counts one complete line (without its newline).
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // Blank lines are not requests, nor worth a complaint.
            return;
        }
        self.lines += 1;
        let Some(req) = self.parser.parse(line) else {
            self.unparsed += 1;
            return;
        };
        let vhost = self.vhost(req.vhost);
        *self
            .requests
            .entry((vhost.clone(), req.method, req.status_class))
            .or_insert(0) += 1;
        self.durations
            .entry(vhost)
            .or_insert_with(Histogram::latency)
            .observe(req.seconds);
    }

    /// The `vhost` label for a line's captured host: the configured one
    /// when the line has none, `other` once `max_vhosts` are known or for
    /// names no DNS name could be.
    fn vhost(&self, captured: Option<&[u8]>) -> String {
        let Some(raw) = captured.filter(|v| !v.is_empty()) else {
            return self.static_vhost.clone();
        };
        match std::str::from_utf8(raw) {
            Ok(v)
                if v.len() <= MAX_VHOST_LEN
                    && (self.durations.contains_key(v)
                        || self.durations.len() < self.max_vhosts) =>
            {
                v.to_string()
            }
            _ => "other".to_string(),
        }
    }

    /// Writes the position to the state file (temporary file, then
    /// rename, so a crash leaves the old or the new position, never half).
    fn save(&mut self, p: Position) {
        if self.saved == Some(p) {
            return;
        }
        let text = format!(
            "nines access-log position 2\npath {}\ndev {}\nino {}\noffset {}\nbefore {}\n",
            self.path_label,
            p.id.dev,
            p.id.ino,
            p.offset,
            p.before.to_hex()
        );
        let tmp = self.state_file.with_extension("pos.tmp");
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, &self.state_file));
        match written {
            Ok(()) => {
                self.saved = Some(p);
                self.logged_save_error = false;
            }
            Err(e) => {
                if !self.logged_save_error {
                    tracing::warn!(
                        path = %self.state_file.display(),
                        error = %e,
                        "cannot save the access log position; a restart may count lines again"
                    );
                    self.logged_save_error = true;
                }
            }
        }
    }

    fn log_error(&mut self, e: &io::Error) {
        self.error_this_poll = true;
        if self.logged_error != Some(e.kind()) {
            tracing::warn!(path = %self.path_label, error = %e, "cannot read access log");
            self.logged_error = Some(e.kind());
        }
    }

    /// Reports the cumulative request counts, latency histograms and the
    /// tailer's own counters. Requests families appear once a request was
    /// counted; the tailer's own always do.
    pub fn sample(&self, out: &mut Samples) {
        let path = [("path", self.path_label.as_str())];
        out.family(
            LINES,
            MetricKind::Counter,
            "Complete lines read from the access log, parsed or not.",
            "",
        );
        out.push(LINES, &path, self.lines as f64);
        out.family(
            UNPARSED,
            MetricKind::Counter,
            "Access log lines that did not match the configured format.",
            "",
        );
        out.push(UNPARSED, &path, self.unparsed as f64);
        out.family(
            ROTATIONS,
            MetricKind::Counter,
            "Times the access log was found rotated (renamed or truncated).",
            "",
        );
        out.push(ROTATIONS, &path, self.rotations as f64);
        out.family(
            PRESENT,
            MetricKind::Gauge,
            "1 if the access log existed at the last poll, else 0.",
            "",
        );
        out.push(PRESENT, &path, if self.present { 1.0 } else { 0.0 });

        if !self.requests.is_empty() {
            out.family(
                REQUESTS,
                MetricKind::Counter,
                "HTTP requests in the access log, by virtual host, method and status class.",
                "",
            );
        }
        for ((vhost, method, class), n) in &self.requests {
            out.push(
                REQUESTS,
                &[
                    ("vhost", vhost.as_str()),
                    ("method", *method),
                    ("status_class", *class),
                ],
                *n as f64,
            );
        }
        if !self.durations.is_empty() {
            out.family(
                DURATION,
                MetricKind::Histogram,
                "HTTP request time from the access log, in seconds.",
                "seconds",
            );
        }
        for (vhost, h) in &self.durations {
            h.report(out, DURATION, &[("vhost", vhost.as_str())]);
        }
    }
}

/// The saved position, if the state file exists, is well formed and is
/// about `path` (file names are hashes, which could collide). Version 1
/// files, written before the bytes before the offset were saved, load
/// with those unknown.
fn load_position(state_file: &Path, path: &str) -> Option<Position> {
    let text = fs::read_to_string(state_file).ok()?;
    let mut lines = text.lines();
    let version = match lines.next()? {
        "nines access-log position 1" => 1,
        "nines access-log position 2" => 2,
        _ => return None,
    };
    let mut field = |key: &str| {
        lines
            .next()?
            .strip_prefix(key)?
            .strip_prefix(' ')
            .map(str::to_string)
    };
    if field("path")? != path {
        return None;
    }
    let dev = field("dev")?.parse().ok()?;
    let ino = field("ino")?.parse().ok()?;
    let offset: u64 = field("offset")?.parse().ok()?;
    let before = if version == 1 {
        Fingerprint::EMPTY
    } else {
        Fingerprint::from_hex(&field("before")?)?
    };
    // The bytes end at the offset, so there cannot be more of them.
    if u64::from(before.len) > offset {
        return None;
    }
    Some(Position {
        id: FileId { dev, ino },
        offset,
        before,
    })
}

/// The end of the log at `path` now, with the bytes before it: where a log
/// found at start is read from when its existing lines are not wanted.
fn end_of(path: &Path) -> Option<Position> {
    let file = File::open(path).ok()?;
    let m = file.metadata().ok()?;
    let end = m.len();
    let wanted = FINGERPRINT_BYTES.min(usize::try_from(end).unwrap_or(FINGERPRINT_BYTES));
    let before = bytes_before(&file, end, wanted)
        .map(|b| Fingerprint::of(&b))
        .unwrap_or(Fingerprint::EMPTY);
    Some(Position {
        id: FileId::of(&m),
        offset: end,
        before,
    })
}

/// The `len` bytes of `file` ending at `end` (fewer only when `end` is
/// closer to the start), read without moving its position.
fn bytes_before(file: &File, end: u64, len: usize) -> io::Result<Vec<u8>> {
    let start = end.saturating_sub(len as u64);
    let mut bytes = vec![0; (end - start) as usize];
    file.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases, as
/// the state file's name must.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
