//! Running under systemd, for both binaries: the sd_notify protocol
//! (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=`) spoken directly over
//! `NOTIFY_SOCKET` without libsystemd, a watchdog task that pings only while
//! the process is healthy, and the `install` / `uninstall` commands that put
//! a unit, a config and the binary in place.
//!
//! Everything here is a no-op when the process is not started by systemd
//! (`NOTIFY_SOCKET` unset). This file must never ping the watchdog for a
//! process whose work has stopped, change the system before every flag has
//! been checked, run anything but `systemctl`, or touch a path it was not
//! given (tests point every path at a temporary directory).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

// ---------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@abstract`.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an @abstract name")]
    BadAddress(String),
    /// The datagram could not be sent.
    #[error("cannot notify systemd at {addr}: {source}")]
    Send {
        /// The socket, as `NOTIFY_SOCKET` named it.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Where systemd listens for this service's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotifyAddr {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in the variable), without the `@`.
    Abstract(Vec<u8>),
}

/// Sends sd_notify messages to systemd. Made with [`Notifier::from_env`];
/// when the process was not started by systemd every call does nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    addr: Option<NotifyAddr>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` describes (disabled when unset). A
    /// malformed value is logged and disables notifications: systemd then
    /// reports the start as timed out, which names the unit to look at.
    pub fn from_env() -> Notifier {
        match Notifier::from_socket(std::env::var_os("NOTIFY_SOCKET").as_deref()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "not notifying systemd");
                Notifier::default()
            }
        }
    }

    /// The notifier for a `NOTIFY_SOCKET` value: an absolute path, or
    /// `@name` for an abstract socket. `None` or empty disables it.
    pub fn from_socket(value: Option<&OsStr>) -> Result<Notifier, NotifyError> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Notifier::default());
        };
        let bytes = value.as_bytes();
        let addr = match bytes[0] {
            b'/' => NotifyAddr::Path(PathBuf::from(value)),
            b'@' if bytes.len() > 1 => NotifyAddr::Abstract(bytes[1..].to_vec()),
            _ => {
                return Err(NotifyError::BadAddress(
                    value.to_string_lossy().into_owned(),
                ));
            }
        };
        Ok(Notifier { addr: Some(addr) })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.addr.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one
    /// datagram. Does nothing when disabled.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(addr) = &self.addr else {
            return Ok(());
        };
        let shown = || match addr {
            NotifyAddr::Path(p) => p.display().to_string(),
            NotifyAddr::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
        };
        let send = || -> io::Result<()> {
            let sock = UnixDatagram::unbound()?;
            // systemd reads its socket at once; a full queue must not stall
            // a runtime worker for long.
            sock.set_write_timeout(Some(Duration::from_secs(1)))?;
            let sent = match addr {
                NotifyAddr::Path(p) => sock.send_to(state.as_bytes(), p)?,
                NotifyAddr::Abstract(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    sock.send_to_addr(state.as_bytes(), &a)?
                }
            };
            if sent != state.len() {
                return Err(io::Error::other("message truncated"));
            }
            Ok(())
        };
        send().map_err(|source| NotifyError::Send {
            addr: shown(),
            source,
        })
    }

    /// Sends `state`, logging (not returning) a failure: a lost
    /// notification must not stop the service itself.
    fn send_logged(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, "systemd notification lost");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=stopping");
    }

    /// `STATUS=...`: free text `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send_logged(&format!("STATUS={}", one_line(status)));
    }
}

/// A status value must stay on one line: a newline would start another
/// assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), from the
/// environment: `None` when no watchdog is set or it is meant for another
/// process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// `WATCHDOG_USEC` (microseconds, more than 0) as a duration, when
/// `WATCHDOG_PID` is unset or names `own_pid`; `None` otherwise.
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

// ---------------------------------------------------------------------------
// Liveness and the watchdog task
// ---------------------------------------------------------------------------

/// When the watched loop last finished a round, on the monotonic clock (a
/// wall-clock jump must not look like a hang). Cheap to clone and to beat.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<(Instant, AtomicU64)>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    /// A handle whose first beat is now: a loop gets the same grace at
    /// start as between rounds.
    pub fn new() -> Liveness {
        Liveness {
            inner: Arc::new((Instant::now(), AtomicU64::new(0))),
        }
    }

    /// Records that a round finished now.
    pub fn beat(&self) {
        let ms = self.inner.0.elapsed().as_millis() as u64;
        self.inner.1.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.inner.0.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.inner.1.load(Ordering::Relaxed)))
    }

    /// A health check for [`ready_and_supervise`]: healthy while the last
    /// beat is at most `max_age` old.
    pub fn check(
        &self,
        max_age: Duration,
    ) -> impl FnMut() -> std::future::Ready<Result<(), String>> + Send + 'static {
        let me = self.clone();
        move || {
            let age = me.age();
            std::future::ready(if age <= max_age {
                Ok(())
            } else {
                Err(format!(
                    "no sampling round finished for {age:?} (limit {max_age:?})"
                ))
            })
        }
    }
}

/// Tells systemd the service is ready (with `status` as its status line)
/// and, when systemd set a watchdog, spawns a task that sends `WATCHDOG=1`
/// every half interval while `check` passes; it sends `STOPPING=1` when
/// `stop` turns true. Returns that task, or `None` when not under systemd
/// (and then nothing is sent or checked).
///
/// A failing or slow check (it gets half the interval) skips the ping and
/// puts the reason in the status line and the log, so systemd restarts a
/// service that stays unhealthy for the whole `WatchdogSec=`.
pub fn ready_and_supervise<F, Fut>(
    notifier: &Notifier,
    status: String,
    check: F,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    ready_and_supervise_with(notifier, watchdog_interval(), status, check, stop)
}

/// [`ready_and_supervise`] with the watchdog interval given (tests).
pub fn ready_and_supervise_with<F, Fut>(
    notifier: &Notifier,
    watchdog: Option<Duration>,
    status: String,
    mut check: F,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    if !notifier.is_enabled() {
        return None;
    }
    notifier.ready(&status);
    let notifier = notifier.clone();
    Some(tokio::spawn(async move {
        // Half the interval, as sd_watchdog_enabled(3) advises, so one late
        // ping is not yet fatal.
        let period = watchdog.map(|w| (w / 2).max(Duration::from_millis(1)));
        let mut ticker = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            // Checked before waiting: a stop requested while the service
            // was starting has already been sent, and `changed` would wait
            // for the next one (and the caller, awaiting this task, forever).
            if *stop.borrow_and_update() {
                notifier.stopping();
                return;
            }
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        notifier.stopping();
                        return;
                    }
                }
                _ = ticker.tick(), if period.is_some() => {
                    let limit = period.unwrap_or_default();
                    let verdict = match tokio::time::timeout(limit, check()).await {
                        Ok(v) => v,
                        Err(_) => Err(format!("health check took longer than {limit:?}")),
                    };
                    match verdict {
                        Ok(()) => {
                            if !healthy {
                                tracing::info!("healthy again; watchdog pings resume");
                                notifier.status(&status);
                                healthy = true;
                            }
                            notifier.watchdog();
                        }
                        Err(reason) => {
                            tracing::warn!(
                                %reason,
                                "unhealthy: not pinging the systemd watchdog; systemd restarts the service if this lasts WatchdogSec"
                            );
                            notifier.status(&format!("unhealthy: {reason}"));
                            healthy = false;
                        }
                    }
                }
            }
        }
    }))
}

/// Asks `GET /healthz` of the HTTP server at `addr` (an unspecified address
/// means this host's loopback) and passes on a `200`. Cheap enough for a
/// watchdog check; the caller bounds the time.
pub async fn probe_healthz(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let fail = |e: io::Error| format!("HTTP server on {target}: {e}");
    let s = tokio::net::TcpStream::connect(target).await.map_err(fail)?;
    // Readiness plus try_* rather than tokio's io-util, which this crate
    // does not enable for one request.
    let mut request: &[u8] =
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    while !request.is_empty() {
        s.writable().await.map_err(fail)?;
        match s.try_write(request) {
            Ok(n) => request = &request[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while head.len() < 12 {
        s.readable().await.map_err(fail)?;
        match s.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let line = String::from_utf8_lossy(&head);
    if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "HTTP server on {target}: /healthz answered {:?}",
            line.lines().next().unwrap_or("")
        ))
    }
}

// ---------------------------------------------------------------------------
// install / uninstall
// ---------------------------------------------------------------------------

/// Where systemd looks for administrator units.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// Where `install` puts the binary by default (the units' ExecStart).
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";

/// What differs between the agent's and the collector's installation.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Binary and unit name, e.g. `nines-agent`.
    pub name: &'static str,
    /// The unit file from `deploy/`, with `ExecStart=` naming
    /// `/usr/local/bin/<name>` and `LoadCredential=<credential>:<path>`.
    pub unit: &'static str,
    /// Default config path, e.g. `/etc/nines/agent.toml`.
    pub config_path: &'static str,
    /// The name the unit loads the config under (`LoadCredential=`).
    pub credential: &'static str,
    /// The state directory the unit gives the service (`StateDirectory=`).
    pub state_dir: &'static str,
}

/// The agent's installation.
pub const AGENT: Service = Service {
    name: "nines-agent",
    unit: include_str!("../../deploy/nines-agent.service"),
    config_path: "/etc/nines/agent.toml",
    credential: "agent.toml",
    state_dir: crate::config::DEFAULT_STATE_DIR,
};

/// Flags of `install` besides the service's own settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstallFlags {
    /// Where the unit runs the binary from (default /usr/local/bin/<name>).
    /// The running executable is copied there unless it is that file.
    #[arg(long)]
    pub binary_path: Option<PathBuf>,
    /// Directory for the unit file (default /etc/systemd/system).
    #[arg(long)]
    pub unit_dir: Option<PathBuf>,
    /// Where to write the generated config, mode 0600 as it holds the token
    /// (default /etc/nines/agent.toml or collector.toml).
    #[arg(long)]
    pub config_path: Option<PathBuf>,
    /// Write the files only: no `systemctl daemon-reload` / `enable --now`.
    #[arg(long)]
    pub no_enable: bool,
    /// Replace an existing config file.
    #[arg(long)]
    pub force: bool,
    /// Print every file and command instead, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `uninstall`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UninstallFlags {
    /// Directory of the unit file (default /etc/systemd/system).
    #[arg(long)]
    pub unit_dir: Option<PathBuf>,
    /// The config file `install` wrote (default /etc/nines/agent.toml or
    /// collector.toml); removed only with --purge.
    #[arg(long)]
    pub config_path: Option<PathBuf>,
    /// Also remove the config and the state directory (`systemctl clean`).
    #[arg(long)]
    pub purge: bool,
    /// Remove files only: no `systemctl disable --now` / `clean` /
    /// `daemon-reload` (the state directory is then left alone).
    #[arg(long)]
    pub no_disable: bool,
    /// Print every removal and command instead, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why `install` or `uninstall` did not (completely) happen.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A flag's value cannot be used; nothing was changed (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The system's state forbids it; nothing was changed (exit 1).
    #[error("{0}")]
    Refused(String),
    /// A step failed part-way; `done` lists the steps already taken.
    #[error("{step}: {reason}{}", done_note(.done))]
    Failed {
        /// The step that failed.
        step: String,
        /// Why.
        reason: String,
        /// Steps finished before it.
        done: Vec<String>,
    },
}

fn done_note(done: &[String]) -> String {
    if done.is_empty() {
        " (nothing was changed)".to_string()
    } else {
        format!(
            "\nalready done before the failure:\n  {}",
            done.join("\n  ")
        )
    }
}

impl InstallError {
    /// The process exit code: 2 for a bad flag, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            InstallError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// One change to the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy a file (write to a temporary name, then rename over `to`).
    Copy {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// Mode of the copy.
        mode: u32,
    },
    /// Write a file (temporary name, then rename), creating its directory.
    Write {
        /// Destination.
        path: PathBuf,
        /// Mode, set when the file is created (never wider, even briefly).
        mode: u32,
        /// The bytes written.
        content: String,
        /// What `--dry-run` prints instead, when the content holds secrets.
        shown: Option<String>,
    },
    /// Remove a file.
    Remove {
        /// The file.
        path: PathBuf,
    },
    /// Run a command (through the [`Runner`]).
    Run {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl Action {
    /// One line saying what the action does.
    pub fn summary(&self) -> String {
        match self {
            Action::Copy { from, to, mode } => {
                format!(
                    "copy {} to {} (mode {mode:04o})",
                    from.display(),
                    to.display()
                )
            }
            Action::Write { path, mode, .. } => {
                format!("write {} (mode {mode:04o})", path.display())
            }
            Action::Remove { path } => format!("remove {}", path.display()),
            Action::Run { argv } => format!("run: {}", argv.join(" ")),
        }
    }
}

/// The changes `install` or `uninstall` makes, in order, and what they
/// leave alone.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The changes.
    pub actions: Vec<Action>,
    /// Lines for the operator: what is kept and why.
    pub notes: Vec<String>,
}

impl Plan {
    /// What `--dry-run` prints: every file in full (secrets hidden) and
    /// every command.
    pub fn describe(&self, what: &str) -> String {
        let mut out = format!("{what} --dry-run: nothing is changed; it would:\n");
        if self.actions.is_empty() {
            out.push_str("  (nothing)\n");
        }
        for a in &self.actions {
            let _ = writeln!(out, "  {}", a.summary());
            if let Action::Write {
                path,
                content,
                shown,
                ..
            } = a
            {
                let text = shown.as_ref().unwrap_or(content);
                let _ = writeln!(out, "----- {} -----", path.display());
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
                let _ = writeln!(out, "----- end of {} -----", path.display());
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// Checks that every file action can be done by this user before any
    /// is: the nearest existing directory above each target must be
    /// writable. A refusal here leaves the system as it was.
    pub fn preflight(&self) -> Result<(), InstallError> {
        for a in &self.actions {
            let target = match a {
                Action::Copy { to, .. } => to,
                Action::Write { path, .. } | Action::Remove { path } => path,
                Action::Run { .. } => continue,
            };
            let mut dir = target.parent();
            while let Some(d) = dir {
                if d.exists() {
                    break;
                }
                dir = d.parent();
            }
            let Some(dir) = dir else { continue };
            if !writable(dir) {
                return Err(InstallError::Refused(format!(
                    "cannot write in {} (for {}): run as root, or choose paths you can write \
                     (--unit-dir, --config-path, --binary-path); nothing was changed",
                    dir.display(),
                    target.display()
                )));
            }
        }
        Ok(())
    }

    /// Carries out every action in order, running commands with `runner`.
    /// Stops at the first failure, saying what was already done.
    pub fn apply(&self, runner: &mut dyn Runner) -> Result<(), InstallError> {
        let mut done = Vec::new();
        for a in &self.actions {
            let res = match a {
                Action::Copy { from, to, mode } => std::fs::read(from)
                    .and_then(|bytes| write_atomically(to, &bytes, *mode))
                    .map_err(|e| e.to_string()),
                Action::Write {
                    path,
                    mode,
                    content,
                    ..
                } => write_atomically(path, content.as_bytes(), *mode).map_err(|e| e.to_string()),
                Action::Remove { path } => std::fs::remove_file(path).map_err(|e| e.to_string()),
                Action::Run { argv } => runner.run(argv),
            };
            if let Err(reason) = res {
                return Err(InstallError::Failed {
                    step: a.summary(),
                    reason,
                    done,
                });
            }
            done.push(a.summary());
        }
        Ok(())
    }
}

/// Runs the commands of a [`Plan`]: the system's `systemctl`, or a
/// recorder in tests.
pub trait Runner {
    /// Runs `argv`; an error says why it failed (exit status, spawn error).
    fn run(&mut self, argv: &[String]) -> Result<(), String>;
}

/// Runs commands as child processes, their output going to ours.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program} failed ({status})"))
        }
    }
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (created with `mode`, synced, renamed): a reader sees the old file or the
/// new one, a running binary can be replaced, and a secret is never
/// readable by others. Creates missing parent directories (mode 0755).
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; a binary must stay
        // executable.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Checks that `path` is absolute and can stand in a unit file unquoted:
/// no whitespace, quotes, backslashes, `%` (specifiers) or `$` (variables).
fn unit_safe_path(flag: &str, path: &Path) -> Result<String, InstallError> {
    let s = path.to_str().ok_or_else(|| {
        InstallError::Usage(format!("--{flag} {}: not valid UTF-8", path.display()))
    })?;
    if !path.is_absolute() {
        return Err(InstallError::Usage(format!(
            "--{flag} {s}: must be an absolute path"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(*c))
    {
        return Err(InstallError::Usage(format!(
            "--{flag} {s}: {c:?} cannot stand in a unit file; choose a path without it"
        )));
    }
    Ok(s.to_string())
}

/// The unit file for `service`: its deploy template with the binary in
/// `ExecStart=` and the config in `LoadCredential=` replaced.
pub fn render_unit(service: &Service, binary: &str, config: &str) -> String {
    let default_bin = format!("{DEFAULT_BIN_DIR}/{}", service.name);
    let cred = format!("LoadCredential={}:", service.credential);
    let mut out = String::with_capacity(service.unit.len() + 64);
    for line in service.unit.lines() {
        if let Some(rest) = line
            .strip_prefix("ExecStart=")
            .and_then(|r| r.strip_prefix(&default_bin))
        {
            let _ = writeln!(out, "ExecStart={binary}{rest}");
        } else if line.starts_with(&cred) {
            let _ = writeln!(out, "{cred}{config}");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A config file to install: its text, and the text `--dry-run` shows.
#[derive(Debug, Clone)]
pub struct ConfigText {
    /// What is written.
    pub content: String,
    /// The same with secret values hidden.
    pub shown: String,
}

/// Plans `install`: the binary, the config (refused when one exists and
/// `force` is off), the unit, then `systemctl daemon-reload` and
/// `enable --now` unless `no_enable`. Reads but changes nothing.
pub fn plan_install(
    service: &Service,
    flags: &InstallFlags,
    config: ConfigText,
) -> Result<Plan, InstallError> {
    let default_bin = PathBuf::from(format!("{DEFAULT_BIN_DIR}/{}", service.name));
    let binary = flags.binary_path.clone().unwrap_or(default_bin);
    let binary_s = unit_safe_path("binary-path", &binary)?;
    let config_path = flags
        .config_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(service.config_path));
    let config_s = unit_safe_path("config-path", &config_path)?;
    let unit_dir = flags
        .unit_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_UNIT_DIR));
    if !unit_dir.is_absolute() {
        return Err(InstallError::Usage(format!(
            "--unit-dir {}: must be an absolute path",
            unit_dir.display()
        )));
    }
    if config_path.is_dir() {
        return Err(InstallError::Usage(format!(
            "--config-path {config_s}: is a directory; give the file's path"
        )));
    }
    if config_path.exists() && !flags.force {
        return Err(InstallError::Refused(format!(
            "{config_s} already exists; add --force to replace it (nothing was changed)"
        )));
    }

    let mut plan = Plan::default();
    let exe = std::env::current_exe().map_err(|e| {
        InstallError::Refused(format!("cannot find the running executable to copy: {e}"))
    })?;
    if !same_file(&exe, &binary) {
        plan.actions.push(Action::Copy {
            from: exe,
            to: binary.clone(),
            mode: 0o755,
        });
    }
    plan.actions.push(Action::Write {
        path: config_path,
        mode: 0o600,
        content: config.content,
        shown: Some(config.shown),
    });
    let unit_path = unit_dir.join(format!("{}.service", service.name));
    plan.actions.push(Action::Write {
        path: unit_path,
        mode: 0o644,
        content: render_unit(service, &binary_s, &config_s),
        shown: None,
    });
    let unit = format!("{}.service", service.name);
    if flags.no_enable {
        plan.notes.push(format!(
            "--no-enable: start it with `systemctl daemon-reload && systemctl enable --now {unit}`"
        ));
    } else {
        plan.actions.push(systemctl(&["daemon-reload"]));
        plan.actions.push(systemctl(&["enable", "--now", &unit]));
    }
    Ok(plan)
}

/// Plans `uninstall`: `systemctl disable --now`, the unit's removal and a
/// daemon-reload; with `purge` also `systemctl clean --what=state` and the
/// config's removal. Reads but changes nothing.
pub fn plan_uninstall(service: &Service, flags: &UninstallFlags) -> Result<Plan, InstallError> {
    let unit_dir = flags
        .unit_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_UNIT_DIR));
    let config_path = flags
        .config_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(service.config_path));
    for (flag, p) in [("unit-dir", &unit_dir), ("config-path", &config_path)] {
        if !p.is_absolute() {
            return Err(InstallError::Usage(format!(
                "--{flag} {}: must be an absolute path",
                p.display()
            )));
        }
    }
    let unit = format!("{}.service", service.name);
    let unit_path = unit_dir.join(&unit);
    let mut plan = Plan::default();
    let systemd = !flags.no_disable;
    let unit_exists = unit_path.exists();
    if unit_exists {
        if systemd {
            plan.actions.push(systemctl(&["disable", "--now", &unit]));
            if flags.purge {
                // systemd knows where the state really is (DynamicUser keeps
                // it under /var/lib/private) and refuses while it runs.
                plan.actions
                    .push(systemctl(&["clean", "--what=state", &unit]));
            }
        }
        plan.actions.push(Action::Remove { path: unit_path });
        if systemd {
            plan.actions.push(systemctl(&["daemon-reload"]));
        }
    } else {
        plan.notes.push(format!(
            "no unit at {}: nothing to disable",
            unit_path.display()
        ));
    }
    let config_exists = config_path.exists();
    match (flags.purge, config_exists) {
        (true, true) => plan.actions.push(Action::Remove {
            path: config_path.clone(),
        }),
        (false, true) => plan.notes.push(format!(
            "kept {} (--purge removes it)",
            config_path.display()
        )),
        (_, false) => {}
    }
    let state = service.state_dir;
    if !flags.purge {
        plan.notes.push(format!(
            "kept the state directory {state} (--purge removes it)"
        ));
    } else if !systemd {
        plan.notes.push(format!(
            "--no-disable: the state directory {state} is left; remove it with \
             `systemctl clean --what=state {unit}` before the unit is gone, or by hand"
        ));
    } else if !unit_exists {
        plan.notes.push(format!(
            "no unit, so `systemctl clean` cannot find the state directory; remove \
             {state} (and /var/lib/private/{}, where DynamicUser keeps it) by hand",
            service.name
        ));
    }
    plan.notes.push(format!(
        "kept the binary ({DEFAULT_BIN_DIR}/{} unless installed elsewhere); remove it by hand if unused",
        service.name
    ));
    Ok(plan)
}

fn systemctl(args: &[&str]) -> Action {
    let mut argv = vec!["systemctl".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Action::Run { argv }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Runs a planned `install` or `uninstall` for the command line: prints
/// the plan with `dry_run`, else checks and applies it with `systemctl`,
/// then prints the notes. `what` names the command in messages.
pub fn execute(plan: &Plan, what: &str, dry_run: bool) -> Result<(), InstallError> {
    if dry_run {
        print!("{}", plan.describe(what));
        return Ok(());
    }
    plan.preflight()?;
    plan.apply(&mut SystemRunner)?;
    for a in &plan.actions {
        println!("{what}: {}", a.summary());
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------

/// Builds the config file `install` writes: the `--config` file's keys (if
/// one was given) with every setting the flags gave on top (`None` removes
/// a key), rendered as TOML. `secret` keys are hidden in
/// [`ConfigText::shown`].
pub fn config_text(
    header: &str,
    base: Option<&Path>,
    set: Vec<(&str, Option<toml::Value>)>,
    secret: &[&str],
) -> Result<ConfigText, InstallError> {
    let mut table = match base {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| InstallError::Usage(format!("--config {}: {e}", p.display())))?;
            text.parse::<toml::Table>()
                .map_err(|e| InstallError::Usage(format!("--config {}: {e}", p.display())))?
        }
        None => toml::Table::new(),
    };
    for (k, v) in set {
        match v {
            Some(v) => table.insert(k.to_string(), v),
            None => table.remove(k),
        };
    }
    let mut shown_table = table.clone();
    for k in secret {
        if let Some(toml::Value::String(s)) = shown_table.get_mut(*k) {
            if !s.is_empty() {
                *s = format!("(hidden in --dry-run: {} characters)", s.chars().count());
            }
        }
    }
    let render = |t: &toml::Table| {
        let mut out = header.to_string();
        render_table(&mut out, &[], t);
        out
    };
    Ok(ConfigText {
        content: render(&table),
        shown: render(&shown_table),
    })
}

/// Renders `t` as TOML: plain keys first, then `[tables]` and
/// `[[arrays of tables]]` under their dotted paths.
pub fn render_table(out: &mut String, path: &[String], t: &toml::Table) {
    let is_section = |v: &toml::Value| match v {
        toml::Value::Table(_) => true,
        toml::Value::Array(a) => !a.is_empty() && a.iter().all(|x| x.is_table()),
        _ => false,
    };
    for (k, v) in t.iter().filter(|(_, v)| !is_section(v)) {
        let _ = writeln!(out, "{} = {}", toml_key(k), toml_value(v));
    }
    for (k, v) in t.iter().filter(|(_, v)| is_section(v)) {
        let mut sub = path.to_vec();
        sub.push(toml_key(k));
        match v {
            toml::Value::Table(inner) => {
                let _ = writeln!(out, "\n[{}]", sub.join("."));
                render_table(out, &sub, inner);
            }
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        let _ = writeln!(out, "\n[[{}]]", sub.join("."));
                        render_table(out, &sub, inner);
                    }
                }
            }
            _ => {}
        }
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml_string(k)
    }
}

/// `s` as a TOML basic string, every character that needs it escaped.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => toml_string(s),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) if f.is_nan() => "nan".into(),
        toml::Value::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        // Debug keeps a decimal point or exponent, so it reads back a float.
        toml::Value::Float(f) => format!("{f:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// The agent's install config from its `run` flags, after they resolved to
/// `cfg` (so every value is already checked). Refuses a state directory
/// other than the unit's: under `ProtectSystem=strict` nothing else is
/// writable.
pub fn agent_config(
    o: &crate::config::Overrides,
    cfg: &crate::config::AgentConfig,
) -> Result<ConfigText, InstallError> {
    if cfg.state_dir != Path::new(AGENT.state_dir) {
        return Err(InstallError::Usage(format!(
            "state dir {}: the unit gives the agent {} (StateDirectory=) and nothing else \
             is writable under its sandbox; leave --state-dir (and state_dir) out",
            cfg.state_dir.display(),
            AGENT.state_dir
        )));
    }
    let s = |v: &String| toml::Value::String(v.clone());
    let mut set: Vec<(&str, Option<toml::Value>)> = Vec::new();
    if !o.collector.is_empty() {
        // Flags replace the file's whole list, as they do for `run`.
        set.push(("collector", Some(s(&cfg.collectors[0]))));
        let rest: Vec<toml::Value> = cfg.collectors[1..].iter().map(s).collect();
        set.push((
            "collectors",
            Some(toml::Value::Array(rest)).filter(|_| cfg.collectors.len() > 1),
        ));
    }
    for (key, v) in [
        ("mode", &o.mode),
        ("token", &o.token),
        ("interval", &o.interval),
        ("instance", &o.instance),
        ("listen", &o.listen),
        ("log_format", &o.log_format),
    ] {
        if let Some(v) = v {
            set.push((key, Some(s(v))));
        }
    }
    let header = "# nines-agent settings, written by `nines-agent install` (mode 0600: it\n\
                  # may hold the collector token). Keys left out take their defaults; see\n\
                  # deploy/nines-agent.toml for every key. The unit reads this file through\n\
                  # LoadCredential=, so edit it here and `systemctl restart nines-agent`.\n";
    config_text(header, o.config.as_deref(), set, &["token"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn listener() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_a_socket_file() {
        let (_d, path, sock) = listener();
        let n = Notifier::from_socket(Some(path.as_os_str())).unwrap();
        assert!(n.is_enabled());
        n.ready("up\nand running");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=up and running");
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("nines-test-{}-{:?}", std::process::id(), Instant::now());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = Notifier::from_socket(Some(OsStr::new(&format!("@{name}")))).unwrap();
        n.notify("WATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_bad_values_are_refused() {
        let n = Notifier::from_socket(None).unwrap();
        assert!(!n.is_enabled());
        n.notify("READY=1").unwrap();
        assert!(
            !Notifier::from_socket(Some(OsStr::new("")))
                .unwrap()
                .is_enabled()
        );
        for bad in ["relative/path", "@"] {
            assert!(matches!(
                Notifier::from_socket(Some(OsStr::new(bad))),
                Err(NotifyError::BadAddress(_))
            ));
        }
        // A socket nobody listens on is an error to the caller, not a panic.
        let n = Notifier::from_socket(Some(OsStr::new("/nonexistent/nines.sock"))).unwrap();
        assert!(matches!(n.notify("READY=1"), Err(NotifyError::Send { .. })));
    }

    #[test]
    fn the_watchdog_interval_is_for_this_process_only() {
        let me = 4242;
        assert_eq!(
            parse_watchdog(Some("30000000"), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("4242"), me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_watchdog(Some("30000000"), Some("1"), me), None);
        assert_eq!(parse_watchdog(Some("0"), None, me), None);
        assert_eq!(parse_watchdog(Some("soon"), None, me), None);
        assert_eq!(parse_watchdog(None, Some("4242"), me), None);
    }

    #[test]
    fn liveness_ages_until_the_next_beat() {
        let l = Liveness::new();
        assert!(l.age() < Duration::from_secs(5));
        let mut check = l.check(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(20));
        assert!(l.age() >= Duration::from_millis(20));
        let err = futures_ready(check()).unwrap_err();
        assert!(err.contains("no sampling round"), "{err}");
        l.beat();
        assert!(l.age() < Duration::from_millis(20));
        assert!(futures_ready(l.check(Duration::from_secs(60))()).is_ok());
    }

    fn futures_ready<T>(f: std::future::Ready<T>) -> T {
        f.into_inner()
    }

    #[tokio::test]
    async fn the_supervisor_pings_only_while_healthy_and_says_stopping() {
        let (_d, path, sock) = listener();
        let n = Notifier::from_socket(Some(path.as_os_str())).unwrap();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let (stop_tx, stop) = watch::channel(false);
        let task = ready_and_supervise_with(
            &n,
            Some(Duration::from_millis(40)),
            "working".into(),
            move || {
                let ok = h.load(Ordering::Relaxed);
                async move { if ok { Ok(()) } else { Err("broken".into()) } }
            },
            stop,
        )
        .unwrap();
        let sock = tokio::task::spawn_blocking(move || {
            assert_eq!(recv(&sock), "READY=1\nSTATUS=working");
            assert_eq!(recv(&sock), "WATCHDOG=1");
            healthy.store(false, Ordering::Relaxed);
            // Pings already in flight may still arrive; then the status.
            loop {
                let m = recv(&sock);
                if m != "WATCHDOG=1" {
                    assert_eq!(m, "STATUS=unhealthy: broken");
                    break;
                }
            }
            healthy.store(true, Ordering::Relaxed);
            loop {
                let m = recv(&sock);
                if m == "STATUS=working" {
                    break;
                }
                assert_eq!(m, "STATUS=unhealthy: broken");
            }
            assert_eq!(recv(&sock), "WATCHDOG=1");
            sock
        })
        .await
        .unwrap();
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let last = loop {
            let m = recv(&sock);
            if m != "WATCHDOG=1" {
                break m;
            }
        };
        assert_eq!(last, "STOPPING=1\nSTATUS=stopping");
    }

    #[tokio::test]
    async fn a_stop_requested_before_the_supervisor_starts_still_ends_it() {
        let (_d, path, sock) = listener();
        let n = Notifier::from_socket(Some(path.as_os_str())).unwrap();
        let (stop_tx, stop) = watch::channel(false);
        stop_tx.send(true).unwrap();
        let task = ready_and_supervise_with(
            &n,
            Some(Duration::from_secs(60)),
            "starting".into(),
            || async { Ok(()) },
            stop,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the supervisor ended")
            .unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=starting");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn without_systemd_the_supervisor_is_not_started() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_tx, stop) = watch::channel(false);
        let started = rt.block_on(async {
            ready_and_supervise_with(
                &Notifier::default(),
                Some(Duration::from_millis(10)),
                String::new(),
                || async { Ok(()) },
                stop,
            )
            .is_some()
        });
        assert!(!started);
    }

    #[test]
    fn toml_strings_round_trip() {
        let nasty = "a \"quoted\" \\ path\nwith\ttabs and \u{1} control, ünïcode";
        let text = format!("k = {}\n", toml_string(nasty));
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["k"].as_str(), Some(nasty));
    }

    #[test]
    fn tables_and_arrays_of_tables_render_back_to_the_same_value() {
        let src = r#"
listen = "127.0.0.1:9797"
local_agent = false
ratio = 0.5
big = 1e100
ports = [1, 2]
[limits]
max_body_bytes = 100
[[scrape]]
job = "a"
targets = ["x:1", "y:2"]
[[scrape]]
job = "b"
targets = []
"#;
        let t: toml::Table = src.parse().unwrap();
        let mut out = String::new();
        render_table(&mut out, &[], &t);
        let back: toml::Table = out.parse().unwrap();
        assert_eq!(back, t, "{out}");
    }

    #[test]
    fn the_unit_template_gets_the_binary_and_config_paths() {
        let unit = render_unit(&AGENT, "/opt/n/nines-agent", "/srv/agent.toml");
        assert!(
            unit.lines()
                .any(|l| l.starts_with("ExecStart=/opt/n/nines-agent run ")),
            "{unit}"
        );
        assert!(
            unit.contains("\nLoadCredential=agent.toml:/srv/agent.toml\n"),
            "{unit}"
        );
        // Comments may name the defaults; settings must not.
        for line in unit.lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.contains("/usr/local/bin/nines-agent"), "{line}");
            assert!(!line.contains("/etc/nines/agent.toml"), "{line}");
        }
        // Everything else is the deploy file as it is.
        let plain = render_unit(
            &AGENT,
            "/usr/local/bin/nines-agent",
            "/etc/nines/agent.toml",
        );
        assert_eq!(plain, AGENT.unit);
    }

    #[test]
    fn paths_that_cannot_stand_in_a_unit_are_usage_errors() {
        for bad in [
            "relative/x",
            "/with space/x",
            "/per%cent",
            "/q\"uote",
            "/d$x",
        ] {
            assert!(
                matches!(
                    unit_safe_path("binary-path", Path::new(bad)),
                    Err(InstallError::Usage(_))
                ),
                "{bad}"
            );
        }
        assert!(unit_safe_path("binary-path", Path::new("/usr/local/bin/x")).is_ok());
    }

    struct Recorder(Vec<Vec<String>>, bool);
    impl Runner for Recorder {
        fn run(&mut self, argv: &[String]) -> Result<(), String> {
            self.0.push(argv.to_vec());
            if self.1 {
                Err("exit status: 1".into())
            } else {
                Ok(())
            }
        }
    }

    fn flags(dir: &Path) -> InstallFlags {
        InstallFlags {
            binary_path: Some(dir.join("bin/nines-agent")),
            unit_dir: Some(dir.join("units")),
            config_path: Some(dir.join("etc/agent.toml")),
            ..InstallFlags::default()
        }
    }

    fn text() -> ConfigText {
        ConfigText {
            content: "token = \"s3cret-token\"\n".into(),
            shown: "token = \"(hidden)\"\n".into(),
        }
    }

    #[test]
    fn install_writes_everything_then_enables_through_the_runner() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_install(&AGENT, &flags(dir.path()), text()).unwrap();
        let mut r = Recorder(Vec::new(), false);
        plan.preflight().unwrap();
        plan.apply(&mut r).unwrap();
        assert_eq!(
            r.0,
            vec![
                vec!["systemctl", "daemon-reload"],
                vec!["systemctl", "enable", "--now", "nines-agent.service"]
            ]
        );
        let cfg = dir.path().join("etc/agent.toml");
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let bin = dir.path().join("bin/nines-agent");
        assert_eq!(
            std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(dir.path().join("units/nines-agent.service").exists());
        // The dry-run text hides the token.
        let shown = plan.describe("nines-agent install");
        assert!(!shown.contains("s3cret-token"), "{shown}");
        // Installing over it is refused without --force.
        let again = plan_install(&AGENT, &flags(dir.path()), text()).unwrap_err();
        assert!(matches!(again, InstallError::Refused(_)), "{again}");
        let mut f = flags(dir.path());
        f.force = true;
        assert!(plan_install(&AGENT, &f, text()).is_ok());
    }

    #[test]
    fn a_failing_command_reports_what_was_already_done() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_install(&AGENT, &flags(dir.path()), text()).unwrap();
        let err = plan.apply(&mut Recorder(Vec::new(), true)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("run: systemctl daemon-reload"), "{msg}");
        assert!(msg.contains("already done"), "{msg}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn uninstall_disables_before_removing_and_purges_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        plan_install(
            &AGENT,
            &InstallFlags {
                no_enable: true,
                ..flags(dir.path())
            },
            text(),
        )
        .unwrap()
        .apply(&mut Recorder(Vec::new(), false))
        .unwrap();
        let u = UninstallFlags {
            unit_dir: Some(dir.path().join("units")),
            config_path: Some(dir.path().join("etc/agent.toml")),
            ..UninstallFlags::default()
        };
        let mut r = Recorder(Vec::new(), false);
        plan_uninstall(&AGENT, &u).unwrap().apply(&mut r).unwrap();
        assert_eq!(
            r.0[0],
            vec!["systemctl", "disable", "--now", "nines-agent.service"]
        );
        assert_eq!(r.0[1], vec!["systemctl", "daemon-reload"]);
        assert!(!dir.path().join("units/nines-agent.service").exists());
        assert!(dir.path().join("etc/agent.toml").exists());
        let purge = UninstallFlags {
            purge: true,
            ..u.clone()
        };
        let plan = plan_uninstall(&AGENT, &purge).unwrap();
        plan.apply(&mut r).unwrap();
        assert!(!dir.path().join("etc/agent.toml").exists());
        // A failed disable leaves the unit in place.
        plan_install(
            &AGENT,
            &InstallFlags {
                no_enable: true,
                ..flags(dir.path())
            },
            text(),
        )
        .unwrap()
        .apply(&mut r)
        .unwrap();
        let err = plan_uninstall(&AGENT, &purge)
            .unwrap()
            .apply(&mut Recorder(Vec::new(), true))
            .unwrap_err();
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert!(dir.path().join("units/nines-agent.service").exists());
    }
}
