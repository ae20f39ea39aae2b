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
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use sluice_model::gateway::{Credential, GatewayServer, ServerTls, ServerTlsMode, TlsVersion};
use sluice_model::registry::Protocol;

use crate::upstream::TlsSetupError;

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

/// What every TLS server of sluice does beyond its settings:
/// - the server's cipher-suite order wins over the client's for TLS 1.2 (as Envoy, which lists
///   ECDHE-ECDSA/RSA with AES-GCM and ChaCha20 first): a client cannot steer the handshake to the
///   weakest suite both allow. TLS 1.3 suites are all AEAD.
/// - resumption: stateless tickets (TLS 1.2 tickets and TLS 1.3 PSK tickets, from rustls's
///   rotating ticketer, a new key every 6 hours) plus rustls's in-memory session-ID cache for
///   clients that do not take tickets. Like Envoy, tickets are per process: a restarted or another
///   replica falls back to a full handshake.
pub(crate) fn apply_server_preferences(config: &mut ServerConfig) {
    config.ignore_client_order = true;
    match ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Only fails without a working random source; resumption by session ID still works.
        Err(e) => tracing::warn!("TLS session tickets unavailable: {e}"),
    }
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

/// What tells a file changed: a new modification time or size, or (Kubernetes mounts, `mv`)
/// a new inode behind the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    /// `None` when the file cannot be stat'ed (a change too, once it reappears).
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
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

fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls10 => "TLSV1_0",
        TlsVersion::Tls11 => "TLSV1_1",
        TlsVersion::Tls12 => "TLSV1_2",
        TlsVersion::Tls13 => "TLSV1_3",
    }
}

/// `minProtocolVersion` / `maxProtocolVersion` as rustls versions. rustls has TLS 1.2 and 1.3
/// only, so a minimum of 1.0 or 1.1 means 1.2; the default minimum is 1.2, as in Istio.
fn protocol_versions(tls: &ServerTls) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let min = tls
        .min_version
        .unwrap_or(TlsVersion::Tls12)
        .max(TlsVersion::Tls12);
    let max = tls.max_version.unwrap_or(TlsVersion::Tls13);
    if max < TlsVersion::Tls12 {
        return Err(format!(
            "maxProtocolVersion {} is older than TLSV1_2, the oldest version sluice supports",
            version_name(max)
        ));
    }
    if min > max {
        return Err(format!(
            "minProtocolVersion {} is newer than maxProtocolVersion {}",
            version_name(min),
            version_name(max)
        ));
    }
    let mut versions = Vec::with_capacity(2);
    if max >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok(versions)
}

/// The ring provider limited to `cipherSuites` (all of ring's suites when empty). TLS 1.3
/// suites are always kept, as in Envoy, whose cipher list only applies to TLS 1.2.
fn provider_for(cipher_suites: &[String]) -> Result<CryptoProvider, String> {
    let default = ring::default_provider();
    if cipher_suites.is_empty() {
        return Ok(default);
    }
    let mut suites: Vec<SupportedCipherSuite> = default
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    // OpenSSL's `[A|B]` equal-preference groups (as in Envoy's default list) are flattened.
    let names = cipher_suites
        .iter()
        .flat_map(|entry| entry.trim_matches(|c| c == '[' || c == ']').split('|'))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in names {
        match cipher_suite(name) {
            CipherName::Suite(suite) => {
                if !suites.iter().any(|s| s.suite() == suite.suite()) {
                    suites.push(suite);
                }
            }
            CipherName::Tls13 => {}
            CipherName::Unsupported => tracing::warn!(
                "cipher suite {name} is not implemented by rustls (CBC, RSA key exchange or \
                 PSK); it is ignored"
            ),
            CipherName::Unknown => {
                return Err(format!(
                    "unknown cipher suite {name:?} in cipherSuites (expected names such as \
                     ECDHE-RSA-AES128-GCM-SHA256)"
                ))
            }
        }
    }
    Ok(CryptoProvider {
        cipher_suites: suites,
        ..default
    })
}

enum CipherName {
    Suite(SupportedCipherSuite),
    /// A TLS 1.3 suite: always enabled anyway.
    Tls13,
    /// Known to OpenSSL/Envoy, not implemented by rustls.
    Unsupported,
    Unknown,
}

/// Envoy/OpenSSL cipher names (and the IANA names of the same suites).
fn cipher_suite(name: &str) -> CipherName {
    use ring::cipher_suite as cs;
    let suite = match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" | "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        "ECDHE-RSA-AES128-GCM-SHA256" | "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        }
        "ECDHE-ECDSA-AES256-GCM-SHA384" | "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        "ECDHE-RSA-AES256-GCM-SHA384" | "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        }
        "ECDHE-ECDSA-CHACHA20-POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-CHACHA20-POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return CipherName::Tls13
        }
        "AES128-SHA"
        | "AES256-SHA"
        | "AES128-SHA256"
        | "AES256-SHA256"
        | "AES128-GCM-SHA256"
        | "AES256-GCM-SHA384"
        | "DES-CBC3-SHA"
        | "ECDHE-ECDSA-AES128-SHA"
        | "ECDHE-RSA-AES128-SHA"
        | "ECDHE-ECDSA-AES256-SHA"
        | "ECDHE-RSA-AES256-SHA"
        | "ECDHE-ECDSA-AES128-SHA256"
        | "ECDHE-RSA-AES128-SHA256"
        | "ECDHE-ECDSA-AES256-SHA384"
        | "ECDHE-RSA-AES256-SHA384"
        | "PSK-AES128-CBC-SHA"
        | "PSK-AES256-CBC-SHA"
        | "PSK-CHACHA20-POLY1305"
        | "ECDHE-PSK-AES128-CBC-SHA"
        | "ECDHE-PSK-AES256-CBC-SHA"
        | "ECDHE-PSK-CHACHA20-POLY1305" => return CipherName::Unsupported,
        _ => return CipherName::Unknown,
    };
    CipherName::Suite(suite)
}

/// Verifies client certificates against the CA bundle; OPTIONAL_MUTUAL also lets clients
/// without one in; `subjectAltNames` further restricts whose certificates are accepted.
fn client_verifier(
    tls: &ServerTls,
    ca_pem: &[u8],
    ca_origin: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, ca_origin)? {
        roots.add(cert).map_err(|e| TlsSetupError::Invalid {
            path: ca_origin.to_string(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if tls.mode == ServerTlsMode::OptionalMutual {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| TlsSetupError::Invalid {
        path: ca_origin.to_string(),
        message: e.to_string(),
    })?;
    if tls.subject_alt_names.is_empty() {
        return Ok(verifier);
    }
    Ok(Arc::new(SanRestricted {
        inner: verifier,
        allowed: tls.subject_alt_names.clone(),
    }))
}

/// `subjectAltNames`: a verified client certificate must carry one of these as a URI or DNS SAN
/// (exact match, DNS without regard to case), as Envoy's `match_typed_subject_alt_names`.
#[derive(Debug)]
struct SanRestricted {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SanRestricted {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let matches = cert
            .valid_uri_names()
            .any(|uri| self.allowed.iter().any(|a| a == uri))
            || cert
                .valid_dns_names()
                .any(|dns| self.allowed.iter().any(|a| a.eq_ignore_ascii_case(dns)));
        if matches {
            return Ok(verified);
        }
        let presented: Vec<&str> = cert
            .valid_uri_names()
            .chain(cert.valid_dns_names())
            .collect();
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(SanMismatch(format!(
                "client certificate names {presented:?} match none of subjectAltNames {:?}",
                self.allowed
            )))),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
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
        &[b"h2", b"http/1.1", crate::upstream::ISTIO_ALPN]
    } else {
        &[crate::upstream::ISTIO_ALPN]
    };
    identity.server_config(alpn, false)
}

/// A certificate whose SANs are not the expected ones (the message says which).
#[derive(Debug)]
pub(crate) struct SanMismatch(pub(crate) String);

impl std::fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SanMismatch {}

/// The client certificate's identity for logs (`%DOWNSTREAM_PEER_URI_SAN%`): its first URI SAN,
/// else its first DNS SAN, else its subject common name. `None` without a client certificate.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    if let Some(uri) = cert.valid_uri_names().next() {
        return Some(uri.to_string());
    }
    if let Some(dns) = cert.valid_dns_names().next() {
        return Some(dns.to_string());
    }
    subject_common_name(cert.subject())
}

/// The first CN in a DER X.501 Name (the contents of its SEQUENCE: SETs of
/// SEQUENCE { OID, value }).
fn subject_common_name(mut name: &[u8]) -> Option<String> {
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    while let Some((tag, set, rest)) = der_next(name) {
        name = rest;
        if tag != 0x31 {
            continue;
        }
        let mut attributes = set;
        while let Some((tag, attribute, rest)) = der_next(attributes) {
            attributes = rest;
            if tag != 0x30 {
                continue;
            }
            let (oid_tag, oid, value) = der_next(attribute)?;
            if oid_tag != 0x06 || oid != OID_COMMON_NAME {
                continue;
            }
            let (string_tag, value, _) = der_next(value)?;
            return match string_tag {
                // BMPString: UTF-16BE.
                0x1e => {
                    let units: Vec<u16> = value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16(&units).ok()
                }
                // UTF8String, PrintableString, IA5String, TeletexString (ASCII in practice).
                _ => String::from_utf8(value.to_vec()).ok(),
            };
        }
    }
    None
}

/// One DER TLV: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A certificate chain and its private key, checked to belong together.
pub(crate) fn certified_key(
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    let chain = parse_certs(cert_pem, cert_origin)?;
    let key = parse_key(key_pem, key_origin)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsSetupError::Invalid {
        path: key_origin.to_string(),
        message: match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("the private key does not match the certificate {cert_origin}")
            }
            e => format!("unusable private key: {e}"),
        },
    })
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

/// Reads a PEM file; `what` names the setting it comes from, for the error.
pub(crate) fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM bundle (other blocks are skipped); at least one.
pub(crate) fn parse_certs(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Invalid {
            path: origin.to_string(),
            message: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: origin.to_string(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsSetupError::Invalid {
        path: origin.to_string(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
            }
            e => format!("malformed PEM private key: {e}"),
        },
    })
}

/// [`read_pem`] then [`parse_certs`].
pub(crate) fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    parse_certs(&read_pem(path, what)?, &path.display().to_string())
}

/// [`read_pem`] then [`parse_key`].
pub(crate) fn read_key(
    path: &Path,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    parse_key(&read_pem(path, what)?, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(min: Option<TlsVersion>, max: Option<TlsVersion>) -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Simple,
            https_redirect: false,
            credential: Credential::None,
            min_version: min,
            max_version: max,
            cipher_suites: vec![],
            subject_alt_names: vec![],
        }
    }

    #[test]
    fn versions_follow_istio_defaults_and_rustls_limits() {
        let v = |min, max| {
            protocol_versions(&tls(min, max))
                .map(|v| v.iter().map(|v| v.version).collect::<Vec<_>>())
        };
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v(None, None).unwrap(), vec![TLSv1_3, TLSv1_2]);
        assert_eq!(
            v(Some(TlsVersion::Tls10), None).unwrap(),
            vec![TLSv1_3, TLSv1_2]
        );
        assert_eq!(v(Some(TlsVersion::Tls13), None).unwrap(), vec![TLSv1_3]);
        assert_eq!(v(None, Some(TlsVersion::Tls12)).unwrap(), vec![TLSv1_2]);
        assert!(v(None, Some(TlsVersion::Tls11))
            .unwrap_err()
            .contains("TLSV1_1"));
        assert!(v(Some(TlsVersion::Tls13), Some(TlsVersion::Tls12)).is_err());
    }

    #[test]
    fn cipher_names_map_to_rustls_suites() {
        let p = provider_for(&["ECDHE-RSA-AES128-GCM-SHA256".into()]).unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        assert_eq!(
            p.cipher_suites.len(),
            4,
            "the three TLS 1.3 suites are always kept"
        );
        let grouped = provider_for(&[
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into(),
            "AES128-SHA".into(),
        ])
        .unwrap();
        assert_eq!(grouped.cipher_suites.len(), 5);
        let err = provider_for(&["ECDHE-RSA-NOPE".into()]).unwrap_err();
        assert!(err.contains("ECDHE-RSA-NOPE"), "{err}");
    }

    #[test]
    fn der_name_common_name() {
        // SET { SEQUENCE { OID 2.5.4.10, "o" } }, SET { SEQUENCE { OID 2.5.4.3, UTF8 "cn" } }
        let name = [
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x01, b'o', 0x31, 0x0b,
            0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'c', b'n',
        ];
        assert_eq!(subject_common_name(&name).as_deref(), Some("cn"));
        assert_eq!(subject_common_name(&name[..12]), None);
        assert_eq!(subject_common_name(&name[..20]), None);
    }
}
