//! Probe tests against real sockets on 127.0.0.1 only: a tiny HTTP/1.1
//! server (plain and TLS, with rcgen certificates), a listening and a
//! closed TCP port. No test resolves a name or leaves the loopback; none
//! sleeps a fixed time to wait for a result (they poll with a deadline).

use super::*;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// notAfter of the test certificates: 2049-06-30T00:00:00Z.
const NOT_AFTER: i64 = 2_508_624_000;

fn probe(text: &str) -> ValidProbe {
    let c: ProbeConfig = toml::from_str(text).unwrap();
    c.validate().unwrap()
}

fn http_probe(name: &str, url: &str, extra: &str) -> ValidProbe {
    probe(&format!(
        "name = \"{name}\"\nkind = \"http\"\ntarget = \"{url}\"\n{extra}\n"
    ))
}

/// Requests the test server received, head and body as text.
type Log = Arc<Mutex<Vec<String>>>;

struct Server {
    addr: SocketAddr,
    log: Log,
}

impl Server {
    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Answers by path: /ok 200, /fail 500, /slow never, /redirect 302 to
/// /ok, /loop 302 to itself, /big 2 MiB with a marker past the read limit,
/// /garbage not HTTP; anything else 404.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, log: Log) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // Not a request (a TLS ClientHello, say): answer 400 and close, as
        // a real HTTP server does, rather than wait for a blank line.
        if !buf[0].is_ascii_uppercase() || buf.len() > 65536 {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            let _ = s.shutdown().await;
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock()
        .unwrap()
        .push(String::from_utf8_lossy(&buf[..head_end + length]).to_string());
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target);
    let (status, extra, body): (&str, &str, Vec<u8>) = match path {
        "/ok" => ("200 OK", "", b"service is healthy".to_vec()),
        "/fail" => ("500 Internal Server Error", "", b"broken".to_vec()),
        "/slow" => {
            // Hold the connection without answering; the runtime's end
            // stops this task.
            std::future::pending::<()>().await;
            return;
        }
        "/redirect" => ("302 Found", "Location: /ok\r\n", Vec::new()),
        "/loop" => ("302 Found", "Location: /loop\r\n", Vec::new()),
        "/big" => {
            let mut b = vec![b'a'; 2 << 20];
            b.extend_from_slice(b"MARKER");
            ("200 OK", "", b)
        }
        "/garbage" => {
            let _ = s.write_all(b"this is not HTTP\r\n\r\n").await;
            let _ = s.shutdown().await;
            return;
        }
        _ => ("404 Not Found", "", Vec::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.write_all(&body).await;
    let _ = s.shutdown().await;
}

async fn http_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s, l.clone()));
        }
    });
    Server { addr, log }
}

/// A certificate for 127.0.0.1 expiring at [`NOT_AFTER`], with its key.
struct TestCert {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// A server certificate for `names`, expiring at midnight UTC of `expires`.
fn leaf_params(names: &[&str], expires: (i32, u8, u8)) -> rcgen::CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut p = rcgen::CertificateParams::new(names).unwrap();
    p.not_after = rcgen::date_time_ymd(expires.0, expires.1, expires.2);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p
}

/// Expires at [`NOT_AFTER`].
const EXPIRES: (i32, u8, u8) = (2049, 6, 30);

fn self_signed() -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf_params(&["127.0.0.1"], EXPIRES)
        .self_signed(&key)
        .unwrap();
    TestCert {
        chain: vec![cert.der().clone()],
        key: key.serialize_der(),
    }
}

/// A leaf from `leaf` signed by a new CA, and a trust store holding that CA.
fn ca_signed(leaf: rcgen::CertificateParams) -> (TestCert, Arc<rustls::RootCertStore>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    (
        TestCert {
            chain: vec![leaf.der().clone()],
            key: key.serialize_der(),
        },
        Arc::new(roots),
    )
}

async fn https_server(cert: TestCert, tls12_only: bool) -> Server {
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider());
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .unwrap();
    let config = builder
        .with_no_client_auth()
        .with_single_cert(
            cert.chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, l) = (acceptor.clone(), l.clone());
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake;
                // that is the point of some tests, not a server error.
                if let Ok(tls) = acceptor.accept(s).await {
                    handle(tls, l).await;
                }
            });
        }
    });
    Server { addr, log }
}

fn reason(o: &ProbeOutcome) -> Option<FailureReason> {
    o.failure.as_ref().map(|f| f.reason)
}

#[tokio::test]
async fn http_200_succeeds_and_sends_the_configured_request() {
    let srv = http_server().await;
    let p = http_probe(
        "web",
        &srv.url("http", "/ok?x=1"),
        "headers = { X-Probe = \"yes\" }\nbody_regex = \"healthy\"",
    );
    let o = run_once(&p).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.status, Some(200));
    assert!(o.connect.is_some() && o.ttfb.is_some());
    assert_eq!(o.tls, None);
    assert_eq!(o.cert_not_after, None);
    assert!(o.total >= o.connect.unwrap() + o.ttfb.unwrap());
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    let r = reqs[0].to_ascii_lowercase();
    assert!(r.starts_with("get /ok?x=1 http/1.1\r\n"), "{r}");
    assert!(r.contains(&format!("host: {}\r\n", srv.addr)), "{r}");
    assert!(r.contains("connection: close\r\n"), "{r}");
    assert!(r.contains("x-probe: yes\r\n"), "{r}");
    assert!(r.contains("user-agent: nines-agent/"), "{r}");
}

#[tokio::test]
async fn a_post_carries_its_body_and_a_host_header_can_be_set() {
    let srv = http_server().await;
    let p = http_probe(
        "post",
        &srv.url("http", "/ok"),
        "method = \"POST\"\nbody = \"{\\\"a\\\":1}\"\nheaders = { Host = \"api.example\" }",
    );
    assert!(run_once(&p).await.success());
    let r = srv.requests()[0].clone();
    assert!(r.starts_with("POST /ok HTTP/1.1\r\n"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("host: api.example\r\n"),
        "{r}"
    );
    assert!(
        r.to_ascii_lowercase().contains("content-length: 7\r\n"),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\n{\"a\":1}"), "{r}");
}

#[tokio::test]
async fn statuses_outside_expect_status_fail() {
    let srv = http_server().await;
    let o = run_once(&http_probe("f", &srv.url("http", "/fail"), "")).await;
    assert_eq!(reason(&o), Some(FailureReason::HttpStatus));
    assert_eq!(o.status, Some(500));
    let o = run_once(&http_probe(
        "f",
        &srv.url("http", "/fail"),
        "expect_status = [\"5xx\"]",
    ))
    .await;
    assert!(o.success(), "{o:?}");
    let o = run_once(&http_probe("f", &srv.url("http", "/missing"), "")).await;
    assert_eq!(reason(&o), Some(FailureReason::HttpStatus));
    assert_eq!(o.status, Some(404));
}

#[tokio::test]
async fn the_body_must_match_the_regex_within_the_limit() {
    let srv = http_server().await;
    let o = run_once(&http_probe(
        "b",
        &srv.url("http", "/ok"),
        "body_regex = \"^service is (healthy|ok)$\"",
    ))
    .await;
    assert!(o.success(), "{o:?}");
    let o = run_once(&http_probe(
        "b",
        &srv.url("http", "/ok"),
        "body_regex = \"sick\"",
    ))
    .await;
    assert_eq!(reason(&o), Some(FailureReason::BodyMismatch));
    assert_eq!(o.status, Some(200));
    // The marker is past the first 1 MiB, so it is never read.
    let o = run_once(&http_probe(
        "b",
        &srv.url("http", "/big"),
        "body_regex = \"MARKER\"",
    ))
    .await;
    assert_eq!(reason(&o), Some(FailureReason::BodyMismatch), "{o:?}");
    let o = run_once(&http_probe(
        "b",
        &srv.url("http", "/big"),
        "body_regex = \"^a+$\"",
    ))
    .await;
    assert!(o.success(), "{o:?}");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let srv = http_server().await;
    let p = http_probe("slow", &srv.url("http", "/slow"), "timeout = \"300ms\"");
    let o = run_once(&p).await;
    assert_eq!(reason(&o), Some(FailureReason::Timeout), "{o:?}");
    let detail = &o.failure.as_ref().unwrap().detail;
    assert!(detail.contains("waiting for the response"), "{detail}");
    assert!(o.total >= Duration::from_millis(300), "{:?}", o.total);
    assert!(o.connect.is_some());
    assert_eq!(o.ttfb, None);
    assert_eq!(o.status, None);
}

#[tokio::test]
async fn a_response_that_is_not_http_is_an_io_failure() {
    let srv = http_server().await;
    let o = run_once(&http_probe("g", &srv.url("http", "/garbage"), "")).await;
    assert_eq!(reason(&o), Some(FailureReason::Io), "{o:?}");
}

#[tokio::test]
async fn redirects_are_followed_only_when_asked() {
    let srv = http_server().await;
    let o = run_once(&http_probe("r", &srv.url("http", "/redirect"), "")).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.status, Some(302));
    assert_eq!(srv.requests().len(), 1);

    let p = http_probe(
        "r",
        &srv.url("http", "/redirect"),
        "follow_redirects = true\nexpect_status = [200]\nbody_regex = \"healthy\"",
    );
    let o = run_once(&p).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.status, Some(200));
    assert_eq!(srv.requests().len(), 3);

    let o = run_once(&http_probe(
        "r",
        &srv.url("http", "/loop"),
        "follow_redirects = true",
    ))
    .await;
    assert_eq!(reason(&o), Some(FailureReason::HttpStatus), "{o:?}");
    assert!(o.failure.unwrap().detail.contains("redirects"));
    assert_eq!(srv.requests().len(), 3 + 1 + MAX_REDIRECTS);
}

#[tokio::test]
async fn tcp_to_a_listening_and_a_closed_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let tcp = |addr: SocketAddr| {
        probe(&format!(
            "name = \"t\"\nkind = \"tcp\"\ntarget = \"{addr}\"\n"
        ))
    };
    let o = run_once(&tcp(open)).await;
    assert!(o.success(), "{o:?}");
    assert!(o.connect.is_some());
    assert_eq!((o.tls, o.ttfb, o.status), (None, None, None));
    let o = run_once(&tcp(closed)).await;
    assert_eq!(reason(&o), Some(FailureReason::Connect), "{o:?}");
    assert_eq!(o.connect, None);
}

#[tokio::test]
async fn https_self_signed_verified_and_not() {
    let srv = https_server(self_signed(), false).await;
    let url = srv.url("https", "/ok");

    // Trusted by nothing: rejected, but the expiry was still read.
    let o = run_once(&http_probe("s", &url, "")).await;
    assert_eq!(reason(&o), Some(FailureReason::TlsVerify), "{o:?}");
    let detail = &o.failure.as_ref().unwrap().detail;
    // Unknown to the system's store (or there is no store on this host).
    assert!(
        detail.contains("UnknownIssuer") || detail.contains("no trusted CA"),
        "{detail}"
    );
    assert_eq!(o.cert_not_after, Some(NOT_AFTER));
    assert_eq!(o.tls, None);
    assert_eq!(o.status, None);

    let o = run_once(&http_probe(
        "s",
        &url,
        "tls_verify = false\nbody_regex = \"healthy\"",
    ))
    .await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.cert_not_after, Some(NOT_AFTER));
    assert!(o.tls.is_some() && o.connect.is_some() && o.ttfb.is_some());
    assert_eq!(o.status, Some(200));
    // The server answered exactly once: the rejected handshake sent nothing.
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn https_with_a_trusted_ca_verifies() {
    let (cert, roots) = ca_signed(leaf_params(&["127.0.0.1"], EXPIRES));
    let srv = https_server(cert, false).await;
    let p = http_probe("ca", &srv.url("https", "/ok"), "").trusting(roots);
    let o = run_once(&p).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.cert_not_after, Some(NOT_AFTER));
    assert!(o.tls.is_some());
}

#[tokio::test]
async fn a_trusted_certificate_for_another_name_or_expired_fails_verification() {
    // Issued for a name, reached by address.
    let (cert, roots) = ca_signed(leaf_params(&["service.test"], EXPIRES));
    let srv = https_server(cert, false).await;
    let o = run_once(&http_probe("name", &srv.url("https", "/ok"), "").trusting(roots)).await;
    assert_eq!(reason(&o), Some(FailureReason::TlsVerify), "{o:?}");
    assert_eq!(o.cert_not_after, Some(NOT_AFTER));

    // Expired: rejected, and the gauge shows when it expired
    // (2020-01-01T00:00:00Z).
    let (cert, roots) = ca_signed(leaf_params(&["127.0.0.1"], (2020, 1, 1)));
    let srv = https_server(cert, false).await;
    let o = run_once(&http_probe("old", &srv.url("https", "/ok"), "").trusting(roots)).await;
    assert_eq!(reason(&o), Some(FailureReason::TlsVerify), "{o:?}");
    let detail = &o.failure.as_ref().unwrap().detail;
    assert!(detail.contains("expired"), "{detail}");
    assert_eq!(o.cert_not_after, Some(1_577_836_800));
}

#[tokio::test]
async fn tls12_servers_are_probed_too() {
    let srv = https_server(self_signed(), true).await;
    let o = run_once(&http_probe(
        "t12",
        &srv.url("https", "/ok"),
        "tls_verify = false",
    ))
    .await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.cert_not_after, Some(NOT_AFTER));
}

#[tokio::test]
async fn https_to_a_plain_http_port_is_a_tls_failure() {
    let srv = http_server().await;
    let o = run_once(&http_probe(
        "p",
        &srv.url("https", "/ok"),
        "tls_verify = false",
    ))
    .await;
    assert_eq!(reason(&o), Some(FailureReason::Tls), "{o:?}");
    assert_eq!(o.cert_not_after, None);
}

fn outcome(failure: Option<FailureReason>, total_ms: u64) -> ProbeOutcome {
    ProbeOutcome {
        failure: failure.map(|reason| ProbeFailure {
            reason,
            detail: "test".into(),
        }),
        total: Duration::from_millis(total_ms),
        connect: Some(Duration::from_millis(1)),
        tls: failure.is_none().then(|| Duration::from_millis(100)),
        ttfb: failure.is_none().then(|| Duration::from_millis(250)),
        status: failure.is_none().then_some(200),
        cert_not_after: Some(NOT_AFTER),
    }
}

/// Counters and bucket counts after known outcomes, exactly.
#[test]
fn recorded_outcomes_become_exact_series() {
    let https = http_probe("web", "https://127.0.0.1:1/", "");
    let tcp = probe("name = \"db\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:1\"\n");
    let set = ProbeSet::new(&[https, tcp]);

    // Before any attempt: totals at 0, no gauges.
    let mut out = Samples::default();
    set.sample(&mut out);
    let web = [("probe", "web")];
    assert_eq!(out.value_of(SUCCESS, &web), Some(0.0));
    assert_eq!(out.value_of(UP, &web), None);
    assert_eq!(out.value_of(LAST_RUN, &web), None);
    let reasons_of = |out: &Samples, probe: &str| -> Vec<String> {
        out.observations
            .iter()
            .filter(|o| {
                o.labels.metric_name() == Some(FAILURE) && o.labels.get("probe") == Some(probe)
            })
            .filter_map(|o| o.labels.get("reason").map(str::to_string))
            .collect()
    };
    assert_eq!(
        reasons_of(&out, "web"),
        [
            "dns",
            "connect",
            "timeout",
            "tls",
            "tls_verify",
            "http_status",
            "io"
        ]
    );
    assert_eq!(reasons_of(&out, "db"), ["dns", "connect", "timeout"]);
    let phases_of = |out: &Samples, probe: &str| -> Vec<String> {
        out.observations
            .iter()
            .filter(|o| {
                o.labels.metric_name() == Some("nines_probe_duration_seconds_count")
                    && o.labels.get("probe") == Some(probe)
            })
            .filter_map(|o| o.labels.get("phase").map(str::to_string))
            .collect()
    };
    assert_eq!(phases_of(&out, "web"), ["total", "connect", "tls", "ttfb"]);
    assert_eq!(phases_of(&out, "db"), ["total", "connect"]);
    assert_eq!(
        out.value_of(
            INFO,
            &[("probe", "db"), ("kind", "tcp"), ("target", "127.0.0.1:1")]
        ),
        Some(1.0)
    );

    // Totals on the 100 ms, 250 ms and 1 s edges, and past them.
    for (f, ms) in [
        (None, 100),
        (None, 250),
        (None, 1000),
        (Some(FailureReason::HttpStatus), 101),
        (Some(FailureReason::Timeout), 5000),
    ] {
        set.record(0, &outcome(f, ms));
    }
    let mut out = Samples::default();
    set.sample(&mut out);
    assert_eq!(out.value_of(SUCCESS, &web), Some(3.0));
    let failures = |r: &str| out.value_of(FAILURE, &[("probe", "web"), ("reason", r)]);
    assert_eq!(failures("http_status"), Some(1.0));
    assert_eq!(failures("timeout"), Some(1.0));
    assert_eq!(failures("dns"), Some(0.0));
    let bucket = |phase: &str, le: &str| {
        out.value_of(
            "nines_probe_duration_seconds_bucket",
            &[("probe", "web"), ("phase", phase), ("le", le)],
        )
    };
    assert_eq!(bucket("total", "0.075"), Some(0.0));
    assert_eq!(bucket("total", "0.1"), Some(1.0));
    assert_eq!(bucket("total", "0.15"), Some(2.0));
    assert_eq!(bucket("total", "0.25"), Some(3.0));
    assert_eq!(bucket("total", "1"), Some(4.0));
    assert_eq!(bucket("total", "2.5"), Some(4.0));
    assert_eq!(bucket("total", "5"), Some(5.0));
    assert_eq!(bucket("total", "+Inf"), Some(5.0));
    // Connect was reached every time; tls and ttfb only by the successes.
    assert_eq!(bucket("connect", "0.005"), Some(5.0));
    assert_eq!(bucket("tls", "0.075"), Some(0.0));
    assert_eq!(bucket("tls", "0.1"), Some(3.0));
    assert_eq!(bucket("ttfb", "0.2"), Some(0.0));
    assert_eq!(bucket("ttfb", "0.25"), Some(3.0));
    assert_eq!(bucket("ttfb", "+Inf"), Some(3.0));
    let sum = out
        .value_of(
            "nines_probe_duration_seconds_sum",
            &[("probe", "web"), ("phase", "total")],
        )
        .unwrap();
    assert!((sum - 6.451).abs() < 1e-9, "{sum}");

    // Gauges follow the last attempt; the expiry is kept through it.
    assert_eq!(out.value_of(UP, &web), Some(0.0));
    assert_eq!(out.value_of(STATUS, &web), Some(0.0));
    assert_eq!(out.value_of(CERT_EXPIRY, &web), Some(NOT_AFTER as f64));
    let last = out.value_of(LAST_RUN, &web).unwrap();
    assert!((last - unix_now()).abs() < 60.0, "{last}");
    // The TCP probe has not run: no gauges, no status series ever.
    assert_eq!(out.value_of(UP, &[("probe", "db")]), None);
    set.record(1, &outcome(None, 3));
    let mut out = Samples::default();
    set.sample(&mut out);
    assert_eq!(out.value_of(UP, &[("probe", "db")]), Some(1.0));
    assert_eq!(out.value_of(STATUS, &[("probe", "db")]), None);
    // Every family is declared once.
    assert_eq!(out.metadata.len(), 8);
    let hist = out.metadata.iter().find(|m| m.name == DURATION).unwrap();
    assert_eq!(
        (hist.kind, hist.unit.as_str()),
        (MetricKind::Histogram, "seconds")
    );
}

/// Waits until `f` holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    crate::test_support::poll_until(within, what, || f().then_some(())).await;
}

#[tokio::test]
async fn spawned_probes_report_and_stop() {
    let srv = http_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probes = vec![
        http_probe("web", &srv.url("http", "/ok"), "interval = \"1s\""),
        http_probe("bad", &srv.url("http", "/fail"), "interval = \"1s\""),
        probe(&format!(
            "name = \"port\"\nkind = \"tcp\"\ntarget = \"{}\"\ninterval = \"1s\"\n",
            listener.local_addr().unwrap()
        )),
    ];
    let (stop_tx, stop) = watch::channel(false);
    let set = spawn(probes, stop);
    assert_eq!((set.len(), set.running()), (3, 3));
    let value = |metric: &str, labels: &[(&str, &str)]| {
        let mut out = Samples::default();
        set.sample(&mut out);
        out.value_of(metric, labels)
    };
    eventually(Duration::from_secs(10), "first attempts", || {
        value(LAST_RUN, &[("probe", "web")]).is_some()
            && value(LAST_RUN, &[("probe", "bad")]).is_some()
            && value(LAST_RUN, &[("probe", "port")]).is_some()
    })
    .await;
    assert!(value(SUCCESS, &[("probe", "web")]).unwrap() >= 1.0);
    assert_eq!(value(UP, &[("probe", "web")]), Some(1.0));
    assert_eq!(value(STATUS, &[("probe", "web")]), Some(200.0));
    assert_eq!(value(UP, &[("probe", "bad")]), Some(0.0));
    assert_eq!(value(STATUS, &[("probe", "bad")]), Some(500.0));
    assert!(value(FAILURE, &[("probe", "bad"), ("reason", "http_status")]).unwrap() >= 1.0);
    assert_eq!(value(UP, &[("probe", "port")]), Some(1.0));

    stop_tx.send(true).unwrap();
    eventually(Duration::from_secs(5), "tasks to stop", || {
        set.running() == 0
    })
    .await;
}
