//! `install` / `uninstall` of both binaries and the systemd notify protocol,
//! through the real binaries. Every path points into a temporary directory
//! and every install uses --no-enable or --dry-run: these tests never touch
//! /etc, /usr/local or systemctl.

use nines_agent::config::{AgentConfig, FileConfig as AgentFile, Overrides as AgentOverrides};
use nines_collector::config::{
    CollectorConfig, FileConfig as CollectorFile, Overrides as CollectorOverrides,
};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which binary a test drives.
#[derive(Clone, Copy)]
enum Product {
    Agent,
    Collector,
}

impl Product {
    fn name(self) -> &'static str {
        match self {
            Product::Agent => "nines-agent",
            Product::Collector => "nines-collector",
        }
    }

    fn bin(self) -> PathBuf {
        nines_tests::bin(self.name())
    }

    /// The binary, with none of the caller's settings leaking in.
    fn command(self) -> Command {
        let mut c = Command::new(self.bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("NINES_") || k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// The least `install` needs.
    fn minimal(self) -> &'static [&'static str] {
        match self {
            Product::Agent => &["--collector", "http://a:1"],
            Product::Collector => &[],
        }
    }
}

struct Paths {
    product: Product,
    _dir: tempfile::TempDir,
    root: PathBuf,
    units: PathBuf,
    config: PathBuf,
}

fn paths(product: Product) -> Paths {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let short = product.name().trim_start_matches("nines-");
    Paths {
        product,
        units: root.join("units"),
        config: root.join(format!("etc/nines/{short}.toml")),
        root,
        _dir: dir,
    }
}

impl Paths {
    fn unit(&self) -> PathBuf {
        self.units.join(format!("{}.service", self.product.name()))
    }

    /// `install` with the test paths; the binary is the one under test, so
    /// nothing is copied and the unit's ExecStart names a file that exists.
    fn install(&self, settings: &[&str], extra: &[&str]) -> Output {
        self.product
            .command()
            .arg("install")
            .args(settings)
            .arg("--binary-path")
            .arg(self.product.bin())
            .arg("--unit-dir")
            .arg(&self.units)
            .arg("--config-path")
            .arg(&self.config)
            .args(extra)
            .output()
            .unwrap()
    }

    fn uninstall(&self, extra: &[&str]) -> Output {
        self.product
            .command()
            .arg("uninstall")
            .arg("--unit-dir")
            .arg(&self.units)
            .arg("--config-path")
            .arg(&self.config)
            .arg("--no-disable")
            .args(extra)
            .output()
            .unwrap()
    }

    /// Every file under the temporary root.
    fn files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// A dry run with `settings`: it succeeds, writes nothing, and prints
    /// both files and the systemctl steps; returns what it printed.
    fn dry_run(&self, settings: &[&str]) -> String {
        let out = self.install(settings, &["--dry-run"]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(self.files().is_empty(), "{:?}", self.files());
        let config = format!("write {} (mode 0600)", self.config.display());
        assert!(stdout.contains(&config), "{stdout}");
        let unit = format!("write {} (mode 0644)", self.unit().display());
        assert!(stdout.contains(&unit), "{stdout}");
        assert!(stdout.contains("Type=notify"), "{stdout}");
        // --no-enable was not given: the commands are listed, not run.
        assert!(stdout.contains("run: systemctl daemon-reload"), "{stdout}");
        let enable = format!(
            "run: systemctl enable --now {}.service",
            self.product.name()
        );
        assert!(stdout.contains(&enable), "{stdout}");
        stdout
    }

    /// Installs, checks the config is private, and that a second install
    /// needs --force.
    fn install_private(&self, settings: &[&str]) {
        let out = self.install(settings, &["--no-enable"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mode = std::fs::metadata(&self.config)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the config holds the token");
        assert!(self.unit().exists());
        let again = self.install(self.product.minimal(), &["--no-enable"]);
        assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
        assert!(text(&again.stderr).contains("--force"));
    }

    /// Each of `cases` (settings, what stderr must name) exits 2 and writes
    /// nothing.
    fn refuses(&self, cases: &[(&[&str], &[&str], &str)]) {
        for (settings, extra, says) in cases {
            let out = self.install(settings, extra);
            assert_eq!(out.status.code(), Some(2), "{settings:?} {extra:?}");
            let err = text(&out.stderr);
            assert!(err.contains(says), "{settings:?}: {err}");
            assert!(
                self.files().is_empty(),
                "{settings:?} wrote {:?}",
                self.files()
            );
        }
    }

    /// Uninstall keeps the config, --purge removes it and names the state
    /// directory it leaves.
    fn uninstall_then_purge(&self) {
        let out = self.install(self.product.minimal(), &["--no-enable"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let dry = self.uninstall(&["--purge", "--dry-run"]);
        assert!(dry.status.success(), "{}", text(&dry.stderr));
        let remove = format!("remove {}", self.unit().display());
        assert!(text(&dry.stdout).contains(&remove));
        assert!(self.unit().exists() && self.config.exists());

        let out = self.uninstall(&[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!self.unit().exists());
        assert!(self.config.exists());
        assert!(text(&out.stdout).contains("--purge removes it"));

        let out = self.uninstall(&["--purge"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(self.files().is_empty(), "{:?}", self.files());
        let state = format!("/var/lib/{}", self.product.name());
        assert!(text(&out.stdout).contains(&state));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const AGENT_SETTINGS: &[&str] = &[
    "--collector",
    "http://10.0.0.5:9797",
    "--collector",
    "http://10.0.0.6:9797/",
    "--mode",
    "replicate",
    "--token",
    "tok-\"quoted\"-123",
    "--interval",
    "15s",
    "--instance",
    "web 1",
    "--listen",
    "",
    "--log-format",
    "json",
];

const COLLECTOR_SETTINGS: &[&str] = &[
    "--listen",
    "0.0.0.0:9797",
    "--agent-token",
    "secret-token-42",
    "--no-local-agent",
    "--local-agent-interval",
    "30s",
    "--log-format",
    "json",
];

#[test]
fn agent_dry_run_prints_the_unit_and_config_and_creates_nothing() {
    let p = paths(Product::Agent);
    let stdout = p.dry_run(AGENT_SETTINGS);
    let bin = p.product.bin();
    let exec = format!("ExecStart={} run --config %d/agent.toml", bin.display());
    assert!(stdout.contains(&exec), "{stdout}");
    let cred = format!("LoadCredential=agent.toml:{}", p.config.display());
    assert!(stdout.contains(&cred), "{stdout}");
    // The config in full, its token hidden.
    assert!(
        stdout.contains("collector = \"http://10.0.0.5:9797\""),
        "{stdout}"
    );
    assert!(stdout.contains("interval = \"15s\""), "{stdout}");
    assert!(!stdout.contains("tok-"), "the token leaked: {stdout}");
}

#[test]
fn collector_dry_run_prints_the_unit_and_config_and_creates_nothing() {
    let p = paths(Product::Collector);
    let stdout = p.dry_run(COLLECTOR_SETTINGS);
    let bin = p.product.bin();
    let exec = format!(
        "ExecStart={} serve --config %d/collector.toml --data-dir /var/lib/nines-collector",
        bin.display()
    );
    assert!(stdout.contains(&exec), "{stdout}");
    let cred = format!("LoadCredential=collector.toml:{}", p.config.display());
    assert!(stdout.contains(&cred), "{stdout}");
    assert!(stdout.contains("listen = \"0.0.0.0:9797\""), "{stdout}");
    assert!(stdout.contains("local_agent = false"), "{stdout}");
    assert!(
        !stdout.contains("secret-token-42"),
        "the token leaked: {stdout}"
    );
}

#[test]
fn agent_install_writes_a_private_config_that_loads_back_into_the_same_settings() {
    let p = paths(Product::Agent);
    p.install_private(AGENT_SETTINGS);
    let unit = std::fs::read_to_string(p.unit()).unwrap();
    assert!(unit.contains("WatchdogSec=30s"), "{unit}");

    // The file is one the agent's own loader accepts ...
    let file = AgentFile::load(&p.config).unwrap();
    assert_eq!(file.token.as_deref(), Some("tok-\"quoted\"-123"));
    assert_eq!(file.instance.as_deref(), Some("web 1"));
    // ... and resolves to what the flags resolve to.
    let from_file = AgentConfig::resolve(&AgentOverrides {
        config: Some(p.config.clone()),
        ..AgentOverrides::default()
    })
    .unwrap();
    let from_flags = AgentConfig::resolve(&AgentOverrides {
        collector: vec![
            "http://10.0.0.5:9797".into(),
            "http://10.0.0.6:9797/".into(),
        ],
        mode: Some("replicate".into()),
        token: Some("tok-\"quoted\"-123".into()),
        interval: Some("15s".into()),
        instance: Some("web 1".into()),
        listen: Some(String::new()),
        log_format: Some("json".into()),
        ..AgentOverrides::default()
    })
    .unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));

    // The refused second install left the config alone; --force replaces it.
    assert_eq!(
        AgentFile::load(&p.config).unwrap().interval.as_deref(),
        Some("15s")
    );
    let forced = p.install(
        &["--collector", "http://other:1"],
        &["--no-enable", "--force"],
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let file = AgentFile::load(&p.config).unwrap();
    assert_eq!(file.collector.as_deref(), Some("http://other:1"));
    assert_eq!(file.interval, None);
}

#[test]
fn collector_install_writes_a_private_config_that_loads_back_into_the_same_settings() {
    let p = paths(Product::Collector);
    p.install_private(COLLECTOR_SETTINGS);
    let file = CollectorFile::load(&p.config).unwrap();
    assert_eq!(file.agent_token.as_deref(), Some("secret-token-42"));
    assert_eq!(file.local_agent, Some(false));
    let from_file = CollectorConfig::resolve(&CollectorOverrides {
        config: Some(p.config.clone()),
        ..CollectorOverrides::default()
    })
    .unwrap();
    let from_flags = CollectorConfig::resolve(&CollectorOverrides {
        listen: Some("0.0.0.0:9797".into()),
        agent_token: Some("secret-token-42".into()),
        no_local_agent: true,
        local_agent_interval: Some("30s".into()),
        log_format: Some("json".into()),
        ..CollectorOverrides::default()
    })
    .unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));
}

#[test]
fn agent_config_given_to_install_is_kept_under_the_flags() {
    let p = paths(Product::Agent);
    let base = p.root.join("base.toml");
    std::fs::write(
        &base,
        "collector = \"http://a:1\"\ninterval = \"5s\"\nspool_max_bytes = 33554432\n",
    )
    .unwrap();
    let out = p.install(
        &["--config", base.to_str().unwrap(), "--interval", "20s"],
        &["--no-enable"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = AgentFile::load(&p.config).unwrap();
    assert_eq!(file.collector.as_deref(), Some("http://a:1"));
    assert_eq!(file.interval.as_deref(), Some("20s"));
    assert_eq!(file.spool_max_bytes, Some(33554432));
}

#[test]
fn collector_scrape_jobs_and_limits_of_a_given_config_are_kept() {
    let p = paths(Product::Collector);
    let base = p.root.join("base.toml");
    std::fs::write(
        &base,
        "listen = \"127.0.0.1:9000\"\n[limits]\nmax_body_bytes = 1000\n\
         [[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:9100\"]\ninterval = \"15s\"\n",
    )
    .unwrap();
    let out = p.install(
        &[
            "--config",
            base.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
        ],
        &["--no-enable"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = CollectorFile::load(&p.config).unwrap();
    assert_eq!(file.listen.as_deref(), Some("127.0.0.1:9001"));
    assert_eq!(file.limits.max_body_bytes, Some(1000));
    assert_eq!(file.scrape.len(), 1);
    assert_eq!(file.scrape[0].targets, vec!["127.0.0.1:9100"]);
}

#[test]
fn agent_bad_flags_exit_2_and_write_nothing() {
    let p = paths(Product::Agent);
    let no_enable: &[&str] = &["--no-enable"];
    p.refuses(&[
        (
            &["--collector", "http://127.0.0.1:1", "--interval", "fast"],
            no_enable,
            "`interval`",
        ),
        (&["--interval", "10s"], no_enable, "`collector`"),
        (&["--collector", "ftp://x"], no_enable, "`collector`"),
        (
            &["--collector", "http://a:1", "--state-dir", "/srv/elsewhere"],
            no_enable,
            "StateDirectory",
        ),
        (
            &["--collector", "http://a:1"],
            &["--no-enable", "--no-such-flag"],
            "--no-such-flag",
        ),
    ]);
    let out = p
        .product
        .command()
        .args(["install", "--collector", "http://a:1", "--no-enable"])
        .args(["--binary-path", "relative/nines-agent", "--unit-dir"])
        .arg(&p.units)
        .arg("--config-path")
        .arg(&p.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("absolute"), "{err}");
    assert!(p.files().is_empty(), "{:?}", p.files());
    let out = p
        .product
        .command()
        .args(["uninstall", "--unit-dir", "relative", "--no-disable"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn collector_bad_flags_exit_2_and_write_nothing() {
    let no_enable: &[&str] = &["--no-enable"];
    paths(Product::Collector).refuses(&[
        (
            &["--local-agent-interval", "fast"],
            no_enable,
            "`local_agent_interval`",
        ),
        (&["--agent-token", "short"], no_enable, "`agent_token`"),
        (&["--listen", "nowhere"], no_enable, "`listen`"),
        (
            &["--data-dir", "/srv/elsewhere"],
            no_enable,
            "StateDirectory",
        ),
        (&["--no-such-flag"], no_enable, "--no-such-flag"),
    ]);
}

#[test]
fn uninstall_keeps_the_config_and_purge_removes_it() {
    paths(Product::Agent).uninstall_then_purge();
    paths(Product::Collector).uninstall_then_purge();
}

/// Lines `systemd-analyze verify` may print that say nothing about the
/// unit. None are known on systemd 252; a host that prints more (a missing
/// bus in a container, say) can list them here.
const HARMLESS: &[&str] = &[];

#[test]
fn the_installed_units_pass_systemd_analyze_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing and CI is set"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    for product in [Product::Agent, Product::Collector] {
        let p = paths(product);
        let out = p.install(product.minimal(), &["--no-enable"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Warnings (an unknown key, a typo'd value) are what verify is for,
        // so they are shown rather than silenced with SYSTEMD_LOG_LEVEL=err.
        let out = Command::new(analyze)
            .arg("verify")
            .arg(p.unit())
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        let unexplained: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !HARMLESS.iter().any(|h| l.contains(h)))
            .collect();
        let name = product.name();
        assert!(out.status.success(), "{name}: verify failed:\n{err}");
        assert!(unexplained.is_empty(), "{name}: verify warned:\n{err}");
    }
}

/// Receives one datagram or gives up at `deadline`.
fn recv_by(sock: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    let left = deadline.checked_duration_since(Instant::now())?;
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let n = sock.recv(&mut buf).ok()?;
    Some(text(&buf[..n]))
}

/// Runs `product` with `args` (and `--<dir_flag> <tmp>`) under a fake
/// systemd: it must say READY (with a status starting `ready_status`), ping
/// the watchdog, never report itself unhealthy, and on SIGTERM say
/// STOPPING and exit cleanly.
fn speaks_sd_notify(product: Product, args: &[&str], dir_flag: &str, ready_status: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = product
        .command()
        .args(args)
        .arg(dir_flag)
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m == "WATCHDOG=1") {
        match recv_by(&sock, deadline) {
            Some(m) => seen.push(m),
            None => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("no WATCHDOG=1 in time; got {seen:?}\n{}", text(&out.stderr));
            }
        }
    }
    let ready = format!("READY=1\nSTATUS={ready_status}");
    assert!(seen[0].starts_with(&ready), "{seen:?}");
    assert!(seen.iter().all(|m| !m.contains("unhealthy")), "{seen:?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let stopping = loop {
        match recv_by(&sock, deadline) {
            Some(m) if m == "WATCHDOG=1" => continue,
            other => break other,
        }
    };
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\nSTATUS=stopping"));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn under_systemd_the_agent_says_ready_pings_the_watchdog_and_says_stopping() {
    // Nothing listens on port 1: the agent must still become ready, its
    // batches waiting in the spool.
    speaks_sd_notify(
        Product::Agent,
        &[
            "run",
            "--collector",
            "http://127.0.0.1:1",
            "--interval",
            "100ms",
            "--listen",
            "",
        ],
        "--state-dir",
        "sampling every",
    );
}

#[test]
fn under_systemd_the_collector_says_ready_pings_the_watchdog_and_says_stopping() {
    // The first ping needs /healthz and a storage commit to pass.
    speaks_sd_notify(
        Product::Collector,
        &["serve", "--listen", "127.0.0.1:0", "--no-local-agent"],
        "--data-dir",
        "serving http://127.0.0.1:",
    );
}
