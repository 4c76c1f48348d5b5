//! Support for end-to-end tests: start the real `nines-collector` and
//! `nines-agent` binaries on ephemeral loopback ports with temporary data
//! dirs, talk to them over HTTP, wait by polling with a deadline, and find
//! real peers (promtool) or say clearly that one is missing.
//!
//! Nothing here fakes a component: every process is the built binary.

pub mod hook;
pub mod loadgen;
pub mod prometheus;
pub mod sources;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen in seconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The directory holding the workspace's built binaries (next to `deps/`,
/// where this test executable lives).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NINES_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The path of a built binary; panics with what to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins), or set NINES_BIN_DIR",
        p.display()
    );
    p
}

/// Polls `f` until it returns Some, or panics after `DEADLINE` with `what`.
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_within(what, DEADLINE, f)
}

/// As [`wait_for`], with its own deadline (for waits that include a
/// retry backoff or a deliberate outage).
pub fn wait_for_within<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// True when running under CI, where a missing peer is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Finds a peer program on PATH. Missing: under CI that fails the test; on
/// a developer machine the caller skips with the message printed.
pub fn peer(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!(
            "peer `{program}` is not installed (apt-get install {package}); .ci/run installs it"
        );
        assert!(!in_ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// A running collector.
pub struct Collector {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// The agent token it accepts.
    pub token: String,
    /// Its data dir (kept for restarts).
    pub data_dir: PathBuf,
    stderr_log: PathBuf,
}

impl Collector {
    /// Starts `nines-collector serve` on an ephemeral port with `data_dir`,
    /// plus `extra` arguments; returns once it printed its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Collector {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// As [`Collector::start`], on a given port (to restart a collector
    /// where its agents expect it).
    pub fn start_on(data_dir: &Path, port: u16, extra: &[&str]) -> Collector {
        Self::start_full(data_dir, port, extra, &[])
    }

    /// As [`Collector::start`], with environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Collector {
        Self::start_full(data_dir, 0, extra, env)
    }

    fn start_full(data_dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Collector {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let stderr_log = data_dir.with_extension("stderr.log");
        let mut cmd = Command::new(bin("nines-collector"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("stderr log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start nines-collector");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        let mut token = None;
        let start = Instant::now();
        while url.is_none() || token.is_none() {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("nines collector: UI and API at ") {
                        url = Some(u.trim_end_matches('/').to_string());
                    }
                    if let Some(t) = line.strip_prefix("nines collector: agent token ") {
                        token = t.split_whitespace().next().map(str::to_string);
                    }
                    // A configured token is not printed.
                    if url.is_some() && extra.contains(&"--agent-token") {
                        let i = extra
                            .iter()
                            .position(|a| *a == "--agent-token")
                            .unwrap_or(0);
                        token = extra.get(i + 1).map(|s| s.to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "collector did not print its address; stderr:\n{}",
                        std::fs::read_to_string(&stderr_log).unwrap_or_default()
                    );
                }
            }
        }
        Collector {
            child: Some(child),
            url: url.unwrap_or_default(),
            token: token.unwrap_or_default(),
            data_dir: data_dir.to_path_buf(),
            stderr_log,
        }
    }

    /// Kills the process with SIGKILL, as a crash or power cut would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// GET `path` and parse the JSON body; returns (status, body).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = http()
            .get(format!("{}{path}", self.url))
            .send()
            .expect("GET");
        let status = r.status().as_u16();
        (status, json_body(r))
    }

    /// GET `path` as text.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let r = http()
            .get(format!("{}{path}", self.url))
            .send()
            .expect("GET");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// Instant query at `time` (unix seconds as a string) or now.
    pub fn query(&self, expr: &str, time: Option<&str>) -> serde_json::Value {
        let mut form = vec![("query", expr.to_string())];
        if let Some(t) = time {
            form.push(("time", t.to_string()));
        }
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = http()
            .post(format!("{}/api/v1/query", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .expect("query");
        json_body(r)
    }

    /// The value of a counter on `/metrics` (sum over label sets that
    /// contain `labels`), or 0 if absent.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.get_text("/metrics").1, name, labels)
    }

    /// POST a raw push body with the given headers.
    pub fn push_raw(&self, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let mut req = http().post(format!("{}/api/v1/push", self.url)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().expect("push");
        let status = r.status().as_u16();
        (status, json_body(r))
    }

    /// POST a batch the way the agent does.
    pub fn push(&self, batch: &nines_shared::Batch) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", self.token);
        self.push_raw(nines_shared::wire::encode(batch), &push_headers(&auth))
    }
}

/// The headers of a well-formed push with this Authorization value.
pub fn push_headers(auth: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("authorization", auth),
        ("content-type", nines_shared::wire::CONTENT_TYPE),
        ("content-encoding", nines_shared::wire::CONTENT_ENCODING),
        (nines_shared::wire::VERSION_HEADER, "1"),
    ]
}

/// Headers of a Prometheus remote_write 1.0 request with `auth`.
pub fn remote_write_headers(auth: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("authorization", auth),
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ]
}

impl Collector {
    /// The collector's process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of an instant query that returns exactly one series, now.
pub fn value(c: &Collector, expr: &str) -> Option<f64> {
    let q = c.query(expr, None);
    let r = q["data"]["result"].as_array()?;
    if r.len() != 1 {
        return None;
    }
    r[0]["value"][1].as_str()?.parse().ok()
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running agent.
pub struct Agent {
    child: Child,
}

impl Agent {
    /// Starts `nines-agent run` against `collector` with `extra` flags.
    /// Its /metrics listener is on a free port unless `extra` names one,
    /// so agents never contend for the default port.
    pub fn start(collector: &Collector, state_dir: &Path, extra: &[&str]) -> Agent {
        let mut cmd = Command::new(bin("nines-agent"));
        cmd.arg("run")
            .arg("--collector")
            .arg(&collector.url)
            .arg("--token")
            .arg(&collector.token)
            .arg("--state-dir")
            .arg(state_dir);
        if !extra.contains(&"--listen") {
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", free_port()));
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nines-agent");
        Agent { child }
    }
}

impl Agent {
    /// Starts `nines-agent run` with exactly these flags.
    pub fn start_with(token: &str, args: &[&str]) -> Agent {
        let child = Command::new(bin("nines-agent"))
            .arg("run")
            .arg("--token")
            .arg(token)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nines-agent");
        Agent { child }
    }

    /// Kills the agent with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a metric from an agent's `/metrics` at `listen` (0 if absent or
/// unreachable).
pub fn agent_metric(listen: &str, name: &str, labels: &str) -> f64 {
    http()
        .get(format!("http://{listen}/metrics"))
        .send()
        .ok()
        .and_then(|r| r.text().ok())
        .map(|t| metric_value(&t, name, labels))
        .unwrap_or(0.0)
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body as JSON, or Null when it is not JSON.
fn json_body(r: reqwest::blocking::Response) -> serde_json::Value {
    r.text()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A blocking HTTP client with a timeout.
pub fn http() -> reqwest::blocking::Client {
    nines_collector::notify::tls::install_default_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Sums the values of `name` lines whose label part contains `labels`, in a
/// text exposition.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The median of `v` (the mean of the middle two when its length is even);
/// NaN for none. Benches print it over their runs.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn proc_memtotal_bytes() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal line");
    kb * 1024.0
}
