//! TLS for `https://` receivers: rustls with the `ring` provider, the
//! system's trust store (or only the receiver's `ca_file`), and, with
//! `insecure_skip_verify`, a verifier that accepts any chain and name but
//! still checks the handshake signature. Reading `ca_file` happens when the
//! config is checked, so a bad file stops the collector at start.
//!
//! Nothing here sends; it only makes the HTTP clients' TLS settings.

use std::sync::{Arc, OnceLock};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How a receiver checks its servers' certificates.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// CA certificates from `ca_file`, trusted instead of the system's.
    pub ca: Option<Arc<RootCertStore>>,
    /// Accept any certificate (tests and labs only).
    pub insecure_skip_verify: bool,
}

/// The `ring` provider, made once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(crypto::ring::default_provider()))
        .clone()
}

/// Makes `ring` the process's default rustls provider, so HTTP clients
/// built without TLS settings of their own (scrapes, the agent's shipper in
/// the same build) find one. Calling it again does nothing.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another caller installing the same is fine.
        let _ = crypto::ring::default_provider().install_default();
    }
}

/// Reads a PEM file of CA certificates into a trust store, or says why not.
pub fn read_ca_file(path: &std::path::Path) -> Result<Arc<RootCertStore>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut store = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("{shown}: bad PEM ({e})"))?;
        store
            .add(cert)
            .map_err(|e| format!("{shown}: certificate #{} is not usable ({e})", i + 1))?;
    }
    if store.is_empty() {
        return Err(format!("{shown} holds no PEM CERTIFICATE block"));
    }
    Ok(Arc::new(store))
}

/// The system's trust anchors, read once per process (blocking file I/O:
/// call it off the async workers).
pub fn system_roots() -> Arc<RootCertStore> {
    nines_agent::probes::system_roots_blocking()
}

/// The client TLS settings of one receiver. `roots` gives the system's
/// trust anchors when the receiver has no `ca_file`.
pub fn client_config(
    tls: &Tls,
    roots: impl FnOnce() -> Arc<RootCertStore>,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let roots = tls.ca.clone().unwrap_or_else(roots);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| format!("no trusted CA certificates to verify against ({e})"))?;
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any chain and name; checks only that the server holds the key of
/// the certificate it shows.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
