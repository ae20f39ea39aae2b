//! Gateway TLS termination: real handshakes over loopback (tokio-rustls on both sides) against
//! configurations from `ServerTlsStore`, with certificates made by the `openssl` CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring::{cipher_suite, default_provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite};
use sluice_model::gateway::{
    Credential, GatewayHost, GatewayServer, ServerTls, ServerTlsMode, TlsVersion,
};
use sluice_model::Protocol;
use sluice_proxy::tls::{peer_identity, TlsSetupError};
use sluice_proxy::tls_server::ServerTlsStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Certificates (openssl CLI)

#[derive(Clone, Copy)]
enum KeyKind {
    /// `BEGIN PRIVATE KEY` (EC P-256).
    Pkcs8Ec,
    /// `BEGIN EC PRIVATE KEY`, preceded by an `EC PARAMETERS` block as `openssl ecparam` writes.
    Sec1Ec,
    /// `BEGIN RSA PRIVATE KEY`.
    Pkcs1Rsa,
}

struct Ca {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.cert).expect("leaf certificate")
    }
}

fn openssl(what: &str, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("these tests need the `openssl` CLI ({what}): {e}"));
    assert!(
        out.status.success(),
        "openssl {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn make_ca(dir: &Path, name: &str) -> Ca {
    let cert = dir.join(format!("{name}-ca.pem"));
    let key = dir.join(format!("{name}-ca.key"));
    openssl(
        "make CA",
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            p(&key),
            "-out",
            p(&cert),
            "-days",
            "2",
            "-subj",
            &format!("/O=sluice test/CN=test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    Ca { cert, key }
}

static SERIAL: AtomicU64 = AtomicU64::new(100);

/// A leaf signed by `ca`; `sans` as openssl writes them (`DNS:x,URI:spiffe://…`), may be empty.
fn make_leaf(dir: &Path, file: &str, ca: &Ca, cn: &str, sans: &str, kind: KeyKind) -> Leaf {
    let cert = dir.join(format!("{file}.pem"));
    let key = dir.join(format!("{file}.key"));
    let csr = dir.join(format!("{file}.csr"));
    let ext = dir.join(format!("{file}.ext"));
    match kind {
        KeyKind::Pkcs8Ec => openssl(
            "make PKCS#8 key",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p(&key),
            ],
        ),
        KeyKind::Sec1Ec => openssl(
            "make SEC1 key",
            &["ecparam", "-name", "prime256v1", "-genkey", "-out", p(&key)],
        ),
        KeyKind::Pkcs1Rsa => openssl(
            "make PKCS#1 key",
            &["genrsa", "-traditional", "-out", p(&key), "2048"],
        ),
    }
    openssl(
        "make CSR",
        &[
            "req",
            "-new",
            "-key",
            p(&key),
            "-subj",
            &format!("/O=sluice test/CN={cn}"),
            "-out",
            p(&csr),
        ],
    );
    let mut text = String::from(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\n",
    );
    if !sans.is_empty() {
        text.push_str(&format!("subjectAltName={sans}\n"));
    }
    std::fs::write(&ext, text).unwrap();
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed).to_string();
    openssl(
        "sign leaf",
        &[
            "x509",
            "-req",
            "-in",
            p(&csr),
            "-CA",
            p(&ca.cert),
            "-CAkey",
            p(&ca.key),
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            p(&ext),
            "-out",
            p(&cert),
        ],
    );
    Leaf { cert, key }
}

static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

const CLIENT_URI: &str = "spiffe://cluster.local/ns/default/sa/client";

/// A CA with a server certificate for `localhost` and two clients; a second CA with a client.
struct Pki {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    server: Leaf,
    /// URI SAN `CLIENT_URI` and DNS SAN `client.example.com`.
    client: Leaf,
    /// DNS SAN `other.example.com` only.
    client_dns: Leaf,
    /// No SAN, CN `plain-client`.
    client_cn: Leaf,
    other_ca: Ca,
    /// Signed by `other_ca`, URI SAN `CLIENT_URI`.
    stranger: Leaf,
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = make_ca(&dir, "main");
    let server = make_leaf(
        &dir,
        "server",
        &ca,
        "localhost",
        "DNS:localhost",
        KeyKind::Pkcs8Ec,
    );
    let client = make_leaf(
        &dir,
        "client",
        &ca,
        "client",
        &format!("URI:{CLIENT_URI},DNS:client.example.com"),
        KeyKind::Pkcs8Ec,
    );
    let client_dns = make_leaf(
        &dir,
        "client-dns",
        &ca,
        "dns-client",
        "DNS:other.example.com",
        KeyKind::Pkcs8Ec,
    );
    let client_cn = make_leaf(&dir, "client-cn", &ca, "plain-client", "", KeyKind::Pkcs8Ec);
    let other_ca = make_ca(&dir, "other");
    let stranger = make_leaf(
        &dir,
        "stranger",
        &other_ca,
        "stranger",
        &format!("URI:{CLIENT_URI}"),
        KeyKind::Pkcs8Ec,
    );
    Pki {
        _dir: tmp,
        dir,
        ca,
        server,
        client,
        client_dns,
        client_cn,
        other_ca,
        stranger,
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway servers

fn tls(mode: ServerTlsMode, credential: Credential) -> ServerTls {
    ServerTls {
        mode,
        https_redirect: false,
        credential,
        min_version: None,
        max_version: None,
        cipher_suites: vec![],
        subject_alt_names: vec![],
    }
}

fn files(leaf: &Leaf, ca: Option<&Ca>) -> Credential {
    Credential::Files {
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        ca: ca.map(|c| c.cert.clone()),
    }
}

fn bytes(path: &Path) -> Arc<[u8]> {
    std::fs::read(path).unwrap().into()
}

fn secret(leaf: &Leaf, ca: Option<&Ca>) -> Credential {
    Credential::Secret {
        name: "istio-system/gw-credential".into(),
        cert: bytes(&leaf.cert),
        key: bytes(&leaf.key),
        ca: ca.map(|c| bytes(&c.cert)),
    }
}

fn server(tls: ServerTls) -> GatewayServer {
    GatewayServer {
        source: "Gateway default/gw servers[0]".into(),
        gateway: "default/gw".into(),
        name: Some("https".into()),
        protocol: Protocol::Https,
        hosts: vec![GatewayHost {
            namespace: None,
            host: "*".into(),
        }],
        tls: Some(tls),
    }
}

// ---------------------------------------------------------------------------------------------
// Loopback server and client

/// What the server saw of a completed handshake.
#[derive(Debug)]
struct Accepted {
    alpn: Option<Vec<u8>>,
    peer: Option<String>,
}

struct TestServer {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<Result<Accepted, String>>,
}

/// Accepts connections forever; each gets its configuration from `config` (as the gateway
/// listener does, per connection), then echoes `pong` for every 4 bytes read.
async fn spawn_server(
    config: impl Fn() -> Result<Arc<ServerConfig>, TlsSetupError> + Send + 'static,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let config = match config() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(format!("config: {e}")));
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match TlsAcceptor::from(config).accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Err(format!("handshake: {e}")));
                        return;
                    }
                };
                let (_, conn) = tls.get_ref();
                let _ = tx.send(Ok(Accepted {
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    peer: peer_identity(conn),
                }));
                let mut buf = [0u8; 4];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls.write_all(b"pong").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    TestServer { addr, accepted }
}

impl TestServer {
    /// The next connection failed its handshake, for a reason containing `why`.
    async fn refused(&mut self, why: &str) {
        match self.next_accepted().await {
            Ok(a) => panic!("expected a refused handshake ({why}), accepted {a:?}"),
            Err(e) => assert!(e.contains(why), "expected {why:?} in {e:?}"),
        }
    }

    async fn next_accepted(&mut self) -> Result<Accepted, String> {
        tokio::time::timeout(Duration::from_secs(10), self.accepted.recv())
            .await
            .expect("server saw no connection")
            .expect("server gone")
    }
}

struct ClientOpts<'a> {
    ca: &'a Path,
    cert: Option<&'a Leaf>,
    versions: &'a [&'static rustls::SupportedProtocolVersion],
    suites: Option<Vec<SupportedCipherSuite>>,
    alpn: &'a [&'a str],
}

impl<'a> ClientOpts<'a> {
    fn new(ca: &'a Path) -> Self {
        ClientOpts {
            ca,
            cert: None,
            versions: rustls::ALL_VERSIONS,
            suites: None,
            alpn: &["h2", "http/1.1"],
        }
    }

    fn cert(mut self, leaf: &'a Leaf) -> Self {
        self.cert = Some(leaf);
        self
    }

    fn build(self) -> Arc<ClientConfig> {
        let mut provider = default_provider();
        if let Some(suites) = self.suites {
            provider.cipher_suites = suites;
        }
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(self.versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match self.cert {
            Some(leaf) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&leaf.cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(&leaf.key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// What the client saw: the server's certificate, ALPN, version and suite.
struct Connected {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    server_cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    suite: Option<rustls::CipherSuite>,
}

impl Connected {
    async fn ping(&mut self) -> Result<(), String> {
        ping(&mut self.stream).await
    }
}

async fn ping(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Result<(), String> {
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if &buf != b"pong" {
        return Err(format!("unexpected reply {buf:?}"));
    }
    Ok(())
}

/// Handshake plus one round trip: with TLS 1.3 a refused client certificate only shows on the
/// first read.
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Connected, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = TlsConnector::from(config).connect(name, tcp);
    let stream = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    let server_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or("no server certificate")?;
    let mut connected = Connected {
        server_cert,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        stream,
    };
    connected.ping().await?;
    Ok(connected)
}

/// A server for `gw` whose configuration comes from a fresh store, per connection.
async fn serve(gw: GatewayServer) -> (TestServer, Arc<ServerTlsStore>) {
    let store = Arc::new(ServerTlsStore::default());
    store.config_for(&gw).expect("server TLS config");
    let s = store.clone();
    (spawn_server(move || s.config_for(&gw)).await, store)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn simple_handshake_presents_certificate_and_negotiates_alpn() {
    let pki = pki();
    let (mut srv, _store) =
        serve(server(tls(ServerTlsMode::Simple, files(&pki.server, None)))).await;

    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .expect("SIMPLE handshake");
    assert_eq!(c.server_cert, pki.server.der());
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    let accepted = srv.next_accepted().await.unwrap();
    assert_eq!(accepted.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(accepted.peer, None, "no client certificate in SIMPLE");

    let mut opts = ClientOpts::new(&pki.ca.cert);
    opts.alpn = &["http/1.1"];
    let c = connect(srv.addr, opts.build()).await.unwrap();
    assert_eq!(c.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let mut opts = ClientOpts::new(&pki.ca.cert);
    opts.alpn = &[];
    let c = connect(srv.addr, opts.build()).await.unwrap();
    assert_eq!(c.alpn, None);
}

#[tokio::test]
async fn terminated_tls_server_offers_no_alpn() {
    let pki = pki();
    let mut gw = server(tls(ServerTlsMode::Simple, files(&pki.server, None)));
    gw.protocol = Protocol::Tls;
    let (mut srv, _store) = serve(gw).await;
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(c.alpn, None, "a TCP-proxied server must not agree to h2");
    srv.next_accepted().await.unwrap();
}

#[tokio::test]
async fn private_keys_in_pkcs8_pkcs1_and_sec1_formats() {
    let pki = pki();
    for (kind, marker) in [
        (KeyKind::Pkcs8Ec, "BEGIN PRIVATE KEY"),
        (KeyKind::Pkcs1Rsa, "BEGIN RSA PRIVATE KEY"),
        (KeyKind::Sec1Ec, "BEGIN EC PRIVATE KEY"),
    ] {
        let leaf = make_leaf(
            &pki.dir,
            &format!("server-{marker}").replace(' ', "-"),
            &pki.ca,
            "localhost",
            "DNS:localhost",
            kind,
        );
        let key = std::fs::read_to_string(&leaf.key).unwrap();
        assert!(key.contains(marker), "{marker}: {key}");
        let (srv, _store) = serve(server(tls(ServerTlsMode::Simple, files(&leaf, None)))).await;
        let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
            .await
            .unwrap_or_else(|e| panic!("{marker}: {e}"));
        assert_eq!(c.server_cert, leaf.der(), "{marker}");
    }
}

#[tokio::test]
async fn mutual_requires_a_client_certificate_signed_by_the_ca() {
    let pki = pki();
    let (mut srv, _store) = serve(server(tls(
        ServerTlsMode::Mutual,
        files(&pki.server, Some(&pki.ca)),
    )))
    .await;

    let err = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .err()
        .expect("a client without a certificate is refused");
    assert!(err.contains("CertificateRequired"), "{err}");
    srv.refused("peer sent no certificates").await;

    let c = connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client).build(),
    )
    .await
    .expect("a client signed by the CA is accepted");
    assert_eq!(c.server_cert, pki.server.der());
    let accepted = srv.next_accepted().await.unwrap();
    assert_eq!(accepted.peer.as_deref(), Some(CLIENT_URI));

    assert!(connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.stranger).build()
    )
    .await
    .is_err());
    srv.refused("UnknownIssuer").await;
}

#[tokio::test]
async fn optional_mutual_accepts_clients_with_and_without_certificates() {
    let pki = pki();
    let (mut srv, _store) = serve(server(tls(
        ServerTlsMode::OptionalMutual,
        files(&pki.server, Some(&pki.ca)),
    )))
    .await;

    connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .expect("no certificate is fine");
    assert_eq!(srv.next_accepted().await.unwrap().peer, None);

    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client).build(),
    )
    .await
    .expect("a valid certificate is fine");
    assert_eq!(
        srv.next_accepted().await.unwrap().peer.as_deref(),
        Some(CLIENT_URI)
    );

    assert!(
        connect(
            srv.addr,
            ClientOpts::new(&pki.ca.cert).cert(&pki.stranger).build()
        )
        .await
        .is_err(),
        "a certificate that is sent is verified"
    );
    srv.refused("UnknownIssuer").await;
}

#[tokio::test]
async fn subject_alt_names_restrict_accepted_client_certificates() {
    let pki = pki();
    let mut settings = tls(ServerTlsMode::Mutual, files(&pki.server, Some(&pki.ca)));
    settings.subject_alt_names = vec![CLIENT_URI.into(), "OTHER.example.com".into()];
    let (mut srv, _store) = serve(server(settings)).await;

    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client).build(),
    )
    .await
    .expect("URI SAN listed");
    srv.next_accepted().await.unwrap();

    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client_dns).build(),
    )
    .await
    .expect("DNS SAN listed (case-insensitive)");
    assert_eq!(
        srv.next_accepted().await.unwrap().peer.as_deref(),
        Some("other.example.com")
    );

    assert!(connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client_cn).build()
    )
    .await
    .is_err());
    srv.refused("match none of subjectAltNames").await;

    // Still checked against the CA first.
    assert!(connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.stranger).build()
    )
    .await
    .is_err());
    srv.refused("UnknownIssuer").await;
}

#[tokio::test]
async fn peer_identity_falls_back_to_dns_san_then_common_name() {
    let pki = pki();
    let (mut srv, _store) = serve(server(tls(
        ServerTlsMode::OptionalMutual,
        files(&pki.server, Some(&pki.ca)),
    )))
    .await;
    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client_dns).build(),
    )
    .await
    .unwrap();
    assert_eq!(
        srv.next_accepted().await.unwrap().peer.as_deref(),
        Some("other.example.com")
    );
    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client_cn).build(),
    )
    .await
    .unwrap();
    assert_eq!(
        srv.next_accepted().await.unwrap().peer.as_deref(),
        Some("plain-client")
    );
}

#[tokio::test]
async fn secret_credential_serves_pem_bytes_and_its_ca() {
    let pki = pki();
    let (mut srv, _store) = serve(server(tls(
        ServerTlsMode::Mutual,
        secret(&pki.server, Some(&pki.ca)),
    )))
    .await;
    let c = connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client).build(),
    )
    .await
    .expect("Secret-based MUTUAL");
    assert_eq!(c.server_cert, pki.server.der());
    srv.next_accepted().await.unwrap();
    assert!(connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.stranger).build()
    )
    .await
    .is_err());
}

#[tokio::test]
async fn secret_rotation_swaps_the_certificate_and_keeps_the_last_good_one() {
    let pki = pki();
    let store = Arc::new(ServerTlsStore::default());
    let gw1 = server(tls(ServerTlsMode::Simple, secret(&pki.server, None)));
    let config1 = store.config_for(&gw1).unwrap();
    // The same bytes in a newer snapshot (new Arcs): the same configuration.
    let same = server(tls(ServerTlsMode::Simple, secret(&pki.server, None)));
    assert!(Arc::ptr_eq(&config1, &store.config_for(&same).unwrap()));

    let current = Arc::new(std::sync::Mutex::new(gw1));
    let (s, cur) = (store.clone(), current.clone());
    let srv = spawn_server(move || s.config_for(&cur.lock().unwrap().clone())).await;
    let mut first = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(first.server_cert, pki.server.der());

    let renewed = make_leaf(
        &pki.dir,
        "renewed",
        &pki.ca,
        "localhost",
        "DNS:localhost",
        KeyKind::Sec1Ec,
    );
    *current.lock().unwrap() = server(tls(ServerTlsMode::Simple, secret(&renewed, None)));
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(
        c.server_cert,
        renewed.der(),
        "the next handshake has the new cert"
    );
    first
        .ping()
        .await
        .expect("established connection unaffected");
    let gw_now = current.lock().unwrap().clone();
    assert!(
        Arc::ptr_eq(&config1, &store.config_for(&gw_now).unwrap()),
        "a new certificate does not rebuild the configuration"
    );

    // Broken bytes: the last good certificate stays.
    *current.lock().unwrap() = server(tls(
        ServerTlsMode::Simple,
        Credential::Secret {
            name: "istio-system/gw-credential".into(),
            cert: b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"[..]
                .into(),
            key: bytes(&renewed.key),
            ca: None,
        },
    ));
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(c.server_cert, renewed.der());
}

#[tokio::test]
async fn min_tls13_refuses_a_tls12_only_client() {
    let pki = pki();
    let mut settings = tls(ServerTlsMode::Simple, files(&pki.server, None));
    settings.min_version = Some(TlsVersion::Tls13);
    let (mut srv, _store) = serve(server(settings)).await;

    let mut opts = ClientOpts::new(&pki.ca.cert);
    opts.versions = TLS12_ONLY;
    assert!(connect(srv.addr, opts.build()).await.is_err());
    srv.refused("Tls12NotOfferedOrEnabled").await;

    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(c.version, Some(ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn max_tls12_and_min_tls10_negotiate_tls12() {
    let pki = pki();
    let mut settings = tls(ServerTlsMode::Simple, files(&pki.server, None));
    settings.min_version = Some(TlsVersion::Tls10);
    settings.max_version = Some(TlsVersion::Tls12);
    let (srv, _store) = serve(server(settings)).await;
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(c.version, Some(ProtocolVersion::TLSv1_2));

    let mut bad = tls(ServerTlsMode::Simple, files(&pki.server, None));
    bad.max_version = Some(TlsVersion::Tls11);
    let err = ServerTlsStore::default()
        .config_for(&server(bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("TLSV1_1"), "{err}");
}

#[tokio::test]
async fn cipher_suites_restrict_tls12_and_keep_tls13() {
    let pki = pki();
    let mut settings = tls(ServerTlsMode::Simple, files(&pki.server, None));
    settings.cipher_suites = vec!["ECDHE-ECDSA-AES128-GCM-SHA256".into()];
    let (mut srv, _store) = serve(server(settings)).await;

    let tls12_with = |suite: SupportedCipherSuite| {
        let mut opts = ClientOpts::new(&pki.ca.cert);
        opts.versions = TLS12_ONLY;
        opts.suites = Some(vec![suite]);
        opts.build()
    };
    assert!(connect(
        srv.addr,
        tls12_with(cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
    )
    .await
    .is_err());
    srv.refused("NoCipherSuitesInCommon").await;

    let c = connect(
        srv.addr,
        tls12_with(cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    )
    .await
    .unwrap();
    assert_eq!(
        c.suite,
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );
    srv.next_accepted().await.unwrap();

    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .expect("TLS 1.3 suites are always available");
    assert_eq!(c.version, Some(ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn unknown_cipher_suite_is_an_error_naming_it() {
    let pki = pki();
    let mut settings = tls(ServerTlsMode::Simple, files(&pki.server, None));
    settings.cipher_suites = vec![
        "ECDHE-RSA-AES128-GCM-SHA256".into(),
        "ECDHE-RSA-AES999-GCM".into(),
    ];
    let err = ServerTlsStore::default()
        .config_for(&server(settings))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ECDHE-RSA-AES999-GCM"), "{err}");
    assert!(err.contains("Gateway default/gw servers[0]"), "{err}");
}

/// Replaces `dst` atomically (write aside, rename), as Kubernetes and `mv` do.
fn replace_file(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_dropping_connections() {
    let pki = pki();
    // The files the server reads, distinct from the generated ones.
    let live = Leaf {
        cert: pki.dir.join("live.pem"),
        key: pki.dir.join("live.key"),
    };
    replace_file(&pki.server.cert, &live.cert);
    replace_file(&pki.server.key, &live.key);
    let (srv, _store) = serve(server(tls(ServerTlsMode::Simple, files(&live, None)))).await;

    let mut established = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(established.server_cert, pki.server.der());

    let renewed = make_leaf(
        &pki.dir,
        "renewed",
        &pki.ca,
        "localhost",
        "DNS:localhost",
        KeyKind::Pkcs8Ec,
    );
    replace_file(&renewed.key, &live.key);
    replace_file(&renewed.cert, &live.cert);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(
        c.server_cert,
        renewed.der(),
        "new certificate after ≤ 1.1 s"
    );
    established
        .ping()
        .await
        .expect("the established connection keeps working");

    // Overwritten in place with garbage: the last good certificate stays.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .expect("still served with the last good certificate");
    assert_eq!(c.server_cert, renewed.der());

    // Fixed again (same key): picked up.
    let third = make_leaf(
        &pki.dir,
        "third",
        &pki.ca,
        "localhost",
        "DNS:localhost",
        KeyKind::Pkcs8Ec,
    );
    replace_file(&third.key, &live.key);
    replace_file(&third.cert, &live.cert);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = connect(srv.addr, ClientOpts::new(&pki.ca.cert).build())
        .await
        .unwrap();
    assert_eq!(c.server_cert, third.der());
    established.ping().await.unwrap();
}

#[tokio::test]
async fn rotated_client_ca_file_rebuilds_the_verifier() {
    let pki = pki();
    let ca_file = pki.dir.join("live-ca.pem");
    replace_file(&pki.ca.cert, &ca_file);
    let settings = tls(
        ServerTlsMode::Mutual,
        Credential::Files {
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            ca: Some(ca_file.clone()),
        },
    );
    let (mut srv, _store) = serve(server(settings)).await;
    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client).build(),
    )
    .await
    .unwrap();
    srv.next_accepted().await.unwrap();

    replace_file(&pki.other_ca.cert, &ca_file);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.stranger).build(),
    )
    .await
    .expect("the new CA is trusted");
    srv.next_accepted().await.unwrap();
    assert!(connect(
        srv.addr,
        ClientOpts::new(&pki.ca.cert).cert(&pki.client).build()
    )
    .await
    .is_err());
    srv.refused("UnknownIssuer").await;
}

#[tokio::test]
async fn unusable_settings_update_keeps_the_last_good_configuration() {
    let pki = pki();
    let store = ServerTlsStore::default();
    let good = server(tls(ServerTlsMode::Simple, files(&pki.server, None)));
    let config = store.config_for(&good).unwrap();
    let broken = server(tls(
        ServerTlsMode::Simple,
        Credential::Files {
            cert: pki.dir.join("nope.pem"),
            key: pki.server.key.clone(),
            ca: None,
        },
    ));
    assert!(Arc::ptr_eq(&config, &store.config_for(&broken).unwrap()));
    // Without a previous configuration, the same settings are an error naming the file.
    let err = ServerTlsStore::default()
        .config_for(&broken)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.pem"), "{err}");
}

#[tokio::test]
async fn missing_credentials_and_non_terminating_modes_are_errors() {
    let pki = pki();
    let store = ServerTlsStore::default();
    let err = store
        .config_for(&server(tls(
            ServerTlsMode::Simple,
            Credential::Missing {
                reason: "Secret istio-system/nope not found".into(),
            },
        )))
        .unwrap_err()
        .to_string();
    assert!(err.contains("istio-system/nope not found"), "{err}");
    assert!(err.contains("Gateway default/gw servers[0]"), "{err}");

    // A credential removed from a working server is not papered over.
    let other = GatewayServer {
        source: "Gateway default/gw servers[1]".into(),
        ..server(tls(ServerTlsMode::Simple, files(&pki.server, None)))
    };
    store.config_for(&other).unwrap();
    let mut gone = other.clone();
    gone.tls = Some(tls(ServerTlsMode::Simple, Credential::None));
    assert!(store.config_for(&gone).is_err());

    let err = store
        .config_for(&server(tls(
            ServerTlsMode::Mutual,
            files(&pki.server, None),
        )))
        .unwrap_err()
        .to_string();
    assert!(err.contains("client CA"), "{err}");

    let err = store
        .config_for(&server(tls(
            ServerTlsMode::Passthrough,
            files(&pki.server, None),
        )))
        .unwrap_err()
        .to_string();
    assert!(err.contains("PASSTHROUGH"), "{err}");

    let mismatched = server(tls(
        ServerTlsMode::Simple,
        Credential::Files {
            cert: pki.server.cert.clone(),
            key: pki.client.key.clone(),
            ca: None,
        },
    ));
    let err = ServerTlsStore::default()
        .config_for(&mismatched)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
}
