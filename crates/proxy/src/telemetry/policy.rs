//! The Telemetry API on the data path: the resolved per-proxy policy
//! ([`sluice_model::telemetry_policy`]) carried out for one request, and the Envoy attributes
//! its CEL expressions read (`request.headers['x']`, `response.code`, `connection.mtls`, …).
//!
//! Nothing here runs for a request whose proxy has no filter and no metric override for its
//! side: [`RequestTelemetry::for_request`] returns `None` and the request path is what it was
//! without the Telemetry API. Expressions are evaluated once, when the request ends.
//!
//! An expression that fails when evaluated (a missing header, a wrong type) does what Envoy
//! does: an access log filter is false (no line), a metric tag takes the value `unknown`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cel::objects::{Key, Map, Value};
use http::HeaderMap;
use sluice_api::expression::CelExpression;
use sluice_model::telemetry_policy::{
    AccessLogDecision, MetricsPolicy, TagEdit, TelemetryPolicy, WorkloadMode,
};

use super::metrics::Reporter;

/// What a tag takes when its expression fails (Istio's value for what it cannot know).
const UNKNOWN: &str = "unknown";

/// The side of a request, from the metrics reporter of the side that handles it.
pub fn mode_of(reporter: Reporter) -> WorkloadMode {
    match reporter {
        Reporter::Destination => WorkloadMode::Server,
        Reporter::Source | Reporter::Waypoint => WorkloadMode::Client,
    }
}

/// Whether the mode's access log is written at all (the Telemetry API may turn it off).
pub fn logs(policy: &TelemetryPolicy, mode: WorkloadMode) -> bool {
    policy.access_logging.get(mode).decision() != AccessLogDecision::Off
}

/// The request facts an expression may read, captured when the request arrives.
#[derive(Debug)]
pub struct RequestFacts {
    pub method: http::Method,
    pub path: String,
    pub host: Option<String>,
    pub scheme: &'static str,
    pub protocol: &'static str,
    pub headers: HeaderMap,
}

/// One request's share of the Telemetry API: its side's filter and metric overrides, and the
/// request facts they read.
#[derive(Debug)]
pub struct RequestTelemetry {
    pub policy: Arc<TelemetryPolicy>,
    pub mode: WorkloadMode,
    pub request: RequestFacts,
}

/// The response facts an expression may read, known when the request ends.
pub struct ResponseFacts<'a> {
    pub code: u16,
    pub flags: &'a str,
    pub details: Option<&'a str>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration: Duration,
    pub mtls: bool,
    pub requested_server_name: Option<&'a str>,
}

impl RequestTelemetry {
    /// The request's Telemetry API work, or `None` when its side has no filter and no metric
    /// override (the common case: nothing is captured).
    pub fn for_request(
        policy: &Arc<TelemetryPolicy>,
        mode: WorkloadMode,
        parts: &http::request::Parts,
        host: Option<&http::HeaderValue>,
    ) -> Option<Box<RequestTelemetry>> {
        let has_filter = matches!(
            policy.access_logging.get(mode).decision(),
            AccessLogDecision::Envoy { filter: Some(_) }
        );
        if !has_filter && policy.metrics.get(mode).is_default() {
            return None;
        }
        Some(Box::new(RequestTelemetry {
            policy: policy.clone(),
            mode,
            request: RequestFacts {
                method: parts.method.clone(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
                host: host.and_then(|h| h.to_str().ok()).map(str::to_string),
                scheme: if parts.uri.scheme_str() == Some("https") {
                    "https"
                } else {
                    "http"
                },
                protocol: super::accesslog::protocol_name(parts.version),
                headers: parts.headers.clone(),
            },
        }))
    }

    /// This side's metrics policy.
    pub fn metrics(&self) -> &MetricsPolicy {
        self.policy.metrics.get(self.mode)
    }

    /// Whether the access log line of `record` passes this side's filter (no filter: yes).
    pub fn log_passes(&self, response: &ResponseFacts<'_>) -> bool {
        let AccessLogDecision::Envoy {
            filter: Some(filter),
        } = self.policy.access_logging.get(self.mode).decision()
        else {
            return true;
        };
        matches!(
            evaluate(filter, &self.request, response),
            Some(Value::Bool(true))
        )
    }

    /// The value of a tag's expression for this request (`unknown` when it fails).
    pub fn tag_value(&self, expr: &CelExpression, response: &ResponseFacts<'_>) -> String {
        match evaluate(expr, &self.request, response) {
            Some(v) => display(&v),
            None => UNKNOWN.to_string(),
        }
    }

    /// The evaluated label edits of a metric: (label, `None` to remove / `Some(value)`).
    pub fn tag_edits(
        &self,
        edits: &std::collections::BTreeMap<String, TagEdit>,
        response: &ResponseFacts<'_>,
    ) -> Vec<(Arc<str>, Option<String>)> {
        edits
            .iter()
            .map(|(name, edit)| {
                let value = match edit {
                    TagEdit::Remove => None,
                    TagEdit::Upsert(expr) => Some(self.tag_value(expr, response)),
                };
                (Arc::from(name.as_str()), value)
            })
            .collect()
    }
}

/// Evaluates `expr` over Envoy's attributes; `None` when evaluation fails. The interpreter is
/// third-party code fed with request data: a panic in it is a failed evaluation, not a dead
/// worker.
fn evaluate(
    expr: &CelExpression,
    request: &RequestFacts,
    response: &ResponseFacts<'_>,
) -> Option<Value> {
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("request", request_value(request, response));
    ctx.add_variable_from_value("response", response_value(response));
    ctx.add_variable_from_value(
        "connection",
        map([
            ("mtls", Value::Bool(response.mtls)),
            (
                "requested_server_name",
                string(response.requested_server_name.unwrap_or("")),
            ),
        ]),
    );
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        expr.program().execute(&ctx).ok()
    }))
    .ok()
    .flatten()
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k.to_string())), v))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

fn headers_value(headers: &HeaderMap) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::with_capacity(headers.keys_len());
    for name in headers.keys() {
        // Envoy joins repeated headers with ",".
        let joined = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        map.insert(
            Key::String(Arc::new(name.as_str().to_string())),
            string(&joined),
        );
    }
    Value::Map(Map { map: Arc::new(map) })
}

fn request_value(r: &RequestFacts, response: &ResponseFacts<'_>) -> Value {
    let url_path = r.path.split('?').next().unwrap_or("/");
    let query = r.path.split_once('?').map_or("", |(_, q)| q);
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    map([
        ("method", string(r.method.as_str())),
        ("path", string(&r.path)),
        ("url_path", string(url_path)),
        ("query", string(query)),
        ("host", string(r.host.as_deref().unwrap_or(""))),
        ("scheme", string(r.scheme)),
        ("protocol", string(r.protocol)),
        ("id", Value::String(Arc::new(header("x-request-id")))),
        ("useragent", Value::String(Arc::new(header("user-agent")))),
        ("referer", Value::String(Arc::new(header("referer")))),
        ("headers", headers_value(&r.headers)),
        ("size", Value::Int(to_i64(response.bytes_received))),
        ("total_size", Value::Int(to_i64(response.bytes_received))),
    ])
}

fn response_value(r: &ResponseFacts<'_>) -> Value {
    let flags = if r.flags.is_empty() || r.flags == "-" {
        0
    } else {
        // Envoy's attribute is a bitmask of the flags; sluice keeps their names, so any set
        // flag is a non-zero value (`response.flags != 0` works as in Envoy).
        r.flags.split(',').count() as u64
    };
    map([
        ("code", Value::Int(i64::from(r.code))),
        ("code_details", string(r.details.unwrap_or(""))),
        ("flags", Value::UInt(flags)),
        ("size", Value::Int(to_i64(r.bytes_sent))),
        ("total_size", Value::Int(to_i64(r.bytes_sent))),
        // Envoy's duration attribute is a duration; in milliseconds here, as the access log's
        // %DURATION% prints it, so `response.duration > 1000` reads as in the log.
        (
            "duration",
            Value::Int(i64::try_from(r.duration.as_millis()).unwrap_or(i64::MAX)),
        ),
    ])
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A CEL value as a label value: strings as they are, the rest as CEL prints them.
fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        _ => UNKNOWN.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(headers: &[(&str, &str)]) -> RequestFacts {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        RequestFacts {
            method: http::Method::GET,
            path: "/status/418?x=1".into(),
            host: Some("httpbin.default:8000".into()),
            scheme: "http",
            protocol: "HTTP/1.1",
            headers: map,
        }
    }

    fn response(code: u16) -> ResponseFacts<'static> {
        ResponseFacts {
            code,
            flags: "-",
            details: Some("via_upstream"),
            bytes_sent: 10,
            bytes_received: 0,
            duration: Duration::from_millis(5),
            mtls: false,
            requested_server_name: None,
        }
    }

    fn eval(src: &str, req: &RequestFacts, resp: &ResponseFacts<'_>) -> Option<Value> {
        evaluate(&CelExpression::compile(src).unwrap(), req, resp)
    }

    #[test]
    fn envoy_attributes() {
        let req = facts(&[("x-team", "core"), ("x-team", "edge")]);
        let ok = |src: &str, code| eval(src, &req, &response(code)) == Some(Value::Bool(true));
        assert!(ok("response.code >= 400", 503));
        assert!(!ok("response.code >= 400", 200));
        assert!(ok("request.headers['x-team'] == 'core,edge'", 200));
        assert!(ok(
            "request.url_path == '/status/418' && request.method == 'GET'",
            200
        ));
        assert!(ok("request.host == 'httpbin.default:8000'", 200));
        assert!(ok("!connection.mtls && response.flags == 0u", 200));
        assert!(ok("response.duration < 1000", 200));
    }

    #[test]
    fn failures_are_none_never_a_panic() {
        let req = facts(&[]);
        assert_eq!(
            eval("request.headers['missing'] == 'x'", &req, &response(200)),
            None
        );
        assert_eq!(eval("respons.code == 200", &req, &response(200)), None);
        assert_eq!(eval("response.code + 'a'", &req, &response(200)), None);
    }
}
