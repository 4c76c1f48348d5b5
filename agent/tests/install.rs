//! `nines-agent install` / `uninstall` and the systemd notify protocol,
//! through the real binary. Every path points into a temporary directory and
//! every install uses --no-enable or --dry-run: these tests never touch /etc,
//! /usr/local or systemctl.

use nines_agent::config::{AgentConfig, FileConfig, Overrides};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nines-agent");

fn agent() -> Command {
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
        config: root.join("etc/nines/agent.toml"),
        root,
        _dir: dir,
    }
}

impl Paths {
    fn unit(&self) -> PathBuf {
        self.units.join("nines-agent.service")
    }

    /// `install` with the test paths; the binary is the one under test, so
    /// nothing is copied and the unit's ExecStart names a file that exists.
    fn install(&self, settings: &[&str], extra: &[&str]) -> Output {
        agent()
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
    // The unit in full, pointing at the binary and the config.
    assert!(stdout.contains("Type=notify"), "{stdout}");
    assert!(stdout.contains(&format!("ExecStart={BIN} run --config %d/agent.toml")));
    assert!(stdout.contains(&format!("LoadCredential=agent.toml:{}", p.config.display())));
    // The config in full, its token hidden.
    assert!(
        stdout.contains("collector = \"http://10.0.0.5:9797\""),
        "{stdout}"
    );
    assert!(stdout.contains("interval = \"15s\""), "{stdout}");
    assert!(!stdout.contains("tok-"), "the token leaked: {stdout}");
    // --no-enable was not given: the commands are listed, not run.
    assert!(stdout.contains("run: systemctl daemon-reload"), "{stdout}");
    assert!(
        stdout.contains("run: systemctl enable --now nines-agent.service"),
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
    let unit = std::fs::read_to_string(p.unit()).unwrap();
    assert!(unit.contains("WatchdogSec=30s"), "{unit}");

    // The file is one the agent's own loader accepts ...
    let file = FileConfig::load(&p.config).unwrap();
    assert_eq!(file.token.as_deref(), Some("tok-\"quoted\"-123"));
    assert_eq!(file.instance.as_deref(), Some("web 1"));
    // ... and resolves to what the flags resolve to.
    let from_file = AgentConfig::resolve(&Overrides {
        config: Some(p.config.clone()),
        ..Overrides::default()
    })
    .unwrap();
    let from_flags = AgentConfig::resolve(&Overrides {
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
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));

    // A second install does not replace the config without --force.
    let again = p.install(&["--collector", "http://other:1"], &["--no-enable"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("--force"));
    assert_eq!(
        FileConfig::load(&p.config).unwrap().interval.as_deref(),
        Some("15s")
    );
    let forced = p.install(
        &["--collector", "http://other:1"],
        &["--no-enable", "--force"],
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let file = FileConfig::load(&p.config).unwrap();
    assert_eq!(file.collector.as_deref(), Some("http://other:1"));
    assert_eq!(file.interval, None);
}

#[test]
fn a_config_given_to_install_is_kept_under_the_flags() {
    let p = paths();
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
    let file = FileConfig::load(&p.config).unwrap();
    assert_eq!(file.collector.as_deref(), Some("http://a:1"));
    assert_eq!(file.interval.as_deref(), Some("20s"));
    assert_eq!(file.spool_max_bytes, Some(33554432));
}

#[test]
fn bad_flags_exit_2_and_write_nothing() {
    let p = paths();
    for (settings, extra, says) in [
        (
            &["--collector", "http://127.0.0.1:1", "--interval", "fast"][..],
            &["--no-enable"][..],
            "`interval`",
        ),
        (
            &["--interval", "10s"][..],
            &["--no-enable"][..],
            "`collector`",
        ),
        (
            &["--collector", "ftp://x"][..],
            &["--no-enable"][..],
            "`collector`",
        ),
        (
            &["--collector", "http://a:1", "--state-dir", "/srv/elsewhere"][..],
            &["--no-enable"][..],
            "StateDirectory",
        ),
        (
            &["--collector", "http://a:1"][..],
            &["--no-enable", "--no-such-flag"][..],
            "--no-such-flag",
        ),
    ] {
        let out = p.install(settings, extra);
        assert_eq!(out.status.code(), Some(2), "{settings:?} {extra:?}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{settings:?}: {err}");
        assert!(p.files().is_empty(), "{settings:?} wrote {:?}", p.files());
    }
    let out = agent()
        .args(["install", "--collector", "http://a:1", "--no-enable"])
        .args(["--binary-path", "relative/nines-agent", "--unit-dir"])
        .arg(&p.units)
        .arg("--config-path")
        .arg(&p.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("absolute"),
        "{}",
        text(&out.stderr)
    );
    assert!(p.files().is_empty(), "{:?}", p.files());
    let out = agent()
        .args(["uninstall", "--unit-dir", "relative", "--no-disable"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn uninstall_keeps_the_config_and_purge_removes_it() {
    let p = paths();
    let out = p.install(&["--collector", "http://a:1"], &["--no-enable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let uninstall = |extra: &[&str]| {
        agent()
            .arg("uninstall")
            .arg("--unit-dir")
            .arg(&p.units)
            .arg("--config-path")
            .arg(&p.config)
            .arg("--no-disable")
            .args(extra)
            .output()
            .unwrap()
    };
    let dry = uninstall(&["--purge", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(text(&dry.stdout).contains(&format!("remove {}", p.unit().display())));
    assert!(p.unit().exists() && p.config.exists());

    let out = uninstall(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!p.unit().exists());
    assert!(p.config.exists());
    assert!(text(&out.stdout).contains("--purge removes it"));

    let out = uninstall(&["--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(p.files().is_empty(), "{:?}", p.files());
    // Asked what it did with the state, it says.
    assert!(text(&out.stdout).contains("/var/lib/nines-agent"));
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
    let out = p.install(&["--collector", "http://a:1"], &["--no-enable"]);
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

/// Receives one datagram or fails at `deadline`.
fn recv_by(sock: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    let left = deadline.checked_duration_since(Instant::now())?;
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let n = sock.recv(&mut buf).ok()?;
    Some(text(&buf[..n]))
}

#[test]
fn under_systemd_the_agent_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Nothing listens on port 1: the agent must still become ready, its
    // batches waiting in the spool.
    let mut child = agent()
        .args([
            "run",
            "--collector",
            "http://127.0.0.1:1",
            "--interval",
            "100ms",
            "--listen",
            "",
        ])
        .arg("--state-dir")
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
    assert!(seen[0].starts_with("READY=1\n"), "{seen:?}");
    assert!(seen[0].contains("STATUS=sampling every"), "{seen:?}");
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
