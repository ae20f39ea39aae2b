//! What every TLS endpoint of sluice builds on: PEM loading (certificates, keys, and the stamps
//! that tell a watched file changed), the crypto provider, rustls client configurations for
//! DestinationRule origination, server protocol versions, cipher suites and preferences, peer
//! certificate (SAN) verification, and the error that says why TLS could not be set up.
//!
//! Gateway termination (`tls_server`), the mesh identity (`identity`) and upstream connections
//! (`upstream`) use this module; it uses none of them.

mod client;
mod pem;
mod server;
mod verify;

use std::io;
use std::sync::Arc;

pub use client::client_config;
pub(crate) use pem::{certified_key, parse_certs, read_certs, read_key, read_pem, FileStamp};
pub(crate) use server::{apply_server_preferences, protocol_versions, provider_for};
pub use verify::peer_identity;
pub(crate) use verify::{client_verifier, SanMismatch};

/// ALPN a sidecar offers when it originates Istio mutual TLS: the marker a PERMISSIVE inbound
/// listener looks for to tell mesh mTLS from an application's own TLS.
pub const ISTIO_ALPN: &[u8] = b"istio";

/// Why TLS could not be set up (origination, termination, or the mesh identity's certificates).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The crypto provider TLS endpoints use unless settings narrow it: ring, all its suites.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
