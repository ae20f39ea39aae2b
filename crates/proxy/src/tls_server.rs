//! TLS termination for gateway servers: rustls server configurations built from a server's
//! `tls` block (SIMPLE, MUTUAL, OPTIONAL_MUTUAL; protocol versions; cipher suites), with
//! certificates from files or Secrets that are re-read when they change, without touching
//! established connections.
//!
//! Each server gets one [`ServerConfig`] whose certificate comes from a resolver holding the
//! current [`CertifiedKey`]: a new certificate is swapped into the resolver, so the config (and
//! its session cache) stays and connections already established keep their keys. Anything else
//! the config depends on (mode, versions, suites, client CA, SANs) builds a new config. As Envoy
//! does with a bad update, an unusable new certificate or CA keeps the last good one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sluice_model::gateway::{Credential, GatewayServer, ServerTls, ServerTlsMode};
use sluice_model::registry::Protocol;

use crate::tls::{
    apply_server_preferences, certified_key, client_verifier, protocol_versions, provider_for,
    read_pem, FileStamp, TlsSetupError, ISTIO_ALPN,
};

/// How often certificate files are checked for changes (on the handshake path).
const FILE_CHECK_INTERVAL_MS: u64 = 1000;
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

/// One built server configuration and what it was built from.
struct Entry {
    source: Arc<str>,
    protocol: Protocol,
    /// The settings at build time. For a Secret, the certificate and key in use are tracked in
    /// `secret_seen` instead (they change without a rebuild).
    tls: ServerTls,
    config: Arc<ServerConfig>,
    cert: Arc<RotatingCert>,
    provider: Arc<CryptoProvider>,
    files: Option<FileWatch>,
    secret_seen: Option<ArcSwap<SecretPem>>,
}

enum Freshness {
    Current,
    CaChanged,
}

struct SecretPem {
    cert: Arc<[u8]>,
    key: Arc<[u8]>,
}

impl Entry {
    fn build(server: &GatewayServer, tls: &ServerTls) -> Result<Entry, TlsSetupError> {
        let source = server.source.clone();
        let invalid = |message: String| TlsSetupError::Invalid {
            path: source.to_string(),
            message,
        };
        match tls.mode {
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {}
            ServerTlsMode::IstioMutual => {
                return Err(invalid(
                    "ISTIO_MUTUAL is terminated with the gateway's mesh identity \
                     (istio_mutual_config), not with server certificates"
                        .into(),
                ))
            }
            mode => {
                return Err(invalid(format!(
                    "tls mode {} does not terminate TLS",
                    mode_name(mode)
                )))
            }
        }
        let provider = Arc::new(provider_for(&tls.cipher_suites).map_err(&invalid)?);
        let versions = protocol_versions(tls).map_err(&invalid)?;
        let tls12_only = versions.len() == 1 && versions[0] == &rustls::version::TLS12;
        if tls12_only
            && !provider
                .cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS12)
        {
            return Err(invalid(
                "cipherSuites leaves no suite rustls supports for TLS 1.2, and \
                 maxProtocolVersion allows nothing newer"
                    .into(),
            ));
        }

        let (key, ca_pem, files, secret_seen) = match &tls.credential {
            Credential::Files { cert, key, ca } => {
                // Stamps first: a change while reading is seen again at the next check.
                let stamps = Stamps {
                    cert: FileStamp::of(cert),
                    key: FileStamp::of(key),
                    ca: ca.as_deref().and_then(FileStamp::of),
                };
                let certified = files_certified_key(cert, key, &provider)?;
                let ca_pem = match ca {
                    Some(ca) => Some((read_pem(ca, "caCertificates")?, ca.display().to_string())),
                    None => None,
                };
                let watch = FileWatch {
                    next_check_ms: AtomicU64::new(now_ms() + FILE_CHECK_INTERVAL_MS),
                    stamps: Mutex::new(stamps),
                };
                (certified, ca_pem, Some(watch), None)
            }
            Credential::Secret {
                name,
                cert,
                key,
                ca,
            } => {
                let certified = secret_certified_key(name, cert, key, &provider)?;
                let ca_pem = ca
                    .as_ref()
                    .map(|ca| (ca.to_vec(), format!("Secret {name} CA certificate")));
                let seen = SecretPem {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                (certified, ca_pem, None, Some(ArcSwap::from_pointee(seen)))
            }
            Credential::Missing { reason } => {
                return Err(invalid(format!("no server certificate: {reason}")))
            }
            Credential::None => {
                return Err(invalid(
                    "no server certificate: set credentialName, or serverCertificate and \
                     privateKey"
                        .into(),
                ))
            }
        };

        let verifier = match tls.mode {
            ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
                let Some((ca_pem, ca_origin)) = ca_pem else {
                    return Err(invalid(format!(
                        "{} needs the client CA: caCertificates, or ca.crt / cacert in the Secret",
                        mode_name(tls.mode)
                    )));
                };
                Some(client_verifier(tls, &ca_pem, &ca_origin, &provider)?)
            }
            _ => None,
        };

        let cert = Arc::new(RotatingCert {
            current: ArcSwap::from_pointee(key),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| invalid(e.to_string()))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        apply_server_preferences(&mut config);
        // A terminated TLS server (protocol TLS) forwards bytes, not HTTP: no ALPN then, so a
        // client does not start HTTP/2 towards a backend that never agreed to it.
        if server.protocol == Protocol::Https || server.protocol.is_http() {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        Ok(Entry {
            source: server.source.clone(),
            protocol: server.protocol,
            tls: tls.clone(),
            config: Arc::new(config),
            cert,
            provider,
            files,
            secret_seen,
        })
    }

    /// True if the config was built from these settings (a Secret's certificate and key apart,
    /// which [`Entry::refresh`] swaps in place).
    fn built_from(&self, protocol: Protocol, tls: &ServerTls) -> bool {
        let a = &self.tls;
        let same_credential = match (&a.credential, &tls.credential) {
            (Credential::Files { .. }, Credential::Files { .. }) => a.credential == tls.credential,
            (
                Credential::Secret { name, ca, .. },
                Credential::Secret {
                    name: name2,
                    ca: ca2,
                    ..
                },
            ) => name == name2 && same_bytes(ca.as_ref(), ca2.as_ref()),
            _ => false,
        };
        same_credential
            && self.protocol == protocol
            && a.mode == tls.mode
            && a.min_version == tls.min_version
            && a.max_version == tls.max_version
            && a.cipher_suites == tls.cipher_suites
            && a.subject_alt_names == tls.subject_alt_names
    }

    /// Brings the certificate up to date (Secret bytes now, files at most once a second).
    fn refresh(&self, tls: &ServerTls) -> Freshness {
        match &tls.credential {
            Credential::Secret {
                name, cert, key, ..
            } => {
                self.refresh_secret(name, cert, key);
                Freshness::Current
            }
            Credential::Files { cert, key, ca } => match &self.files {
                Some(watch) => self.refresh_files(watch, cert, key, ca.as_deref()),
                None => Freshness::Current,
            },
            _ => Freshness::Current,
        }
    }

    fn refresh_secret(&self, name: &str, cert: &Arc<[u8]>, key: &Arc<[u8]>) {
        let Some(seen) = &self.secret_seen else {
            return;
        };
        let current = seen.load();
        if Arc::ptr_eq(&current.cert, cert) && Arc::ptr_eq(&current.key, key) {
            return;
        }
        let new = Arc::new(SecretPem {
            cert: cert.clone(),
            key: key.clone(),
        });
        if current.cert[..] == cert[..] && current.key[..] == key[..] {
            // Same bytes from a newer snapshot: remember its pointers, so the next check is cheap.
            seen.store(new);
            return;
        }
        // Remember the bytes before parsing, so that a bad Secret is parsed (and logged) once.
        seen.store(new);
        match secret_certified_key(name, cert, key, &self.provider) {
            Ok(certified) => {
                self.cert.current.store(Arc::new(certified));
                tracing::info!("{}: certificate from Secret {name} reloaded", self.source);
            }
            Err(e) => tracing::warn!(
                "{}: the new contents of Secret {name} are unusable, keeping the previous \
                 certificate: {e}",
                self.source
            ),
        }
    }

    fn refresh_files(
        &self,
        watch: &FileWatch,
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
    ) -> Freshness {
        let now = now_ms();
        let due = watch.next_check_ms.load(Ordering::Relaxed);
        // One handshake a second does the check; the others go on with what is there.
        if now < due
            || watch
                .next_check_ms
                .compare_exchange(
                    due,
                    now + FILE_CHECK_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return Freshness::Current;
        }
        let mut stamps = watch.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let cert_stamp = FileStamp::of(cert);
        let key_stamp = FileStamp::of(key);
        if cert_stamp != stamps.cert || key_stamp != stamps.key {
            // Recorded even when the new files are bad: they are read again once they change
            // (a certificate written before its key is retried when the key is written).
            stamps.cert = cert_stamp;
            stamps.key = key_stamp;
            match files_certified_key(cert, key, &self.provider) {
                Ok(certified) => {
                    self.cert.current.store(Arc::new(certified));
                    tracing::info!("{}: certificate {} reloaded", self.source, cert.display());
                }
                Err(e) => tracing::warn!(
                    "{}: the new certificate files are unusable, keeping the previous \
                     certificate: {e}",
                    self.source
                ),
            }
        }
        if let Some(ca) = ca {
            let ca_stamp = FileStamp::of(ca);
            if ca_stamp != stamps.ca {
                stamps.ca = ca_stamp;
                return Freshness::CaChanged;
            }
        }
        Freshness::Current
    }
}

fn same_bytes(a: Option<&Arc<[u8]>>, b: Option<&Arc<[u8]>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a[..] == b[..],
        (None, None) => true,
        _ => false,
    }
}

/// Serves whatever certificate is current; swapped when the source changes.
#[derive(Debug)]
struct RotatingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

struct FileWatch {
    next_check_ms: AtomicU64,
    /// Touched by one handshake a second (the winner of `next_check_ms`): never contended.
    stamps: Mutex<Stamps>,
}

struct Stamps {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
    ca: Option<FileStamp>,
}

/// Milliseconds since the first call: a cheap monotonic clock for the atomics above.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::HttpsRedirectOnly => "httpsRedirect",
    }
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

/// The certificate and key of `serverCertificate` / `privateKey` files.
fn files_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    certified_key(
        &read_pem(cert, "serverCertificate")?,
        &cert.display().to_string(),
        &read_pem(key, "privateKey")?,
        &key.display().to_string(),
        provider,
    )
}

/// The certificate and key of the `credentialName` Secret `name`.
fn secret_certified_key(
    name: &str,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    certified_key(
        cert,
        &format!("Secret {name} certificate"),
        key,
        &format!("Secret {name} private key"),
        provider,
    )
}
