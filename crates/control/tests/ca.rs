//! The certificate service on the mutual-TLS port, as a proxy uses it: the control plane's
//! 15012 (its own certificate from the mesh root, clients without a certificate let in) serving
//! `istio.v1.auth.IstioCertificateService`, service-account tokens checked by the in-test API
//! server's TokenReview; the proxy side is the real `Identity` with `--ca-address`.
//!
//! A good token gets a certificate for the token's service account, whatever the proxy asks
//! for; an unknown token, a token for another audience, and no token at all get nothing; the
//! identity is renewed by asking again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_control::ca_server::{KubeTokenReviewer, WorkloadCa};
use sluice_e2e::fake_apiserver::FakeApiServer;
use sluice_proxy::identity::{
    create_root, write_root_files, CaOptions, Identity, IdentityOptions, MeshCa, ROOT_CERT_FILE,
};

struct Mesh {
    _dir: tempfile::TempDir,
    /// The mesh root with its key (the control plane's).
    ca_dir: PathBuf,
    /// The root certificate alone (what a proxy holds).
    root_dir: PathBuf,
    tokens: PathBuf,
}

fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let root_dir = dir.path().join("root");
    let tokens = dir.path().join("tokens");
    for d in [&ca_dir, &root_dir, &tokens] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (cert, key) = create_root("cluster.local", Duration::from_secs(3600)).unwrap();
    write_root_files(&ca_dir, &cert, &key, false).unwrap();
    std::fs::write(root_dir.join(ROOT_CERT_FILE), &cert).unwrap();
    Mesh {
        _dir: dir,
        ca_dir,
        root_dir,
        tokens,
    }
}

fn options(mesh_ca: &Path, ns: &str, sa: &str, ca: Option<CaOptions>) -> IdentityOptions {
    IdentityOptions {
        mesh_ca: mesh_ca.to_path_buf(),
        identity_dir: None,
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: sa.into(),
        cert_ttl: Duration::from_secs(3600),
        ca,
    }
}

async fn kube_client(server: &FakeApiServer) -> sluice_kube::kube::Client {
    let kubeconfig =
        sluice_kube::kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = sluice_kube::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    sluice_kube::kube::Client::try_from(config).unwrap()
}

/// The control plane's mutual-TLS port with the certificate service; its address.
async fn serve_ca(mesh: &Mesh, api: &FakeApiServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_ca_on(listener, mesh, api).await
}

async fn serve_ca_on(
    listener: tokio::net::TcpListener,
    mesh: &Mesh,
    api: &FakeApiServer,
) -> String {
    let own = Identity::load(&options(&mesh.ca_dir, "istio-system", "istiod", None)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = sluice_control::mtls::incoming(listener, own.server_config(&[b"h2"], true));
    let ca = WorkloadCa::new(
        MeshCa::load(&mesh.ca_dir).unwrap(),
        "cluster.local",
        Arc::new(KubeTokenReviewer(kube_client(api).await)),
    );
    let service = sluice_xds::ca::CaService::new(Arc::new(ca));
    tokio::spawn(
        sluice_xds::tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A proxy's identity for `ns/sa` with a certificate from the service at `addr`, presenting the
/// token `token` (written to a file as the kubelet does). Loaded off the runtime, as a proxy's
/// startup blocks on it.
async fn load_from_service(
    mesh: &Mesh,
    addr: &str,
    ns: &str,
    sa: &str,
    token: Option<&str>,
) -> Result<Arc<Identity>, String> {
    let token_file = mesh.tokens.join(format!("{ns}-{sa}"));
    if let Some(token) = token {
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
    }
    let opts = options(
        &mesh.root_dir,
        ns,
        sa,
        Some(CaOptions {
            address: addr.to_string(),
            token_file,
            server_identity: "spiffe://cluster.local/ns/istio-system/sa/istiod".into(),
        }),
    );
    tokio::task::spawn_blocking(move || {
        Identity::load(&opts).map_err(|e| format!("{:#}", anyhow::Error::new(e)))
    })
    .await
    .unwrap()
}

fn serial(identity: &Identity) -> Vec<u8> {
    identity.certificate().cert[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_gets_a_certificate_for_that_account_only() {
    let mesh = mesh();
    let api = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    api.add_token(
        "gw-token",
        "istio-system",
        "istio-ingressgateway",
        &["istio-ca"],
    );
    api.add_token(
        "api-token",
        "istio-system",
        "istio-ingressgateway",
        &["https://kubernetes.default.svc"],
    );
    let addr = serve_ca(&mesh, &api).await;

    // The token's own account: a certificate from the mesh root, with that SPIFFE ID.
    let identity = load_from_service(
        &mesh,
        &addr,
        "istio-system",
        "istio-ingressgateway",
        Some("gw-token"),
    )
    .await
    .expect("a certificate for the gateway's account");
    assert_eq!(
        identity.spiffe_id(),
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
    );
    let left = identity
        .expires_at()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(3000) && left <= Duration::from_secs(3600),
        "the lifetime asked for (1 h): {left:?}"
    );
    assert!(
        api.requests().iter().any(|r| r.contains("tokenreviews")),
        "the token was reviewed by the API server"
    );
    // Renewal asks again: a new certificate.
    let before = serial(&identity);
    let renewing = identity.clone();
    tokio::task::spawn_blocking(move || renewing.rotate_now())
        .await
        .unwrap()
        .expect("renewed");
    assert_ne!(serial(&identity), before, "a new certificate");
    // Once the token has expired (a VM's bootstrap token), the certificate being renewed
    // authenticates the renewal, for its own identity.
    api.remove_token("gw-token");
    let before = serial(&identity);
    let renewing = identity.clone();
    tokio::task::spawn_blocking(move || renewing.rotate_now())
        .await
        .unwrap()
        .expect("renewed with the current certificate");
    assert_ne!(serial(&identity), before, "a new certificate");
    assert_eq!(
        identity.spiffe_id(),
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
    );
    api.add_token(
        "gw-token",
        "istio-system",
        "istio-ingressgateway",
        &["istio-ca"],
    );

    // The same token claimed for another account: the service signs for the token's account,
    // which the proxy refuses to present as another.
    let err = load_from_service(&mesh, &addr, "default", "httpbin", Some("gw-token"))
        .await
        .unwrap_err();
    assert!(
        err.contains(
            "the certificate is for spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_no_certificate() {
    let mesh = mesh();
    let api = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    api.add_token(
        "api-token",
        "default",
        "httpbin",
        &["https://kubernetes.default.svc"],
    );
    let addr = serve_ca(&mesh, &api).await;

    for (token, why) in [
        ("forged", "invalid bearer token"),
        ("api-token", "invalid for the target audiences"),
    ] {
        let err = load_from_service(&mesh, &addr, "default", "httpbin", Some(token))
            .await
            .unwrap_err();
        assert!(
            err.contains("Unauthenticated") && err.contains(why),
            "{token}: {err}"
        );
    }
    // No token file: nothing is asked, and the error names the file.
    let err = load_from_service(&mesh, &addr, "default", "nobody", None)
        .await
        .unwrap_err();
    assert!(
        err.contains("service account token") && err.contains("default-nobody"),
        "{err}"
    );
}

/// A proxy may start before its control plane: it asks again until the service answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_before_the_service_waits_for_it() {
    let mesh = mesh();
    let api = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    api.add_token("t", "default", "httpbin", &["istio-ca"]);
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let started = std::time::Instant::now();
    let waiting = {
        let addr = addr.to_string();
        let mesh_root = mesh.root_dir.clone();
        let token_file = mesh.tokens.join("t");
        std::fs::write(&token_file, "t").unwrap();
        tokio::task::spawn_blocking(move || {
            Identity::load(&options(
                &mesh_root,
                "default",
                "httpbin",
                Some(CaOptions {
                    address: addr,
                    token_file,
                    server_identity: "spiffe://cluster.local/ns/istio-system/sa/istiod".into(),
                }),
            ))
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "gave up while the service was down");
    serve_ca_on(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        &mesh,
        &api,
    )
    .await;
    let identity = waiting
        .await
        .unwrap()
        .expect("a certificate once the service is up");
    assert_eq!(
        identity.spiffe_id(),
        "spiffe://cluster.local/ns/default/sa/httpbin"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

/// Accepts any server certificate: these requests test the service, not the client's checks.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
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
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Hostile requests with a good token: no certificate, and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    use sluice_xds::ca::{create_certificate, CaError, IstioCertificateRequest};
    let mesh = mesh();
    let api = FakeApiServer::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    api.add_token("t", "default", "httpbin", &["istio-ca"]);
    let addr = serve_ca(&mesh, &api).await;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let ask = |csr: String, token: Option<&'static str>| {
        let (addr, tls) = (addr.clone(), tls.clone());
        async move {
            let request = IstioCertificateRequest {
                csr,
                validity_duration: 3600,
                metadata: None,
            };
            create_certificate(&addr, tls, token, request, Duration::from_secs(5)).await
        }
    };
    let (good_csr, _) =
        sluice_proxy::identity::certificate_request("spiffe://cluster.local/ns/default/sa/httpbin")
            .unwrap();
    // The same request works, so what follows fails for its own reason.
    assert!(ask(good_csr.clone(), Some("t")).await.is_ok());

    // Not a CSR; a CSR whose signature does not match its key (tampered); a huge one.
    let tampered = {
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(good_csr.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let mut der = der;
        let last = der.len() - 1;
        der[last] ^= 0x55;
        let body = base64_lines(&der);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n")
    };
    for (what, csr) in [
        ("garbage", "hello".to_string()),
        ("tampered", tampered),
        ("huge", "A".repeat(200 * 1024)),
    ] {
        match ask(csr, Some("t")).await {
            Err(CaError::Refused(m)) => assert!(
                m.contains("InvalidArgument")
                    || m.contains("OutOfRange")
                    || m.contains("ResourceExhausted"),
                "{what}: {m}"
            ),
            other => panic!("{what}: {other:?}"),
        }
    }
    // No token at all, on a connection without a client certificate.
    match ask(good_csr, None).await {
        Err(CaError::Refused(m)) => assert!(m.contains("Unauthenticated"), "{m}"),
        other => panic!("no token: {other:?}"),
    }
}

/// Standard base64 in 64-character lines, for a PEM body.
fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.as_bytes()
        .chunks(64)
        .map(|l| format!("{}\n", String::from_utf8_lossy(l)))
        .collect()
}
