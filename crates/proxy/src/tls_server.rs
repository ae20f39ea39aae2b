//! TLS termination for gateway servers: rustls server configurations built from a server's
//! `tls` block (SIMPLE, MUTUAL, OPTIONAL_MUTUAL; protocol versions; cipher suites), with
//! certificates from files or Secrets that are re-read when they change, without touching
//! established connections.

use std::sync::Arc;

use sluice_model::gateway::GatewayServer;

use crate::upstream::TlsSetupError;

/// Server configurations by gateway server, built on first use and kept current.
#[derive(Default)]
pub struct ServerTlsStore {}

impl ServerTlsStore {
    /// The configuration that terminates a connection for `server` (ALPN `h2`, `http/1.1`).
    /// Cached per server; a certificate change (file contents or Secret bytes) is picked up by
    /// the next handshake.
    pub fn config_for(
        &self,
        server: &GatewayServer,
    ) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        Err(TlsSetupError::Invalid {
            path: server.source.to_string(),
            message: "TLS termination is not built yet".into(),
        })
    }
}
