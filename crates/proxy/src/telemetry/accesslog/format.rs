//! Access log formats compiled once: Envoy's command operators (`%START_TIME%`, `%REQ(X?Y):N%`,
//! …) in a TEXT template or the values of a JSON object, parsed into segments that render without
//! re-parsing.

use std::sync::{Arc, OnceLock};

use http::HeaderName;

use super::render::{push_json_str, render_json_object, write_text};
use super::time::TimeFormat;
use super::{
    AccessLogEncoding, AccessLogRecord, FormatError, ISTIO_DEFAULT_JSON_KEYS,
    ISTIO_DEFAULT_TEXT_FORMAT,
};

/// A parsed access log format: a list of literal and operator segments, rendered without re-parsing.
#[derive(Debug, Clone)]
pub struct AccessLogFormat {
    body: FormatBody,
    needs_request_headers: bool,
    needs_response_headers: bool,
}

#[derive(Debug, Clone)]
pub(super) enum FormatBody {
    Text(Vec<Segment>),
    /// Top-level JSON object.
    Json(Vec<JsonField>),
}

#[derive(Debug, Clone)]
pub(super) struct JsonField {
    /// `"key":`, already escaped.
    pub(super) key: Box<str>,
    pub(super) value: JsonNode,
}

#[derive(Debug, Clone)]
pub(super) enum JsonNode {
    /// A string template. A template that is exactly one operator renders typed (number / string /
    /// null); anything else renders as a JSON string with `-` for unset parts, as Envoy does.
    Template(Vec<Segment>),
    /// A nested object.
    Object(Vec<JsonField>),
    /// A literal number, bool or null, pre-serialized.
    Literal(Box<str>),
}

#[derive(Debug, Clone)]
pub(super) enum Segment {
    Literal(Box<str>),
    Op(Op, Option<usize>),
}

#[derive(Debug, Clone)]
pub(super) enum Op {
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
pub(super) enum ReqField {
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
pub(super) enum RespField {
    UpstreamServiceTime,
    Header(HeaderName),
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

#[cfg(test)]
mod tests {
    use super::*;

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
