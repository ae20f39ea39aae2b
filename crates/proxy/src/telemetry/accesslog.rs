//! Envoy-compatible access logging.
//!
//! The data path fills one [`AccessLogRecord`] per HTTP request or TCP/TLS connection and hands it to
//! [`AccessLogger::log`], which renders the line with a pre-compiled [`AccessLogFormat`] and passes it to
//! a writer thread over a bounded channel. The data path therefore never waits on a disk or a pipe; when
//! the writer falls behind, lines are dropped and counted (`sluice_accesslog_dropped_total`).
//!
//! Formats follow Envoy's command operators (`%START_TIME%`, `%REQ(X?Y):N%`, …) and Istio's defaults:
//! [`ISTIO_DEFAULT_TEXT_FORMAT`] for TEXT and [`ISTIO_DEFAULT_JSON_KEYS`] for JSON encoding.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prometheus_client::metrics::counter::Counter;

/// Istio's default TEXT access log format (Istio ≥ 1.23, `EnvoyTextLogFormat`), byte for byte.
pub const ISTIO_DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON access log keys and operators (`EnvoyJSONLogFormatIstio`), in Istio's order.
pub const ISTIO_DEFAULT_JSON_KEYS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// How many rendered lines may wait for the writer before new ones are dropped.
const CHANNEL_CAPACITY: usize = 8192;

/// The path Istio and sluice use for "log to the proxy's standard output".
const STDOUT_PATH: &str = "/dev/stdout";
const STDERR_PATH: &str = "/dev/stderr";

// === AccessLogRecord ===

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
    /// [`AccessLogger::needs_request_headers`] says so; cloning a header map per request is not free.
    pub request_headers: Option<HeaderMap>,
    /// All response headers, for `%RESP(X)%`; see [`AccessLogger::needs_response_headers`].
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

// === Errors ===

/// A format string (mesh `accessLogFormat`) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A `%NAME%` that sluice does not know.
    #[error(
        "unknown access log command operator %{operator}%; supported operators: {}",
        SUPPORTED_OPERATORS
    )]
    UnknownOperator {
        /// The operator name as written, without `%`.
        operator: String,
    },
    /// Malformed operator syntax.
    #[error("access log format, byte {position}: {message}")]
    Syntax {
        /// Byte offset in the format string.
        position: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A JSON-encoded format that is not a JSON object of key → operator string.
    #[error("JSON access log format must be a JSON object mapping keys to format strings: {0}")]
    Json(String),
}

/// Why an [`AccessLogger`] could not be created or reconfigured.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The format did not compile.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The log file could not be opened for appending.
    #[error("cannot open access log file {}: {source}", path.display())]
    Open {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start access log writer thread: {0}")]
    Thread(io::Error),
}

const SUPPORTED_OPERATORS: &str = "START_TIME, START_TIME(fmt), REQ(h), REQ(h?h2):N, RESP(h), PROTOCOL, \
RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, \
UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, \
UPSTREAM_REMOTE_ADDRESS, UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS, \
DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, DOWNSTREAM_REMOTE_ADDRESS, \
DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_PEER_URI_SAN, REQUESTED_SERVER_NAME, ROUTE_NAME, \
HOSTNAME, and %% for a literal percent sign";

// === Encoding and config ===

/// The mesh `accessLogEncoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AccessLogEncoding {
    /// One line of text per record (Istio's default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for AccessLogEncoding {
    type Err = String;

    /// Parses the MeshConfig spelling (`TEXT`, `JSON`; case-insensitive, empty means TEXT).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(AccessLogEncoding::Text),
            s if s.eq_ignore_ascii_case("TEXT") => Ok(AccessLogEncoding::Text),
            s if s.eq_ignore_ascii_case("JSON") => Ok(AccessLogEncoding::Json),
            other => Err(format!(
                "unknown accessLogEncoding {other:?}: expected TEXT or JSON"
            )),
        }
    }
}

/// Where and how to write the access log (the mesh config's `accessLogFile`, `accessLogEncoding`,
/// `accessLogFormat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// File to append to; `/dev/stdout` and `/dev/stderr` mean the process's streams. `None` = off.
    pub path: Option<PathBuf>,
    /// TEXT or JSON.
    pub encoding: AccessLogEncoding,
    /// Custom format; `None` or empty = Istio's default for the encoding.
    pub format: Option<String>,
}

impl Default for AccessLogConfig {
    /// sluice's default without a mesh config: Istio's TEXT format on stdout. (Istio itself logs nothing
    /// when `accessLogFile` is empty; sluice's contract is to log by default.)
    fn default() -> Self {
        AccessLogConfig {
            path: Some(PathBuf::from(STDOUT_PATH)),
            encoding: AccessLogEncoding::Text,
            format: None,
        }
    }
}

impl AccessLogConfig {
    /// Logging switched off.
    pub fn off() -> Self {
        AccessLogConfig {
            path: None,
            ..Default::default()
        }
    }
}

// === Compiled format ===

/// A parsed access log format: a list of literal and operator segments, rendered without re-parsing.
#[derive(Debug, Clone)]
pub struct AccessLogFormat {
    body: FormatBody,
    needs_request_headers: bool,
    needs_response_headers: bool,
}

#[derive(Debug, Clone)]
enum FormatBody {
    Text(Vec<Segment>),
    /// Top-level JSON object.
    Json(Vec<JsonField>),
}

#[derive(Debug, Clone)]
struct JsonField {
    /// `"key":`, already escaped.
    key: Box<str>,
    value: JsonNode,
}

#[derive(Debug, Clone)]
enum JsonNode {
    /// A string template. A template that is exactly one operator renders typed (number / string /
    /// null); anything else renders as a JSON string with `-` for unset parts, as Envoy does.
    Template(Vec<Segment>),
    /// A nested object.
    Object(Vec<JsonField>),
    /// A literal number, bool or null, pre-serialized.
    Literal(Box<str>),
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(Box<str>),
    Op(Op, Option<usize>),
}

#[derive(Debug, Clone)]
enum Op {
    StartTime(TimeFormat),
    Req(ReqField, Option<ReqField>),
    Resp(RespField),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    Hostname(Arc<str>),
}

#[derive(Debug, Clone)]
enum ReqField {
    Method,
    /// `X-ENVOY-ORIGINAL-PATH?:PATH` and `:PATH`: the record's path field already holds the right value.
    Path,
    Authority,
    XForwardedFor,
    UserAgent,
    RequestId,
    /// A pseudo-header the record does not carry (`:scheme`, …): always unset.
    Unavailable,
    Header(HeaderName),
}

#[derive(Debug, Clone)]
enum RespField {
    UpstreamServiceTime,
    Header(HeaderName),
}

/// A value produced by an operator, before encoding.
enum Val<'a> {
    Unset,
    Str(&'a str),
    Bytes(&'a [u8]),
    /// A number: a JSON number in JSON mode.
    Num(u64),
    /// A number that Envoy takes from a header, so JSON shows it as a string.
    NumStr(u64),
    Addr(SocketAddr),
    Ip(IpAddr),
    Time(SystemTime, &'a TimeFormat),
}

impl AccessLogFormat {
    /// Compiles a format. `None` or an empty string selects Istio's default for `encoding`
    /// ([`ISTIO_DEFAULT_TEXT_FORMAT`] or [`ISTIO_DEFAULT_JSON_KEYS`]). A TEXT format is an Envoy format
    /// string (a trailing newline is added if missing); a JSON format is a JSON object whose values are
    /// format strings (or nested objects / literals).
    pub fn parse(format: Option<&str>, encoding: AccessLogEncoding) -> Result<Self, FormatError> {
        let custom = format.filter(|f| !f.trim().is_empty());
        let body = match (encoding, custom) {
            (AccessLogEncoding::Text, None) => {
                FormatBody::Text(parse_template(ISTIO_DEFAULT_TEXT_FORMAT)?)
            }
            (AccessLogEncoding::Text, Some(f)) => {
                let mut segments = parse_template(f)?;
                if !f.ends_with('\n') {
                    segments.push(Segment::Literal("\n".into()));
                }
                FormatBody::Text(segments)
            }
            (AccessLogEncoding::Json, None) => FormatBody::Json(
                ISTIO_DEFAULT_JSON_KEYS
                    .iter()
                    .map(|(k, v)| {
                        Ok(JsonField {
                            key: json_key(k),
                            value: JsonNode::Template(parse_template(v)?),
                        })
                    })
                    .collect::<Result<_, FormatError>>()?,
            ),
            (AccessLogEncoding::Json, Some(f)) => {
                let value: serde_json::Value =
                    serde_json::from_str(f).map_err(|e| FormatError::Json(e.to_string()))?;
                match value {
                    serde_json::Value::Object(map) => FormatBody::Json(json_fields(&map)?),
                    other => {
                        return Err(FormatError::Json(format!("got {}", json_type_name(&other))))
                    }
                }
            }
        };
        let (needs_request_headers, needs_response_headers) = header_needs(&body);
        Ok(AccessLogFormat {
            body,
            needs_request_headers,
            needs_response_headers,
        })
    }

    /// Istio's default TEXT format.
    pub fn istio_default_text() -> Self {
        Self::parse(None, AccessLogEncoding::Text)
            .unwrap_or_else(|e| unreachable!("built-in format must compile: {e}"))
    }

    /// TEXT or JSON.
    pub fn encoding(&self) -> AccessLogEncoding {
        match self.body {
            FormatBody::Text(_) => AccessLogEncoding::Text,
            FormatBody::Json(_) => AccessLogEncoding::Json,
        }
    }

    /// True when the format reads request headers that have no dedicated [`AccessLogRecord`] field, so
    /// the data path must fill [`AccessLogRecord::request_headers`].
    pub fn needs_request_headers(&self) -> bool {
        self.needs_request_headers
    }

    /// True when the format reads response headers other than `x-envoy-upstream-service-time`.
    pub fn needs_response_headers(&self) -> bool {
        self.needs_response_headers
    }

    /// Appends the rendered line, including its trailing newline, to `out`.
    pub fn render(&self, rec: &AccessLogRecord, out: &mut String) {
        match &self.body {
            FormatBody::Text(segments) => {
                for seg in segments {
                    match seg {
                        Segment::Literal(s) => out.push_str(s),
                        Segment::Op(op, max) => write_text(op.eval(rec), *max, out),
                    }
                }
            }
            FormatBody::Json(fields) => {
                let mut scratch = String::new();
                render_json_object(fields, rec, out, &mut scratch);
                out.push('\n');
            }
        }
    }

    /// Renders one record into a new string.
    pub fn render_to_string(&self, rec: &AccessLogRecord) -> String {
        let mut s = String::with_capacity(320);
        self.render(rec, &mut s);
        s
    }
}

/// Which header maps a format reads: (request headers, response headers). Only operators on headers
/// without a dedicated record field need them.
fn header_needs(body: &FormatBody) -> (bool, bool) {
    fn segs(s: &[Segment], acc: &mut (bool, bool)) {
        for seg in s {
            match seg {
                Segment::Op(Op::Req(a, b), _) => {
                    acc.0 |=
                        matches!(a, ReqField::Header(_)) || matches!(b, Some(ReqField::Header(_)));
                }
                Segment::Op(Op::Resp(RespField::Header(_)), _) => acc.1 = true,
                _ => {}
            }
        }
    }
    fn fields(fs: &[JsonField], acc: &mut (bool, bool)) {
        for field in fs {
            match &field.value {
                JsonNode::Template(s) => segs(s, acc),
                JsonNode::Object(inner) => fields(inner, acc),
                JsonNode::Literal(_) => {}
            }
        }
    }
    let mut acc = (false, false);
    match body {
        FormatBody::Text(s) => segs(s, &mut acc),
        FormatBody::Json(fs) => fields(fs, &mut acc),
    }
    acc
}

fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_key(k: &str) -> Box<str> {
    let mut s = String::with_capacity(k.len() + 3);
    push_json_str(&mut s, k);
    s.push(':');
    s.into_boxed_str()
}

fn json_fields(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<JsonField>, FormatError> {
    map.iter()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => JsonNode::Template(parse_template(s)?),
                serde_json::Value::Object(inner) => JsonNode::Object(json_fields(inner)?),
                serde_json::Value::Array(_) => {
                    return Err(FormatError::Json(format!(
                        "key {k:?}: arrays are not supported in access log formats"
                    )))
                }
                lit => JsonNode::Literal(lit.to_string().into_boxed_str()),
            };
            Ok(JsonField {
                key: json_key(k),
                value,
            })
        })
        .collect()
}

// === Format string parsing ===

/// Parses an Envoy format string into segments. Envoy's grammar for an operator is
/// `%NAME(args):maxlen%` with `NAME` of `[A-Z0-9_]`, `args` up to the first `)`.
fn parse_template(s: &str) -> Result<Vec<Segment>, FormatError> {
    let b = s.as_bytes();
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < b.len() {
        let Some(rel) = s[i..].find('%') else {
            literal.push_str(&s[i..]);
            break;
        };
        literal.push_str(&s[i..i + rel]);
        let start = i + rel;
        if b.get(start + 1) == Some(&b'%') {
            literal.push('%');
            i = start + 2;
            continue;
        }
        let name_start = start + 1;
        let mut j = name_start;
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        let name = &s[name_start..j];
        if name.is_empty() {
            return Err(FormatError::Syntax {
                position: start,
                message: "'%' does not start a command operator such as %START_TIME%; write '%%' for a literal percent sign".into(),
            });
        }
        let mut arg = None;
        if b.get(j) == Some(&b'(') {
            let Some(close) = s[j + 1..].find(')') else {
                return Err(FormatError::Syntax {
                    position: j,
                    message: format!("missing ')' after %{name}("),
                });
            };
            arg = Some(&s[j + 1..j + 1 + close]);
            j = j + 1 + close + 1;
        }
        let mut max_len = None;
        if b.get(j) == Some(&b':') {
            let digits_start = j + 1;
            let mut k = digits_start;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            let n = s[digits_start..k]
                .parse::<usize>()
                .map_err(|_| FormatError::Syntax {
                    position: j,
                    message: format!("%{name}: expected a maximum length after ':'"),
                })?;
            max_len = Some(n);
            j = k;
        }
        if b.get(j) != Some(&b'%') {
            return Err(FormatError::Syntax {
                position: start,
                message: format!("command operator %{name}… is not terminated by '%'"),
            });
        }
        i = j + 1;
        if !literal.is_empty() {
            segments.push(Segment::Literal(
                std::mem::take(&mut literal).into_boxed_str(),
            ));
        }
        segments.push(Segment::Op(compile_op(name, arg, start)?, max_len));
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal.into_boxed_str()));
    }
    Ok(segments)
}

fn compile_op(name: &str, arg: Option<&str>, position: usize) -> Result<Op, FormatError> {
    let no_arg = |op: Op| -> Result<Op, FormatError> {
        match arg {
            None => Ok(op),
            Some(_) => Err(FormatError::Syntax {
                position,
                message: format!("%{name}% takes no argument"),
            }),
        }
    };
    let need_arg = || -> Result<&str, FormatError> {
        arg.filter(|a| !a.is_empty())
            .ok_or_else(|| FormatError::Syntax {
                position,
                message: format!("%{name}(…)% needs a header name, e.g. %{name}(USER-AGENT)%"),
            })
    };
    match name {
        "START_TIME" => Ok(Op::StartTime(match arg {
            None => TimeFormat::Default,
            Some(f) => {
                TimeFormat::parse(f).map_err(|message| FormatError::Syntax { position, message })?
            }
        })),
        "REQ" => {
            let a = need_arg()?;
            let (first, second) = match a.split_once('?') {
                Some((x, y)) => (x, Some(y)),
                None => (a, None),
            };
            let first_field = req_field(first, position)?;
            let second_field = second.map(|s| req_field(s, position)).transpose()?;
            // Istio's `X-ENVOY-ORIGINAL-PATH?:PATH` is what the record's path field holds.
            if first.eq_ignore_ascii_case("x-envoy-original-path")
                && second.is_some_and(|s| s.eq_ignore_ascii_case(":path"))
            {
                return Ok(Op::Req(ReqField::Path, None));
            }
            Ok(Op::Req(first_field, second_field))
        }
        "RESP" => {
            let a = need_arg()?;
            if a.eq_ignore_ascii_case("x-envoy-upstream-service-time") {
                Ok(Op::Resp(RespField::UpstreamServiceTime))
            } else {
                Ok(Op::Resp(RespField::Header(header_name(a, position)?)))
            }
        }
        "PROTOCOL" => no_arg(Op::Protocol),
        "RESPONSE_CODE" => no_arg(Op::ResponseCode),
        "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => no_arg(Op::ResponseCodeDetails),
        "CONNECTION_TERMINATION_DETAILS" => no_arg(Op::ConnectionTerminationDetails),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Op::UpstreamTransportFailureReason),
        "BYTES_RECEIVED" => no_arg(Op::BytesReceived),
        "BYTES_SENT" => no_arg(Op::BytesSent),
        "DURATION" => no_arg(Op::Duration),
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => no_arg(Op::UpstreamHost),
        // Envoy's UPSTREAM_CLUSTER prints the cluster's alt_stat_name, which Istio ≥1.23 sets to
        // `<name>;`; that trailing delimiter is an artifact nobody wants in a log, so both spellings
        // print the plain cluster name here.
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => no_arg(Op::UpstreamCluster),
        "UPSTREAM_LOCAL_ADDRESS" => no_arg(Op::UpstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Op::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamLocalAddressWithoutPort),
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Op::DownstreamRemoteAddress),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamRemoteAddressWithoutPort),
        "DOWNSTREAM_PEER_URI_SAN" => no_arg(Op::DownstreamPeerUriSan),
        "REQUESTED_SERVER_NAME" => no_arg(Op::RequestedServerName),
        "ROUTE_NAME" => no_arg(Op::RouteName),
        "HOSTNAME" => no_arg(Op::Hostname(hostname())),
        other => Err(FormatError::UnknownOperator {
            operator: other.to_string(),
        }),
    }
}

fn req_field(name: &str, position: usize) -> Result<ReqField, FormatError> {
    let lower = name.trim().to_ascii_lowercase();
    Ok(match lower.as_str() {
        ":method" => ReqField::Method,
        ":path" => ReqField::Path,
        // Envoy stores HTTP/1's Host as :authority.
        ":authority" | "host" => ReqField::Authority,
        "x-forwarded-for" => ReqField::XForwardedFor,
        "user-agent" => ReqField::UserAgent,
        "x-request-id" => ReqField::RequestId,
        p if p.starts_with(':') => ReqField::Unavailable,
        _ => ReqField::Header(header_name(&lower, position)?),
    })
}

fn header_name(name: &str, position: usize) -> Result<HeaderName, FormatError> {
    HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).map_err(|_| {
        FormatError::Syntax {
            position,
            message: format!("{name:?} is not a valid header name"),
        }
    })
}

/// The host name, read once: `%HOSTNAME%` is constant for the life of the process.
fn hostname() -> Arc<str> {
    static HOSTNAME: OnceLock<Arc<str>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_default()
                .into()
        })
        .clone()
}

// === Evaluation ===

impl Op {
    fn eval<'a>(&'a self, rec: &'a AccessLogRecord) -> Val<'a> {
        fn opt_str<'a>(v: &'a Option<impl AsRef<str>>) -> Val<'a> {
            match v {
                Some(s) if !s.as_ref().is_empty() => Val::Str(s.as_ref()),
                _ => Val::Unset,
            }
        }
        match self {
            Op::StartTime(f) => Val::Time(rec.start_time, f),
            Op::Req(a, b) => {
                if rec.is_tcp() {
                    return Val::Unset;
                }
                match eval_req(a, rec) {
                    Val::Unset => b.as_ref().map_or(Val::Unset, |b| eval_req(b, rec)),
                    v => v,
                }
            }
            Op::Resp(f) => {
                if rec.is_tcp() {
                    return Val::Unset;
                }
                match f {
                    RespField::UpstreamServiceTime => {
                        rec.upstream_service_time.map_or(Val::Unset, Val::NumStr)
                    }
                    RespField::Header(h) => header_val(rec.response_headers.as_ref(), h),
                }
            }
            Op::Protocol => rec.protocol.map_or(Val::Unset, Val::Str),
            Op::ResponseCode => Val::Num(u64::from(rec.response_code)),
            Op::ResponseFlags => match rec.response_flags.as_ref() {
                // Envoy prints `-` for "no flags" even in JSON (Istio's JSON logs show "response_flags":"-").
                "" => Val::Str("-"),
                f => Val::Str(f),
            },
            Op::ResponseCodeDetails => opt_str(&rec.response_code_details),
            Op::ConnectionTerminationDetails => opt_str(&rec.connection_termination_details),
            Op::UpstreamTransportFailureReason => opt_str(&rec.upstream_transport_failure_reason),
            Op::BytesReceived => Val::Num(rec.bytes_received),
            Op::BytesSent => Val::Num(rec.bytes_sent),
            Op::Duration => Val::Num(u64::try_from(rec.duration.as_millis()).unwrap_or(u64::MAX)),
            Op::UpstreamHost => rec.upstream_host.map_or(Val::Unset, Val::Addr),
            Op::UpstreamCluster => opt_str(&rec.upstream_cluster),
            Op::UpstreamLocalAddress => rec.upstream_local_address.map_or(Val::Unset, Val::Addr),
            Op::DownstreamLocalAddress => {
                rec.downstream_local_address.map_or(Val::Unset, Val::Addr)
            }
            Op::DownstreamLocalAddressWithoutPort => rec
                .downstream_local_address
                .map_or(Val::Unset, |a| Val::Ip(a.ip())),
            Op::DownstreamRemoteAddress => {
                rec.downstream_remote_address.map_or(Val::Unset, Val::Addr)
            }
            Op::DownstreamRemoteAddressWithoutPort => rec
                .downstream_remote_address
                .map_or(Val::Unset, |a| Val::Ip(a.ip())),
            Op::DownstreamPeerUriSan => opt_str(&rec.downstream_peer_uri_san),
            Op::RequestedServerName => opt_str(&rec.requested_server_name),
            Op::RouteName => opt_str(&rec.route_name),
            Op::Hostname(h) => {
                if h.is_empty() {
                    Val::Unset
                } else {
                    Val::Str(h)
                }
            }
        }
    }
}

fn eval_req<'a>(f: &'a ReqField, rec: &'a AccessLogRecord) -> Val<'a> {
    fn hv(v: &Option<HeaderValue>) -> Val<'_> {
        match v {
            Some(v) if !v.is_empty() => Val::Bytes(v.as_bytes()),
            _ => Val::Unset,
        }
    }
    match f {
        ReqField::Method => rec
            .method
            .as_ref()
            .map_or(Val::Unset, |m| Val::Str(m.as_str())),
        ReqField::Path => match &rec.path {
            Some(p) if !p.is_empty() => Val::Str(p),
            _ => Val::Unset,
        },
        ReqField::Authority => hv(&rec.authority),
        ReqField::XForwardedFor => hv(&rec.x_forwarded_for),
        ReqField::UserAgent => hv(&rec.user_agent),
        ReqField::RequestId => hv(&rec.request_id),
        ReqField::Unavailable => Val::Unset,
        ReqField::Header(h) => header_val(rec.request_headers.as_ref(), h),
    }
}

fn header_val<'a>(map: Option<&'a HeaderMap>, name: &HeaderName) -> Val<'a> {
    match map.and_then(|m| m.get(name)) {
        Some(v) if !v.is_empty() => Val::Bytes(v.as_bytes()),
        _ => Val::Unset,
    }
}

// === Rendering ===

/// Writes a value as text, `-` when unset, cut to `max` bytes (on a character boundary).
fn write_text(v: Val<'_>, max: Option<usize>, out: &mut String) {
    let start = out.len();
    if !write_raw(&v, out) {
        out.push('-');
        return;
    }
    if let Some(max) = max {
        truncate_at(out, start + max);
    }
}

/// Writes the value's text form; returns false (writing nothing) when unset.
fn write_raw(v: &Val<'_>, out: &mut String) -> bool {
    // `write!` into a String cannot fail; the results are ignored for that reason.
    match v {
        Val::Unset => return false,
        Val::Str(s) => out.push_str(s),
        Val::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => out.push_str(s),
            Err(_) => out.push_str(&String::from_utf8_lossy(b)),
        },
        Val::Num(n) | Val::NumStr(n) => {
            let _ = write!(out, "{n}");
        }
        Val::Addr(a) => {
            let _ = write!(out, "{a}");
        }
        Val::Ip(ip) => {
            let _ = write!(out, "{ip}");
        }
        Val::Time(t, f) => f.write(*t, out),
    }
    true
}

fn truncate_at(out: &mut String, mut end: usize) {
    if end >= out.len() {
        return;
    }
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
}

fn render_json_object(
    fields: &[JsonField],
    rec: &AccessLogRecord,
    out: &mut String,
    scratch: &mut String,
) {
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.key);
        match &field.value {
            JsonNode::Literal(l) => out.push_str(l),
            JsonNode::Object(inner) => render_json_object(inner, rec, out, scratch),
            JsonNode::Template(segments) => render_json_template(segments, rec, out, scratch),
        }
    }
    out.push('}');
}

fn render_json_template(
    segments: &[Segment],
    rec: &AccessLogRecord,
    out: &mut String,
    scratch: &mut String,
) {
    scratch.clear();
    if let [Segment::Op(op, max)] = segments {
        // A value that is exactly one operator keeps its type: numbers stay numbers, unset is null.
        match op.eval(rec) {
            Val::Unset => out.push_str("null"),
            Val::Num(n) => {
                let _ = write!(out, "{n}");
            }
            v => {
                write_raw(&v, scratch);
                if let Some(max) = max {
                    truncate_at(scratch, *max);
                }
                push_json_str(out, scratch);
            }
        }
        return;
    }
    for seg in segments {
        match seg {
            Segment::Literal(s) => scratch.push_str(s),
            Segment::Op(op, max) => write_text(op.eval(rec), *max, scratch),
        }
    }
    push_json_str(out, scratch);
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => {
                out.push_str(&s[last..i]);
                let _ = write!(out, "\\u{:04x}", c as u32);
                last = i + c.len_utf8();
                continue;
            }
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(esc);
        last = i + c.len_utf8();
    }
    out.push_str(&s[last..]);
    out.push('"');
}

// === START_TIME formatting ===

/// A compiled `%START_TIME(…)%` format: Envoy's default (`2020-11-25T21:26:18.409Z`) or a strftime
/// subset with Envoy's fractional-second extensions (`%f`, `%3f`, `%E3S`, `%E*S`).
#[derive(Debug, Clone)]
enum TimeFormat {
    Default,
    Custom(Vec<TimePart>),
}

#[derive(Debug, Clone)]
enum TimePart {
    Lit(Box<str>),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    Hour,
    Hour12,
    Minute,
    Second,
    /// Fraction of a second with N digits.
    Frac(u8),
    /// Seconds with N fractional digits (`%E3S`); 0 = Abseil's `%E*S` (trailing zeros trimmed).
    SecFrac(u8),
    Epoch,
    YearDay,
    WeekdayShort,
    WeekdayLong,
    MonthShort,
    MonthLong,
    AmPm,
    TzOffset,
    TzName,
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl TimeFormat {
    fn parse(f: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = f.chars().peekable();
        let flush = |lit: &mut String, parts: &mut Vec<TimePart>| {
            if !lit.is_empty() {
                parts.push(TimePart::Lit(std::mem::take(lit).into_boxed_str()));
            }
        };
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                return Err("START_TIME format ends with a lone '%'".into());
            };
            let part = match spec {
                '%' => {
                    lit.push('%');
                    continue;
                }
                'n' => {
                    lit.push('\n');
                    continue;
                }
                't' => {
                    lit.push('\t');
                    continue;
                }
                'Y' => TimePart::Year,
                'y' => TimePart::Year2,
                'm' => TimePart::Month,
                'd' => TimePart::Day,
                'e' => TimePart::DaySpace,
                'H' => TimePart::Hour,
                'I' => TimePart::Hour12,
                'M' => TimePart::Minute,
                'S' => TimePart::Second,
                's' => TimePart::Epoch,
                'j' => TimePart::YearDay,
                'a' => TimePart::WeekdayShort,
                'A' => TimePart::WeekdayLong,
                'b' | 'h' => TimePart::MonthShort,
                'B' => TimePart::MonthLong,
                'p' => TimePart::AmPm,
                'z' => TimePart::TzOffset,
                'Z' => TimePart::TzName,
                'f' => TimePart::Frac(9),
                'F' | 'T' | 'D' | 'R' => {
                    flush(&mut lit, &mut parts);
                    let expanded: &[TimePart] = match spec {
                        'F' => &[
                            TimePart::Year,
                            TimePart::Lit(Box::from("-")),
                            TimePart::Month,
                            TimePart::Lit(Box::from("-")),
                            TimePart::Day,
                        ],
                        'T' => &[
                            TimePart::Hour,
                            TimePart::Lit(Box::from(":")),
                            TimePart::Minute,
                            TimePart::Lit(Box::from(":")),
                            TimePart::Second,
                        ],
                        'D' => &[
                            TimePart::Month,
                            TimePart::Lit(Box::from("/")),
                            TimePart::Day,
                            TimePart::Lit(Box::from("/")),
                            TimePart::Year2,
                        ],
                        _ => &[
                            TimePart::Hour,
                            TimePart::Lit(Box::from(":")),
                            TimePart::Minute,
                        ],
                    };
                    parts.extend_from_slice(expanded);
                    continue;
                }
                d @ '1'..='9' => {
                    if chars.next() != Some('f') {
                        return Err(format!("START_TIME: %{d} must be followed by 'f' (%{d}f)"));
                    }
                    TimePart::Frac(d as u8 - b'0')
                }
                'E' => match (chars.next(), chars.next()) {
                    (Some('*'), Some('S')) => TimePart::SecFrac(0),
                    (Some(d @ '1'..='9'), Some('S')) => TimePart::SecFrac(d as u8 - b'0'),
                    _ => return Err("START_TIME: %E must be written %E<1-9>S or %E*S".into()),
                },
                other => {
                    return Err(format!(
                        "START_TIME: unsupported conversion %{other}; supported: %Y %y %m %d %e %H %I %M %S %s %j %a %A %b %B %p %z %Z %F %T %D %R %f %1f-%9f %E1S-%E9S %E*S %% %n %t"
                    ))
                }
            };
            flush(&mut lit, &mut parts);
            parts.push(part);
        }
        flush(&mut lit, &mut parts);
        Ok(TimeFormat::Custom(parts))
    }

    fn write(&self, t: SystemTime, out: &mut String) {
        let tm = BrokenDown::from(t);
        match self {
            TimeFormat::Default => {
                let _ = write!(
                    out,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    tm.year,
                    tm.month,
                    tm.day,
                    tm.hour,
                    tm.minute,
                    tm.second,
                    tm.nanos / 1_000_000
                );
            }
            TimeFormat::Custom(parts) => {
                for p in parts {
                    tm.write_part(p, out);
                }
            }
        }
    }
}

/// A UTC calendar time.
struct BrokenDown {
    epoch: i64,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 1-based day of the year.
    yearday: u32,
}

impl From<SystemTime> for BrokenDown {
    fn from(t: SystemTime) -> Self {
        let (epoch, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            ),
            Err(e) => {
                // Before 1970: borrow a second so the fraction stays non-negative.
                let d = e.duration();
                let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => (secs, 0),
                    n => (secs - 1, 1_000_000_000 - n),
                }
            }
        };
        let days = epoch.div_euclid(86_400);
        let secs_of_day = epoch.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let jan1 = days_from_civil(year, 1, 1);
        BrokenDown {
            epoch,
            year,
            month,
            day,
            hour: secs_of_day / 3600,
            minute: secs_of_day / 60 % 60,
            second: secs_of_day % 60,
            nanos,
            weekday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
            yearday: (days - jan1 + 1) as u32,
        }
    }
}

impl BrokenDown {
    fn write_part(&self, p: &TimePart, out: &mut String) {
        let _ = match p {
            TimePart::Lit(s) => {
                out.push_str(s);
                Ok(())
            }
            TimePart::Year => write!(out, "{:04}", self.year),
            TimePart::Year2 => write!(out, "{:02}", self.year.rem_euclid(100)),
            TimePart::Month => write!(out, "{:02}", self.month),
            TimePart::Day => write!(out, "{:02}", self.day),
            TimePart::DaySpace => write!(out, "{:2}", self.day),
            TimePart::Hour => write!(out, "{:02}", self.hour),
            TimePart::Hour12 => write!(out, "{:02}", (self.hour + 11) % 12 + 1),
            TimePart::Minute => write!(out, "{:02}", self.minute),
            TimePart::Second => write!(out, "{:02}", self.second),
            TimePart::Frac(n) => write_frac(out, self.nanos, *n),
            TimePart::SecFrac(0) => {
                let _ = write!(out, "{:02}", self.second);
                if self.nanos != 0 {
                    let s = format!("{:09}", self.nanos);
                    let _ = write!(out, ".{}", s.trim_end_matches('0'));
                }
                Ok(())
            }
            TimePart::SecFrac(n) => {
                let _ = write!(out, "{:02}.", self.second);
                write_frac(out, self.nanos, *n)
            }
            TimePart::Epoch => write!(out, "{}", self.epoch),
            TimePart::YearDay => write!(out, "{:03}", self.yearday),
            TimePart::WeekdayShort => out.write_str(&WEEKDAYS[self.weekday as usize % 7][..3]),
            TimePart::WeekdayLong => out.write_str(WEEKDAYS[self.weekday as usize % 7]),
            TimePart::MonthShort => out.write_str(&MONTHS[(self.month as usize + 11) % 12][..3]),
            TimePart::MonthLong => out.write_str(MONTHS[(self.month as usize + 11) % 12]),
            TimePart::AmPm => out.write_str(if self.hour < 12 { "AM" } else { "PM" }),
            TimePart::TzOffset => out.write_str("+0000"),
            TimePart::TzName => out.write_str("UTC"),
        };
    }
}

fn write_frac(out: &mut String, nanos: u32, digits: u8) -> fmt::Result {
    let digits = u32::from(digits.clamp(1, 9));
    let v = nanos / 10u32.pow(9 - digits);
    write!(out, "{:0width$}", v, width = digits as usize)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01 (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats a time as Envoy's default `%START_TIME%` (`2020-11-25T21:26:18.409Z`).
pub fn format_start_time(t: SystemTime) -> String {
    let mut s = String::with_capacity(24);
    TimeFormat::Default.write(t, &mut s);
    s
}

// === AccessLogger ===

/// A cheap-to-clone handle to the access log. [`log`](Self::log) renders the line on the caller's thread
/// and queues it for a writer thread; it never blocks. The format and destination can be swapped at any
/// time with [`reconfigure`](Self::reconfigure) (mesh config edits); records logged concurrently use
/// either the old or the new configuration, never a mix.
#[derive(Clone, Debug)]
pub struct AccessLogger {
    inner: Arc<LoggerInner>,
}

#[derive(Debug)]
struct LoggerInner {
    state: ArcSwap<LoggerState>,
    dropped: Counter,
}

#[derive(Debug)]
struct LoggerState {
    config: AccessLogConfig,
    format: AccessLogFormat,
    /// `None` = logging off.
    sink: Option<Arc<Sink>>,
}

/// One destination and its writer thread. The thread exits after draining its queue once the last
/// `Sink` (and so the last sender) is dropped, e.g. after a reconfigure to another path.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    tx: SyncSender<Msg>,
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

impl AccessLogger {
    /// Starts a logger. Fails if the format does not compile or the file cannot be opened for appending.
    pub fn new(config: AccessLogConfig) -> Result<Self, AccessLogError> {
        Self::with_drop_counter(config, Counter::default())
    }

    /// Like [`new`](Self::new), counting dropped lines in `dropped` (e.g.
    /// [`Metrics::accesslog_dropped`](crate::telemetry::Metrics::accesslog_dropped)).
    pub fn with_drop_counter(
        config: AccessLogConfig,
        dropped: Counter,
    ) -> Result<Self, AccessLogError> {
        let state = build_state(config, None, &dropped)?;
        Ok(AccessLogger {
            inner: Arc::new(LoggerInner {
                state: ArcSwap::from_pointee(state),
                dropped,
            }),
        })
    }

    /// A logger that writes nothing.
    pub fn disabled() -> Self {
        let dropped = Counter::default();
        let state = LoggerState {
            config: AccessLogConfig::off(),
            format: AccessLogFormat::istio_default_text(),
            sink: None,
        };
        AccessLogger {
            inner: Arc::new(LoggerInner {
                state: ArcSwap::from_pointee(state),
                dropped,
            }),
        }
    }

    /// Applies a new configuration. On error the previous configuration stays in effect, so the caller
    /// can report the problem and keep logging. An unchanged path keeps the same open file and thread.
    pub fn reconfigure(&self, config: AccessLogConfig) -> Result<(), AccessLogError> {
        let current = self.inner.state.load();
        if current.config == config {
            return Ok(());
        }
        let state = build_state(config, current.sink.as_ref(), &self.inner.dropped)?;
        self.inner.state.store(Arc::new(state));
        Ok(())
    }

    /// The configuration in effect.
    pub fn config(&self) -> AccessLogConfig {
        self.inner.state.load().config.clone()
    }

    /// False when logging is off: the data path can skip building records.
    pub fn is_enabled(&self) -> bool {
        self.inner.state.load().sink.is_some()
    }

    /// Whether records must carry [`AccessLogRecord::request_headers`] for the current format.
    pub fn needs_request_headers(&self) -> bool {
        self.inner.state.load().format.needs_request_headers()
    }

    /// Whether records must carry [`AccessLogRecord::response_headers`] for the current format.
    pub fn needs_response_headers(&self) -> bool {
        self.inner.state.load().format.needs_response_headers()
    }

    /// Renders and queues one line. Never blocks; if the writer is behind, the line is dropped and counted.
    pub fn log(&self, rec: AccessLogRecord) {
        let state = self.inner.state.load();
        let Some(sink) = &state.sink else { return };
        let mut line = String::with_capacity(384);
        state.format.render(&rec, &mut line);
        match sink.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.inner.dropped.inc();
            }
        }
    }

    /// Lines dropped so far (queue full or write errors).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    /// The counter behind [`dropped`](Self::dropped), to expose as a metric.
    pub fn dropped_counter(&self) -> Counter {
        self.inner.dropped.clone()
    }

    /// Waits (blocking the calling thread, at most `timeout`) until every line queued so far to the
    /// current destination has been written and flushed. For shutdown and tests; never call it on the
    /// data path. Returns false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let state = self.inner.state.load_full();
        let Some(sink) = &state.sink else { return true };
        let (ack_tx, ack_rx) = mpsc::channel();
        // The marker must queue behind the lines it waits for, so retry while the queue is full rather
        // than dropping it; a writer stuck on a blocked pipe must not hang the caller past the deadline.
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match sink.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        ack_rx.recv_timeout(remaining).is_ok()
    }
}

fn build_state(
    config: AccessLogConfig,
    current_sink: Option<&Arc<Sink>>,
    dropped: &Counter,
) -> Result<LoggerState, AccessLogError> {
    let format = AccessLogFormat::parse(config.format.as_deref(), config.encoding)?;
    let sink = match &config.path {
        None => None,
        Some(path) => match current_sink {
            Some(s) if s.path == *path => Some(s.clone()),
            _ => Some(Arc::new(open_sink(path, dropped.clone())?)),
        },
    };
    Ok(LoggerState {
        config,
        format,
        sink,
    })
}

fn open_sink(path: &Path, dropped: Counter) -> Result<Sink, AccessLogError> {
    // stdout/stderr may be sockets or ttys that cannot be re-opened through /dev; use the streams.
    let writer: Box<dyn io::Write + Send> = if path == Path::new(STDOUT_PATH) {
        Box::new(io::stdout())
    } else if path == Path::new(STDERR_PATH) {
        Box::new(io::stderr())
    } else {
        Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AccessLogError::Open {
                    path: path.to_path_buf(),
                    source,
                })?,
        )
    };
    let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
    let thread_path = path.to_path_buf();
    std::thread::Builder::new()
        .name("sluice-accesslog".into())
        .spawn(move || run_writer(rx, writer, &thread_path, &dropped))
        .map_err(AccessLogError::Thread)?;
    Ok(Sink {
        path: path.to_path_buf(),
        tx,
    })
}

fn run_writer(
    rx: Receiver<Msg>,
    writer: Box<dyn io::Write + Send>,
    path: &Path,
    dropped: &Counter,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, writer);
    let mut warned = false;
    let mut report = |e: io::Error, lines: u64| {
        dropped.inc_by(lines);
        // Warn once per sink: a full disk would otherwise flood the proxy's own log.
        if !warned {
            warned = true;
            tracing::warn!(path = %path.display(), error = %e, "access log write failed; dropping lines");
        }
    };
    let mut pending_acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut msg = Some(first);
        // Take everything already queued before flushing, so a busy proxy writes in large batches.
        while let Some(m) = msg.take().or_else(|| rx.try_recv().ok()) {
            match m {
                Msg::Line(line) => {
                    if let Err(e) = w.write_all(line.as_bytes()) {
                        report(e, 1);
                    }
                }
                Msg::Flush(ack) => pending_acks.push(ack),
            }
        }
        if let Err(e) = w.flush() {
            report(e, 0);
        }
        for ack in pending_acks.drain(..) {
            let _ = ack.send(());
        }
    }
    let _ = w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-719_468_i64, -1, 0, 1, 10_957, 18_591, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(18_591), (2020, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn start_time_default_and_custom() {
        let t = UNIX_EPOCH + Duration::from_millis(1_606_339_578_409);
        assert_eq!(format_start_time(t), "2020-11-25T21:26:18.409Z");
        let f = TimeFormat::parse("%Y-%m-%dT%H:%M:%SZ %j %a %b %E3S %6f %s %e").unwrap();
        let mut s = String::new();
        f.write(t, &mut s);
        assert_eq!(
            s,
            "2020-11-25T21:26:18Z 330 Wed Nov 18.409 409000 1606339578 25"
        );
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(format_start_time(before), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn json_escaping() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn template_syntax_errors() {
        assert!(matches!(
            parse_template("100% done"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            parse_template("%DURATION"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            parse_template("%REQ(USER-AGENT%"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(parse_template("50%% %DURATION%").is_ok());
    }
}
