//! One gateway server's TLS configuration: built from its `tls` settings, with a certificate
//! resolver whose certificate is swapped when the files or the Secret change.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sluice_model::gateway::{Credential, GatewayServer, ServerTls, ServerTlsMode};
use sluice_model::registry::Protocol;

use super::now_ms;
use crate::tls::{
    apply_server_preferences, certified_key, client_verifier, protocol_versions, provider_for,
    read_pem, FileStamp, TlsSetupError,
};

/// How often certificate files are checked for changes (on the handshake path).
const FILE_CHECK_INTERVAL_MS: u64 = 1000;

/// One built server configuration and what it was built from.
pub(super) struct Entry {
    source: Arc<str>,
    protocol: Protocol,
    /// The settings at build time. For a Secret, the certificate and key in use are tracked in
    /// `secret_seen` instead (they change without a rebuild).
    tls: ServerTls,
    pub(super) config: Arc<ServerConfig>,
    cert: Arc<RotatingCert>,
    provider: Arc<CryptoProvider>,
    files: Option<FileWatch>,
    secret_seen: Option<ArcSwap<SecretPem>>,
}

pub(super) enum Freshness {
    Current,
    CaChanged,
}

struct SecretPem {
    cert: Arc<[u8]>,
    key: Arc<[u8]>,
}

impl Entry {
    pub(super) fn build(server: &GatewayServer, tls: &ServerTls) -> Result<Entry, TlsSetupError> {
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
    pub(super) fn built_from(&self, protocol: Protocol, tls: &ServerTls) -> bool {
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
    pub(super) fn refresh(&self, tls: &ServerTls) -> Freshness {
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
