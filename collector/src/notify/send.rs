//! The senders: one HTTP POST of a queued body to a webhook (signed with
//! HMAC-SHA256 when the receiver has a secret, with its custom headers) or
//! to an Alertmanager's `/api/v2/alerts`, within the receiver's timeout.
//!
//! Signature scheme: `X-Nines-Signature: sha256=<hex>` where `<hex>` is
//! HMAC-SHA256 with the secret as key over the exact body bytes; the
//! receiver recomputes it over the raw body and compares in constant time.
//!
//! Never retries by itself: the outbox worker decides.

use super::config::ReceiverKind;
use std::time::Duration;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Nines-Signature";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Worth trying again (network error, timeout, 5xx, 408, 429).
    Retry(String),
    /// Refused for good (other 4xx).
    Refused(String),
}

/// POSTs `body` to `target` as `kind` asks.
pub async fn send(
    client: &reqwest::Client,
    kind: &ReceiverKind,
    target: &str,
    body: &[u8],
) -> Outcome {
    let (timeout, mut req) = match kind {
        ReceiverKind::Webhook(w) => {
            let mut req = client.post(target);
            for (k, v) in &w.headers {
                req = req.header(k, v);
            }
            if let Some(secret) = &w.secret {
                req = req.header(SIGNATURE_HEADER, signature(secret, body));
            }
            (w.timeout, req)
        }
        ReceiverKind::Alertmanager(a) => (a.timeout, client.post(target)),
    };
    req = req
        .header("content-type", "application/json")
        .timeout(timeout)
        .body(body.to_vec());
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::Retry(format!("no answer within {timeout:?}")),
        Err(e) => return Outcome::Retry(error_chain(&e)),
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome::Delivered;
    }
    // A short excerpt of the answer helps to see why.
    let text = tokio::time::timeout(Duration::from_secs(2), resp.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let excerpt: String = text.chars().take(200).collect();
    let msg = format!("HTTP {}: {}", status.as_u16(), excerpt.trim());
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Outcome::Retry(msg)
    } else {
        Outcome::Refused(msg)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
