//! The record the data path fills for one access log line.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method};

/// Everything one access log line can show about one HTTP request or one TCP/TLS connection.
///
/// Unset fields (`None`, empty strings) print as `-` in TEXT and `null` in JSON. A record is a TCP record
/// when [`protocol`](Self::protocol) is `None`: then `%REQ(…)%`, `%RESP(…)%` and `%PROTOCOL%` print `-`
/// whatever else is set, and `%RESPONSE_CODE%` prints `0`.
///
/// Field types are chosen so the data path can fill them without copying: header-derived values are
/// [`HeaderValue`]s (a reference-counted clone), names shared by many requests (cluster, route, SNI)
/// are `Arc<str>`, and fixed vocabulary (flags, details) is `Cow<'static, str>`.
#[derive(Debug, Clone)]
pub struct AccessLogRecord {
    /// When the request (or connection) started: `%START_TIME%`.
    pub start_time: SystemTime,
    /// `%REQ(:METHOD)%`.
    pub method: Option<Method>,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the path before any rewrite, with its query string.
    pub path: Option<String>,
    /// `%PROTOCOL%`: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`; `None` marks a TCP/TLS record. See [`protocol_name`].
    pub protocol: Option<&'static str>,
    /// `%RESPONSE_CODE%`; 0 for TCP and when no response was sent (e.g. `DC`).
    pub response_code: u16,
    /// `%RESPONSE_FLAGS%`: Envoy short flags, comma-joined (`UF,URX`); empty or `-` when none.
    pub response_flags: Cow<'static, str>,
    /// `%RESPONSE_CODE_DETAILS%`, e.g. `via_upstream`, `route_not_found`.
    pub response_code_details: Option<Cow<'static, str>>,
    /// `%CONNECTION_TERMINATION_DETAILS%`.
    pub connection_termination_details: Option<Cow<'static, str>>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, e.g. a TLS handshake error.
    pub upstream_transport_failure_reason: Option<Cow<'static, str>>,
    /// `%BYTES_RECEIVED%`: body bytes from the client (HTTP) or all bytes from the client (TCP).
    pub bytes_received: u64,
    /// `%BYTES_SENT%`: body bytes to the client (HTTP) or all bytes to the client (TCP).
    pub bytes_sent: u64,
    /// `%DURATION%`, printed in whole milliseconds.
    pub duration: Duration,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%` in milliseconds.
    pub upstream_service_time: Option<u64>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    pub x_forwarded_for: Option<HeaderValue>,
    /// `%REQ(USER-AGENT)%`.
    pub user_agent: Option<HeaderValue>,
    /// `%REQ(X-REQUEST-ID)%`.
    pub request_id: Option<HeaderValue>,
    /// `%REQ(:AUTHORITY)%` (the Host header for HTTP/1).
    pub authority: Option<HeaderValue>,
    /// `%UPSTREAM_HOST%`: the endpoint the request went to.
    pub upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER%` / `%UPSTREAM_CLUSTER_RAW%`, e.g. `outbound|8000||httpbin.foo.svc.cluster.local`.
    pub upstream_cluster: Option<Arc<str>>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`: our side of the upstream connection.
    pub upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the original destination of the client's connection.
    pub downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the client certificate's URI SAN (mTLS).
    pub downstream_peer_uri_san: Option<Arc<str>>,
    /// `%REQUESTED_SERVER_NAME%`: the SNI the client sent.
    pub requested_server_name: Option<Arc<str>>,
    /// `%ROUTE_NAME%`, e.g. `default`, `block_all`, `allow_any`.
    pub route_name: Option<Arc<str>>,
    /// All request headers, for `%REQ(X)%` of headers without a dedicated field. Only needed when
    /// [`AccessLogger::needs_request_headers`](super::AccessLogger::needs_request_headers) says so; cloning a header map per request is not free.
    pub request_headers: Option<HeaderMap>,
    /// All response headers, for `%RESP(X)%`; see [`AccessLogger::needs_response_headers`](super::AccessLogger::needs_response_headers).
    pub response_headers: Option<HeaderMap>,
}

impl AccessLogRecord {
    /// A record with everything unset: a TCP record until [`protocol`](Self::protocol) is set.
    pub fn new(start_time: SystemTime) -> Self {
        AccessLogRecord {
            start_time,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: Cow::Borrowed("-"),
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            downstream_peer_uri_san: None,
            requested_server_name: None,
            route_name: None,
            request_headers: None,
            response_headers: None,
        }
    }

    /// Fills the request's side of an HTTP record from its head: method, path, protocol,
    /// `user-agent`, `x-forwarded-for`, `x-request-id`, and all headers when `with_headers` (a
    /// format that prints `%REQ(...)%` of others). Callers skip it when no log is written.
    pub fn set_request(&mut self, parts: &http::request::Parts, with_headers: bool) {
        self.method = Some(parts.method.clone());
        self.path = Some(
            parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        );
        self.protocol = Some(protocol_name(parts.version));
        let h = &parts.headers;
        self.user_agent = h.get(http::header::USER_AGENT).cloned();
        self.x_forwarded_for = h.get("x-forwarded-for").cloned();
        self.request_id = h.get("x-request-id").cloned();
        if with_headers {
            self.request_headers = Some(h.clone());
        }
    }

    /// True for a TCP/TLS connection record (no HTTP protocol).
    pub fn is_tcp(&self) -> bool {
        self.protocol.is_none()
    }
}

/// Envoy's `%PROTOCOL%` spelling of an HTTP version.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
