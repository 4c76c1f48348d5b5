//! The agent's settings: a TOML file (`--config`), each key overridable by a
//! flag or an environment variable. Defaults are documented here and in
//! `deploy/nines-agent.toml`. A bad file or value stops the agent at start
//! with the file, the key and the reason; nothing here reads /proc.

use crate::samplers::connections::ConnectionMethod;
use nines_shared::duration::parse_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default sampling and push interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default address for the agent's own `/metrics` and `/healthz`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9798";
/// Default bound of the spool on disk: 256 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nines-agent";

/// The settings as a TOML file spells them. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Base URL of the collector, e.g. `http://10.0.0.5:9797`.
    pub collector: Option<String>,
    /// Several collectors (an HA pair, or fallbacks), in order.
    pub collectors: Option<Vec<String>>,
    /// `failover` (first healthy collector) or `replicate` (every one).
    pub mode: Option<String>,
    /// Most bytes the spool may hold on disk.
    pub spool_max_bytes: Option<u64>,
    /// Most backlog batches sent per second per collector after an outage.
    pub drain_rate: Option<u32>,
    /// In failover mode, how often the first collector is tried again.
    pub primary_retry: Option<String>,
    /// Bearer token the collector expects.
    pub token: Option<String>,
    /// Sampling and push interval, e.g. `10s`.
    pub interval: Option<String>,
    /// Directory for the agent's id (and, later, its spool).
    pub state_dir: Option<PathBuf>,
    /// The `instance` label; the host name when empty.
    pub instance: Option<String>,
    /// Address for `/metrics` and `/healthz`; `""` turns the listener off.
    pub listen: Option<String>,
    /// Log format: `text` or `json`.
    pub log_format: Option<String>,
    /// `[samplers]`: which built-in samplers run.
    #[serde(default)]
    pub samplers: FileSamplers,
    /// `[statsd]`: the StatsD/DogStatsD listener.
    #[serde(default)]
    pub statsd: FileStatsd,
    /// `[[access_log]]`: web server logs to tail.
    #[serde(default)]
    pub access_log: Vec<FileAccessLog>,
    /// `[[probe]]`: active HTTP(S) and TCP checks.
    #[serde(default)]
    pub probe: Vec<crate::probes::ProbeConfig>,
}

/// `[samplers]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSamplers {
    /// CPU, memory, load, filesystems, network (default true).
    pub host: Option<bool>,
    /// Disks, pressure, fds, TCP/UDP counters, clock (default true).
    pub system: Option<bool>,
    /// TCP connections by state and per listening port (default true).
    pub connections: Option<bool>,
    /// Most listening ports with their own series (default 256).
    pub connections_max_ports: Option<usize>,
    /// Most netlink dumps one connection sample is split into, never more
    /// than the CPUs the agent may run on (default 4; 1: one dump).
    pub connections_parallelism: Option<usize>,
    /// How connections are counted: "auto" (default: BPF, the table walk
    /// or the iterator, where it loads, else netlink), "bpf", "netlink" or
    /// "proc".
    pub connections_method: Option<String>,
}

/// `[statsd]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStatsd {
    /// Listen for StatsD (default true).
    pub enabled: Option<bool>,
    /// UDP address (default 127.0.0.1:8125).
    pub listen: Option<String>,
    /// Most series kept (default 10000).
    pub max_series: Option<usize>,
    /// Longest metric or tag name or value (default 200).
    pub max_name_len: Option<usize>,
    /// Most tags per line (default 16).
    pub max_tags: Option<usize>,
}

/// One `[[access_log]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    /// The log file.
    pub path: PathBuf,
    /// A preset (`nginx_combined_rt`, `apache_combined_d`,
    /// `vhost_combined_rt`) or a regex with named groups `method`,
    /// `status`, `request_time` or `request_time_us`, optional `vhost`.
    pub format: Option<String>,
    /// `vhost` label when the format has none.
    pub vhost: Option<String>,
    /// Unit of the request time: seconds, milliseconds, microseconds.
    pub time_unit: Option<String>,
    /// Most distinct vhosts (default 64).
    pub max_vhosts: Option<usize>,
    /// Read an existing file from its start at first run (default false).
    pub read_existing: Option<bool>,
}

/// Why the configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("setting `{key}`{origin}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Where it came from, e.g. " (in /etc/nines/agent.toml)".
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A required setting is missing.
    #[error("setting `{0}` is required (flag --{1}, or `{0}` in the config file)")]
    Missing(&'static str, &'static str),
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        load_toml(path)
    }
}

/// Reads a TOML settings file of either binary; errors name the file and,
/// through the parser's message, the line and key.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Settings given on the command line or in the environment; they win over
/// the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML config file.
    #[arg(long, env = "NINES_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Collector base URL, e.g. http://127.0.0.1:9797; repeat (or
    /// comma-separate) for several.
    #[arg(long, env = "NINES_COLLECTOR", value_delimiter = ',')]
    pub collector: Vec<String>,
    /// With several collectors: failover (default) or replicate.
    #[arg(long, env = "NINES_MODE")]
    pub mode: Option<String>,
    /// Bearer token the collector expects.
    #[arg(long, env = "NINES_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Sampling and push interval (default 10s).
    #[arg(long, env = "NINES_INTERVAL")]
    pub interval: Option<String>,
    /// State directory (default /var/lib/nines-agent).
    #[arg(long, env = "NINES_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The `instance` label (default: host name).
    #[arg(long, env = "NINES_INSTANCE")]
    pub instance: Option<String>,
    /// Address for /metrics and /healthz (default 127.0.0.1:9798; "" = off).
    #[arg(long, env = "NINES_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "NINES_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The resolved settings the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Collector base URLs, without trailing slashes, in order.
    pub collectors: Vec<String>,
    /// failover or replicate.
    pub mode: crate::ship::Mode,
    /// Most bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// Most backlog batches per second per collector.
    pub drain_rate: u32,
    /// How often failover tries the first collector again.
    pub primary_retry: Duration,
    /// Which built-in samplers run.
    pub samplers: crate::samplers::SamplerToggles,
    /// The StatsD listener, if on.
    pub statsd: Option<crate::samplers::statsd::StatsdConfig>,
    /// Access logs to tail.
    pub access_logs: Vec<crate::samplers::access_log::AccessLogConfig>,
    /// Active checks, validated.
    pub probes: Vec<crate::probes::ValidProbe>,
    /// Bearer token.
    pub token: String,
    /// Sampling and push interval.
    pub interval: Duration,
    /// State directory.
    pub state_dir: PathBuf,
    /// `instance` label.
    pub instance: String,
    /// Listener for /metrics; None when off.
    pub listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
}

impl AgentConfig {
    /// Merges the file (if `--config` was given) with the overrides and
    /// checks every value.
    pub fn resolve(o: &Overrides) -> Result<AgentConfig, ConfigError> {
        let (file, origin) = match &o.config {
            Some(p) => (FileConfig::load(p)?, format!(" (in {})", p.display())),
            None => (FileConfig::default(), String::new()),
        };
        // A value from a flag names no file; one from the file names it.
        let pick = |flag: &Option<String>, file: &Option<String>| -> (Option<String>, String) {
            match (flag, file) {
                (Some(v), _) => (Some(v.clone()), String::new()),
                (None, Some(v)) => (Some(v.clone()), origin.clone()),
                (None, None) => (None, String::new()),
            }
        };
        let invalid = |key, origin: &str, reason: String| ConfigError::Invalid {
            key,
            origin: origin.to_string(),
            reason,
        };

        let (collectors, from) = if !o.collector.is_empty() {
            (o.collector.clone(), String::new())
        } else {
            let mut v = file.collectors.clone().unwrap_or_default();
            if let Some(c) = &file.collector {
                v.insert(0, c.clone());
            }
            (v, origin.clone())
        };
        if collectors.is_empty() {
            return Err(ConfigError::Missing("collector", "collector"));
        }
        let mut checked = Vec::with_capacity(collectors.len());
        for c in collectors {
            let c = c.trim().trim_end_matches('/').to_string();
            if !(c.starts_with("http://") || c.starts_with("https://"))
                || c.len() <= "http://".len()
            {
                return Err(invalid(
                    "collector",
                    &from,
                    format!("{c:?} is not an http:// or https:// URL"),
                ));
            }
            if checked.contains(&c) {
                return Err(invalid(
                    "collectors",
                    &from,
                    format!("{c:?} is listed twice"),
                ));
            }
            checked.push(c);
        }
        let collectors = checked;

        let (mode, from) = pick(&o.mode, &file.mode);
        let mode = match mode.as_deref() {
            None | Some("failover") => crate::ship::Mode::Failover,
            Some("replicate") => crate::ship::Mode::Replicate,
            Some(other) => {
                return Err(invalid(
                    "mode",
                    &from,
                    format!("{other:?} is not one of failover, replicate"),
                ));
            }
        };
        let spool_max_bytes = file.spool_max_bytes.unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
        if spool_max_bytes < 1 << 20 {
            return Err(invalid(
                "spool_max_bytes",
                &origin,
                format!("{spool_max_bytes} is below the minimum of 1048576 (1 MiB)"),
            ));
        }
        let primary_retry = match &file.primary_retry {
            Some(s) => {
                parse_duration(s).map_err(|e| invalid("primary_retry", &origin, e.to_string()))?
            }
            None => crate::ship::PRIMARY_RETRY,
        };
        if primary_retry < Duration::from_secs(1) {
            return Err(invalid(
                "primary_retry",
                &origin,
                "must be at least 1s".into(),
            ));
        }
        let drain_rate = file.drain_rate.unwrap_or(200);
        if drain_rate == 0 {
            return Err(invalid("drain_rate", &origin, "must be at least 1".into()));
        }

        let (token, _) = pick(&o.token, &file.token);
        let token = token.unwrap_or_default();

        let (interval, from) = pick(&o.interval, &file.interval);
        let interval = match interval {
            Some(s) => parse_duration(&s).map_err(|e| invalid("interval", &from, e.to_string()))?,
            None => DEFAULT_INTERVAL,
        };
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
            return Err(invalid(
                "interval",
                &from,
                format!("{interval:?} is outside 100ms..1h"),
            ));
        }

        let state_dir = o
            .state_dir
            .clone()
            .or(file.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));

        let (instance, _) = pick(&o.instance, &file.instance);
        let instance = match instance.filter(|s| !s.is_empty()) {
            Some(i) => i,
            None => host_name(),
        };

        let (listen, from) = pick(&o.listen, &file.listen);
        let listen = listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = if listen.is_empty() {
            None
        } else {
            Some(listen.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "listen",
                    &from,
                    format!("{listen:?} is not an address:port ({e})"),
                )
            })?)
        };

        let (log_format, from) = pick(&o.log_format, &file.log_format);
        let log_format =
            parse_log_format(log_format.as_deref()).map_err(|r| invalid("log_format", &from, r))?;

        let fs = &file.samplers;
        let samplers = crate::samplers::SamplerToggles {
            host: fs.host.unwrap_or(true),
            system: fs.system.unwrap_or(true),
            connections: fs.connections.unwrap_or(true),
            connections_max_ports: match fs.connections_max_ports {
                Some(0) => {
                    return Err(invalid(
                        "samplers.connections_max_ports",
                        &origin,
                        "must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => crate::samplers::connections::DEFAULT_MAX_PORTS,
            },
            connections_parallelism: match fs.connections_parallelism {
                Some(0) => {
                    return Err(invalid(
                        "samplers.connections_parallelism",
                        &origin,
                        "must be at least 1 (1 dumps the socket table in one piece)".into(),
                    ));
                }
                Some(n) => n,
                None => crate::samplers::connections::DEFAULT_PARALLELISM,
            },
            connections_method: match fs.connections_method.as_deref() {
                None => ConnectionMethod::default(),
                Some(name) => ConnectionMethod::from_name(name).ok_or_else(|| {
                    invalid(
                        "samplers.connections_method",
                        &origin,
                        format!(
                            "{name:?} is not one of {}",
                            ConnectionMethod::NAMES.join(", ")
                        ),
                    )
                })?,
            },
        };
        let statsd = statsd_config(&file.statsd, &origin)?;
        let access_logs = file
            .access_log
            .iter()
            .enumerate()
            .map(|(i, a)| access_log_config(i, a, &origin))
            .collect::<Result<Vec<_>, _>>()?;

        let probes =
            crate::probes::validate_all(&file.probe).map_err(|e| ConfigError::Invalid {
                key: "probe",
                origin: origin.clone(),
                reason: e.to_string(),
            })?;

        Ok(AgentConfig {
            probes,
            samplers,
            statsd,
            access_logs,
            collectors,
            mode,
            spool_max_bytes,
            drain_rate,
            primary_retry,
            token,
            interval,
            state_dir,
            instance,
            listen,
            log_format,
        })
    }
}

fn statsd_config(
    f: &FileStatsd,
    origin: &str,
) -> Result<Option<crate::samplers::statsd::StatsdConfig>, ConfigError> {
    if !f.enabled.unwrap_or(true) {
        return Ok(None);
    }
    let invalid = |key, reason: String| ConfigError::Invalid {
        key,
        origin: origin.to_string(),
        reason,
    };
    let mut c = crate::samplers::statsd::StatsdConfig::default();
    if let Some(l) = &f.listen {
        c.listen = l.parse().map_err(|e| {
            invalid(
                "statsd.listen",
                format!("{l:?} is not an address:port ({e})"),
            )
        })?;
    }
    for (key, v, slot) in [
        ("statsd.max_series", f.max_series, &mut c.max_series),
        ("statsd.max_name_len", f.max_name_len, &mut c.max_name_len),
        ("statsd.max_tags", f.max_tags, &mut c.max_tags),
    ] {
        match v {
            Some(0) => return Err(invalid(key, "must be at least 1".into())),
            Some(n) => *slot = n,
            None => {}
        }
    }
    Ok(Some(c))
}

fn access_log_config(
    i: usize,
    f: &FileAccessLog,
    origin: &str,
) -> Result<crate::samplers::access_log::AccessLogConfig, ConfigError> {
    use crate::samplers::access_log::{AccessLogConfig, LogFormat, TimeUnit};
    let invalid = |key, reason: String| ConfigError::Invalid {
        key,
        origin: format!("{origin} [[access_log]] #{} ({})", i + 1, f.path.display()),
        reason,
    };
    let format = match f.format.as_deref() {
        None => LogFormat::NginxCombinedRt,
        Some(name) => match LogFormat::preset(name) {
            Some(p) => p,
            None if name.contains("(?P<") || name.contains("(?<") => {
                regex::Regex::new(name)
                    .map_err(|e| invalid("access_log.format", format!("bad regex: {e}")))?;
                LogFormat::Custom(name.to_string())
            }
            None => {
                return Err(invalid(
                    "access_log.format",
                    format!(
                        "{name:?} is not nginx_combined_rt, apache_combined_d, vhost_combined_rt, or a regex with named groups"
                    ),
                ));
            }
        },
    };
    let mut c = AccessLogConfig::new(f.path.clone(), format);
    c.vhost = f.vhost.clone().filter(|v| !v.is_empty());
    c.time_unit = match f.time_unit.as_deref() {
        None => None,
        Some("seconds") => Some(TimeUnit::Seconds),
        Some("milliseconds") => Some(TimeUnit::Milliseconds),
        Some("microseconds") => Some(TimeUnit::Microseconds),
        Some(other) => {
            return Err(invalid(
                "access_log.time_unit",
                format!("{other:?} is not seconds, milliseconds or microseconds"),
            ));
        }
    };
    if let Some(n) = f.max_vhosts {
        if n == 0 {
            return Err(invalid(
                "access_log.max_vhosts",
                "must be at least 1".into(),
            ));
        }
        c.max_vhosts = n;
    }
    c.read_existing = f.read_existing.unwrap_or(false);
    Ok(c)
}

/// Reads `text`/`json` (None means text).
pub fn parse_log_format(s: Option<&str>) -> Result<LogFormat, String> {
    match s {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(format!("{other:?} is not one of text, json")),
    }
}

/// This host's name, as the kernel reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> (tempfile::NamedTempFile, Overrides) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let o = Overrides {
            config: Some(f.path().to_path_buf()),
            ..Overrides::default()
        };
        (f, o)
    }

    #[test]
    fn flags_win_over_the_file() {
        let (_f, mut o) = with_file("collector = \"http://a:1\"\ninterval = \"5s\"\n");
        o.interval = Some("2s".into());
        let c = AgentConfig::resolve(&o).unwrap();
        assert_eq!(c.collectors, vec!["http://a:1"]);
        assert_eq!(c.interval, Duration::from_secs(2));
    }

    #[test]
    fn an_unknown_key_names_the_file_and_the_key() {
        let (f, o) = with_file("collector = \"http://a:1\"\nintervall = \"5s\"\n");
        let e = AgentConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(e.contains("intervall"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_reason() {
        let (_f, o) = with_file("collector = \"http://a:1\"\ninterval = \"fast\"\n");
        let e = AgentConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("`interval`") && e.contains("fast"), "{e}");
        let o = Overrides {
            collector: vec!["ftp://x".into()],
            ..Overrides::default()
        };
        let e = AgentConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("`collector`"), "{e}");
    }

    #[test]
    fn the_example_config_sets_every_key_to_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nines-agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: toml::Table = toml::from_str(&text).unwrap();
        let file: FileConfig = toml::from_str(&text).unwrap();
        // Every key the file format knows is in the example.
        for key in [
            "collector",
            "token",
            "interval",
            "state_dir",
            "instance",
            "listen",
            "log_format",
            "collectors",
            "mode",
            "spool_max_bytes",
            "drain_rate",
            "primary_retry",
            "samplers",
            "statsd",
            "access_log",
            "probe",
        ] {
            assert!(raw.contains_key(key), "{key} missing from the example");
        }
        assert_eq!(file.interval.as_deref(), Some("10s"));
        let c = AgentConfig::resolve(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.samplers, crate::samplers::SamplerToggles::default());
        let samplers = raw.get("samplers").and_then(|s| s.as_table());
        for key in [
            "host",
            "system",
            "connections",
            "connections_max_ports",
            "connections_parallelism",
            "connections_method",
        ] {
            assert!(
                samplers.is_some_and(|s| s.contains_key(key)),
                "samplers.{key} missing from the example"
            );
        }
    }

    #[test]
    fn connection_parallelism_defaults_to_four_and_refuses_zero() {
        let (_f, o) = with_file("collector = \"http://a:1\"\n");
        let c = AgentConfig::resolve(&o).unwrap();
        assert_eq!(c.samplers.connections_parallelism, 4);
        let (_f, o) =
            with_file("collector = \"http://a:1\"\n[samplers]\nconnections_parallelism = 1\n");
        let c = AgentConfig::resolve(&o).unwrap();
        assert_eq!(c.samplers.connections_parallelism, 1);
        let (f, o) =
            with_file("collector = \"http://a:1\"\n[samplers]\nconnections_parallelism = 0\n");
        let e = AgentConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("`samplers.connections_parallelism`"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn connection_method_defaults_to_auto_and_refuses_unknown_names() {
        let (_f, o) = with_file("collector = \"http://a:1\"\n");
        let c = AgentConfig::resolve(&o).unwrap();
        assert_eq!(c.samplers.connections_method, ConnectionMethod::Auto);
        for (name, method) in [
            ("auto", ConnectionMethod::Auto),
            ("bpf", ConnectionMethod::Bpf),
            ("netlink", ConnectionMethod::Netlink),
            ("proc", ConnectionMethod::Proc),
        ] {
            let (_f, o) = with_file(&format!(
                "collector = \"http://a:1\"\n[samplers]\nconnections_method = \"{name}\"\n"
            ));
            let c = AgentConfig::resolve(&o).unwrap();
            assert_eq!(c.samplers.connections_method, method);
        }
        let (f, o) =
            with_file("collector = \"http://a:1\"\n[samplers]\nconnections_method = \"ebpf\"\n");
        let e = AgentConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("`samplers.connections_method`"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(
            e.contains("\"ebpf\" is not one of auto, bpf, netlink, proc"),
            "{e}"
        );
    }

    #[test]
    fn the_collector_is_required() {
        let e = AgentConfig::resolve(&Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Missing("collector", _)));
    }
}
