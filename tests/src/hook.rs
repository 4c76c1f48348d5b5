//! A small HTTP server on 127.0.0.1 for tests and benchmarks: it records
//! every request it gets (when it arrived, its headers and body) and
//! answers each with the status set by [`Hook::set_status`] (200 at first).
//! It stands in for a webhook receiver, or for a service behind a probe.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Largest body kept; a larger request is answered but not recorded.
const MAX_BODY: usize = 16 << 20;

/// One request the server got.
#[derive(Clone, Debug)]
pub struct Received {
    /// When its body had been read.
    pub at: Instant,
    /// Method and path, e.g. `POST /alerts`.
    pub request_line: String,
    /// Header names and values, as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// Panics unless `X-Nines-Signature: sha256=<hex>` is the HMAC-SHA256
    /// of the body with `secret` (and not with another key).
    pub fn verify_signature(&self, secret: &str) {
        let sig = self.header("X-Nines-Signature").expect("signature header");
        let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        ring::hmac::verify(&key, &self.body, &tag).expect("the signature verifies over the body");
        let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another key");
        assert!(ring::hmac::verify(&wrong, &self.body, &tag).is_err());
    }
}

/// The server; it runs until the process ends.
#[derive(Clone)]
pub struct Hook {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Hook {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    pub fn start(port: u16) -> Hook {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the hook server");
        let port = listener.local_addr().expect("local addr").port();
        let hook = Hook {
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            port,
        };
        let h = hook.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let h = h.clone();
                std::thread::spawn(move || h.serve(stream));
            }
        });
        hook
    }

    fn serve(&self, mut stream: std::net::TcpStream) {
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(clone);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.trim_end().split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if len <= MAX_BODY {
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            self.got
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Received {
                    at: Instant::now(),
                    request_line: request_line.trim_end().to_string(),
                    headers,
                    body,
                });
        }
        let status = self.status.load(Ordering::SeqCst);
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
    }

    /// The status code every later request is answered with.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
