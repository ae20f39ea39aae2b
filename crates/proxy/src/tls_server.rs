//! TLS termination for gateway servers: rustls server configurations built from a server's
//! `tls` block (SIMPLE, MUTUAL, OPTIONAL_MUTUAL; protocol versions; cipher suites), with
//! certificates from files or Secrets that are re-read when they change, without touching
//! established connections.
//!
//! Each server gets one [`ServerConfig`] whose certificate comes from a resolver holding the
//! current [`CertifiedKey`](rustls::sign::CertifiedKey): a new certificate is swapped into the resolver, so the config (and
//! its session cache) stays and connections already established keep their keys. Anything else
//! the config depends on (mode, versions, suites, client CA, SANs) builds a new config. As Envoy
//! does with a bad update, an unusable new certificate or CA keeps the last good one.

mod entry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use sluice_model::gateway::{Credential, GatewayServer, ServerTls, ServerTlsMode};
use sluice_model::registry::Protocol;

use crate::tls::{TlsSetupError, ISTIO_ALPN};

use self::entry::{Entry, Freshness};

/// How long a server whose TLS cannot be set up waits before the next attempt.
const RETRY_INTERVAL_MS: u64 = 1000;

/// Server configurations by gateway server, built on first use and kept current.
#[derive(Default)]
pub struct ServerTlsStore {
    /// By [`GatewayServer::source`]. Read lock-free per connection; replaced (copy on write)
    /// only when a server's settings or client CA change.
    slots: ArcSwap<HashMap<Arc<str>, Slot>>,
    /// Serialises writers so that two rebuilds do not drop each other's entries.
    writer: Mutex<()>,
}

#[derive(Clone)]
enum Slot {
    Ready(Arc<Entry>),
    Failed(Arc<Failure>),
}

impl ServerTlsStore {
    /// The configuration that terminates a connection for `server` (ALPN `h2`, `http/1.1` for
    /// HTTP servers). Cached per server; a certificate change (file contents or Secret bytes) is
    /// picked up by the next handshake: files are checked at most once a second, Secret bytes
    /// are compared with the ones in use. Errors name the server and say what is wrong.
    pub fn config_for(
        &self,
        server: &GatewayServer,
    ) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        let Some(tls) = &server.tls else {
            return Err(server_error(server, "has no tls settings".into()));
        };
        let previous = self.slots.load().get(&server.source).cloned();
        let mut repeated_failure = None;
        let last_good = match previous {
            Some(Slot::Ready(entry)) if entry.built_from(server.protocol, tls) => {
                match entry.refresh(tls) {
                    Freshness::Current => return Ok(entry.config.clone()),
                    // The client CA file changed: rebuild the whole config (below).
                    Freshness::CaChanged => Some(entry),
                }
            }
            Some(Slot::Ready(entry)) => Some(entry),
            Some(Slot::Failed(failure)) => {
                if failure.protocol == server.protocol
                    && failure.tls == *tls
                    && now_ms() < failure.retry_at_ms
                {
                    return match &failure.last_good {
                        Some(entry) => {
                            // Its certificate still rotates; a CA change is seen at the retry.
                            if entry.built_from(server.protocol, tls) {
                                let _ = entry.refresh(tls);
                            }
                            Ok(entry.config.clone())
                        }
                        None => Err(server_error(server, failure.message.clone())),
                    };
                }
                repeated_failure = Some(failure.message.clone());
                failure.last_good.clone()
            }
            None => None,
        };
        self.rebuild(server, tls, last_good, repeated_failure)
    }

    /// Forgets the servers for which `keep(source)` is false (servers no longer configured).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut slots = HashMap::clone(&self.slots.load());
        slots.retain(|source, _| keep(source));
        self.slots.store(Arc::new(slots));
    }

    fn rebuild(
        &self,
        server: &GatewayServer,
        tls: &ServerTls,
        last_good: Option<Arc<Entry>>,
        previous_failure: Option<String>,
    ) -> Result<Arc<ServerConfig>, TlsSetupError> {
        let (slot, result) = match Entry::build(server, tls) {
            Ok(entry) => {
                let entry = Arc::new(entry);
                let config = entry.config.clone();
                (Slot::Ready(entry), Ok(config))
            }
            Err(e) => {
                let message = e.to_string();
                // Like Envoy rejecting a bad update: a server that worked keeps its last good
                // configuration while the new one cannot be used, unless it was deliberately
                // left without a certificate.
                let last_good = last_good.filter(|_| keeps_last_good(tls));
                let result = match &last_good {
                    // Said once, not at every retry.
                    Some(entry) if previous_failure.as_ref() != Some(&message) => {
                        tracing::warn!(
                            "{}: new TLS settings are unusable, keeping the previous ones: {message}",
                            server.source
                        );
                        Ok(entry.config.clone())
                    }
                    Some(entry) => Ok(entry.config.clone()),
                    None => Err(server_error(server, message.clone())),
                };
                let failure = Failure {
                    protocol: server.protocol,
                    tls: tls.clone(),
                    message,
                    retry_at_ms: now_ms() + RETRY_INTERVAL_MS,
                    last_good,
                };
                (Slot::Failed(Arc::new(failure)), result)
            }
        };
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut slots = HashMap::clone(&self.slots.load());
        slots.insert(server.source.clone(), slot);
        self.slots.store(Arc::new(slots));
        result
    }
}

/// A server's TLS could not be set up; retried after [`RETRY_INTERVAL_MS`] or when its
/// settings change.
struct Failure {
    protocol: Protocol,
    tls: ServerTls,
    message: String,
    retry_at_ms: u64,
    /// What the server served before the failed update, and still serves.
    last_good: Option<Arc<Entry>>,
}

/// A missing credential or a mode that does not terminate is a decision, not a broken update.
fn keeps_last_good(tls: &ServerTls) -> bool {
    !matches!(
        tls.credential,
        Credential::Missing { .. } | Credential::None
    ) && matches!(
        tls.mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    )
}

fn server_error(server: &GatewayServer, message: String) -> TlsSetupError {
    TlsSetupError::Invalid {
        path: server.source.to_string(),
        message,
    }
}

/// Milliseconds since the first call: a cheap monotonic clock for retry and file-check deadlines
/// kept in atomics.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The configuration for a gateway server with `tls.mode: ISTIO_MUTUAL`: the gateway's own
/// mesh certificate, and a client certificate from the mesh root required (Istio's
/// `requireClientCertificate: true`). ALPN: `h2`/`http/1.1` for servers that serve HTTP, and
/// `istio` (what sidecars offer when they originate mesh mTLS) for all.
pub fn istio_mutual_config(
    identity: &crate::identity::Identity,
    server: &GatewayServer,
) -> Arc<ServerConfig> {
    let http = server.protocol == Protocol::Https || server.protocol.is_http();
    let alpn: &[&[u8]] = if http {
        &[b"h2", b"http/1.1", ISTIO_ALPN]
    } else {
        &[ISTIO_ALPN]
    };
    identity.server_config(alpn, false)
}
