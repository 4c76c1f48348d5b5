//! TLS client settings for HTTPS probes: rustls with the `ring` provider,
//! the system's trust store, and a certificate verifier that records the
//! leaf's expiry before deciding (so the expiry gauge is set even when
//! verification fails, e.g. for an expired certificate). With
//! `tls_verify = false` it accepts any chain and name, but still checks
//! the handshake signature against the presented key. It never caches
//! sessions: each attempt is a full handshake, as a new client would do.

use super::cert;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The `ring` provider, made once: every probe uses the same algorithms.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(crypto::ring::default_provider()))
        .clone()
}

static SYSTEM_ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();

/// The system's trust anchors, read on first use. Reading is blocking file
/// I/O (one file or directory of PEM), so the first call is moved off the
/// async workers; later calls return the loaded store.
pub(crate) async fn system_roots() -> Arc<RootCertStore> {
    if let Some(r) = SYSTEM_ROOTS.get() {
        return r.clone();
    }
    match tokio::task::spawn_blocking(system_roots_blocking).await {
        Ok(r) => r,
        // Only a panic while loading gets here; verification then fails
        // with "no trust anchors" rather than taking the agent down.
        Err(_) => Arc::new(RootCertStore::empty()),
    }
}

/// The system's trust anchors, read once per process (blocking file I/O
/// on the first call): shared by the probes and the collector's https
/// notification receivers.
pub fn system_roots_blocking() -> Arc<RootCertStore> {
    SYSTEM_ROOTS.get_or_init(load_system_roots).clone()
}

fn load_system_roots() -> Arc<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading system CA certificates");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "system CA certificates rustls cannot use");
    }
    if added == 0 {
        tracing::warn!(
            "no system CA certificates found; https checks without their own CA (probes with tls_verify, receivers without ca_file) will fail"
        );
    }
    Arc::new(store)
}

/// What the verifier saw during one handshake.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// The leaf's notAfter, Unix seconds, if it could be read.
    pub(crate) not_after: Option<i64>,
    /// Why the chain or name was rejected, if it was.
    pub(crate) rejected: Option<String>,
}

/// Records the leaf's expiry, then verifies (or not).
#[derive(Debug)]
struct RecordingVerifier {
    /// None when `tls_verify = false`.
    verify: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let not_after = match cert::not_after_unix(end_entity.as_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the server certificate's expiry");
                None
            }
        };
        let result = match &self.verify {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        };
        if let Ok(mut s) = self.seen.lock() {
            s.not_after = not_after;
            s.rejected = result.as_ref().err().map(|e| e.to_string());
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// `tls_verify = true` but there is nothing to verify against.
    #[error("no trusted CA certificates to verify against ({0})")]
    NoRoots(String),
    /// rustls refused the protocol versions (not expected with ring).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration for one attempt, and where its verifier writes
/// what it saw.
pub(crate) fn client_config(
    verify: Option<Arc<RootCertStore>>,
) -> Result<(Arc<ClientConfig>, Arc<Mutex<Seen>>), SetupError> {
    let provider = provider();
    let verify = match verify {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| SetupError::NoRoots(e.to_string()))?,
        ),
        None => None,
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let verifier = RecordingVerifier {
        verify,
        algorithms: provider.signature_verification_algorithms,
        seen: seen.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // The request is written as HTTP/1.1; say so, so a server offering h2
    // does not pick it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A fresh handshake every attempt: resumption would hide a changed
    // certificate and skip the work the tls phase is meant to time.
    config.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(config), seen))
}
