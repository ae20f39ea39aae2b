//! This proxy's mesh identity: a short-lived workload certificate with a SPIFFE URI SAN
//! (`spiffe://cluster.local/ns/NS/sa/SA`) issued by the mesh root (`sluice ca`), and the rustls
//! configurations for mutual TLS between proxies (ISTIO_MUTUAL origination, inbound and gateway
//! termination).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the identity comes from (command-line flags of `sluice sidecar` / `sluice gateway`).
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// Directory with the mesh root: `root-cert.pem`, and `root-key.pem` when this proxy may
    /// issue (and rotate) its own workload certificate.
    pub mesh_ca: PathBuf,
    /// Directory with `cert-chain.pem` + `key.pem` issued elsewhere (`sluice ca issue`),
    /// re-read when they change. Used when the CA directory has no key.
    pub identity_dir: Option<PathBuf>,
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    /// Lifetime of self-issued certificates; rotated at half of it.
    pub cert_ttl: Duration,
}

/// The loaded identity, current certificate included (rotation swaps it in place).
pub struct Identity {
    spiffe_id: String,
}

impl Identity {
    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// A client configuration for ISTIO_MUTUAL: presents the current workload certificate,
    /// verifies the server against the mesh root and, when `expected_sans` is not empty, that
    /// its certificate carries one of them (URI SANs). ALPN `istio`, `h2`, `http/1.1` as offered
    /// by `alpn`.
    pub fn client_config(
        &self,
        expected_sans: &[String],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let _ = (expected_sans, alpn);
        unimplemented!("identity is being built")
    }

    /// A server configuration that presents the workload certificate and requires a client
    /// certificate from the mesh root (`optional_client` = accept clients without one too, for
    /// PERMISSIVE listeners that already sniffed TLS).
    pub fn server_config(&self, alpn: &[&[u8]], optional_client: bool) -> Arc<rustls::ServerConfig> {
        let _ = (alpn, optional_client);
        unimplemented!("identity is being built")
    }
}

/// The SPIFFE URI SAN of a peer's leaf certificate, if it has one.
pub fn peer_spiffe_id(certs: &[rustls::pki_types::CertificateDer<'_>]) -> Option<String> {
    let _ = certs;
    None
}

/// `cluster.local/ns/NS/sa/SA` (Istio's principal form) from a SPIFFE ID.
pub fn principal_of(spiffe_id: &str) -> &str {
    spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id)
}
