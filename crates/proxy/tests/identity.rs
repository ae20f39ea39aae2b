//! Mesh identity: self-issued and file-based workload certificates, ISTIO_MUTUAL handshakes
//! between two identities over loopback (tokio-rustls on both sides), SPIFFE SAN checks, and
//! rotation without touching established connections.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sluice_proxy::identity::{
    create_root, describe_der, issue_workload_cert, peer_spiffe_id, principal_of, spiffe_id_for,
    write_root_files, write_workload_files, Identity, IdentityError, IdentityOptions,
    CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The SNI a sidecar sends for `ISTIO_MUTUAL` to port 80 of a service (never matched against
/// the certificate).
const SNI: &str = "outbound_.80_._.httpbin.foo.svc.cluster.local";
const ALPN: &[&[u8]] = &[b"istio", b"http/1.1"];

// ---------------------------------------------------------------------------------------------
// Fixtures

struct Mesh {
    dir: tempfile::TempDir,
    root_cert: String,
    root_key: String,
}

impl Mesh {
    /// A mesh CA directory with `root-cert.pem` and `root-key.pem` (proxies self-issue).
    fn new(trust_domain: &str) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let (root_cert, root_key) = create_root(trust_domain, Duration::from_secs(3600)).unwrap();
        write_root_files(dir.path(), &root_cert, &root_key, false).unwrap();
        Mesh {
            dir,
            root_cert,
            root_key,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The same root without its key, as a workload that only reads files sees it.
    fn public_only(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ROOT_CERT_FILE), &self.root_cert).unwrap();
        dir
    }

    fn identity(&self, ns: &str, sa: &str, ttl: Duration) -> Arc<Identity> {
        Identity::load(&options(self.path(), None, ns, sa, ttl)).expect("identity loads")
    }
}

fn options(
    mesh_ca: &Path,
    identity_dir: Option<&Path>,
    ns: &str,
    sa: &str,
    ttl: Duration,
) -> IdentityOptions {
    IdentityOptions {
        mesh_ca: mesh_ca.to_path_buf(),
        identity_dir: identity_dir.map(Path::to_path_buf),
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: sa.into(),
        cert_ttl: ttl,
        ca: None,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn leaf_der(identity: &Identity) -> CertificateDer<'static> {
    identity.certificate().cert[0].clone()
}

/// What the server side saw of one connection.
#[derive(Debug)]
enum Accepted {
    Ok { peer: Option<String> },
    Failed(String),
}

/// A TLS server on loopback: tells each client the SPIFFE ID it saw (`none` without a
/// certificate) on the first line, then echoes lines; reports every handshake.
async fn server(
    config: Arc<rustls::ServerConfig>,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let peer = tls.get_ref().1.peer_certificates().and_then(peer_spiffe_id);
                        let _ = tx.send(Accepted::Ok { peer: peer.clone() });
                        let (read, mut write) = tokio::io::split(tls);
                        let line = format!("{}\n", peer.as_deref().unwrap_or("none"));
                        if write.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut lines = BufReader::new(read).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if write
                                .write_all(format!("{line}\n").as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Accepted::Failed(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A client connection that completed its handshake and read the server's first line.
struct Client {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<TlsStream<TcpStream>>>>,
    write: tokio::io::WriteHalf<TlsStream<TcpStream>>,
    /// The server's SPIFFE ID as the client saw it.
    server_id: Option<String>,
    server_cert: CertificateDer<'static>,
    /// The client's SPIFFE ID as the server saw it.
    seen_by_server: String,
    alpn: Option<Vec<u8>>,
}

impl Client {
    async fn echo(&mut self, text: &str) -> String {
        self.write
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.lines.next_line())
            .await
            .expect("echo in time")
            .expect("echo read")
            .expect("echo line")
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> Result<Client, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let server_certs = conn.peer_certificates().unwrap_or_default().to_vec();
    let server_id = peer_spiffe_id(&server_certs);
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let (read, write) = tokio::io::split(tls);
    let mut lines = BufReader::new(read).lines();
    // With TLS 1.3 the server judges the client certificate after the client finished: a
    // refusal shows up here, as the first read failing.
    let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .map_err(|_| "no greeting in time".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "closed before the greeting".to_string())?;
    Ok(Client {
        lines,
        write,
        server_id,
        server_cert: server_certs.into_iter().next().expect("server certificate"),
        seen_by_server: first,
        alpn,
    })
}

async fn next_accepted(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a handshake was reported")
        .expect("server running")
}

// ---------------------------------------------------------------------------------------------
// Issued certificates

#[test]
fn self_issued_identity_has_spiffe_id_and_validity() {
    let mesh = Mesh::new("cluster.local");
    let ttl = Duration::from_secs(600);
    let before = SystemTime::now();
    let identity = mesh.identity("foo", "httpbin", ttl);
    assert_eq!(
        identity.spiffe_id(),
        "spiffe://cluster.local/ns/foo/sa/httpbin"
    );
    assert_eq!(
        principal_of(identity.spiffe_id()),
        "cluster.local/ns/foo/sa/httpbin"
    );
    let leaf = leaf_der(&identity);
    assert_eq!(
        peer_spiffe_id(std::slice::from_ref(&leaf)).as_deref(),
        Some(identity.spiffe_id())
    );
    let summary = describe_der(&leaf).unwrap();
    assert_eq!(summary.uri_sans, vec![identity.spiffe_id().to_string()]);
    assert!(!summary.is_ca);
    assert!(summary.issuer.contains("sluice mesh root"), "{summary:?}");
    let backdated = before.duration_since(summary.not_before).unwrap();
    assert!(
        backdated >= Duration::from_secs(58) && backdated <= Duration::from_secs(62),
        "not before {backdated:?} ago"
    );
    let lifetime = summary.not_after.duration_since(before).unwrap();
    assert!(
        lifetime >= ttl - Duration::from_secs(2) && lifetime <= ttl + Duration::from_secs(2),
        "valid for {lifetime:?}"
    );
    assert_eq!(identity.expires_at(), Some(summary.not_after));

    let root = &sluice_proxy::identity::describe_certs(mesh.root_cert.as_bytes()).unwrap()[0];
    assert!(root.is_ca);
    assert_eq!(root.organization.as_deref(), Some("cluster.local"));
    assert!(root.subject.contains("CN=sluice mesh root"), "{root:?}");
}

#[test]
fn issue_workload_cert_from_pem_text() {
    let mesh = Mesh::new("example.org");
    let id = spiffe_id_for("example.org", "ns1", "sa1");
    let (cert, key) = issue_workload_cert(
        &mesh.root_cert,
        &mesh.root_key,
        &id,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(cert.contains("BEGIN CERTIFICATE"));
    assert!(key.contains("BEGIN PRIVATE KEY"));
    let summary = &sluice_proxy::identity::describe_certs(cert.as_bytes()).unwrap()[0];
    assert_eq!(summary.spiffe_id.as_deref(), Some(id.as_str()));

    // A key that is not the root's is refused, and the error says which input is wrong.
    let (_, other_key) = create_root("example.org", HOUR).unwrap();
    let err = issue_workload_cert(&mesh.root_cert, &other_key, &id, HOUR).unwrap_err();
    assert!(err.to_string().contains("mesh root key"), "{err}");
    let err = issue_workload_cert(&mesh.root_cert, &mesh.root_key, "ns1/sa1", HOUR).unwrap_err();
    assert!(err.to_string().contains("spiffe://"), "{err}");
}

#[test]
fn load_errors_name_the_file() {
    let mesh = Mesh::new("cluster.local");
    let public = mesh.public_only();
    // No key to issue with and no identity directory.
    let err = Identity::load(&options(public.path(), None, "a", "b", HOUR)).unwrap_err();
    assert!(matches!(err, IdentityError::NoSource { .. }), "{err}");
    assert!(err.to_string().contains("root-key.pem"), "{err}");

    // An identity directory without its files.
    let empty = tempfile::tempdir().unwrap();
    let err = Identity::load(&options(public.path(), Some(empty.path()), "a", "b", HOUR))
        .unwrap_err()
        .to_string();
    assert!(err.contains(CERT_CHAIN_FILE), "{err}");
    assert!(err.contains(&empty.path().display().to_string()), "{err}");

    // No mesh root at all.
    let nothing = tempfile::tempdir().unwrap();
    let err = Identity::load(&options(nothing.path(), None, "a", "b", HOUR))
        .unwrap_err()
        .to_string();
    assert!(err.contains(ROOT_CERT_FILE), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Handshakes

#[tokio::test]
async fn mtls_between_two_identities_each_side_sees_the_other() {
    let mesh = Mesh::new("cluster.local");
    let server_id = mesh.identity("foo", "httpbin", HOUR);
    let client_id = mesh.identity("bar", "sleep", HOUR);
    let (addr, mut accepted) = server(server_id.server_config(ALPN, false)).await;

    let config = client_id.client_config(&[server_id.spiffe_id().to_string()], ALPN);
    let mut client = connect(addr, config, SNI).await.expect("handshake");
    assert_eq!(
        client.server_id.as_deref(),
        Some("spiffe://cluster.local/ns/foo/sa/httpbin")
    );
    assert_eq!(
        client.seen_by_server,
        "spiffe://cluster.local/ns/bar/sa/sleep"
    );
    assert_eq!(client.alpn.as_deref(), Some(&b"istio"[..]));
    assert_eq!(client.echo("hello").await, "hello");
    match next_accepted(&mut accepted).await {
        Accepted::Ok { peer } => assert_eq!(peer.as_deref(), Some(client_id.spiffe_id())),
        other => panic!("{other:?}"),
    }

    // No expected SANs: any certificate from the mesh root will do.
    let any = client_id.client_config(&[], ALPN);
    let client = connect(addr, any, "10.0.0.1").await.expect("handshake");
    assert_eq!(client.server_id.as_deref(), Some(server_id.spiffe_id()));

    // Configs are cached per (SANs, ALPN).
    let a = client_id.client_config(&[server_id.spiffe_id().to_string()], ALPN);
    let b = client_id.client_config(&[server_id.spiffe_id().to_string()], ALPN);
    assert!(Arc::ptr_eq(&a, &b));
    let c = client_id.client_config(&[server_id.spiffe_id().to_string()], &[b"h2"]);
    assert!(!Arc::ptr_eq(&a, &c));
    assert!(Arc::ptr_eq(
        &server_id.server_config(ALPN, false),
        &server_id.server_config(ALPN, false)
    ));
}

#[tokio::test]
async fn server_from_another_root_is_refused() {
    let mesh = Mesh::new("cluster.local");
    let other_mesh = Mesh::new("cluster.local");
    let client_id = mesh.identity("bar", "sleep", HOUR);
    // Same SPIFFE ID, different root.
    let impostor = other_mesh.identity("foo", "httpbin", HOUR);
    let (addr, mut accepted) = server(impostor.server_config(ALPN, false)).await;
    let config = client_id.client_config(&[impostor.spiffe_id().to_string()], ALPN);
    // Both roots have the same name (same trust domain): the signature is what fails.
    let err = connect(addr, config, SNI).await.err().expect("refused");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(matches!(
        next_accepted(&mut accepted).await,
        Accepted::Failed(_)
    ));

    // And the other way round: a client from another root is refused by a mesh server.
    let server_id = mesh.identity("foo", "httpbin", HOUR);
    let outsider = other_mesh.identity("bar", "sleep", HOUR);
    let (addr, mut accepted) = server(server_id.server_config(ALPN, false)).await;
    // The outsider does not trust this server either; let it skip that to reach the server's check.
    let err = connect(addr, trusting_client(Some(&outsider)), SNI)
        .await
        .err()
        .expect("refused");
    match next_accepted(&mut accepted).await {
        Accepted::Failed(e) => assert!(e.contains("invalid peer certificate"), "{e}"),
        other => panic!("{other:?} (client: {err})"),
    }
}

#[tokio::test]
async fn expected_san_mismatch_is_refused() {
    let mesh = Mesh::new("cluster.local");
    let server_id = mesh.identity("foo", "httpbin", HOUR);
    let client_id = mesh.identity("bar", "sleep", HOUR);
    let (addr, _accepted) = server(server_id.server_config(ALPN, false)).await;
    let expected = [
        "spiffe://cluster.local/ns/foo/sa/other".to_string(),
        "spiffe://cluster.local/ns/bar/sa/httpbin".to_string(),
    ];
    let err = connect(addr, client_id.client_config(&expected, ALPN), SNI)
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("spiffe://cluster.local/ns/foo/sa/httpbin"),
        "{err}"
    );

    // One of several expected SANs is enough.
    let expected = [
        "spiffe://cluster.local/ns/foo/sa/other".to_string(),
        server_id.spiffe_id().to_string(),
    ];
    connect(addr, client_id.client_config(&expected, ALPN), SNI)
        .await
        .expect("accepted");
}

#[tokio::test]
async fn client_certificate_required_unless_optional() {
    let mesh = Mesh::new("cluster.local");
    let server_id = mesh.identity("foo", "httpbin", HOUR);

    let (addr, mut accepted) = server(server_id.server_config(ALPN, false)).await;
    let err = connect(addr, trusting_client(None), SNI)
        .await
        .err()
        .expect("refused");
    match next_accepted(&mut accepted).await {
        Accepted::Failed(e) => assert!(e.to_lowercase().contains("certificate"), "{e}"),
        other => panic!("{other:?} (client: {err})"),
    }

    // PERMISSIVE-style: a client without a certificate is let in, with no identity.
    let (addr, mut accepted) = server(server_id.server_config(ALPN, true)).await;
    let client = connect(addr, trusting_client(None), SNI)
        .await
        .expect("accepted");
    assert_eq!(client.seen_by_server, "none");
    assert!(matches!(
        next_accepted(&mut accepted).await,
        Accepted::Ok { peer: None }
    ));
    // ...and one with a mesh certificate is still identified.
    let client_id = mesh.identity("bar", "sleep", HOUR);
    let client = connect(addr, client_id.client_config(&[], ALPN), SNI)
        .await
        .expect("accepted");
    assert_eq!(client.seen_by_server, client_id.spiffe_id());
}

/// A client that accepts any server certificate and presents `identity`'s certificate (or none).
fn trusting_client(identity: Option<&Identity>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match identity {
        Some(identity) => {
            let cert = identity.certificate();
            builder.with_client_cert_resolver(Arc::new(Fixed(cert)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Rotation

async fn wait_for_new_cert(identity: &Identity, old: &CertificateDer<'_>, within: Duration) {
    let start = Instant::now();
    while leaf_der(identity) == *old {
        assert!(
            start.elapsed() < within,
            "certificate not rotated within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_issued_certificate_rotates_at_half_life_keeping_connections() {
    let mesh = Mesh::new("cluster.local");
    let server_id = mesh.identity("foo", "httpbin", Duration::from_secs(4));
    let client_id = mesh.identity("bar", "sleep", HOUR);
    server_id.spawn_rotation();
    server_id.spawn_rotation(); // a second call is harmless

    // Handed out before the rotation, used after it.
    let server_config = server_id.server_config(ALPN, false);
    let client_config = client_id.client_config(&[server_id.spiffe_id().to_string()], ALPN);
    let (addr, _accepted) = server(server_config).await;

    let first = leaf_der(&server_id);
    let issued = Instant::now();
    let mut old = connect(addr, client_config.clone(), SNI)
        .await
        .expect("handshake");
    assert_eq!(old.server_cert, first);

    wait_for_new_cert(&server_id, &first, Duration::from_secs(4)).await;
    let rotated_after = issued.elapsed();
    assert!(
        rotated_after >= Duration::from_millis(1500)
            && rotated_after <= Duration::from_millis(3500),
        "rotated after {rotated_after:?}, expected about 2s"
    );
    let second = leaf_der(&server_id);
    assert_eq!(
        peer_spiffe_id(std::slice::from_ref(&second)).as_deref(),
        Some(server_id.spiffe_id())
    );

    // A new handshake (another SNI, so no session resumption) gets the new certificate...
    let new = connect(
        addr,
        client_config,
        "outbound_.80_._.other.foo.svc.cluster.local",
    )
    .await
    .expect("handshake after rotation");
    assert_eq!(new.server_cert, second);
    // ...and the connection made before the rotation goes on.
    assert_eq!(old.echo("still here").await, "still here");

    // It keeps rotating.
    wait_for_new_cert(&server_id, &second, Duration::from_secs(4)).await;
}

#[tokio::test]
async fn rotate_now_issues_a_new_certificate() {
    let mesh = Mesh::new("cluster.local");
    let identity = mesh.identity("foo", "httpbin", HOUR);
    let before = leaf_der(&identity);
    identity.rotate_now().unwrap();
    assert_ne!(leaf_der(&identity), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_dir_files_are_picked_up_when_rewritten() {
    let mesh = Mesh::new("cluster.local");
    let public = mesh.public_only();
    let id_dir = tempfile::tempdir().unwrap();
    let spiffe = spiffe_id_for("cluster.local", "foo", "httpbin");
    let issue = |ttl| issue_workload_cert(&mesh.root_cert, &mesh.root_key, &spiffe, ttl).unwrap();

    let (cert, key) = issue(HOUR);
    write_workload_files(id_dir.path(), &cert, &key, &mesh.root_cert).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(id_dir.path().join(KEY_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Even with root-key.pem absent, the trust domain etc. come from the options.
    let identity = Identity::load(&options(
        public.path(),
        Some(id_dir.path()),
        "foo",
        "httpbin",
        HOUR,
    ))
    .unwrap();
    assert_eq!(identity.spiffe_id(), spiffe);
    identity.spawn_rotation();
    let first = leaf_der(&identity);

    // A usable handshake with the file-based identity.
    let client_id = mesh.identity("bar", "sleep", HOUR);
    let (addr, _accepted) = server(identity.server_config(ALPN, false)).await;
    let client = connect(
        addr,
        client_id.client_config(std::slice::from_ref(&spiffe), ALPN),
        SNI,
    )
    .await
    .expect("handshake");
    assert_eq!(client.server_cert, first);

    // A new pair, written as `sluice ca issue` writes it.
    let (cert2, key2) = issue(HOUR);
    write_workload_files(id_dir.path(), &cert2, &key2, &mesh.root_cert).unwrap();
    wait_for_new_cert(&identity, &first, Duration::from_secs(4)).await;
    let second = leaf_der(&identity);
    assert_eq!(
        describe_der(&second).unwrap().serial,
        sluice_proxy::identity::describe_certs(cert2.as_bytes()).unwrap()[0].serial
    );

    // A key without its certificate (a half-finished update) keeps the last good pair...
    let (cert3, key3) = issue(HOUR);
    std::fs::write(id_dir.path().join(KEY_FILE), &key3).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        leaf_der(&identity),
        second,
        "mismatched pair must not be used"
    );
    let client = connect(
        addr,
        client_id.client_config(std::slice::from_ref(&spiffe), ALPN),
        "after.key",
    )
    .await
    .expect("handshake with the last good pair");
    assert_eq!(client.server_cert, second);

    // ...until the certificate arrives.
    std::fs::write(id_dir.path().join(CERT_CHAIN_FILE), &cert3).unwrap();
    wait_for_new_cert(&identity, &second, Duration::from_secs(4)).await;
    let client = connect(
        addr,
        client_id.client_config(std::slice::from_ref(&spiffe), ALPN),
        "after.cert",
    )
    .await
    .expect("handshake with the new pair");
    assert_ne!(client.server_cert, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mesh_root_is_trusted_after_the_bundle_changes() {
    let mesh = Mesh::new("cluster.local");
    let other = Mesh::new("cluster.local");
    let public = mesh.public_only();
    let id_dir = tempfile::tempdir().unwrap();
    let spiffe = spiffe_id_for("cluster.local", "bar", "sleep");
    let (cert, key) = issue_workload_cert(&mesh.root_cert, &mesh.root_key, &spiffe, HOUR).unwrap();
    write_workload_files(id_dir.path(), &cert, &key, &mesh.root_cert).unwrap();
    let client_id = Identity::load(&options(
        public.path(),
        Some(id_dir.path()),
        "bar",
        "sleep",
        HOUR,
    ))
    .unwrap();
    client_id.spawn_rotation();
    let config = client_id.client_config(&[], ALPN);

    // A server of the other mesh (which already trusts both roots, and signs with the one that
    // matches its key) is not trusted...
    let both = format!("{}{}", other.root_cert, mesh.root_cert);
    std::fs::write(other.path().join(ROOT_CERT_FILE), &both).unwrap();
    let stranger = other.identity("foo", "httpbin", HOUR);
    let (addr, _accepted) = server(stranger.server_config(ALPN, false)).await;
    let err = connect(addr, config.clone(), SNI)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("invalid peer certificate"), "{err}");

    // ...until its root joins the bundle (both roots, as during a root migration).
    let bundle = format!("{}{}", mesh.root_cert, other.root_cert);
    std::fs::write(public.path().join(ROOT_CERT_FILE), bundle).unwrap();
    let start = Instant::now();
    loop {
        match connect(addr, config.clone(), SNI).await {
            Ok(client) => {
                assert_eq!(client.server_id.as_deref(), Some(stranger.spiffe_id()));
                break;
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(4),
                "new root not trusted: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rotation runs on a thread of its own, not on the data plane's workers: it needs no tokio
/// runtime at all (a task would panic here without one) and keeps going while none exists.
#[test]
fn rotation_runs_on_its_own_thread() {
    let mesh = Mesh::new("cluster.local");
    let id = mesh.identity("foo", "httpbin", Duration::from_secs(2));
    let first = leaf_der(&id);
    id.spawn_rotation();
    let start = Instant::now();
    while leaf_der(&id) == first {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "certificate not rotated without a runtime"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
