//! What a gateway proxy (`sluice gateway`) serves: the Gateway servers selected by its labels,
//! grouped by port, the TLS each server terminates (or passes through), and the VirtualService
//! routes bound to them. Kubernetes Ingresses of class `istio` are translated into the same form.
//! Compiled into the [`Snapshot`](crate::Snapshot) of a proxy whose kind is
//! [`ProxyKind::Gateway`](crate::snapshot::ProxyKind).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use sluice_api::kube::SecretData;
use sluice_api::networking::{Labels, ServerTlsSettings};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use crate::registry::{labels_subset, Protocol};

/// One listening port of the gateway and the servers (of any selected Gateway) on it.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayPort {
    pub number: u16,
    /// Servers on this port, in Gateway creation order. Several servers share a port when they
    /// differ by host (and, for TLS, by SNI / certificate).
    pub servers: Vec<Arc<GatewayServer>>,
}

impl GatewayPort {
    /// The server on this port that owns requests for `host` (lowercase, no port): the one whose
    /// hosts match it most specifically. `None` when no server covers the host (Envoy has no
    /// virtual host for it: 404 NR).
    pub fn server_for_host(&self, host: &str) -> Option<&Arc<GatewayServer>> {
        self.servers
            .iter()
            .filter_map(|s| s.best_host_for(host).map(|h| (h, s)))
            .min_by(|a, b| crate::host::specificity(a.0, b.0))
            .map(|(_, s)| s)
    }

    /// True when a plain-HTTP request for `host` (lowercase, no port) on this port must be
    /// answered with a redirect to HTTPS: the server that owns the host has `tls.httpsRedirect`
    /// (Envoy `require_tls: ALL` on its virtual hosts, which applies whether or not a
    /// VirtualService is bound).
    pub fn requires_https_redirect(&self, host: &str) -> bool {
        self.server_for_host(host)
            .and_then(|s| s.tls.as_ref())
            .is_some_and(|t| t.https_redirect)
    }

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

/// `ns/name` of the Gateway a VirtualService `gateways` entry names, as Istio's
/// `resolveGatewayName`: `ns/name` (`./name` = the VirtualService's namespace), a legacy
/// `name.ns[.svc.cluster.local]`, or a bare `name` in the VirtualService's namespace. `None` for
/// `mesh`.
pub fn resolve_gateway_name(entry: &str, vs_namespace: &str) -> Option<String> {
    let entry = entry.trim();
    if entry == "mesh" || entry.is_empty() {
        return None;
    }
    Some(match entry.split_once('/') {
        Some((".", name)) => format!("{vs_namespace}/{name}"),
        Some((ns, name)) => format!("{ns}/{name}"),
        None => match entry.split_once('.') {
            Some((name, rest)) => {
                let ns = rest.split('.').next().unwrap_or(vs_namespace);
                format!("{ns}/{name}")
            }
            None => format!("{vs_namespace}/{entry}"),
        },
    })
}

impl GatewayHost {
    /// Parses a server host `[ns/]dnsName` of a Gateway in `gateway_ns`.
    pub fn parse(written: &str, gateway_ns: &str) -> GatewayHost {
        let (ns, host) = match written.split_once('/') {
            Some((".", h)) => (Some(gateway_ns), h),
            Some(("*", h)) => (None, h),
            Some((ns, h)) => (Some(ns), h),
            None => (None, written),
        };
        GatewayHost {
            namespace: ns.map(Arc::from),
            host: host.to_ascii_lowercase().into(),
        }
    }

    /// True if this server host admits the VirtualService host `vs_host` of a VirtualService
    /// in `vs_namespace` (Istio's `pickMatchingGatewayHosts`).
    pub fn admits(&self, vs_host: &str, vs_namespace: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == vs_namespace)
            && crate::host::intersects(&self.host, vs_host)
    }
}

impl TlsVersion {
    /// Parses `TLSV1_0` … `TLSV1_3`; `TLS_AUTO` (and anything else) is `None`.
    pub fn parse(s: &str) -> Option<TlsVersion> {
        match s.to_ascii_uppercase().as_str() {
            "TLSV1_0" => Some(TlsVersion::Tls10),
            "TLSV1_1" => Some(TlsVersion::Tls11),
            "TLSV1_2" => Some(TlsVersion::Tls12),
            "TLSV1_3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

impl ServerTlsMode {
    /// Parses `tls.mode`; an absent mode is PASSTHROUGH, the enum's zero value.
    pub fn parse(s: Option<&str>) -> ServerTlsMode {
        match s.unwrap_or("").to_ascii_uppercase().as_str() {
            "SIMPLE" => ServerTlsMode::Simple,
            "MUTUAL" => ServerTlsMode::Mutual,
            "OPTIONAL_MUTUAL" => ServerTlsMode::OptionalMutual,
            "AUTO_PASSTHROUGH" => ServerTlsMode::AutoPassthrough,
            "ISTIO_MUTUAL" => ServerTlsMode::IstioMutual,
            _ => ServerTlsMode::Passthrough,
        }
    }
}

/// The `<name>-cacert` suffix of a Secret holding only the client CA (Istio's `SdsCaSuffix`).
pub const CA_SECRET_SUFFIX: &str = "-cacert";

/// The Secrets of a config by namespace and name (the first definition of each), so that a
/// `credentialName` is found without looking through every resource: a Gateway with thousands
/// of servers made that quadratic.
pub struct Secrets<'a> {
    by_name: HashMap<(&'a str, &'a str), &'a SecretData>,
}

impl<'a> Secrets<'a> {
    /// Indexes the Secrets among `resources`.
    pub fn new(resources: &'a [Resource]) -> Self {
        let mut by_name = HashMap::new();
        for r in resources {
            if let Spec::Secret { data, .. } = &r.spec {
                by_name
                    .entry((r.meta.namespace.as_str(), r.meta.name.as_str()))
                    .or_insert(data);
            }
        }
        Secrets { by_name }
    }

    pub(crate) fn get(&self, ns: &str, name: &str) -> Option<&'a SecretData> {
        crate::work_count(1);
        self.by_name.get(&(ns, name)).copied()
    }
}

fn non_empty<'a>(data: &'a SecretData, key: &str) -> Option<&'a [u8]> {
    data.get(key).map(Vec::as_slice).filter(|v| !v.is_empty())
}

/// The Secret (`namespace`, `name`) a `credentialName` (also `kubernetes://[ns/]name`) names,
/// in `default_ns` when it names no namespace.
pub(crate) fn credential_secret<'a>(
    credential_name: &'a str,
    default_ns: &'a str,
) -> (&'a str, &'a str) {
    let reference = credential_name
        .strip_prefix("kubernetes://")
        .unwrap_or(credential_name);
    reference.split_once('/').unwrap_or((default_ns, reference))
}

/// Resolves a `credentialName` (also `kubernetes://[ns/]name`) to the Secret's certificate, key
/// and CA, looked up in `proxy_ns` (the gateway workload's namespace) as Istio's SDS does. The
/// generic keys `cert`/`key`/`cacert` are tried before `tls.crt`/`tls.key`/`ca.crt`; the CA of
/// `<name>-cacert` wins over the Secret's own. `Err` carries the reason, in Istio's words.
pub fn resolve_credential(
    secrets: &Secrets<'_>,
    proxy_ns: &str,
    credential_name: &str,
) -> Result<Credential, String> {
    let (ns, name) = credential_secret(credential_name, proxy_ns);
    let Some(data) = secrets.get(ns, name) else {
        return Err(format!(
            "Secret {ns}/{name} not found (credentialName is looked up in the gateway proxy's namespace, {proxy_ns})"
        ));
    };
    let pair = [("cert", "key"), ("tls.crt", "tls.key")]
        .into_iter()
        .find(|(c, k)| data.contains_key(*c) && data.contains_key(*k));
    let Some((cert_key, key_key)) = pair else {
        let found: Vec<&str> = data.keys().map(String::as_str).collect();
        return Err(format!(
            "Secret {ns}/{name} has neither \"cert\" and \"key\" nor \"tls.crt\" and \"tls.key\"; found keys: {}",
            found.join(", ")
        ));
    };
    let (Some(cert), Some(key)) = (non_empty(data, cert_key), non_empty(data, key_key)) else {
        return Err(format!(
            "Secret {ns}/{name}: found keys \"{cert_key}\" and \"{key_key}\", but they were empty"
        ));
    };
    let ca = secrets
        .get(ns, &format!("{name}{CA_SECRET_SUFFIX}"))
        .and_then(|d| non_empty(d, "cacert").or_else(|| non_empty(d, "ca.crt")))
        .or_else(|| non_empty(data, "cacert").or_else(|| non_empty(data, "ca.crt")));
    Ok(Credential::Secret {
        name: format!("{ns}/{name}").into(),
        cert: Arc::from(cert),
        key: Arc::from(key),
        ca: ca.map(Arc::from),
    })
}

/// Resolves a server's `tls` block. `Err` is a problem to report on `tls.credentialName` (the
/// server keeps a [`Credential::Missing`]).
fn server_tls(
    secrets: &Secrets<'_>,
    proxy_ns: &str,
    protocol: Protocol,
    tls: &ServerTlsSettings,
) -> (ServerTls, Option<String>) {
    let only_redirect = tls.mode.is_none()
        && tls.https_redirect
        && tls.server_certificate.is_none()
        && tls.credential_name.is_none()
        && tls.credential_names.is_empty();
    let mode = if only_redirect && !protocol.is_tls() {
        ServerTlsMode::HttpsRedirectOnly
    } else {
        ServerTlsMode::parse(tls.mode.as_deref())
    };
    let mut problem = None;
    let credential = match mode {
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            let name = tls
                .credential_name
                .as_deref()
                .or(tls.credential_names.first().map(String::as_str))
                .filter(|n| !n.is_empty());
            match (name, &tls.server_certificate, &tls.private_key) {
                (Some(name), _, _) => match resolve_credential(secrets, proxy_ns, name) {
                    Ok(c) => c,
                    Err(reason) => {
                        problem = Some(reason.clone());
                        Credential::Missing {
                            reason: reason.into(),
                        }
                    }
                },
                (None, Some(cert), Some(key)) => Credential::Files {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                    ca: tls.ca_certificates.as_deref().map(PathBuf::from),
                },
                _ => Credential::Missing {
                    reason: "no credentialName and no serverCertificate/privateKey".into(),
                },
            }
        }
        _ => Credential::None,
    };
    let tls = ServerTls {
        mode,
        https_redirect: tls.https_redirect,
        credential,
        min_version: tls
            .min_protocol_version
            .as_deref()
            .and_then(TlsVersion::parse),
        max_version: tls
            .max_protocol_version
            .as_deref()
            .and_then(TlsVersion::parse),
        cipher_suites: tls.cipher_suites.clone(),
        subject_alt_names: tls.subject_alt_names.clone(),
    };
    (tls, problem)
}

/// The servers of every Gateway (any namespace) whose `selector` is a subset of `labels` (no
/// selector: every gateway proxy), grouped by port number (ports ascending; servers in the order
/// of `resources`, oldest Gateway first). Credential problems are reported as warnings.
pub fn build_ports(
    resources: &[Resource],
    proxy_ns: &str,
    labels: &Labels,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<GatewayPort> {
    let mut ports: BTreeMap<u16, Vec<Arc<GatewayServer>>> = BTreeMap::new();
    let secrets = Secrets::new(resources);
    for res in resources {
        let Spec::Gateway(gw) = &res.spec else {
            continue;
        };
        if !labels_subset(&gw.selector, labels) {
            continue;
        }
        let ns = res.meta.namespace.as_str();
        let key = res.key();
        for (i, server) in gw.servers.iter().enumerate() {
            let Some(number) = u16::try_from(server.port.number).ok().filter(|n| *n != 0) else {
                continue;
            };
            let protocol = Protocol::of_port(server.port.protocol.as_deref(), &server.port.name);
            let tls = server.tls.as_ref().map(|t| {
                let (tls, problem) = server_tls(&secrets, proxy_ns, protocol, t);
                if let Some(reason) = problem {
                    diagnostics.push(Diagnostic::at(
                        res,
                        Severity::Warning,
                        format!("spec.servers[{i}].tls.credentialName"),
                        format!("{reason}; this server refuses TLS handshakes"),
                    ));
                }
                tls
            });
            let hosts = if server.hosts.is_empty() {
                vec![GatewayHost::parse("*", ns)]
            } else {
                server
                    .hosts
                    .iter()
                    .map(|h| GatewayHost::parse(h, ns))
                    .collect()
            };
            let name = server
                .name
                .as_deref()
                .or(Some(server.port.name.as_str()))
                .filter(|n| !n.is_empty())
                .map(Arc::from);
            ports
                .entry(number)
                .or_default()
                .push(Arc::new(GatewayServer {
                    source: format!("Gateway {key} servers[{i}]").into(),
                    gateway: key.as_str().into(),
                    name,
                    protocol,
                    hosts,
                    tls,
                }));
        }
    }
    ports
        .into_iter()
        .map(|(number, servers)| GatewayPort { number, servers })
        .collect()
}

impl GatewayServer {
    /// The most specific of this server's hosts that matches `name`, if any.
    pub fn best_host_for(&self, name: &str) -> Option<&str> {
        self.hosts
            .iter()
            .map(|h| h.host.as_ref())
            .filter(|h| crate::host::matches(h, name))
            .min_by(|a, b| crate::host::specificity(a, b))
    }

    /// True if the server answers plain HTTP requests or terminates TLS and then serves HTTP.
    pub fn serves_http(&self) -> bool {
        match &self.tls {
            Some(t) if t.mode == ServerTlsMode::HttpsRedirectOnly => self.protocol.is_http(),
            Some(_) if self.terminates_tls() => {
                self.protocol.is_http() || self.protocol == Protocol::Https
            }
            Some(_) => false,
            None => self.protocol.is_http(),
        }
    }

    /// True if connections are routed on SNI without terminating TLS (VirtualService `tls`).
    pub fn passes_tls_through(&self) -> bool {
        match &self.tls {
            Some(t) => t.mode == ServerTlsMode::Passthrough,
            None => self.protocol.is_tls(),
        }
    }
}
