//! The admission webhooks over HTTPS (istiod's port 15017): `POST /inject` (sidecar injection,
//! a mutating webhook) and `POST /validate` (a validating webhook), AdmissionReview JSON in and
//! out; the decisions are `sluice_kube::webhook`'s.
//!
//! The certificate is either a PEM pair from files (re-read when they change), or issued here
//! from the mesh root (`sluice ca init`) for the control plane's Service names and renewed at
//! half its lifetime; the webhook configurations' `caBundle` is then the root's certificate.
//!
//! Requests are bounded: a body larger than [`MAX_BODY_BYTES`] (istiod's limit) is refused with
//! 400 before it is read whole, and one that is not an AdmissionReview gets 400 with the reason.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sluice_kube::inject::InjectOptions;
use tokio::net::TcpListener;

/// Largest request body read: istiod's `MaxRequestBodyBytes` (twice the API server's 3 MiB
/// object limit, for an UPDATE's object and old object).
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Longest a client may take for its TLS handshake, and then for the whole request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the certificate source is looked at (file changes, renewal).
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Lifetime of a certificate issued from the mesh root (renewed at half of it).
pub const ISSUED_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where and how the webhooks are served.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub addr: SocketAddr,
    pub certificate: WebhookCertificate,
    /// What injected sidecars get (image, control plane address).
    pub inject: InjectOptions,
}

/// The serving certificate.
#[derive(Debug, Clone)]
pub enum WebhookCertificate {
    /// A PEM certificate chain and its private key (e.g. from cert-manager), re-read when either
    /// file changes.
    Files { cert: PathBuf, key: PathBuf },
    /// Issued from the mesh root in `dir` (`root-cert.pem`, `root-key.pem`) for `dns_names`.
    MeshCa {
        dir: PathBuf,
        dns_names: Vec<String>,
    },
}

/// The DNS names the API server calls the control plane's Service by (the first is the one a
/// webhook configuration's `service` reference produces: `NAME.NS.svc`).
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// Binds the port, loads the certificate, and serves until `shutdown` completes.
pub async fn spawn(
    opts: WebhookOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let certs = Arc::new(Certs::load(opts.certificate.clone())?);
    let listener = TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("cannot listen on {} (webhooks)", opts.addr))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let inject = Arc::new(opts.inject);
    tracing::info!(addr = %opts.addr, "admission webhooks serving (/inject, /validate)");
    let refresh = {
        let certs = certs.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                let certs = certs.clone();
                let _ = tokio::task::spawn_blocking(move || certs.refresh()).await;
            }
        })
    };
    Ok(tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("webhook accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    let inject = inject.clone();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "webhook TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "webhook TLS handshake timed out");
                                return;
                            }
                        };
                        let svc = service_fn(move |req| {
                            let inject = inject.clone();
                            async move { Ok::<_, Infallible>(handle(req, &inject).await) }
                        });
                        let mut builder = auto::Builder::new(TokioExecutor::new());
                        builder
                            .http1()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HANDSHAKE_TIMEOUT);
                        if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                            tracing::debug!(%peer, "webhook connection: {e}");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        refresh.abort();
    }))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// One request: the path picks the webhook; the body must be an AdmissionReview.
async fn handle(req: Request<Incoming>, inject: &InjectOptions) -> Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    // The body is read (or, past the limit, drained) before any answer, even a refusal: a
    // client still sending when the answer comes would see its stream reset instead.
    let body = tokio::time::timeout(REQUEST_TIMEOUT, read_body(body)).await;
    let path = head.uri.path().to_string();
    if !matches!(path.as_str(), "/inject" | "/validate") && !path.starts_with("/inject/") {
        return text(
            StatusCode::NOT_FOUND,
            format!("no webhook at {path}; use /inject or /validate"),
        );
    }
    if head.method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview");
    }
    // As istiod: the API server always sends JSON.
    let json_type = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid Content-Type, want application/json",
        );
    }
    let bytes = match body {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("request body too large: the limit is {MAX_BODY_BYTES} bytes"),
            )
        }
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
    };
    if bytes.is_empty() {
        return text(StatusCode::BAD_REQUEST, "no body found");
    }
    let review: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            )
        }
    };
    // Decisions are CPU work on objects of up to a few MiB: off the accept loop's workers.
    let inject = inject.clone();
    let answer = tokio::task::spawn_blocking(move || {
        if path == "/validate" {
            sluice_kube::webhook::validate(&review)
        } else {
            sluice_kube::webhook::mutate(&review, &inject)
        }
    })
    .await;
    match answer {
        Ok(Ok(review)) => {
            let mut resp = Response::new(Full::new(Bytes::from(review.to_string())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Ok(Err(e)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!("webhook handler failed: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`]; `None` when it is larger. The rest of a larger
/// body, up to [`MAX_DRAINED_BYTES`], is read and dropped before the 400 goes out, so that a
/// client still sending gets the answer instead of a reset stream.
async fn read_body(mut body: Incoming) -> Result<Option<Bytes>, hyper::Error> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&data);
        } else {
            kept = Vec::new();
            if seen > MAX_DRAINED_BYTES {
                break;
            }
        }
    }
    Ok((seen <= MAX_BODY_BYTES).then(|| Bytes::from(kept)))
}

/// How much of an oversized body is read (and dropped) before answering.
const MAX_DRAINED_BYTES: usize = 64 * 1024 * 1024;

/// The current serving certificate, swapped without dropping connections.
struct Certs {
    source: WebhookCertificate,
    current: ArcSwap<CertifiedKey>,
    /// Files: their modification times when read. Issued: when to renew.
    state: std::sync::Mutex<CertState>,
}

#[derive(Default)]
struct CertState {
    stamps: Option<(Option<SystemTime>, Option<SystemTime>)>,
    renew_at: Option<SystemTime>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Certs {
    fn load(source: WebhookCertificate) -> anyhow::Result<Certs> {
        let mut state = CertState::default();
        let key = obtain(&source, &mut state)?;
        Ok(Certs {
            source,
            current: ArcSwap::from_pointee(key),
            state: std::sync::Mutex::new(state),
        })
    }

    /// Re-reads changed files, or renews an issued certificate past half its life; a failure
    /// keeps the current certificate (and is logged).
    fn refresh(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = match &self.source {
            WebhookCertificate::Files { cert, key } => {
                state.stamps != Some((modified(cert), modified(key)))
            }
            WebhookCertificate::MeshCa { .. } => {
                state.renew_at.is_none_or(|at| SystemTime::now() >= at)
            }
        };
        if !due {
            return;
        }
        match obtain(&self.source, &mut state) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!("webhook certificate reloaded");
            }
            Err(e) => tracing::warn!("keeping the current webhook certificate: {e:#}"),
        }
    }
}

fn obtain(source: &WebhookCertificate, state: &mut CertState) -> anyhow::Result<CertifiedKey> {
    match source {
        WebhookCertificate::Files { cert, key } => {
            let stamps = (modified(cert), modified(key));
            let cert_pem = std::fs::read(cert)
                .with_context(|| format!("--webhook-cert {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("--webhook-key {}", key.display()))?;
            let ck = certified_key(&cert_pem, &key_pem).with_context(|| {
                format!(
                    "--webhook-cert {} / --webhook-key {}",
                    cert.display(),
                    key.display()
                )
            })?;
            state.stamps = Some(stamps);
            Ok(ck)
        }
        WebhookCertificate::MeshCa { dir, dns_names } => {
            let (cert_pem, key_pem) = issue_from_mesh_root(dir, dns_names, ISSUED_CERT_TTL)?;
            state.renew_at = Some(SystemTime::now() + ISSUED_CERT_TTL / 2);
            certified_key(cert_pem.as_bytes(), key_pem.as_bytes())
        }
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("malformed certificate PEM")?;
    anyhow::ensure!(!chain.is_empty(), "no CERTIFICATE in the certificate file");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("no usable private key")?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A serving certificate for `dns_names` signed by the mesh root in `dir`: a new EC P-256 key,
/// the names as DNS SANs (the first also as CN), EKU server auth, valid from a minute ago for
/// `ttl`. Returns the chain (leaf, then root) and the key, PEM.
pub fn issue_from_mesh_root(
    dir: &Path,
    dns_names: &[String],
    ttl: Duration,
) -> anyhow::Result<(String, String)> {
    let root_cert_path = dir.join(sluice_proxy::identity::ROOT_CERT_FILE);
    let root_key_path = dir.join(sluice_proxy::identity::ROOT_KEY_FILE);
    let root_cert = std::fs::read_to_string(&root_cert_path)
        .with_context(|| format!("cannot read {}", root_cert_path.display()))?;
    let root_key = std::fs::read_to_string(&root_key_path).with_context(|| {
        format!(
            "cannot read {} (the webhooks' certificate is issued from the mesh root's key; \
             or give --webhook-cert and --webhook-key)",
            root_key_path.display()
        )
    })?;
    let ca_key = rcgen::KeyPair::from_pem(&root_key)
        .with_context(|| format!("{}: unusable private key", root_key_path.display()))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root_cert, ca_key)
        .with_context(|| format!("{}: unusable root certificate", root_cert_path.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate a key")?;
    let mut params =
        rcgen::CertificateParams::new(dns_names.to_vec()).context("invalid DNS name")?;
    let mut name = rcgen::DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        name.push(rcgen::DnType::CommonName, first.as_str());
    }
    params.distinguished_name = name;
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + ttl).into();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the webhook certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_server_certificate_for_the_service_names() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            sluice_proxy::identity::create_root("cluster.local", Duration::from_secs(3600))
                .unwrap();
        std::fs::write(dir.path().join("root-cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("root-key.pem"), key).unwrap();
        let names = service_dns_names("sluice-control", "istio-system");
        let (cert, key) = issue_from_mesh_root(dir.path(), &names, ISSUED_CERT_TTL).unwrap();
        let ck = certified_key(cert.as_bytes(), key.as_bytes()).unwrap();
        let summary = sluice_proxy::identity::describe_certs(cert.as_bytes()).unwrap();
        assert_eq!(summary.len(), 1);
        assert_eq!(ck.cert.len(), 1);
        assert_eq!(summary[0].dns_sans, names);
    }
}
