//! The collector's settings: a TOML file (`--config`), each key overridable
//! by a flag or environment variable. Defaults are documented here and in
//! `deploy/nines-collector.toml`. A bad file or value stops the collector at
//! start with the file, the key and the reason.

use nines_agent::config::{LogFormat, load_toml, parse_log_format};
use nines_shared::duration::parse_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default listen address of the API and UI.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9797";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/nines-collector";

/// The settings as a TOML file spells them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address of the HTTP API and UI.
    pub listen: Option<String>,
    /// Directory of the SQLite file and the generated token.
    pub data_dir: Option<PathBuf>,
    /// Token agents must present; generated in the data dir when absent.
    pub agent_token: Option<String>,
    /// Run an agent for this host in-process (default true).
    pub local_agent: Option<bool>,
    /// Sampling interval of the in-process agent (default 10s).
    pub local_agent_interval: Option<String>,
    /// Log format: text or json.
    pub log_format: Option<String>,
    /// Ingest limits.
    #[serde(default)]
    pub limits: FileLimits,
    /// Targets to pull (`[[scrape]]` tables).
    #[serde(default)]
    pub scrape: Vec<FileScrape>,
    /// Rule files in Prometheus's format (recording and alerting rules).
    #[serde(default)]
    pub rule_files: Vec<PathBuf>,
    /// Default time between rule group evaluations (default 1m).
    pub evaluation_interval: Option<String>,
    /// `[storage]`.
    #[serde(default)]
    pub storage: FileStorage,
    /// Service level objectives (`[[slo]]` tables).
    #[serde(default)]
    pub slo: Vec<crate::slo::SloDefinition>,
    /// `[builtin_rules]`.
    #[serde(default)]
    pub builtin_rules: crate::rules::builtin::FileBuiltinRules,
    /// Notification receivers (`[[receiver]]` tables).
    #[serde(default)]
    pub receiver: Vec<crate::notify::config::FileReceiver>,
    /// The notification routing tree.
    pub route: Option<crate::notify::config::FileRoute>,
    /// Inhibit rules; absent: the built-in one, `[]`: none.
    pub inhibit_rule: Option<Vec<crate::notify::config::FileInhibitRule>>,
    /// `[notify]`: the outbox and retries.
    #[serde(default)]
    pub notify: crate::notify::config::FileNotify,
    /// `[presence]`.
    #[serde(default)]
    pub presence: FilePresence,
}

/// `[presence]` in the file: when a pushing agent counts as down, and how
/// often `up` and the collector's own metrics are stored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePresence {
    /// Silent for this many of its sampling intervals: down (default 3).
    pub down_after_intervals: Option<u32>,
    /// ...but never sooner than this (default 30s).
    pub down_after_min: Option<String>,
    /// Silent this long: forgotten (default 7d).
    pub forget_after: Option<String>,
    /// How often `up` is written for each agent (default 10s).
    pub write_interval: Option<String>,
    /// How often the collector's own metrics are stored (default 15s; "0"
    /// never).
    pub self_metrics_interval: Option<String>,
}

/// `[storage]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStorage {
    /// How long samples are kept (default 15d; "0" keeps everything).
    pub retention: Option<String>,
    /// How long minute rollups are kept (default 90d, at least
    /// `retention`).
    pub retention_1m: Option<String>,
    /// How long hour rollups are kept (default 730d, at least
    /// `retention_1m`).
    pub retention_1h: Option<String>,
}

/// One `[[scrape]]` table: a job and the targets it pulls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileScrape {
    /// The `job` label.
    pub job: String,
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// Time between scrapes (default 15s).
    pub interval: Option<String>,
    /// Longest one scrape may take (default 10s, at most the interval).
    pub timeout: Option<String>,
    /// Path of the metrics page (default /metrics).
    pub path: Option<String>,
    /// `http` or `https` (default http).
    pub scheme: Option<String>,
    /// Most samples accepted per scrape (default 50000).
    pub sample_limit: Option<usize>,
}

/// `[limits]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest push body, compressed, in bytes (default 4 MiB).
    pub max_body_bytes: Option<usize>,
    /// Largest push body once decompressed, in bytes (default 16 MiB).
    pub max_decompressed_bytes: Option<usize>,
    /// Most samples per batch (default 500000).
    pub max_samples_per_batch: Option<usize>,
    /// How far ahead of the collector's clock a sample may be (default 10m).
    pub max_future: Option<String>,
    /// Most series one query selector may match (default 500000).
    pub max_query_series: Option<usize>,
    /// Most samples one query may load (default 50000000).
    pub max_query_samples: Option<usize>,
    /// Longest a query may run (default 2m).
    pub query_timeout: Option<String>,
}

/// Why the configuration is not usable (shared with the agent).
pub use nines_agent::config::ConfigError;

/// Flags and environment variables of `serve`; they win over the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML config file.
    #[arg(long, env = "NINES_COLLECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the API and UI (default 127.0.0.1:9797).
    #[arg(long, env = "NINES_LISTEN")]
    pub listen: Option<String>,
    /// Data directory (default /var/lib/nines-collector).
    #[arg(long, env = "NINES_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Token agents must present (default: generated in the data dir).
    #[arg(long, env = "NINES_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,
    /// Do not run an agent for this host in-process.
    #[arg(long)]
    pub no_local_agent: bool,
    /// Sampling interval of the in-process agent (default 10s).
    #[arg(long, env = "NINES_LOCAL_AGENT_INTERVAL")]
    pub local_agent_interval: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "NINES_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// Limits applied to input and queries.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest compressed push body.
    pub max_body_bytes: usize,
    /// Largest decompressed push body.
    pub max_decompressed_bytes: usize,
    /// Most samples per batch.
    pub max_samples_per_batch: usize,
    /// How far ahead of now a sample may be.
    pub max_future: Duration,
    /// Most series per selector.
    pub max_query_series: usize,
    /// Most samples per query.
    pub max_query_samples: usize,
    /// Longest a query may run.
    pub query_timeout: Duration,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// API and UI address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Agent token, if configured (else generated at start).
    pub agent_token: Option<String>,
    /// Whether to run the in-process agent.
    pub local_agent: bool,
    /// Its interval.
    pub local_agent_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Limits.
    pub limits: Limits,
    /// Targets to pull.
    pub scrape: Vec<crate::scrape::Target>,
    /// How long samples are kept; None keeps everything.
    pub retention: Option<Duration>,
    /// How long minute rollups are kept; None keeps everything.
    pub retention_1m: Option<Duration>,
    /// How long hour rollups are kept; None keeps everything.
    pub retention_1h: Option<Duration>,
    /// Rule files to load at start.
    pub rule_files: Vec<PathBuf>,
    /// Default interval of rule groups, and of SLO evaluation.
    pub evaluation_interval: Duration,
    /// SLOs from the file, checked.
    pub slos: Vec<crate::slo::Slo>,
    /// Built-in alert rules.
    pub builtin_rules: crate::rules::builtin::BuiltinRules,
    /// Agent presence (`up` for pushing agents) and self-metrics.
    pub presence: crate::presence::PresenceConfig,
    /// Receivers, routes, inhibition and the outbox.
    pub notify: crate::notify::config::NotifyConfig,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        load_toml(path)
    }
}

impl CollectorConfig {
    /// Merges the file with the overrides and checks every value.
    pub fn resolve(o: &Overrides) -> Result<CollectorConfig, ConfigError> {
        let (file, in_file) = match &o.config {
            Some(p) => (FileConfig::load(p)?, format!(" (in {})", p.display())),
            None => (FileConfig::default(), String::new()),
        };
        let origin = |from_flag: bool| {
            if from_flag {
                String::new()
            } else {
                in_file.clone()
            }
        };
        let invalid = |key, from_flag: bool, reason: String| ConfigError::Invalid {
            key,
            origin: origin(from_flag),
            reason,
        };

        let listen_s = o
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_s.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "listen",
                o.listen.is_some(),
                format!("{listen_s:?} is not an address:port ({e})"),
            )
        })?;
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let agent_token = o
            .agent_token
            .clone()
            .or(file.agent_token.clone())
            .filter(|t| !t.is_empty());
        if let Some(t) = &agent_token {
            if t.len() < 8 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "agent_token",
                    o.agent_token.is_some(),
                    "must be at least 8 characters with no spaces".into(),
                ));
            }
        }
        let local_agent = !o.no_local_agent && file.local_agent.unwrap_or(true);
        let interval =
            |key, flag: &Option<String>, file: &Option<String>, default: Duration| match flag
                .as_ref()
                .or(file.as_ref())
            {
                None => Ok(default),
                Some(s) => {
                    parse_duration(s).map_err(|e| invalid(key, flag.is_some(), e.to_string()))
                }
            };
        let local_agent_interval = interval(
            "local_agent_interval",
            &o.local_agent_interval,
            &file.local_agent_interval,
            Duration::from_secs(10),
        )?;
        if local_agent_interval < Duration::from_millis(100) {
            return Err(invalid(
                "local_agent_interval",
                o.local_agent_interval.is_some(),
                "must be at least 100ms".into(),
            ));
        }
        let log_format = parse_log_format(o.log_format.as_deref().or(file.log_format.as_deref()))
            .map_err(|r| invalid("log_format", o.log_format.is_some(), r))?;

        let fl = &file.limits;
        let positive = |key, v: Option<usize>, default: usize| match v {
            Some(0) => Err(invalid(key, false, "must be greater than 0".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let limits = Limits {
            max_body_bytes: positive("limits.max_body_bytes", fl.max_body_bytes, 4 << 20)?,
            max_decompressed_bytes: positive(
                "limits.max_decompressed_bytes",
                fl.max_decompressed_bytes,
                16 << 20,
            )?,
            max_samples_per_batch: positive(
                "limits.max_samples_per_batch",
                fl.max_samples_per_batch,
                500_000,
            )?,
            max_future: interval(
                "limits.max_future",
                &None,
                &fl.max_future,
                Duration::from_secs(600),
            )?,
            max_query_series: positive("limits.max_query_series", fl.max_query_series, 500_000)?,
            max_query_samples: positive(
                "limits.max_query_samples",
                fl.max_query_samples,
                50_000_000,
            )?,
            query_timeout: interval(
                "limits.query_timeout",
                &None,
                &fl.query_timeout,
                Duration::from_secs(120),
            )?,
        };
        let evaluation_interval = interval(
            "evaluation_interval",
            &None,
            &file.evaluation_interval,
            Duration::from_secs(60),
        )?;
        if evaluation_interval < Duration::from_millis(100) {
            return Err(invalid(
                "evaluation_interval",
                false,
                "must be at least 100ms".into(),
            ));
        }
        // Relative rule file paths are relative to the config file.
        let base = o.config.as_deref().and_then(Path::parent);
        let rule_files = file
            .rule_files
            .iter()
            .map(|p| match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p.clone(),
            })
            .collect();
        let mut scrape = Vec::new();
        for (i, job) in file.scrape.iter().enumerate() {
            scrape.extend(scrape_targets(i, job, &in_file)?);
        }
        let fs = &file.storage;
        let defaults = crate::storage::StorageOptions::default();
        // A coarser resolution's default never falls below a finer one.
        let at_least = |finer: Option<Duration>, default: Option<Duration>| {
            finer.map(|r| default.map_or(r, |d| r.max(d)))
        };
        let retention = parse_retention(
            &invalid,
            "storage.retention",
            fs.retention.as_deref(),
            defaults.retention,
        )?;
        let retention_1m = parse_retention(
            &invalid,
            "storage.retention_1m",
            fs.retention_1m.as_deref(),
            at_least(retention, defaults.retention_1m),
        )?;
        let retention_1h = parse_retention(
            &invalid,
            "storage.retention_1h",
            fs.retention_1h.as_deref(),
            at_least(retention_1m, defaults.retention_1h),
        )?;
        for ((key, coarse, written), (finer_key, finer, finer_written)) in [
            (
                ("storage.retention_1m", retention_1m, &fs.retention_1m),
                ("storage.retention", retention, &fs.retention),
            ),
            (
                ("storage.retention_1h", retention_1h, &fs.retention_1h),
                ("storage.retention_1m", retention_1m, &fs.retention_1m),
            ),
        ] {
            let shorter = match (coarse, finer) {
                (Some(c), Some(f)) => c < f,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if shorter {
                // As the file says it, or the default the key took.
                let show = |written: &Option<String>, d: Option<Duration>| match (written, d) {
                    (_, None) => "\"0\" (everything)".to_string(),
                    (Some(w), Some(_)) => format!("{w:?}"),
                    (None, Some(d)) => format!("{}d by default", d.as_secs() / DAY_SECS),
                };
                return Err(invalid(
                    key,
                    false,
                    format!(
                        "{} is shorter than {finer_key} ({}): rollups must be kept at least as long as the finer data they are made from",
                        show(written, coarse),
                        show(finer_written, finer)
                    ),
                ));
            }
        }
        let slos = crate::slo::validate_config(&file.slo).map_err(|(i, e)| {
            let name = file.slo.get(i).map(|d| d.name.as_str()).unwrap_or("");
            ConfigError::Invalid {
                key: "slo",
                origin: format!("{in_file} [[slo]] #{} (name {name:?})", i + 1),
                reason: e.to_string(),
            }
        })?;
        let builtin_rules = file
            .builtin_rules
            .resolve()
            .map_err(|(key, reason)| invalid(key, false, reason))?;
        let presence = resolve_presence(&file.presence, &in_file)?;
        let notify = crate::notify::config::resolve(
            &file.receiver,
            file.route.as_ref(),
            file.inhibit_rule.as_deref(),
            &file.notify,
            base,
        )
        .map_err(|e| ConfigError::Invalid {
            key: e.key,
            origin: if e.place.is_empty() {
                in_file.clone()
            } else {
                format!("{in_file} {}", e.place)
            },
            reason: e.reason,
        })?;
        Ok(CollectorConfig {
            slos,
            builtin_rules,
            presence,
            notify,
            retention,
            retention_1m,
            retention_1h,
            scrape,
            rule_files,
            evaluation_interval,
            listen,
            data_dir,
            agent_token,
            local_agent,
            local_agent_interval,
            log_format,
            limits,
        })
    }
}

/// Resolves `[presence]`, checking every value.
fn resolve_presence(
    f: &FilePresence,
    origin: &str,
) -> Result<crate::presence::PresenceConfig, ConfigError> {
    let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
        key,
        origin: origin.to_string(),
        reason,
    };
    let d = crate::presence::PresenceConfig::default();
    let duration = |key, v: &Option<String>, default: Duration, min: Duration| match v {
        None => Ok(default),
        Some(s) => {
            let v = parse_duration(s).map_err(|e| invalid(key, e.to_string()))?;
            if v < min {
                return Err(invalid(
                    key,
                    format!("{s:?} is under the minimum of {min:?}"),
                ));
            }
            Ok(v)
        }
    };
    let down_after_intervals = match f.down_after_intervals {
        Some(0) => {
            return Err(invalid(
                "presence.down_after_intervals",
                "must be at least 1".into(),
            ));
        }
        Some(n) => n,
        None => d.down_after_intervals,
    };
    let second = Duration::from_secs(1);
    let write_interval = duration(
        "presence.write_interval",
        &f.write_interval,
        d.write_interval,
        second,
    )?;
    let down_after_min = duration(
        "presence.down_after_min",
        &f.down_after_min,
        d.down_after_min,
        second,
    )?;
    let forget_after = duration(
        "presence.forget_after",
        &f.forget_after,
        d.forget_after,
        Duration::from_secs(60),
    )?;
    if forget_after <= down_after_min {
        return Err(invalid(
            "presence.forget_after",
            format!("{forget_after:?} must be longer than down_after_min ({down_after_min:?})"),
        ));
    }
    let self_metrics_interval = match f.self_metrics_interval.as_deref() {
        Some("0") => None,
        _ => Some(duration(
            "presence.self_metrics_interval",
            &f.self_metrics_interval,
            d.self_metrics_interval.unwrap_or(Duration::from_secs(15)),
            second,
        )?),
    };
    Ok(crate::presence::PresenceConfig {
        down_after_intervals,
        down_after_min,
        forget_after,
        write_interval,
        self_metrics_interval,
    })
}

/// Resolves one `[[scrape]]` table into targets, checking every value.
fn scrape_targets(
    i: usize,
    job: &FileScrape,
    origin: &str,
) -> Result<Vec<crate::scrape::Target>, ConfigError> {
    let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
        key,
        origin: format!("{origin} [[scrape]] #{} (job {:?})", i + 1, job.job),
        reason,
    };
    if job.job.is_empty() {
        return Err(invalid("scrape.job", "must not be empty".into()));
    }
    let duration = |key, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| invalid(key, e.to_string())),
    };
    let interval = duration("scrape.interval", &job.interval, Duration::from_secs(15))?;
    if interval < Duration::from_millis(100) {
        return Err(invalid("scrape.interval", "must be at least 100ms".into()));
    }
    let timeout = duration(
        "scrape.timeout",
        &job.timeout,
        Duration::from_secs(10).min(interval),
    )?;
    if timeout > interval || timeout.is_zero() {
        return Err(invalid(
            "scrape.timeout",
            format!("{timeout:?} must be above zero and at most the interval {interval:?}"),
        ));
    }
    let scheme = job.scheme.as_deref().unwrap_or("http");
    if scheme != "http" && scheme != "https" {
        return Err(invalid(
            "scrape.scheme",
            format!("{scheme:?} is not http or https"),
        ));
    }
    let path = job.path.as_deref().unwrap_or("/metrics");
    if !path.starts_with('/') {
        return Err(invalid(
            "scrape.path",
            format!("{path:?} must start with /"),
        ));
    }
    let sample_limit = job.sample_limit.unwrap_or(50_000);
    if sample_limit == 0 {
        return Err(invalid(
            "scrape.sample_limit",
            "must be greater than 0".into(),
        ));
    }
    if job.targets.is_empty() {
        return Err(invalid("scrape.targets", "lists no target".into()));
    }
    job.targets
        .iter()
        .map(|t| {
            let ok = t
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid("scrape.targets", format!("{t:?} is not host:port")));
            }
            Ok(crate::scrape::Target {
                job: job.job.clone(),
                instance: t.clone(),
                url: format!("{scheme}://{t}{path}"),
                interval,
                timeout,
                sample_limit,
            })
        })
        .collect()
}

const DAY_SECS: u64 = 24 * 3600;

/// A `[storage]` retention: a duration of at least 1h, or "0" for
/// everything (`None`); `default` when not set.
fn parse_retention(
    invalid: &dyn Fn(&'static str, bool, String) -> ConfigError,
    key: &'static str,
    value: Option<&str>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        None => Ok(default),
        Some("0") => Ok(None),
        Some(s) => {
            let d = parse_duration(s).map_err(|e| invalid(key, false, e.to_string()))?;
            if d < Duration::from_secs(3600) {
                return Err(invalid(
                    key,
                    false,
                    format!("{s:?} is under the minimum of 1h (\"0\" keeps everything)"),
                ));
            }
            Ok(Some(d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_retentions_default_above_raw_and_may_not_be_shorter() {
        let c = CollectorConfig::resolve(&Overrides::default()).unwrap();
        assert_eq!(c.retention, Some(Duration::from_secs(15 * DAY_SECS)));
        assert_eq!(c.retention_1m, Some(Duration::from_secs(90 * DAY_SECS)));
        assert_eq!(c.retention_1h, Some(Duration::from_secs(730 * DAY_SECS)));
        let f = tempfile::NamedTempFile::new().unwrap();
        let o = Overrides {
            config: Some(f.path().to_path_buf()),
            ..Overrides::default()
        };
        let with = |body: &str| {
            std::fs::write(f.path(), format!("[storage]\n{body}")).unwrap();
            CollectorConfig::resolve(&o)
        };
        // Raw kept longer than a default: the defaults follow it up.
        let c = with("retention = \"200d\"\n").unwrap();
        assert_eq!(c.retention_1m, Some(Duration::from_secs(200 * DAY_SECS)));
        assert_eq!(c.retention_1h, Some(Duration::from_secs(730 * DAY_SECS)));
        let c = with("retention = \"0\"\n").unwrap();
        assert_eq!((c.retention_1m, c.retention_1h), (None, None));
        let c = with("retention_1m = \"30d\"\nretention_1h = \"0\"\n").unwrap();
        assert_eq!(c.retention_1m, Some(Duration::from_secs(30 * DAY_SECS)));
        assert_eq!(c.retention_1h, None);
        // Shorter than the finer one: refused, naming key and reason.
        let e = with("retention_1m = \"7d\"\n").unwrap_err().to_string();
        assert!(
            e.contains("storage.retention_1m") && e.contains("shorter than storage.retention"),
            "{e}"
        );
        let e = with("retention_1m = \"100d\"\nretention_1h = \"99d\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.retention_1h") && e.contains("shorter than storage.retention_1m"),
            "{e}"
        );
        let e = with("retention = \"0\"\nretention_1m = \"90d\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.retention_1m") && e.contains("everything"),
            "{e}"
        );
        let e = with("retention_1h = \"30m\"\n").unwrap_err().to_string();
        assert!(
            e.contains("storage.retention_1h") && e.contains("minimum"),
            "{e}"
        );
        let e = with("retention_1h = \"forever\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.retention_1h") && e.contains("forever"),
            "{e}"
        );
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let c = CollectorConfig::resolve(&Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.local_agent);
        assert_eq!(c.limits.max_future, Duration::from_secs(600));
    }

    #[test]
    fn the_example_config_holds_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nines-collector.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: toml::Table = toml::from_str(&text).unwrap();
        for key in [
            "listen",
            "data_dir",
            "agent_token",
            "local_agent",
            "local_agent_interval",
            "log_format",
            "limits",
            "scrape",
            "storage",
            "rule_files",
            "evaluation_interval",
            "builtin_rules",
            "slo",
            "receiver",
            "route",
            "inhibit_rule",
            "notify",
        ] {
            assert!(raw.contains_key(key), "{key} missing from the example");
        }
        let storage = raw["storage"].as_table().unwrap();
        assert_eq!(storage.len(), 3, "every [storage] key is in the example");
        let limits = raw["limits"].as_table().unwrap();
        assert_eq!(limits.len(), 7, "every [limits] key is in the example");
        let scrape = raw["scrape"].as_array().unwrap()[0].as_table().unwrap();
        assert_eq!(scrape.len(), 7, "every [[scrape]] key is in the example");
        let builtin = raw["builtin_rules"].as_table().unwrap();
        assert_eq!(
            builtin.len(),
            13,
            "every [builtin_rules] key is in the example"
        );
        let slo = raw["slo"].as_array().unwrap()[0].as_table().unwrap();
        assert_eq!(slo.len(), 8, "every [[slo]] key is in the example");
        let indicator = slo["indicator"].as_table().unwrap();
        assert_eq!(indicator["kind"].as_str(), Some("probe"));
        let burn = slo["burn_alerts"].as_array().unwrap();
        assert_eq!(burn[0].as_table().unwrap().len(), 5);
        let mut from_file = CollectorConfig::resolve(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(from_file.scrape.len(), 1);
        assert_eq!(from_file.slos.len(), 1);
        // The example's job and SLO show the keys; there are none by
        // default. The SLO's alerts are the defaults.
        assert_eq!(
            from_file.slos[0].burn_alerts,
            crate::slo::spec::validate(
                &crate::slo::SloDefinition {
                    burn_alerts: None,
                    ..from_file.slos[0].def.clone()
                },
                crate::slo::Source::Config
            )
            .unwrap()
            .burn_alerts
        );
        from_file.scrape.clear();
        from_file.slos.clear();
        let notify = raw["notify"].as_table().unwrap();
        assert_eq!(notify.len(), 5, "every [notify] key is in the example");
        let route = raw["route"].as_table().unwrap();
        assert_eq!(route.len(), 6, "every [route] key is in the example");
        let child = route["routes"].as_array().unwrap()[0].as_table().unwrap();
        assert_eq!(child.len(), 8, "every route key is in the example");
        let receivers = raw["receiver"].as_array().unwrap();
        let hook = receivers[0]["webhook"].as_table().unwrap();
        assert_eq!(hook.len(), 6, "every webhook key is in the example");
        let am = receivers[1]["alertmanager"].as_table().unwrap();
        assert_eq!(am.len(), 4, "every alertmanager key is in the example");
        // ca_file needs a real file, so the example shows it in a comment.
        assert!(text.contains("# ca_file: PEM file") && text.contains("#   e.g. ca_file = \""));
        assert_eq!(from_file.notify.receivers.len(), 2);
        assert!(from_file.notify.route.is_some());
        // The example's receivers and routes show the keys; none by default.
        from_file.notify.receivers.clear();
        from_file.notify.route = None;
        let defaults = CollectorConfig::resolve(&Overrides::default()).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn scrape_tables_become_targets_and_bad_ones_are_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            "[[scrape]]\njob = \"node\"\ntargets = [\"a:9100\", \"b:9100\"]\ninterval = \"5s\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.path().to_path_buf()),
            ..Overrides::default()
        };
        let c = CollectorConfig::resolve(&o).unwrap();
        assert_eq!(c.scrape.len(), 2);
        assert_eq!(c.scrape[1].url, "http://b:9100/metrics");
        assert_eq!(c.scrape[1].timeout, Duration::from_secs(5));
        std::fs::write(
            f.path(),
            "[[scrape]]\njob = \"node\"\ntargets = [\"nohost\"]\n",
        )
        .unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("scrape.targets") && e.contains("nohost"), "{e}");
    }

    #[test]
    fn rule_files_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "rule_files = [\"r.yml\", \"/etc/x.yml\"]\nevaluation_interval = \"15s\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(cfg.clone()),
            ..Overrides::default()
        };
        let c = CollectorConfig::resolve(&o).unwrap();
        assert_eq!(
            c.rule_files,
            vec![dir.path().join("r.yml"), PathBuf::from("/etc/x.yml")]
        );
        assert_eq!(c.evaluation_interval, Duration::from_secs(15));
        std::fs::write(&cfg, "evaluation_interval = \"1ms\"\n").unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("evaluation_interval"), "{e}");
    }

    #[test]
    fn an_invalid_slo_names_file_entry_field_and_reason() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let o = Overrides {
            config: Some(f.path().to_path_buf()),
            ..Overrides::default()
        };
        let slo = |name: &str, objective: &str, extra: &str| {
            format!(
                "[[slo]]\nname = \"{name}\"\nobjective = {objective}\n{extra}[slo.indicator]\nkind = \"probe\"\nprobe = \"p\"\n"
            )
        };
        std::fs::write(f.path(), slo("a", "100.0", "")).unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(e.contains("[[slo]] #1") && e.contains("objective"), "{e}");
        std::fs::write(f.path(), slo("a", "99.0", "window = \"fortnight\"\n")).unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("window") && e.contains("fortnight"), "{e}");
        std::fs::write(f.path(), slo("a", "99.0", "") + &slo("a", "98.0", "")).unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("[[slo]] #2") && e.contains("name"), "{e}");
        std::fs::write(
            f.path(),
            "[[slo]]\nname = \"r\"\nobjective = 99.0\n[slo.indicator]\nkind = \"ratio\"\ngood = \"sum(rate(x[$window])\"\ntotal = \"sum(rate(y[$window]))\"\n",
        )
        .unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(
            e.contains("indicator.good") && e.contains("bad PromQL"),
            "{e}"
        );
        std::fs::write(f.path(), slo("ok", "99.5", "")).unwrap();
        assert_eq!(CollectorConfig::resolve(&o).unwrap().slos.len(), 1);
    }

    #[test]
    fn bad_values_name_file_key_and_reason() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "[limits]\nmax_future = \"soon\"\n").unwrap();
        let o = Overrides {
            config: Some(f.path().to_path_buf()),
            ..Overrides::default()
        };
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("limits.max_future"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(e.contains("soon"), "{e}");

        std::fs::write(f.path(), "listen = 5\n").unwrap();
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");

        let o = Overrides {
            listen: Some("nowhere".into()),
            ..Overrides::default()
        };
        let e = CollectorConfig::resolve(&o).unwrap_err().to_string();
        assert!(e.contains("`listen`") && e.contains("nowhere"), "{e}");
    }
}
