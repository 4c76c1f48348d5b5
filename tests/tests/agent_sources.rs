//! End-to-end: request latencies reach the collector from a real agent's
//! StatsD listener (real UDP packets) and from an access log written,
//! rotated and truncated while the agent runs, or copied and truncated
//! while it is stopped; TCP connection counts per listening port follow
//! connections the test holds open, counted by the default method (BPF
//! in the kernel as root) and when the agent splits a netlink sample into
//! parallel dumps.

use nines_tests::*;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};

fn line(status: u16, seconds: f64) -> String {
    format!(
        "127.0.0.1 - - [26/Nov/2026:12:00:00 +0000] \"GET /x HTTP/1.1\" {status} 12 \"-\" \"curl\" {seconds}\n"
    )
}

#[test]
fn statsd_access_logs_and_connections_reach_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let statsd_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[statsd]\nlisten = \"127.0.0.1:{statsd_port}\"\n\
             [[access_log]]\npath = \"{}\"\nformat = \"nginx_combined_rt\"\nvhost = \"shop\"\n",
            log.display()
        ),
    )
    .unwrap();
    // A server the test holds 7 connections to.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let clients: Vec<TcpStream> = (0..7)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let accepted: Vec<TcpStream> = (0..7).map(|_| server.accept().unwrap().0).collect();

    let listen = format!("127.0.0.1:{}", free_port());
    let agent_args = [
        "--interval",
        "1s",
        "--instance",
        "src",
        "--listen",
        &listen,
        "--config",
        cfg.to_str().unwrap(),
    ];
    let mut agent = Agent::start(&c, &dir.path().join("agent"), &agent_args);
    wait_for("connections per listening port", || {
        (value(
            &c,
            &format!("nines_tcp_listen_port_connections{{instance=\"src\",port=\"{port}\"}}"),
        ) == Some(7.0))
        .then_some(())
    });
    // `ss` sees the same on this host.
    let (code, out, err) = run(std::process::Command::new("ss").args([
        "-Htn",
        "state",
        "established",
        "sport",
        "=",
        &format!(":{port}"),
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 7, "ss printed:\n{out}");
    // Counted by the method the default ("auto") picks here.
    let used = |m: &str| connection_method_used(&listen, m);
    // With BPF loaded, auto counts each round the cheaper way
    // of the two; either way one method counted the round.
    match bpf_expected() {
        true => assert_eq!(used("bpf") + used("netlink"), 1.0, "auto: BPF or netlink"),
        false => assert_eq!(used("bpf") + used("netlink") + used("proc"), 1.0),
    }

    // StatsD timings from a real UDP socket.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(
        b"checkout.latency:50|ms|#route:pay\ncheckout.latency:120|ms|#route:pay",
        ("127.0.0.1", statsd_port),
    )
    .unwrap();
    udp.send_to(
        b"checkout.latency:900|ms|#route:pay\ngarbage line",
        ("127.0.0.1", statsd_port),
    )
    .unwrap();
    let sel = "{instance=\"src\",route=\"pay\"}";
    wait_for("StatsD histogram", || {
        (value(&c, &format!("checkout_latency_seconds_count{sel}")) == Some(3.0)).then_some(())
    });
    for (le, n) in [("0.1", 1.0), ("0.25", 2.0), ("1", 3.0)] {
        let b = value(
            &c,
            &format!(
                "checkout_latency_seconds_bucket{{instance=\"src\",route=\"pay\",le=\"{le}\"}}"
            ),
        );
        assert_eq!(b, Some(n), "le={le}");
    }
    let sum = value(&c, &format!("checkout_latency_seconds_sum{sel}")).unwrap();
    assert!((sum - 1.07).abs() < 1e-9, "sum {sum}");
    wait_for("the garbage line counted", || {
        (value(
            &c,
            "nines_statsd_dropped_lines_total{instance=\"src\",reason=\"parse_error\"}",
        ) == Some(1.0))
        .then_some(())
    });

    // Access log: written, rotated by rename, then truncated.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all((line(200, 0.05) + &line(200, 0.3) + &line(503, 1.2)).as_bytes())
        .unwrap();
    drop(f);
    let req = |class: &str| {
        value(
            &c,
            &format!(
                "nines_http_requests_total{{instance=\"src\",vhost=\"shop\",method=\"GET\",status_class=\"{class}\"}}"
            ),
        )
    };
    wait_for("3 requests from the log", || {
        (req("2xx") == Some(2.0) && req("5xx") == Some(1.0)).then_some(())
    });
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    std::fs::write(&log, line(404, 0.01)).unwrap();
    wait_for("the line after rotation", || {
        (req("4xx") == Some(1.0)).then_some(())
    });
    std::fs::write(&log, "").unwrap(); // copy-truncate rotation
    let rotations =
        |n: f64| value(&c, "nines_access_log_rotations_total{instance=\"src\"}") == Some(n);
    wait_for("the truncation seen", || rotations(2.0).then_some(()));
    std::fs::write(&log, line(200, 0.02)).unwrap();
    wait_for("the line after truncation", || {
        (req("2xx") == Some(3.0)).then_some(())
    });
    assert_eq!(req("5xx"), Some(1.0));
    assert_eq!(
        value(
            &c,
            "nines_http_request_duration_seconds_count{instance=\"src\",vhost=\"shop\"}"
        ),
        Some(5.0)
    );
    // Across an agent restart no line is counted again: the new process
    // counts only the line written after it started.
    agent.kill();
    let _agent = Agent::start(&c, &dir.path().join("agent"), &agent_args);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(line(301, 0.01).as_bytes()).unwrap();
    drop(f);
    wait_for("the line after the restart", || {
        (req("3xx") == Some(1.0)).then_some(())
    });
    assert_eq!(
        req("2xx"),
        Some(3.0),
        "the old value stays the latest sample"
    );
    drop((clients, accepted));
}

/// 1 if the agent at `listen` counted its last connection sample by
/// `method` (`nines_agent_connection_method`), else 0.
fn connection_method_used(listen: &str, method: &str) -> f64 {
    agent_metric(
        listen,
        "nines_agent_connection_method",
        &format!("method=\"{method}\""),
    )
}

/// Whether the agent's "auto" connection method may count with BPF here
/// (the capabilities it needs in effect, on a kernel with BTF).
fn bpf_expected() -> bool {
    nines_agent::samplers::connections_bpf::privileged_with_btf()
}

/// More than 2,000 sockets on the host: told to use netlink, the agent
/// splits its sample into one dump per CPU (two here at most: 1,200
/// connections are 2,400 sockets, 1,000 a part), each listing one range of
/// ports, and the per-port count is still exact, as `ss` agrees.
#[test]
fn connection_counts_stay_exact_when_a_sample_is_split() {
    many_connections_counted_exactly("netlink");
}

/// The same 1,200 connections counted with BPF (the walk of the kernel's
/// TCP tables where it loads, else the TCP iterator; `auto` uses BPF where
/// it loads and costs less), exact as `ss` agrees.
#[test]
fn connection_counts_counted_with_bpf_match_ss() {
    if !bpf_expected() {
        eprintln!(
            "skipping: counting with BPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) and a kernel with BTF"
        );
        return;
    }
    many_connections_counted_exactly("bpf");
}

/// Holds 1,200 connections to one port and checks the agent, counting
/// with `method`, reports exactly those, as `ss` does.
fn many_connections_counted_exactly(method: &str) {
    const N: usize = 1200;
    // The client ends are descriptors here; the server ends wait in the
    // accept queue, never accepted.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the calls to read and write.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < 4096 && limit.rlim_max > limit.rlim_cur {
            limit.rlim_cur = limit.rlim_max.min(4096);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    // A longer accept queue than std's; listen() again changes it.
    // SAFETY: the descriptor is a listening socket this test owns.
    assert_eq!(
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&server), 2048) },
        0
    );
    let port = server.local_addr().unwrap().port();
    let clients: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let (_agent, listen) = agent_with_config(
        &c,
        dir.path(),
        "many",
        &format!("[statsd]\nenabled = false\n[samplers]\nconnections_method = \"{method}\"\n"),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bpf = method == "bpf";
    let splits = !bpf && cpus >= 2 && nines_agent::samplers::connections::kernel_splits_dumps();
    // More parts on a host with more CPUs and other sockets; no dump at
    // all when BPF counts.
    let as_planned = || {
        let dumps = agent_metric(&listen, "nines_agent_connection_dumps", "");
        let used = |m: &str| connection_method_used(&listen, m);
        match (bpf, splits) {
            (true, _) => used("bpf") == 1.0 && dumps == 0.0,
            (false, true) => used("netlink") == 1.0 && dumps >= 2.0,
            (false, false) => used("netlink") == 1.0 && dumps == 1.0,
        }
    };
    wait_for("a connection sample counted as planned", || {
        as_planned().then_some(())
    });
    let sel = format!("nines_tcp_listen_port_connections{{instance=\"many\",port=\"{port}\"}}");
    wait_for("the connections counted", || {
        (value(&c, &sel) == Some(N as f64)).then_some(())
    });
    assert!(as_planned(), "still counted as planned");
    let established = value(
        &c,
        "node_tcp_connection_states{instance=\"many\",state=\"established\"}",
    )
    .unwrap();
    assert!(established >= (2 * N) as f64, "{established}");
    if bpf {
        // Walks the iterator had to finish are counted, and the count goes
        // to the collector with the agent's health.
        let fallbacks = value(
            &c,
            "nines_agent_connection_walk_fallbacks_total{instance=\"many\"}",
        );
        assert!(fallbacks.is_some(), "walk fallbacks are reported");
    }
    let (code, out, err) = run(std::process::Command::new("ss").args([
        "-Htn",
        "state",
        "established",
        "sport",
        "=",
        &format!(":{port}"),
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), N, "ss lists every server end");
    drop((clients, server));
}

/// logrotate's copytruncate while the agent is stopped: the log is copied,
/// truncated in place (same inode) and written again before the agent
/// starts. The restarted agent counts exactly the new lines, whether they
/// end before or after the old position.
#[test]
fn access_log_copy_truncated_while_the_agent_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[statsd]\nenabled = false\n\
             [[access_log]]\npath = \"{}\"\nformat = \"nginx_combined_rt\"\nvhost = \"ct\"\n",
            log.display()
        ),
    )
    .unwrap();
    let agent_args = [
        "--interval",
        "1s",
        "--instance",
        "ct",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let state = dir.path().join("agent");
    let req = |class: &str| {
        value(
            &c,
            &format!(
                "nines_http_requests_total{{instance=\"ct\",vhost=\"ct\",method=\"GET\",status_class=\"{class}\"}}"
            ),
        )
    };
    // Each agent process counts from zero: the latest sample of these is
    // the running agent's count.
    let lines = || value(&c, "nines_access_log_lines_total{instance=\"ct\"}");
    let rotations = || value(&c, "nines_access_log_rotations_total{instance=\"ct\"}");
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let copy_truncate = |text: &str| {
        std::fs::copy(&log, dir.path().join("access.log.1")).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        drop(f);
        append(text);
    };

    let mut agent = Agent::start(&c, &state, &agent_args);
    // The agent starts at the end of the log it finds: write once it has.
    wait_for("the tailer started", || {
        (value(&c, "nines_access_log_file_present{instance=\"ct\"}") == Some(1.0)).then_some(())
    });
    append(&line(200, 0.05).repeat(2));
    wait_for("2 lines", || {
        (lines() == Some(2.0) && req("2xx") == Some(2.0)).then_some(())
    });
    agent.kill();
    // Longer than the old position: 3 new lines where there were 2.
    copy_truncate(&line(404, 0.05).repeat(3));
    let mut agent = Agent::start(&c, &state, &agent_args);
    wait_for("the 3 new lines, after the truncation", || {
        (lines() == Some(3.0) && req("4xx") == Some(3.0) && rotations() == Some(1.0)).then_some(())
    });
    // A line appended now is the 4th: nothing was counted twice meanwhile.
    append(&line(500, 0.05));
    wait_for("the 4th line", || {
        (lines() == Some(4.0) && req("5xx") == Some(1.0)).then_some(())
    });
    assert_eq!(req("4xx"), Some(3.0));
    assert_eq!(req("2xx"), Some(2.0), "the first agent's count, not again");
    agent.kill();

    // Shorter than the old position: 1 new line where there were 4.
    copy_truncate(&line(301, 0.05));
    let mut agent = Agent::start(&c, &state, &agent_args);
    wait_for("the 1 new line, after the truncation", || {
        (lines() == Some(1.0) && req("3xx") == Some(1.0) && rotations() == Some(1.0)).then_some(())
    });
    append(&line(302, 0.05));
    wait_for("the 2nd line", || {
        (lines() == Some(2.0) && req("3xx") == Some(2.0)).then_some(())
    });
    agent.kill();

    // Restarted with nothing new: nothing is counted again.
    let _agent = Agent::start(&c, &state, &agent_args);
    append(&line(303, 0.05));
    wait_for("only the line written after the restart", || {
        (lines() == Some(1.0) && req("3xx") == Some(1.0) && rotations() == Some(0.0)).then_some(())
    });
}

/// A tiny HTTP server on loopback: `/ok` answers 200, `/fail` 500.
fn http_server() -> u16 {
    use std::io::{BufRead, BufReader};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in l.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            // Read the headers up to the blank line.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let status = if first.contains(" /ok ") {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let mut s = reader.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            );
        }
    });
    port
}

/// Starts an agent at a 1 s interval as `instance`, with `config` written
/// to `dir`/agent.toml, its state in `dir`/agent and its /metrics on a free
/// loopback port; returns it and that address.
fn agent_with_config(
    c: &Collector,
    dir: &std::path::Path,
    instance: &str,
    config: &str,
) -> (Agent, String) {
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, config).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(
        c,
        &dir.join("agent"),
        &[
            "--interval",
            "1s",
            "--instance",
            instance,
            "--listen",
            &listen,
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    (agent, listen)
}

#[test]
fn probes_report_success_failure_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("c"), &["--no-local-agent"]);
    let port = http_server();
    let (_agent, _listen) = agent_with_config(
        &c,
        dir.path(),
        "pr",
        &format!(
            "[statsd]\nenabled = false\n\
             [[probe]]\nname = \"ok\"\nkind = \"http\"\ntarget = \"http://127.0.0.1:{port}/ok\"\ninterval = \"1s\"\n\
             [[probe]]\nname = \"fail\"\nkind = \"http\"\ntarget = \"http://127.0.0.1:{port}/fail\"\ninterval = \"1s\"\n\
             [[probe]]\nname = \"tcp\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{port}\"\ninterval = \"1s\"\n"
        ),
    );
    wait_for("probe results", || {
        let ok = value(
            &c,
            "nines_probe_success_total{instance=\"pr\",probe=\"ok\"}",
        )?;
        let fail = value(
            &c,
            "nines_probe_failure_total{instance=\"pr\",probe=\"fail\",reason=\"http_status\"}",
        )?;
        let tcp = value(
            &c,
            "nines_probe_success_total{instance=\"pr\",probe=\"tcp\"}",
        )?;
        (ok >= 2.0 && fail >= 2.0 && tcp >= 2.0).then_some(())
    });
    assert_eq!(
        value(&c, "nines_probe_up{instance=\"pr\",probe=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&c, "nines_probe_up{instance=\"pr\",probe=\"fail\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &c,
            "nines_probe_http_status_code{instance=\"pr\",probe=\"fail\"}"
        ),
        Some(500.0)
    );
    // Every attempt is in the histogram: the +Inf bucket holds them all,
    // and the buckets are cumulative. (How fast loopback answers is not
    // asserted: a loaded machine can take longer than any bound.) Each
    // value is its own query, so a round may land between two: retried
    // until they come from one round.
    let series = |name: &str, le: &str| {
        value(
            &c,
            &format!(
                "nines_probe_duration_seconds_{name}{{instance=\"pr\",probe=\"ok\",phase=\"total\"{le}}}"
            ),
        )
    };
    wait_for("a consistent latency histogram", || {
        let count = series("count", "")?;
        let b = |le: &str| series("bucket", &format!(",le=\"{le}\""));
        let (fast, mid, slow, all) = (b("0.1")?, b("0.25")?, b("1")?, b("+Inf")?);
        let again = series("count", "")?;
        (count == again
            && count >= 2.0
            && all == count
            && fast <= mid
            && mid <= slow
            && slow <= all)
            .then_some(())
    });
    // PromQL over the probe data: the success ratio of "ok" is 1.
    let ratio = value(
        &c,
        "sum(nines_probe_success_total{probe=\"ok\"}) / (sum(nines_probe_success_total{probe=\"ok\"}) + sum(nines_probe_failure_total{probe=\"ok\"}))",
    );
    assert_eq!(ratio, Some(1.0));
}
