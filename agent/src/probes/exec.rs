//! One probe attempt, done by hand so each phase is timed: resolve, TCP
//! connect, TLS handshake, HTTP/1.1 request (hyper's connection-level
//! client) up to the response headers, then a bounded read of the body.
//! The whole attempt is bounded by the probe's timeout. It reports what
//! happened and never keeps state, retries, or reuses a connection: each
//! attempt is what a new client would see.

use super::config::{Check, Host, HttpCheck, ValidProbe};
use super::tls;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Most body bytes read per attempt: enough for any health page, and a
/// bound on what a probe downloads every interval.
pub const BODY_LIMIT: usize = 1 << 20;
/// Most redirects followed in one attempt.
pub const MAX_REDIRECTS: usize = 10;

/// Why an attempt failed; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// The name did not resolve, or resolved to nothing.
    Dns,
    /// No address accepted a TCP connection.
    Connect,
    /// The attempt did not finish within the timeout.
    Timeout,
    /// The TLS handshake failed for a reason other than the certificate.
    Tls,
    /// The certificate chain or name was not trusted.
    TlsVerify,
    /// The final status was not one of `expect_status` (or a redirect
    /// could not be followed).
    HttpStatus,
    /// The body did not match `body_regex`.
    BodyMismatch,
    /// The connection failed after connecting: a reset, a malformed
    /// response, a truncated body.
    Io,
}

impl FailureReason {
    /// Every reason, in label order.
    pub const ALL: [FailureReason; 8] = [
        FailureReason::Dns,
        FailureReason::Connect,
        FailureReason::Timeout,
        FailureReason::Tls,
        FailureReason::TlsVerify,
        FailureReason::HttpStatus,
        FailureReason::BodyMismatch,
        FailureReason::Io,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Dns => "dns",
            FailureReason::Connect => "connect",
            FailureReason::Timeout => "timeout",
            FailureReason::Tls => "tls",
            FailureReason::TlsVerify => "tls_verify",
            FailureReason::HttpStatus => "http_status",
            FailureReason::BodyMismatch => "body_mismatch",
            FailureReason::Io => "io",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A failed attempt: the reason, and a message for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The `reason` label.
    pub reason: FailureReason,
    /// What went wrong, for a human.
    pub detail: String,
}

fn fail(reason: FailureReason, detail: impl Into<String>) -> ProbeFailure {
    ProbeFailure {
        reason,
        detail: detail.into(),
    }
}

/// What one attempt found. Phase times are summed over redirects; a phase
/// that was never reached is None.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeOutcome {
    /// None on success.
    pub failure: Option<ProbeFailure>,
    /// From start to success or failure (including a timeout).
    pub total: Duration,
    /// TCP connect, after resolution.
    pub connect: Option<Duration>,
    /// TLS handshake.
    pub tls: Option<Duration>,
    /// From writing the request to having the response headers.
    pub ttfb: Option<Duration>,
    /// The last response's status.
    pub status: Option<u16>,
    /// The last TLS leaf certificate's notAfter, Unix seconds.
    pub cert_not_after: Option<i64>,
}

impl ProbeOutcome {
    /// Whether the attempt succeeded.
    pub fn success(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs one attempt of `probe`, bounded by its timeout.
pub async fn run_once(probe: &ValidProbe) -> ProbeOutcome {
    let started = Instant::now();
    let mut out = ProbeOutcome::default();
    let mut stage = "starting";
    let result = tokio::time::timeout(probe.timeout, attempt(probe, &mut out, &mut stage)).await;
    out.total = started.elapsed();
    out.failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(f)) => Some(f),
        Err(_) => Some(fail(
            FailureReason::Timeout,
            format!("no result within {:?} ({stage})", probe.timeout),
        )),
    };
    out
}

/// The attempt itself; `stage` says what it was doing if it is cut off.
async fn attempt(
    probe: &ValidProbe,
    out: &mut ProbeOutcome,
    stage: &mut &'static str,
) -> Result<(), ProbeFailure> {
    match &probe.check {
        Check::Tcp { host, port } => {
            let addrs = resolve(host, *port, stage).await?;
            let (_stream, took) = connect(&addrs, stage).await?;
            out.connect = Some(took);
            Ok(())
        }
        Check::Http(check) => http(check, out, stage).await,
    }
}

async fn resolve(
    host: &Host,
    port: u16,
    stage: &mut &'static str,
) -> Result<Vec<SocketAddr>, ProbeFailure> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            *stage = "resolving";
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| fail(FailureReason::Dns, format!("resolving {name}: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(fail(FailureReason::Dns, format!("{name} has no addresses")));
            }
            Ok(addrs)
        }
    }
}

/// Connects to the first address that accepts, in the resolver's order.
async fn connect(
    addrs: &[SocketAddr],
    stage: &mut &'static str,
) -> Result<(TcpStream, Duration), ProbeFailure> {
    *stage = "connecting";
    let started = Instant::now();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let took = started.elapsed();
                // The request goes out in one write; don't let Nagle hold
                // a small body back and inflate ttfb.
                let _ = s.set_nodelay(true);
                return Ok((s, took));
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(fail(
        FailureReason::Connect,
        last.unwrap_or_else(|| "no address to connect to".into()),
    ))
}

fn add(phase: &mut Option<Duration>, took: Duration) {
    *phase = Some(phase.unwrap_or_default() + took);
}

/// A response with its connection task, which is stopped when this is
/// dropped (including when the attempt times out).
struct Exchange {
    response: hyper::Response<hyper::body::Incoming>,
    _conn: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http(
    check: &HttpCheck,
    out: &mut ProbeOutcome,
    stage: &mut &'static str,
) -> Result<(), ProbeFailure> {
    let mut url = check.url.clone();
    let mut method = check.method.clone();
    let mut body = check.body.clone();
    // Credentials meant for the configured host are not sent to another.
    let mut same_origin = true;
    let mut redirects = 0;
    loop {
        let ex = exchange(check, &url, &method, &body, same_origin, out, stage).await?;
        let status = ex.response.status();
        out.status = Some(status.as_u16());
        if check.follow_redirects && status.is_redirection() {
            if let Some(location) = ex.response.headers().get(header::LOCATION) {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(fail(
                        FailureReason::HttpStatus,
                        format!("more than {MAX_REDIRECTS} redirects"),
                    ));
                }
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|l| url.join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| {
                        fail(
                            FailureReason::HttpStatus,
                            format!("{status} with an unusable Location {location:?}"),
                        )
                    })?;
                // 303 always, and 301/302 after a POST in practice, mean
                // "GET the new place"; 307/308 repeat the request as is.
                if status == hyper::StatusCode::SEE_OTHER
                    || (method == hyper::Method::POST && matches!(status.as_u16(), 301 | 302))
                {
                    method = hyper::Method::GET;
                    body = None;
                }
                same_origin = same_origin && next.origin() == check.url.origin();
                url = next;
                continue;
            }
        }
        let code = status.as_u16();
        if !check.expect_status.iter().any(|r| r.contains(&code)) {
            return Err(fail(
                FailureReason::HttpStatus,
                format!("status {code} is not an expected one"),
            ));
        }
        *stage = "reading the body";
        let bytes = read_bounded(ex.response.into_body()).await?;
        if let Some(re) = &check.body_regex {
            if !re.is_match(&bytes) {
                return Err(fail(
                    FailureReason::BodyMismatch,
                    format!(
                        "the first {} bytes of the body do not match {:?}",
                        bytes.len(),
                        re.as_str()
                    ),
                ));
            }
        }
        return Ok(());
    }
}

/// Reads up to [`BODY_LIMIT`] bytes, then stops (the rest is dropped with
/// the connection).
async fn read_bounded(mut body: hyper::body::Incoming) -> Result<Vec<u8>, ProbeFailure> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            fail(
                FailureReason::Io,
                format!("reading the body: {}", chain(&e)),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            let room = BODY_LIMIT - buf.len();
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() >= BODY_LIMIT {
                break;
            }
        }
    }
    Ok(buf)
}

/// One connection and one request to `url`.
async fn exchange(
    check: &HttpCheck,
    url: &url::Url,
    method: &hyper::Method,
    body: &Option<Bytes>,
    same_origin: bool,
    out: &mut ProbeOutcome,
    stage: &mut &'static str,
) -> Result<Exchange, ProbeFailure> {
    let (host, server_name) = match url.host() {
        Some(url::Host::Domain(d)) => (Host::Name(d.to_string()), d.to_string()),
        Some(url::Host::Ipv4(ip)) => (Host::Ip(ip.into()), ip.to_string()),
        Some(url::Host::Ipv6(ip)) => (Host::Ip(ip.into()), ip.to_string()),
        None => {
            return Err(fail(
                FailureReason::HttpStatus,
                format!("{url} has no host"),
            ));
        }
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs = resolve(&host, port, stage).await?;
    let (tcp, took) = connect(&addrs, stage).await?;
    add(&mut out.connect, took);

    let request = build_request(check, url, method, body, same_origin)?;
    if url.scheme() == "https" {
        *stage = "TLS handshake";
        let roots = if check.tls_verify {
            Some(match &check.roots {
                Some(r) => r.clone(),
                None => tls::system_roots().await,
            })
        } else {
            None
        };
        let (config, seen) = tls::client_config(roots).map_err(|e| match e {
            tls::SetupError::NoRoots(_) => fail(FailureReason::TlsVerify, e.to_string()),
            tls::SetupError::Rustls(_) => fail(FailureReason::Tls, e.to_string()),
        })?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| {
                fail(
                    FailureReason::Tls,
                    format!("{server_name:?} as a TLS name: {e}"),
                )
            })?;
        let started = Instant::now();
        let result = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await;
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        if seen.not_after.is_some() {
            out.cert_not_after = seen.not_after;
        }
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                return Err(match seen.rejected {
                    Some(why) => fail(FailureReason::TlsVerify, why),
                    None => fail(FailureReason::Tls, format!("handshake: {}", chain(&e))),
                });
            }
        };
        add(&mut out.tls, started.elapsed());
        send(stream, request, out, stage).await
    } else {
        send(tcp, request, out, stage).await
    }
}

fn build_request(
    check: &HttpCheck,
    url: &url::Url,
    method: &hyper::Method,
    body: &Option<Bytes>,
    same_origin: bool,
) -> Result<hyper::Request<http_body_util::Full<Bytes>>, ProbeFailure> {
    let mut target = url.path().to_string();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    // host[:port], with the port only when it is not the scheme's default
    // (url drops a default port), IPv6 in brackets.
    let mut authority = url.host_str().unwrap_or_default().to_string();
    if let Some(p) = url.port() {
        authority.push_str(&format!(":{p}"));
    }
    let bad = |e: hyper::http::Error| fail(FailureReason::Io, format!("building the request: {e}"));
    let mut req = hyper::Request::builder()
        .method(method.clone())
        .uri(&target)
        .body(http_body_util::Full::new(body.clone().unwrap_or_default()))
        .map_err(bad)?;
    let h = req.headers_mut();
    let host = HeaderValue::from_str(&authority)
        .map_err(|_| fail(FailureReason::Io, format!("{authority:?} as a Host header")))?;
    h.insert(header::HOST, host);
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("nines-agent/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &check.headers {
        let sensitive = *name == header::AUTHORIZATION
            || *name == header::COOKIE
            || *name == header::PROXY_AUTHORIZATION;
        if sensitive && !same_origin {
            continue;
        }
        // A configured Host (virtual host) or User-Agent replaces ours.
        h.insert(name.clone(), value.clone());
    }
    // One request per connection: the next attempt connects again, so
    // the connect and tls phases are measured every time.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if body.is_none()
        && matches!(
            *method,
            hyper::Method::POST | hyper::Method::PUT | hyper::Method::PATCH
        )
    {
        // hyper sends no Content-Length for an empty body; some servers
        // answer 411 to a bodyless POST without one.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    Ok(req)
}

/// HTTP/1.1 over `io`: sends the request, waits for the response headers.
async fn send<IO>(
    io: IO,
    request: hyper::Request<http_body_util::Full<Bytes>>,
    out: &mut ProbeOutcome,
    stage: &mut &'static str,
) -> Result<Exchange, ProbeFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    *stage = "waiting for the response";
    let started = Instant::now();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| fail(FailureReason::Io, format!("HTTP setup: {}", chain(&e))))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        // Its errors surface through send_request or the body.
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(FailureReason::Io, format!("request: {}", chain(&e))))?;
    add(&mut out.ttfb, started.elapsed());
    Ok(Exchange {
        response,
        _conn: conn,
    })
}

/// An error and its sources, "a: b: c", since hyper's own message is often
/// only "connection error".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
