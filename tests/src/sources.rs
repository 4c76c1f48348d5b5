//! A host with every agent source busy, for tests that need each kind of
//! series to have data: a loopback HTTP server with a passing and a failing
//! probe, an access log with requests of several status classes, StatsD
//! timings, and established connections to a listening port. The probe
//! targets are [`Hook`] servers answering 200 and 500.

use crate::hook::Hook;
use crate::{Agent, Collector, free_port, value, wait_for};
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// One nginx `combined` line with request time.
pub fn access_log_line(status: u16, seconds: f64) -> String {
    format!(
        "127.0.0.1 - - [26/Nov/2026:12:00:00 +0000] \"GET /x HTTP/1.1\" {status} 12 \"-\" \"curl\" {seconds}\n"
    )
}

/// A running agent named `instance` whose probes (`ok`, `fail`), access
/// log (vhost `shop`), StatsD timer (`checkout_latency`) and connection
/// counts all have data once [`BusyHost::start`] returns. Requests and
/// timings keep coming every second while it lives, so rates stay above
/// zero however long a test takes.
pub struct BusyHost {
    /// The agent process.
    pub agent: Agent,
    _hold: Vec<TcpStream>,
    _targets: [Hook; 2],
    /// Its traffic thread runs until this is dropped.
    _stop: std::sync::mpsc::Sender<()>,
}

/// One second's traffic: three requests in the log, one StatsD timing.
fn traffic(log: &Path, udp: &UdpSocket, statsd_port: u16, i: usize) {
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let lines =
            access_log_line(200, 0.05) + &access_log_line(200, 0.3) + &access_log_line(503, 1.2);
        let _ = f.write_all(lines.as_bytes());
    }
    let _ = udp.send_to(
        format!("checkout.latency:{}|ms|#route:pay", 50 + (i % 4) * 100).as_bytes(),
        ("127.0.0.1", statsd_port),
    );
}

impl BusyHost {
    /// Starts the agent against `c` with its state and files under `dir`,
    /// starts the traffic and waits until the collector has some of each
    /// kind.
    pub fn start(c: &Collector, dir: &Path, instance: &str) -> BusyHost {
        let statsd_port = {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr").port()
        };
        let ok = Hook::start(0);
        let fail = Hook::start(0);
        fail.set_status(500);
        let log = dir.join(format!("{instance}-access.log"));
        std::fs::write(&log, "").expect("log");
        let cfg = dir.join(format!("{instance}-agent.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[statsd]\nlisten = \"127.0.0.1:{statsd_port}\"\n\
                 [[access_log]]\npath = \"{}\"\nformat = \"nginx_combined_rt\"\nvhost = \"shop\"\n\
                 [[probe]]\nname = \"ok\"\nkind = \"http\"\ntarget = \"{}/ok\"\ninterval = \"1s\"\n\
                 [[probe]]\nname = \"fail\"\nkind = \"http\"\ntarget = \"{}/fail\"\ninterval = \"1s\"\n",
                log.display(),
                ok.url(),
                fail.url()
            ),
        )
        .expect("agent config");
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = server.local_addr().expect("addr").port();
        let mut hold: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        hold.extend((0..3).map(|_| server.accept().expect("accept").0));
        let listen = format!("127.0.0.1:{}", free_port());
        let agent = Agent::start(
            c,
            &dir.join(format!("{instance}-state")),
            &[
                "--interval",
                "1s",
                "--instance",
                instance,
                "--listen",
                &listen,
                "--config",
                cfg.to_str().expect("utf-8 path"),
            ],
        );
        let sel = format!("instance=\"{instance}\"");
        wait_for("the agent tailing the access log", || {
            (value(c, &format!("nines_access_log_file_present{{{sel}}}")) == Some(1.0))
                .then_some(())
        });
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // Dropping the sender (with the BusyHost) ends the traffic at once.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut i = 0;
            // A second's traffic, then wait a second for the stop.
            while {
                traffic(&log, &udp, statsd_port, i);
                i += 1;
                matches!(
                    stopped.recv_timeout(Duration::from_secs(1)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                )
            } {}
        });
        wait_for("every source reported", || {
            let q = |e: String| value(c, &e);
            (q(format!(
                "sum(nines_probe_success_total{{{sel},probe=\"ok\"}})"
            ))? >= 2.0
                && q(format!(
                    "sum(nines_probe_failure_total{{{sel},probe=\"fail\"}})"
                ))? >= 2.0
                && q(format!("sum(nines_http_requests_total{{{sel}}})"))? >= 9.0
                && q(format!("sum(checkout_latency_seconds_count{{{sel}}})"))? >= 3.0
                && q(format!(
                    "count(nines_tcp_listen_port_connections{{{sel},port=\"{port}\"}})"
                ))? >= 1.0
                && q(format!(
                    "count(rate(node_cpu_seconds_total{{{sel},mode=\"idle\"}}[1m]))"
                ))? >= 1.0)
                .then_some(())
        });
        BusyHost {
            agent,
            _hold: hold,
            _targets: [ok, fail],
            _stop: stop,
        }
    }
}
