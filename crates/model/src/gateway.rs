//! What a gateway proxy (`sluice gateway`) serves: the Gateway servers selected by its labels,
//! grouped by port, the TLS each server terminates (or passes through), and the VirtualService
//! routes bound to them. Kubernetes Ingresses of class `istio` are translated into the same form.
//! Compiled into the [`Snapshot`](crate::Snapshot) of a proxy whose kind is
//! [`ProxyKind::Gateway`](crate::snapshot::ProxyKind).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::registry::Protocol;

/// One listening port of the gateway and the servers (of any selected Gateway) on it.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayPort {
    pub number: u16,
    /// Servers on this port, in Gateway creation order. Several servers share a port when they
    /// differ by host (and, for TLS, by SNI / certificate).
    pub servers: Vec<Arc<GatewayServer>>,
}

impl GatewayPort {
    /// True when connections on this port start with a TLS ClientHello (some server has `tls`
    /// other than `httpsRedirect` alone, or the protocol is HTTPS/TLS).
    pub fn expects_tls(&self) -> bool {
        self.servers.iter().any(|s| s.terminates_or_passes_tls())
    }
}

/// A Gateway `servers[]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayServer {
    /// `Gateway ns/name servers[i]`, for logs and explanations.
    pub source: Arc<str>,
    /// `ns/name` of the Gateway (what VirtualService `gateways` lists name).
    pub gateway: Arc<str>,
    /// `port.name` (or `servers[].name`), for stats.
    pub name: Option<Arc<str>>,
    /// `port.protocol` (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, …).
    pub protocol: Protocol,
    /// `hosts`, with any `ns/` prefix split off (`*` = any namespace).
    pub hosts: Vec<GatewayHost>,
    pub tls: Option<ServerTls>,
}

impl GatewayServer {
    /// True if this server's connections start with TLS (terminated or passed through).
    pub fn terminates_or_passes_tls(&self) -> bool {
        match &self.tls {
            Some(t) => t.mode != ServerTlsMode::HttpsRedirectOnly,
            None => self.protocol.is_tls(),
        }
    }

    /// True if `host` (lowercase, no port) is one of this server's hosts (wildcards included):
    /// a request on a TLS connection for a host the server does not cover gets 421.
    pub fn covers_host(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|h| crate::host::matches(&h.host, host))
    }

    /// True if the server terminates TLS and then serves HTTP (HTTPS with SIMPLE/MUTUAL/…).
    pub fn terminates_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| {
            matches!(
                t.mode,
                ServerTlsMode::Simple
                    | ServerTlsMode::Mutual
                    | ServerTlsMode::OptionalMutual
                    | ServerTlsMode::IstioMutual
            )
        })
    }
}

/// A server host `[namespace/]dnsName`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayHost {
    /// `None` for `*/` or no prefix (any namespace); `.` is already replaced by the Gateway's.
    pub namespace: Option<Arc<str>>,
    /// Lowercase DNS name, possibly a wildcard (`*`, `*.example.com`).
    pub host: Arc<str>,
}

/// `tls.mode` of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServerTlsMode {
    /// Route on SNI with VirtualService `tls` routes; TLS is not terminated.
    Passthrough,
    Simple,
    Mutual,
    OptionalMutual,
    AutoPassthrough,
    IstioMutual,
    /// `tls: {httpsRedirect: true}` on a plain HTTP server: not TLS at all, answer 301.
    HttpsRedirectOnly,
}

/// TLS protocol versions (`minProtocolVersion` / `maxProtocolVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

/// Where a server's certificate, key and client CA come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Credential {
    /// `serverCertificate` / `privateKey` / `caCertificates` file paths (re-read when they change).
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
    /// A Kubernetes Secret found in the gateway's namespace (`credentialName`): PEM bytes from
    /// `tls.crt`/`tls.key`/`ca.crt`, or `cert`/`key`/`cacert`, with the CA possibly from
    /// `<name>-cacert`.
    Secret {
        /// `ns/name`, for logs.
        name: Arc<str>,
        #[serde(skip)]
        cert: Arc<[u8]>,
        #[serde(skip)]
        key: Arc<[u8]>,
        #[serde(skip)]
        ca: Option<Arc<[u8]>>,
    },
    /// `credentialName` names no usable Secret: the server refuses handshakes (Envoy keeps such a
    /// listener without a certificate). The reason is also a snapshot diagnostic.
    Missing { reason: Arc<str> },
    /// ISTIO_MUTUAL / PASSTHROUGH / redirect-only: no certificate of its own here.
    None,
}

/// A server's `tls` block, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    /// `httpsRedirect`: plain HTTP requests get 301 to https.
    pub https_redirect: bool,
    pub credential: Credential,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// `cipherSuites` as written (OpenSSL/Envoy names such as `ECDHE-RSA-AES128-GCM-SHA256`).
    pub cipher_suites: Vec<String>,
    /// `subjectAltNames` a client certificate must carry (MUTUAL).
    pub subject_alt_names: Vec<String>,
}
