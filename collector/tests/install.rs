//! `nines-collector install` / `uninstall` and the systemd notify protocol,
//! through the real binary. Every path points into a temporary directory and
//! every install uses --no-enable or --dry-run: these tests never touch /etc,
//! /usr/local or systemctl.

use nines_collector::config::{CollectorConfig, FileConfig, Overrides};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nines-collector");

fn collector() -> Command {
    let mut c = Command::new(BIN);
    // Settings from the caller's environment must not leak into the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("NINES_") || k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") {
            c.env_remove(k);
        }
    }
    c
}

struct Paths {
    _dir: tempfile::TempDir,
    root: PathBuf,
    units: PathBuf,
    config: PathBuf,
}

fn paths() -> Paths {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    Paths {
        units: root.join("units"),
        config: root.join("etc/nines/collector.toml"),
        root,
        _dir: dir,
    }
}

impl Paths {
    fn unit(&self) -> PathBuf {
        self.units.join("nines-collector.service")
    }

    /// `install` with the test paths; the binary is the one under test, so
    /// nothing is copied and the unit's ExecStart names a file that exists.
    fn install(&self, settings: &[&str], extra: &[&str]) -> Output {
        collector()
            .arg("install")
            .args(settings)
            .arg("--binary-path")
            .arg(BIN)
            .arg("--unit-dir")
            .arg(&self.units)
            .arg("--config-path")
            .arg(&self.config)
            .args(extra)
            .output()
            .unwrap()
    }

    fn uninstall(&self, extra: &[&str]) -> Output {
        collector()
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
}

const SETTINGS: &[&str] = &[
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn dry_run_prints_the_unit_and_config_and_creates_nothing() {
    let p = paths();
    let out = p.install(SETTINGS, &["--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(p.files().is_empty(), "{:?}", p.files());
    assert!(stdout.contains(&format!("write {} (mode 0600)", p.config.display())));
    assert!(stdout.contains(&format!("write {} (mode 0644)", p.unit().display())));
    assert!(stdout.contains("Type=notify"), "{stdout}");
    assert!(stdout.contains(&format!(
        "ExecStart={BIN} serve --config %d/collector.toml --data-dir /var/lib/nines-collector"
    )));
    assert!(stdout.contains(&format!(
        "LoadCredential=collector.toml:{}",
        p.config.display()
    )));
    assert!(stdout.contains("listen = \"0.0.0.0:9797\""), "{stdout}");
    assert!(stdout.contains("local_agent = false"), "{stdout}");
    assert!(
        !stdout.contains("secret-token-42"),
        "the token leaked: {stdout}"
    );
    assert!(
        stdout.contains("run: systemctl enable --now nines-collector.service"),
        "{stdout}"
    );
}

#[test]
fn install_writes_a_private_config_that_loads_back_into_the_same_settings() {
    let p = paths();
    let out = p.install(SETTINGS, &["--no-enable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(&p.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds the token");
    assert!(p.unit().exists());

    let file = FileConfig::load(&p.config).unwrap();
    assert_eq!(file.agent_token.as_deref(), Some("secret-token-42"));
    assert_eq!(file.local_agent, Some(false));
    let from_file = CollectorConfig::resolve(&Overrides {
        config: Some(p.config.clone()),
        ..Overrides::default()
    })
    .unwrap();
    let from_flags = CollectorConfig::resolve(&Overrides {
        listen: Some("0.0.0.0:9797".into()),
        agent_token: Some("secret-token-42".into()),
        no_local_agent: true,
        local_agent_interval: Some("30s".into()),
        log_format: Some("json".into()),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));

    let again = p.install(&[], &["--no-enable"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("--force"));
}

#[test]
fn scrape_jobs_and_limits_of_a_given_config_are_kept() {
    let p = paths();
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
    let file = FileConfig::load(&p.config).unwrap();
    assert_eq!(file.listen.as_deref(), Some("127.0.0.1:9001"));
    assert_eq!(file.limits.max_body_bytes, Some(1000));
    assert_eq!(file.scrape.len(), 1);
    assert_eq!(file.scrape[0].targets, vec!["127.0.0.1:9100"]);
}

#[test]
fn bad_flags_exit_2_and_write_nothing() {
    let p = paths();
    for (settings, says) in [
        (
            &["--local-agent-interval", "fast"][..],
            "`local_agent_interval`",
        ),
        (&["--agent-token", "short"][..], "`agent_token`"),
        (&["--listen", "nowhere"][..], "`listen`"),
        (&["--data-dir", "/srv/elsewhere"][..], "StateDirectory"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let out = p.install(settings, &["--no-enable"]);
        assert_eq!(out.status.code(), Some(2), "{settings:?}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{settings:?}: {err}");
        assert!(p.files().is_empty(), "{settings:?} wrote {:?}", p.files());
    }
}

#[test]
fn uninstall_keeps_the_config_and_purge_removes_it() {
    let p = paths();
    let out = p.install(&[], &["--no-enable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry = p.uninstall(&["--purge", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(p.unit().exists() && p.config.exists());
    let out = p.uninstall(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!p.unit().exists());
    assert!(p.config.exists());
    let out = p.uninstall(&["--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(p.files().is_empty(), "{:?}", p.files());
    assert!(text(&out.stdout).contains("/var/lib/nines-collector"));
}

/// Lines `systemd-analyze verify` may print that say nothing about the
/// unit. None are known on systemd 252; a host that prints more (a missing
/// bus in a container, say) can list them here.
const HARMLESS: &[&str] = &[];

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
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
    let p = paths();
    let out = p.install(&[], &["--no-enable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Warnings (an unknown key, a typo'd value) are what verify is for, so
    // they are shown rather than silenced with SYSTEMD_LOG_LEVEL=err.
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
    assert!(out.status.success(), "verify failed:\n{err}");
    assert!(unexplained.is_empty(), "verify warned:\n{err}");
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

#[test]
fn under_systemd_the_collector_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = collector()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-local-agent"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    // The first ping needs /healthz and a storage commit to pass.
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
    assert!(
        seen[0].starts_with("READY=1\nSTATUS=serving http://127.0.0.1:"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|m| !m.contains("unhealthy")), "{seen:?}");

    // kill(1): this crate does not depend on libc.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
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
