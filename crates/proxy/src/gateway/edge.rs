//! What a gateway does to requests at the edge of the mesh, before routing: the headers Envoy's
//! connection manager sets with `use_remote_address: true` and no trusted hops, the
//! `httpsRedirect` answer, and the misdirected-request check for TLS-terminated HTTP/2.
//!
//! Pure functions over header maps and snapshots, so they are tested without sockets.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_model::gateway::GatewayServer;
use sluice_model::host;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// The gateway listener a request arrived on. Gateways route by the listener's port (never by an
/// original destination), and a TLS-terminated connection remembers the server its handshake
/// chose.
#[derive(Debug, Clone)]
pub struct GatewayConn {
    /// The gateway port (Gateway `servers[].port.number`) the connection was accepted on.
    pub port: u16,
    /// For TLS-terminated connections: the server chosen by SNI at the handshake.
    pub tls_server: Option<Arc<GatewayServer>>,
    /// The SNI the client sent (`%REQUESTED_SERVER_NAME%`).
    pub sni: Option<Arc<str>>,
    /// The client's verified certificate identity when the handshake required one
    /// (ISTIO_MUTUAL, MUTUAL): authorization principal, `%DOWNSTREAM_PEER_URI_SAN%`, metrics.
    pub peer: Option<crate::stream::DownstreamPeer>,
}

impl GatewayConn {
    /// True when the connection is TLS, so `x-forwarded-proto` is `https`.
    pub fn is_tls(&self) -> bool {
        self.tls_server.is_some()
    }
}

/// Applies Envoy's edge-request header rules for `use_remote_address: true` with
/// `xff_num_trusted_hops: 0`: the client's address is appended to `x-forwarded-for` (the
/// client-supplied part is kept but not trusted), `x-forwarded-proto` is overwritten with the
/// connection's scheme, and `x-envoy-external-address` names the client.
///
/// Every client counts as external: Envoy's current default internal-address configuration is
/// empty, so no address (not even RFC 1918 or loopback) is treated as internal.
pub fn apply_edge_headers(headers: &mut HeaderMap, client: IpAddr, tls: bool) {
    append_forwarded_for(headers, client);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    headers.insert(
        X_ENVOY_EXTERNAL_ADDRESS.clone(),
        HeaderValue::from(IpString(client)),
    );
}

/// Appends `client` to `x-forwarded-for`, joining repeated header lines into one
/// comma-separated value as Envoy does (`a, b` + `c` → `a, b, c`).
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let existing: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if existing.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", existing.join(", "))
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        Err(_) => {
            // The old value was not valid text: Envoy would have rejected the request; keep
            // only what we know.
            headers.insert(X_FORWARDED_FOR.clone(), HeaderValue::from(IpString(client)));
        }
    }
}

struct IpString(IpAddr);

impl From<IpString> for HeaderValue {
    fn from(ip: IpString) -> HeaderValue {
        // An IP address is always a valid header value.
        HeaderValue::from_str(&ip.0.to_string()).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// The host of a request authority, lowercase, without the port (what server hosts match).
pub fn request_host(authority: &str) -> String {
    host::strip_port(authority).to_ascii_lowercase()
}

/// `Location` of the `httpsRedirect` answer: `https://<host without port><path and query>`
/// (the HTTPS port is the default 443, so no port is written).
pub fn https_redirect_location(authority: &str, path_and_query: &str) -> String {
    let host = host::strip_port(authority);
    let path = if path_and_query.is_empty() {
        "/"
    } else {
        path_and_query
    };
    format!("https://{host}{path}")
}

/// True when a request on a TLS-terminated connection names a host that the server chosen at
/// the handshake does not cover. Browsers reuse one HTTP/2 connection for every name a
/// certificate covers (connection coalescing); Envoy would route such a request by its
/// `:authority` to a virtual host the handshake never agreed to, or answer 404 (istio#13589).
/// sluice answers 421 Misdirected Request instead, which tells the browser to open a new
/// connection with the right SNI (RFC 9110 §15.5.20).
pub fn is_misdirected(server: &GatewayServer, authority: &str) -> bool {
    let host = request_host(authority);
    !host.is_empty() && !server.covers_host(&host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::gateway::{Credential, GatewayHost, GatewayPort, ServerTls, ServerTlsMode};
    use sluice_model::Protocol;

    fn server(hosts: &[&str], tls: Option<ServerTlsMode>) -> Arc<GatewayServer> {
        Arc::new(GatewayServer {
            source: Arc::from("Gateway istio-system/gw servers[0]"),
            gateway: Arc::from("istio-system/gw"),
            name: None,
            protocol: if tls.is_some_and(|m| m != ServerTlsMode::HttpsRedirectOnly) {
                Protocol::Https
            } else {
                Protocol::Http
            },
            hosts: hosts
                .iter()
                .map(|h| GatewayHost {
                    namespace: None,
                    host: Arc::from(*h),
                })
                .collect(),
            tls: tls.map(|mode| ServerTls {
                mode,
                https_redirect: mode == ServerTlsMode::HttpsRedirectOnly,
                credential: Credential::None,
                min_version: None,
                max_version: None,
                cipher_suites: Vec::new(),
                subject_alt_names: Vec::new(),
            }),
        })
    }

    #[test]
    fn xff_is_created_then_appended() {
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, client);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");

        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, client);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
    }

    #[test]
    fn edge_headers_overwrite_proto_and_name_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            "x-envoy-external-address",
            HeaderValue::from_static("6.6.6.6"),
        );
        apply_edge_headers(&mut h, "192.0.2.7".parse().unwrap(), false);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-envoy-external-address"], "192.0.2.7");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        apply_edge_headers(&mut h, "::1".parse().unwrap(), true);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7, ::1");
    }

    #[test]
    fn redirect_location_drops_the_port() {
        assert_eq!(
            https_redirect_location("example.com:8080", "/a?b=1"),
            "https://example.com/a?b=1"
        );
        assert_eq!(
            https_redirect_location("example.com", ""),
            "https://example.com/"
        );
        assert_eq!(https_redirect_location("[::1]:80", "/x"), "https://[::1]/x");
    }

    #[test]
    fn https_redirect_follows_the_server_that_owns_the_host() {
        let requires_https_redirect =
            |port: &GatewayPort, host: &str| port.requires_https_redirect(host);
        let port = GatewayPort {
            number: 80,
            servers: vec![
                server(&["*"], None),
                server(
                    &["secure.example.com"],
                    Some(ServerTlsMode::HttpsRedirectOnly),
                ),
            ],
        };
        assert!(requires_https_redirect(&port, "secure.example.com"));
        assert!(!requires_https_redirect(&port, "other.example.com"));
        let only = GatewayPort {
            number: 80,
            servers: vec![server(
                &["*.example.com"],
                Some(ServerTlsMode::HttpsRedirectOnly),
            )],
        };
        assert!(requires_https_redirect(&only, "a.example.com"));
        assert!(!requires_https_redirect(&only, "example.com"));
    }

    #[test]
    fn misdirected_when_the_handshake_server_does_not_cover_the_host() {
        let s = server(
            &["a.example.com", "*.b.example.com"],
            Some(ServerTlsMode::Simple),
        );
        assert!(!is_misdirected(&s, "a.example.com"));
        assert!(!is_misdirected(&s, "A.example.com:443"));
        assert!(!is_misdirected(&s, "x.b.example.com"));
        assert!(is_misdirected(&s, "c.example.com"));
        let any = server(&["*"], Some(ServerTlsMode::Simple));
        assert!(!is_misdirected(&any, "anything.test"));
    }
}
