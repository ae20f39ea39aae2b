//! Fixtures shared by the mesh-security tests (mtls.rs, authz.rs): a test mesh root, small
//! HTTP and TCP applications on loopback, and one proxy's telemetry read back from files.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_model::Snapshot;
use sluice_proxy::context::Proxy;
use sluice_proxy::identity::{self, Identity, IdentityOptions};
use sluice_proxy::telemetry::{AccessLogConfig, AccessLogEncoding, AccessLogger, Metrics};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A test mesh root (`root-cert.pem` + `root-key.pem`).
pub struct MeshCa {
    pub dir: tempfile::TempDir,
}

impl MeshCa {
    pub fn new() -> MeshCa {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            identity::create_root("cluster.local", Duration::from_secs(86400)).unwrap();
        identity::write_root_files(dir.path(), &cert, &key, false).unwrap();
        MeshCa { dir }
    }

    /// A workload identity issued by this root.
    pub fn identity(&self, namespace: &str, service_account: &str) -> Arc<Identity> {
        Identity::load(&IdentityOptions {
            mesh_ca: self.dir.path().to_path_buf(),
            identity_dir: None,
            trust_domain: "cluster.local".into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            cert_ttl: Duration::from_secs(3600),
            ca: None,
        })
        .unwrap()
    }
}

/// An HTTP application that answers 200 `app saw <path>`.
pub async fn http_app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body = format!("app saw {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP application: reads one line and answers `echo <line>`.
pub async fn tcp_app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_ok() {
                    let _ = stream
                        .get_mut()
                        .write_all(format!("echo {line}").as_bytes())
                        .await;
                }
            });
        }
    });
    addr
}

/// One proxy's telemetry.
pub struct Telemetry {
    pub log: AccessLogger,
    pub log_path: PathBuf,
    pub metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

impl Telemetry {
    /// Telemetry whose access log uses `format`.
    pub fn new(format: &str) -> Telemetry {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("access.log");
        let log = AccessLogger::new(AccessLogConfig {
            path: Some(log_path.clone()),
            encoding: AccessLogEncoding::Text,
            format: Some(format.into()),
        })
        .unwrap();
        Telemetry {
            log,
            log_path,
            metrics: Arc::new(Metrics::new("test")),
            _dir: dir,
        }
    }

    pub fn proxy(&self, snap: Snapshot, namespace: &str, identity: Option<Arc<Identity>>) -> Proxy {
        let mut proxy = Proxy::new(
            Arc::new(ArcSwap::from_pointee(snap)),
            self.log.clone(),
            self.metrics.clone(),
            namespace,
            &Default::default(),
        );
        proxy.identity = identity;
        proxy
    }

    /// Waits until the access log has `n` lines and returns them.
    pub async fn lines(&self, n: usize) -> Vec<String> {
        for _ in 0..150 {
            self.log.flush(Duration::from_secs(1));
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected {n} access log lines, got: {:?}",
            std::fs::read_to_string(&self.log_path)
        );
    }

    /// The first series of `metric` whose labels contain all of `labels`.
    pub async fn metric_line(&self, metric: &str, labels: &[&str]) -> Option<String> {
        for _ in 0..100 {
            let out = self.metrics.encode();
            let found = out.lines().find(|l| {
                l.starts_with(&format!("{metric}{{")) && labels.iter().all(|want| l.contains(want))
            });
            if let Some(line) = found {
                return Some(line.to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// Labels of the loopback gateways below: `istio=ingressgateway`.
pub fn gateway_labels() -> sluice_api::networking::Labels {
    [("istio".to_string(), "ingressgateway".to_string())]
        .into_iter()
        .collect()
}

/// Compiles `yaml` (which must be valid) for a proxy of `kind` in `namespace` with
/// [`gateway_labels`].
pub fn compile_yaml(yaml: &str, kind: sluice_model::ProxyKind, namespace: &str) -> Snapshot {
    let loaded = sluice_api::decode_str(std::path::Path::new("test.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = sluice_model::ProxyIdentity {
        namespace: namespace.into(),
        labels: gateway_labels(),
        service_account: None,
        kind,
    };
    sluice_model::compile(&loaded.resources, &identity, 1)
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway in `istio-system` serving the Gateways and routes of `yaml` on 127.0.0.1, with
/// `lifecycle` (config gate, drain). Keep the returned listeners alive while testing.
pub async fn loopback_gateway(
    yaml: &str,
    access_log: AccessLogger,
    lifecycle: sluice_proxy::downstream::Lifecycle,
) -> sluice_proxy::gateway::listeners::ListenerSet {
    let snap = compile_yaml(yaml, sluice_model::ProxyKind::Gateway, "istio-system");
    let metrics = Arc::new(Metrics::new("test"));
    let snapshots = Arc::new(ArcSwap::from_pointee(snap));
    let mut proxy = sluice_proxy::gateway::gateway_proxy(
        snapshots.clone(),
        access_log,
        metrics.clone(),
        "istio-system",
        &gateway_labels(),
    );
    proxy.lifecycle = lifecycle;
    let gateway = Arc::new(sluice_proxy::gateway::Gateway::new(
        Arc::new(proxy),
        &metrics,
    ));
    let mut listeners =
        sluice_proxy::gateway::listeners::ListenerSet::new("127.0.0.1".parse().unwrap(), gateway);
    listeners.reconcile(&snapshots.load_full()).await;
    listeners
}

/// An access log written to a temporary file (TEXT, Istio's default format).
pub fn file_access_log() -> (tempfile::NamedTempFile, AccessLogger) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let access_log = AccessLogger::new(AccessLogConfig {
        path: Some(log.path().to_path_buf()),
        encoding: AccessLogEncoding::Text,
        format: None,
    })
    .unwrap();
    (log, access_log)
}

/// Accepts any server certificate, for tests whose subject is routing or the application's own
/// TLS, not PKI (a mesh peer's identity is checked by the proxy itself).
#[derive(Debug)]
pub struct AnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
