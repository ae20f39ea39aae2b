//! This proxy's mesh identity: a short-lived workload certificate with a SPIFFE URI SAN
//! (`spiffe://cluster.local/ns/NS/sa/SA`) issued by the mesh root (`sluice ca`), and the rustls
//! configurations for mutual TLS between proxies (ISTIO_MUTUAL origination, inbound and gateway
//! termination).
//!
//! The certificate comes from one of two places:
//! - **self-issued**: the mesh CA directory holds `root-key.pem`, so the proxy issues its own
//!   certificate (EC P-256, valid from a minute ago for `cert_ttl`) and issues a new one at half
//!   its lifetime, as istio-agent does with istiod;
//! - **files**: `cert-chain.pem` + `key.pem` in an identity directory (`sluice ca issue`, or any
//!   other tool), re-read when they change.
//!
//! Either way the current certificate sits in one `ArcSwap<CertifiedKey>` that every config
//! handed out reads at handshake time: a rotation reaches the next handshake of configs built
//! long ago, and established connections keep the keys they negotiated. The trust bundle
//! (`root-cert.pem`) is swapped the same way when the file changes. A new certificate or root
//! that cannot be used (half-written pair, key not matching) keeps the last good one.
//!
//! Mesh peers are authenticated as Istio does: the chain must lead to the mesh root, and the
//! peer's SPIFFE URI SAN is what is checked (the SNI, `outbound_.80_._.svc.ns.svc.cluster.local`,
//! is only a routing key and is never matched against the certificate's names).

mod ca;
mod describe;
mod files;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

use crate::tls::{apply_server_preferences, certified_key, provider, FileStamp, TlsSetupError};

pub use ca::{certificate_request, create_root, issue_workload_cert, IssuedCert, MeshCa};
pub use describe::{describe_certs, describe_der, CertSummary};
use files::{load_pair, load_roots};
pub use files::{write_root_files, write_workload_files};
use verify::{CurrentCert, MeshClientVerifier, MeshServerVerifier, Trust, TrustState};

/// The mesh root certificate (trust bundle; may hold several roots during a root rotation).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The mesh root's private key (PKCS#8); present only where certificates are issued.
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// A workload's certificate chain, leaf first.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// A workload's private key (PKCS#8).
pub const KEY_FILE: &str = "key.pem";

/// How often the identity files are checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Self-issued certificates are renewed once this fraction of their lifetime has passed.
const RENEW_FRACTION: f64 = 0.5;

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
    /// Lifetime of self-issued certificates, and the one asked of a certificate service;
    /// rotated at half of it.
    pub cert_ttl: Duration,
    /// A certificate service to have the workload certificate signed by (istiod's 15012, or
    /// `sluice control`), used when `mesh_ca` has no root key and no identity directory is
    /// given.
    pub ca: Option<CaOptions>,
}

/// Where and how a proxy asks for its certificate, as istio-agent does (`CA_ADDR`, the
/// projected service-account token).
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// `HOST:PORT` of the certificate service.
    pub address: String,
    /// The Kubernetes service-account token that authenticates the request (audience
    /// `istio-ca`), read anew for every request since the kubelet rotates it.
    pub token_file: PathBuf,
    /// The SPIFFE ID the service's certificate must carry.
    pub server_identity: String,
}

/// Why an identity, a mesh root or a certificate could not be loaded, issued or written. Each
/// names the file (or the PEM input) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// PEM given as text rather than a file (library callers).
    #[error("{what}: {message}")]
    BadInput { what: &'static str, message: String },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{} already exists; not replacing an existing mesh root (--force replaces it)", path.display())]
    Exists { path: PathBuf },
    #[error(
        "no workload certificate: {} has no {ROOT_KEY_FILE} to issue one, and no identity \
         directory with {CERT_CHAIN_FILE} and {KEY_FILE} was given",
        mesh_ca.display()
    )]
    NoSource { mesh_ca: PathBuf },
    #[error("cannot issue a certificate for {subject}: {message}")]
    Issue { subject: String, message: String },
}

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn spiffe_id_for(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The loaded identity, current certificate included (rotation swaps it in place).
pub struct Identity {
    spiffe_id: String,
    provider: Arc<CryptoProvider>,
    cert: Arc<CurrentCert>,
    trust: Arc<Trust>,
    mesh_ca: PathBuf,
    source: Source,
    /// Touched only by [`Identity::refresh`] (the rotation task, or a caller forcing a rotation).
    watch: Mutex<WatchState>,
    client_configs: ConfigCache<(Vec<String>, Vec<Vec<u8>>), ClientConfig>,
    server_configs: ConfigCache<(Vec<Vec<u8>>, bool), ServerConfig>,
    rotating: AtomicBool,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("mesh_ca", &self.mesh_ca)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Source {
    SelfIssued {
        ttl: Duration,
    },
    Files {
        dir: PathBuf,
    },
    /// Signed by a certificate service; renewed at half the lifetime it granted.
    Service {
        ca: CaOptions,
        ttl: Duration,
    },
}

/// How long a proxy waits before asking the certificate service again after a failure.
const SERVICE_RETRY: Duration = Duration::from_secs(5);
/// Longest a certificate request may take.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(10);

struct WatchState {
    root_cert: Option<FileStamp>,
    /// Self-issued: the root key's stamp, the CA that issues, and when to issue next.
    root_key: Option<FileStamp>,
    ca: Option<MeshCa>,
    renew_at: Option<Instant>,
    /// Files: the pair's stamps.
    chain: Option<FileStamp>,
    key: Option<FileStamp>,
}

impl Identity {
    /// Loads the mesh root and the workload certificate (issuing it when `mesh_ca` holds the root
    /// key). Call [`Identity::spawn_rotation`] to keep it current.
    pub fn load(opts: &IdentityOptions) -> Result<Arc<Identity>, IdentityError> {
        let spiffe_id = spiffe_id_for(&opts.trust_domain, &opts.namespace, &opts.service_account);
        let provider = provider();
        let root_path = opts.mesh_ca.join(ROOT_CERT_FILE);
        let key_path = opts.mesh_ca.join(ROOT_KEY_FILE);
        let mut watch = WatchState {
            root_cert: FileStamp::of(&root_path),
            root_key: None,
            ca: None,
            renew_at: None,
            chain: None,
            key: None,
        };
        let roots = load_roots(&root_path)?;
        let trust = Arc::new(Trust {
            current: ArcSwap::from_pointee(TrustState::new(roots, &provider, &root_path)?),
        });

        let (source, certified) = if key_path.exists() {
            if let Some(dir) = &opts.identity_dir {
                tracing::warn!(
                    "{} holds {ROOT_KEY_FILE}: this proxy issues its own certificate and does \
                     not read {}",
                    opts.mesh_ca.display(),
                    dir.display()
                );
            }
            if opts.cert_ttl < Duration::from_secs(2) {
                return Err(IdentityError::Issue {
                    subject: spiffe_id,
                    message: format!(
                        "certificate lifetime {:?} is too short (at least 2s)",
                        opts.cert_ttl
                    ),
                });
            }
            watch.root_key = FileStamp::of(&key_path);
            let ca = MeshCa::load(&opts.mesh_ca)?;
            let issued = ca.issue(&spiffe_id, opts.cert_ttl)?;
            let certified = certified_key(
                issued.cert_pem.as_bytes(),
                "issued certificate",
                issued.key_pem.as_bytes(),
                "issued key",
                &provider,
            )?;
            watch.renew_at = Some(renew_time(opts.cert_ttl));
            watch.ca = Some(ca);
            tracing::info!(
                "mesh identity {spiffe_id}: self-issued by {}, renewed every {:?}",
                opts.mesh_ca.display(),
                opts.cert_ttl.mul_f64(RENEW_FRACTION)
            );
            (Source::SelfIssued { ttl: opts.cert_ttl }, certified)
        } else if let (None, Some(ca)) = (&opts.identity_dir, &opts.ca) {
            let (certified, not_after) =
                first_certificate(ca, &spiffe_id, opts.cert_ttl, &trust, &provider)?;
            watch.renew_at = Some(renew_before(not_after));
            tracing::info!(
                "mesh identity {spiffe_id}: signed by the certificate service at {}",
                ca.address
            );
            (
                Source::Service {
                    ca: ca.clone(),
                    ttl: opts.cert_ttl,
                },
                certified,
            )
        } else {
            let Some(dir) = &opts.identity_dir else {
                return Err(IdentityError::NoSource {
                    mesh_ca: opts.mesh_ca.clone(),
                });
            };
            let chain_path = dir.join(CERT_CHAIN_FILE);
            let key_path = dir.join(KEY_FILE);
            // Stamps before reading: a change while reading is seen at the next check.
            watch.chain = FileStamp::of(&chain_path);
            watch.key = FileStamp::of(&key_path);
            let certified = load_pair(&chain_path, &key_path, &provider)?;
            check_files_identity(&certified, &spiffe_id, &chain_path);
            tracing::info!(
                "mesh identity {spiffe_id}: certificate {}, watched",
                chain_path.display()
            );
            (Source::Files { dir: dir.clone() }, certified)
        };
        Ok(Arc::new(Identity {
            spiffe_id,
            provider,
            cert: Arc::new(CurrentCert {
                current: ArcSwap::from_pointee(certified),
            }),
            trust,
            mesh_ca: opts.mesh_ca.clone(),
            source,
            watch: Mutex::new(watch),
            client_configs: ConfigCache::default(),
            server_configs: ConfigCache::default(),
            rotating: AtomicBool::new(false),
        }))
    }

    /// Keeps the identity current on a thread of its own (a second call does nothing):
    /// re-issues a self-issued certificate at half its lifetime, re-reads the identity files and
    /// the mesh root when they change (checked every second). Key generation and file reads
    /// never run on a data-plane worker. The thread ends when the identity is dropped.
    pub fn spawn_rotation(self: &Arc<Self>) {
        if self.rotating.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("sluice-identity".into())
            .spawn(move || loop {
                let wait = match weak.upgrade() {
                    Some(identity) => identity.refresh(),
                    None => return,
                };
                std::thread::sleep(wait);
            });
        if let Err(e) = spawned {
            // Without the thread the certificate would expire unnoticed: say so loudly.
            tracing::error!("cannot start the identity rotation thread: {e}");
            self.rotating.store(false, Ordering::SeqCst);
        }
    }

    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The certificate (chain and key) presented at the next handshake.
    pub fn certificate(&self) -> Arc<CertifiedKey> {
        self.cert.current.load_full()
    }

    /// When the current certificate expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let cert = self.cert.current.load();
        let leaf = cert.cert.first()?;
        describe_der(leaf).ok().map(|s| s.not_after)
    }

    /// Issues a new certificate now (self-issued identities, or asks the certificate service;
    /// files are re-read instead). For tests and operators; the rotation task does this on its
    /// own at half the lifetime.
    pub fn rotate_now(&self) -> Result<(), IdentityError> {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        match &self.source {
            Source::SelfIssued { ttl } => self.issue_into(&mut watch, *ttl),
            Source::Files { dir } => {
                let certified = load_pair(
                    &dir.join(CERT_CHAIN_FILE),
                    &dir.join(KEY_FILE),
                    &self.provider,
                )?;
                self.cert.current.store(Arc::new(certified));
                Ok(())
            }
            Source::Service { ca, ttl } => self.renew_from_service(&mut watch, ca, *ttl),
        }
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
        let key = (
            expected_sans.to_vec(),
            alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
        );
        self.client_configs.get_or_build(key, |(sans, alpn)| {
            mesh_client_config(
                &self.trust,
                &self.provider,
                sans.clone(),
                alpn.clone(),
                Some(&self.cert),
            )
        })
    }

    /// A server configuration that presents the workload certificate and requires a client
    /// certificate from the mesh root (`optional_client` = accept clients without one too, for
    /// PERMISSIVE listeners that already sniffed TLS).
    pub fn server_config(
        &self,
        alpn: &[&[u8]],
        optional_client: bool,
    ) -> Arc<rustls::ServerConfig> {
        let key = (
            alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
            optional_client,
        );
        self.server_configs.get_or_build(key, |(alpn, optional)| {
            let verifier = Arc::new(MeshClientVerifier {
                trust: self.trust.clone(),
                optional: *optional,
            });
            let mut config = ServerConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports TLS 1.2 and 1.3")
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(self.cert.clone());
            apply_server_preferences(&mut config);
            config.alpn_protocols = alpn.clone();
            config
        })
    }

    /// One round of upkeep; returns how long to wait before the next.
    fn refresh(&self) -> Duration {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let root_path = self.mesh_ca.join(ROOT_CERT_FILE);
        let root_stamp = FileStamp::of(&root_path);
        let root_changed = root_stamp != watch.root_cert;
        if root_changed {
            watch.root_cert = root_stamp;
            match load_roots(&root_path)
                .and_then(|roots| TrustState::new(roots, &self.provider, &root_path))
            {
                Ok(state) => {
                    // Configs handed out keep their verifiers, which read this at handshake.
                    self.trust.current.store(Arc::new(state));
                    tracing::info!("mesh root {} reloaded", root_path.display());
                }
                Err(e) => tracing::warn!("keeping the previous mesh root: {}", with_causes(&e)),
            }
        }
        match &self.source {
            Source::SelfIssued { ttl } => {
                let key_path = self.mesh_ca.join(ROOT_KEY_FILE);
                let key_stamp = FileStamp::of(&key_path);
                let mut force = false;
                if root_changed || key_stamp != watch.root_key {
                    watch.root_key = key_stamp;
                    match MeshCa::load(&self.mesh_ca) {
                        Ok(ca) => {
                            watch.ca = Some(ca);
                            force = true;
                        }
                        Err(e) => {
                            tracing::warn!("keeping the previous mesh CA: {}", with_causes(&e))
                        }
                    }
                }
                if force || watch.renewal_due() {
                    if let Err(e) = self.issue_into(&mut watch, *ttl) {
                        tracing::warn!("{}; retrying in {FILE_CHECK_INTERVAL:?}", with_causes(&e));
                        watch.renew_at = Some(Instant::now() + FILE_CHECK_INTERVAL);
                    }
                }
                watch.until_renewal()
            }
            Source::Service { ca, ttl } => {
                if root_changed || watch.renewal_due() {
                    if let Err(e) = self.renew_from_service(&mut watch, ca, *ttl) {
                        tracing::warn!("{}; retrying in {SERVICE_RETRY:?}", with_causes(&e));
                        watch.renew_at = Some(Instant::now() + SERVICE_RETRY);
                    }
                }
                watch.until_renewal()
            }
            Source::Files { dir } => {
                let chain_path = dir.join(CERT_CHAIN_FILE);
                let key_path = dir.join(KEY_FILE);
                let chain = FileStamp::of(&chain_path);
                let key = FileStamp::of(&key_path);
                if chain != watch.chain || key != watch.key {
                    // Recorded even when the pair is unusable (a key written before its
                    // certificate): it is read again once either file changes.
                    watch.chain = chain;
                    watch.key = key;
                    match load_pair(&chain_path, &key_path, &self.provider) {
                        Ok(certified) => {
                            check_files_identity(&certified, &self.spiffe_id, &chain_path);
                            self.cert.current.store(Arc::new(certified));
                            tracing::info!("mesh certificate {} reloaded", chain_path.display());
                        }
                        Err(e) => tracing::warn!(
                            "the new identity files are unusable, keeping the previous \
                             certificate: {}",
                            with_causes(&e)
                        ),
                    }
                }
                FILE_CHECK_INTERVAL
            }
        }
    }

    fn issue_into(&self, watch: &mut WatchState, ttl: Duration) -> Result<(), IdentityError> {
        let Some(ca) = &watch.ca else {
            return Err(IdentityError::NoSource {
                mesh_ca: self.mesh_ca.clone(),
            });
        };
        let issued = ca.issue(&self.spiffe_id, ttl)?;
        let certified = certified_key(
            issued.cert_pem.as_bytes(),
            "issued certificate",
            issued.key_pem.as_bytes(),
            "issued key",
            &self.provider,
        )?;
        self.cert.current.store(Arc::new(certified));
        watch.renew_at = Some(renew_time(ttl));
        tracing::debug!("mesh certificate for {} renewed", self.spiffe_id);
        Ok(())
    }

    /// Asks the certificate service for a new certificate, presenting the current one.
    fn renew_from_service(
        &self,
        watch: &mut WatchState,
        ca: &CaOptions,
        ttl: Duration,
    ) -> Result<(), IdentityError> {
        let (certified, not_after) = request_certificate(
            ca,
            &self.spiffe_id,
            ttl,
            &self.trust,
            &self.provider,
            Some(&self.cert),
        )?;
        self.cert.current.store(Arc::new(certified));
        watch.renew_at = Some(renew_before(not_after));
        tracing::debug!("mesh certificate for {} renewed", self.spiffe_id);
        Ok(())
    }
}

impl WatchState {
    /// Whether an issued certificate is due for renewal (or none was issued yet).
    fn renewal_due(&self) -> bool {
        self.renew_at.is_none_or(|at| Instant::now() >= at)
    }

    /// How long the rotation thread sleeps: until the renewal, checking files meanwhile.
    fn until_renewal(&self) -> Duration {
        self.renew_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(FILE_CHECK_INTERVAL)
            .clamp(Duration::from_millis(10), FILE_CHECK_INTERVAL)
    }
}

fn renew_time(ttl: Duration) -> Instant {
    Instant::now() + ttl.mul_f64(RENEW_FRACTION)
}

/// When to renew a certificate that ends at `not_after`: half its remaining lifetime from now.
fn renew_before(not_after: SystemTime) -> Instant {
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    renew_time(left)
}

/// A client configuration that verifies the server against the mesh root and, when
/// `expected_sans` is not empty, its URI SANs; it presents `cert` when given.
fn mesh_client_config(
    trust: &Arc<Trust>,
    provider: &Arc<CryptoProvider>,
    expected_sans: Vec<String>,
    alpn: Vec<Vec<u8>>,
    cert: Option<&Arc<CurrentCert>>,
) -> ClientConfig {
    let verifier = Arc::new(MeshServerVerifier {
        trust: trust.clone(),
        expected_sans,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(cert) => builder.with_client_cert_resolver(cert.clone()),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    config
}

/// The first certificate from the service at `ca`: asked again (after 0.5 s, doubling up to
/// [`SERVICE_RETRY`]) while the service cannot be reached, as a proxy may start before its
/// control plane; a refusal (a bad token) ends the wait with its reason.
fn first_certificate(
    ca: &CaOptions,
    spiffe_id: &str,
    ttl: Duration,
    trust: &Arc<Trust>,
    provider: &Arc<CryptoProvider>,
) -> Result<(CertifiedKey, SystemTime), IdentityError> {
    let mut wait = Duration::from_millis(500);
    loop {
        match request_certificate(ca, spiffe_id, ttl, trust, provider, None) {
            Err(RequestError::Unreachable(e)) => {
                tracing::warn!("{}; asking again in {wait:?}", with_causes(&e));
                std::thread::sleep(wait);
                wait = (wait * 2).min(SERVICE_RETRY);
            }
            Err(RequestError::Final(e)) => return Err(e),
            Ok(done) => return Ok(done),
        }
    }
}

/// A certificate request's failure: worth repeating or not.
enum RequestError {
    Unreachable(IdentityError),
    Final(IdentityError),
}

impl From<IdentityError> for RequestError {
    fn from(e: IdentityError) -> Self {
        RequestError::Final(e)
    }
}

impl From<RequestError> for IdentityError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Unreachable(e) | RequestError::Final(e) => e,
        }
    }
}

/// Has the certificate service at `ca` sign a new key for `spiffe_id` (a request for `ttl`),
/// verifying the service against the mesh root: the certificate to present and its end. Runs
/// the call on a runtime of its own on a scoped thread, since it is called both from the
/// identity thread and from startup inside the proxy's runtime.
fn request_certificate(
    ca: &CaOptions,
    spiffe_id: &str,
    ttl: Duration,
    trust: &Arc<Trust>,
    provider: &Arc<CryptoProvider>,
    current: Option<&Arc<CurrentCert>>,
) -> Result<(CertifiedKey, SystemTime), RequestError> {
    let fail = |message: String| IdentityError::Issue {
        subject: spiffe_id.to_string(),
        message: format!("certificate service {}: {message}", ca.address),
    };
    let token = match std::fs::read_to_string(&ca.token_file) {
        Ok(token) => Some(token.trim().to_string()),
        // A renewal can do without: the current certificate authenticates it.
        Err(_) if current.is_some() => None,
        Err(source) => {
            return Err(IdentityError::Read {
                what: "service account token",
                path: ca.token_file.clone(),
                source,
            }
            .into())
        }
    };
    let (csr, key_pem) = certificate_request(spiffe_id)?;
    // A renewal presents the certificate it renews: once the token has expired (a VM's
    // bootstrap token), that is what the service accepts, as istiod does.
    let tls = mesh_client_config(
        trust,
        provider,
        vec![ca.server_identity.clone()],
        vec![b"h2".to_vec()],
        current,
    );
    let request = sluice_xds::ca::IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    };
    let address = ca.address.clone();
    let chain = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| sluice_xds::ca::CaError::Refused(e.to_string()))?;
                runtime.block_on(sluice_xds::ca::create_certificate(
                    &address,
                    Arc::new(tls),
                    token.as_deref(),
                    request,
                    SERVICE_TIMEOUT,
                ))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(sluice_xds::ca::CaError::Refused(
                    "the request panicked".to_string(),
                ))
            })
    })
    .map_err(|e| match e {
        sluice_xds::ca::CaError::Unreachable(m) => RequestError::Unreachable(fail(m)),
        sluice_xds::ca::CaError::Refused(m) => RequestError::Final(fail(m)),
    })?;
    // The leaf and any intermediates; the root, last, is the peers' trust anchor already.
    let presented = match chain.len() {
        0 => return Err(fail("an empty certificate chain".into()).into()),
        1 => chain.as_slice(),
        n => &chain[..n - 1],
    };
    let chain_pem = presented.join("\n");
    let certified = certified_key(
        chain_pem.as_bytes(),
        "signed certificate",
        key_pem.as_bytes(),
        "generated key",
        provider,
    )
    .map_err(IdentityError::from)?;
    let found = peer_spiffe_id(&certified.cert);
    if found.as_deref() != Some(spiffe_id) {
        return Err(fail(format!(
            "the certificate is for {}, not {spiffe_id}",
            found.as_deref().unwrap_or("no SPIFFE ID")
        ))
        .into());
    }
    let not_after = certified
        .cert
        .first()
        .and_then(|leaf| describe_der(leaf).ok())
        .map(|s| s.not_after)
        .ok_or_else(|| fail("the certificate cannot be read".into()))?;
    Ok((certified, not_after))
}

/// An error with its causes, `a: b: c`, for log lines (errors' own messages leave their
/// source out, so that anyhow's chain does not print it twice).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Files issued for someone else still work (the peer sees their SPIFFE ID), but say so.
fn check_files_identity(certified: &CertifiedKey, expected: &str, path: &Path) {
    let found = peer_spiffe_id(&certified.cert);
    if found.as_deref() != Some(expected) {
        tracing::warn!(
            "{}: the certificate's SPIFFE ID is {}, not {expected}; peers will see the former",
            path.display(),
            found.as_deref().unwrap_or("missing")
        );
    }
}

/// The SPIFFE URI SAN of a peer's leaf certificate, if it has one.
pub fn peer_spiffe_id(certs: &[rustls::pki_types::CertificateDer<'_>]) -> Option<String> {
    let leaf = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
    leaf.valid_uri_names()
        .find(|uri| uri.starts_with("spiffe://"))
        .map(str::to_string)
}

/// `cluster.local/ns/NS/sa/SA` (Istio's principal form) from a SPIFFE ID.
pub fn principal_of(spiffe_id: &str) -> &str {
    spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id)
}

/// Configs by what they were built from; read lock-free per connection, written (copy on
/// write) once per new key. Keys come from configuration, so the map stays small.
struct ConfigCache<K, V> {
    map: ArcSwap<HashMap<K, Arc<V>>>,
    writer: Mutex<()>,
}

impl<K, V> Default for ConfigCache<K, V> {
    fn default() -> Self {
        ConfigCache {
            map: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
        }
    }
}

impl<K: Hash + Eq + Clone, V> ConfigCache<K, V> {
    fn get_or_build(&self, key: K, build: impl FnOnce(&K) -> V) -> Arc<V> {
        if let Some(v) = self.map.load().get(&key) {
            return v.clone();
        }
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = self.map.load().get(&key) {
            return v.clone();
        }
        let value = Arc::new(build(&key));
        let mut map = HashMap::clone(&self.map.load());
        map.insert(key, value.clone());
        self.map.store(Arc::new(map));
        value
    }
}
