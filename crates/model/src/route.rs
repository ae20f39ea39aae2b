//! Compiled HTTP, TLS and TCP routes: VirtualService rules turned into matchers built once, so the
//! request path only compares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use regex::Regex;
use serde::Serialize;

use crate::cluster::Cluster;

/// A compiled `StringMatch`.
#[derive(Debug, Clone)]
pub enum StrMatcher {
    Exact(String),
    Prefix(String),
    /// Anchored: Envoy's `safe_regex` must match the whole value.
    Regex(Regex),
    /// Envoy's `path_separated_prefix` (Ingress `pathType: Prefix`, stored without a trailing
    /// `/`): `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    PathSeparatedPrefix(String),
}

impl StrMatcher {
    /// Compiles a StringMatch; `None` if it has no condition or an invalid regex (validation
    /// refuses those before they get here).
    pub fn compile(m: &sluice_api::networking::StringMatch) -> Option<StrMatcher> {
        if let Some(e) = &m.exact {
            Some(StrMatcher::Exact(e.clone()))
        } else if let Some(p) = &m.prefix {
            Some(StrMatcher::Prefix(p.clone()))
        } else if let Some(r) = &m.regex {
            sluice_api::validate::bounded_regex(&format!("^(?:{r})$"))
                .ok()
                .map(StrMatcher::Regex)
        } else {
            None
        }
    }

    /// True if `value` satisfies the matcher.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StrMatcher::Exact(e) if ignore_case => e.eq_ignore_ascii_case(value),
            StrMatcher::Exact(e) => e == value,
            StrMatcher::Prefix(p) => has_prefix(value, p, ignore_case),
            StrMatcher::Regex(r) => r.is_match(value),
            StrMatcher::PathSeparatedPrefix(p) => {
                has_prefix(value, p, ignore_case)
                    && matches!(value.as_bytes().get(p.len()), None | Some(b'/'))
            }
        }
    }

    /// The path part of Istio's decorator operation for a URI match.
    fn operation_path(&self) -> String {
        match self {
            StrMatcher::Exact(e) => e.clone(),
            StrMatcher::Prefix(p) | StrMatcher::PathSeparatedPrefix(p) => format!("{p}*"),
            StrMatcher::Regex(r) => {
                let s = r.as_str();
                s.strip_prefix("^(?:")
                    .and_then(|s| s.strip_suffix(")$"))
                    .unwrap_or(s)
                    .to_string()
            }
        }
    }
}

fn has_prefix(value: &str, prefix: &str, ignore_case: bool) -> bool {
    if ignore_case {
        value.len() >= prefix.len()
            && value.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        value.starts_with(prefix)
    }
}

/// A header condition: `None` tests presence only (`headers: {x: {}}`).
pub type HeaderCondition = (HeaderName, Option<StrMatcher>);

/// A compiled `HTTPMatchRequest`.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    pub uri: Option<StrMatcher>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StrMatcher>,
    pub method: Option<StrMatcher>,
    pub authority: Option<StrMatcher>,
    pub headers: Vec<HeaderCondition>,
    pub without_headers: Vec<HeaderCondition>,
    pub query_params: Vec<(String, StrMatcher)>,
    pub port: Option<u16>,
}

/// What the router knows about a request when it picks a route.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestFacts<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// The Host or :authority header, possibly with a port.
    pub authority: &'a str,
    /// Path with query string.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The port the client addressed.
    pub port: u16,
}

impl HttpRequestFacts<'_> {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    fn query_param(&self, key: &str) -> Option<&str> {
        let (_, q) = self.path_and_query.split_once('?')?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

fn header_matches(headers: &HeaderMap, cond: &HeaderCondition) -> bool {
    let (name, matcher) = cond;
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let Some(matcher) = matcher else {
        return true;
    };
    // Envoy matches multi-valued headers against the values joined with ','.
    let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    matcher.matches(&joined, false)
}

impl RequestMatch {
    /// True if this block matches every path and sets no header, query, method, scheme or
    /// authority condition (Istio's `IsCatchAllRoute`: prefix `/` or regex `.*`). Gateways move
    /// such routes after the others when they merge VirtualServices.
    pub fn is_catch_all(&self) -> bool {
        let any_path = match &self.uri {
            None => true,
            Some(StrMatcher::Prefix(p) | StrMatcher::PathSeparatedPrefix(p)) => p == "/",
            Some(StrMatcher::Regex(r)) => matches!(r.as_str(), "^(?:.*)$" | "^(?:*)$"),
            Some(StrMatcher::Exact(_)) => false,
        };
        any_path
            && self.scheme.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
    }

    /// True if every condition of this match block holds for `req`.
    pub fn matches(&self, req: &HttpRequestFacts<'_>) -> bool {
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        if let Some(m) = &self.uri {
            if !m.matches(req.path(), self.ignore_uri_case) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(req.method, false) {
                return false;
            }
        }
        if let Some(m) = &self.scheme {
            if !m.matches(req.scheme, false) {
                return false;
            }
        }
        if let Some(m) = &self.authority {
            if !m.matches(req.authority, false) {
                return false;
            }
        }
        if !self.headers.iter().all(|c| header_matches(req.headers, c)) {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|c| header_matches(req.headers, c))
        {
            return false;
        }
        self.query_params
            .iter()
            .all(|(k, m)| req.query_param(k).is_some_and(|v| m.matches(v, false)))
    }
}

/// Where a route destination goes: a cluster known at compile time, one per listener port (a
/// multi-port service addressed without a port), or a cluster that does not exist (503 NC).
#[derive(Debug, Clone)]
pub enum ClusterRef {
    Found(Arc<Cluster>),
    ByListenerPort(HashMap<u16, Arc<Cluster>>, Arc<str>),
    Missing(Arc<str>),
}

impl ClusterRef {
    /// The cluster for a request that arrived on `listener_port`, or the missing cluster's name.
    pub fn resolve(&self, listener_port: u16) -> Result<&Arc<Cluster>, String> {
        match self {
            ClusterRef::Found(c) => Ok(c),
            ClusterRef::ByListenerPort(map, host) => map
                .get(&listener_port)
                .ok_or_else(|| format!("outbound|{listener_port}||{host}")),
            ClusterRef::Missing(name) => Err(name.to_string()),
        }
    }
}

/// Header edits (`headers.request` / `headers.response`). A rule and each of its destinations
/// carry two of these and most have none: empty, they take one pointer.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps(Option<Box<HeaderEdits>>);

#[derive(Debug, Clone, Default)]
struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Compiles a `HeaderOperations`, skipping names or values HTTP cannot carry (validation
    /// reports them).
    pub fn compile(ops: Option<&sluice_api::networking::HeaderOperations>) -> HeaderOps {
        let Some(ops) = ops else {
            return HeaderOps::default();
        };
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        let edits = HeaderEdits {
            set: pairs(&ops.set),
            add: pairs(&ops.add),
            remove: ops
                .remove
                .iter()
                .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
        };
        let empty = edits.set.is_empty() && edits.add.is_empty() && edits.remove.is_empty();
        HeaderOps((!empty).then(|| Box::new(edits)))
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Applies the edits: remove, then set (overwrite), then add (append).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some(edits) = &self.0 else {
            return;
        };
        for name in &edits.remove {
            headers.remove(name);
        }
        for (name, value) in &edits.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &edits.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// One weighted destination of a route.
#[derive(Debug, Clone)]
pub struct WeightedTarget {
    pub cluster: ClusterRef,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// `HTTPRedirect`, compiled.
#[derive(Debug, Clone, Default)]
pub struct Redirect {
    pub uri: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    /// `derivePort: FROM_REQUEST_PORT`.
    pub port_from_request: bool,
    /// `derivePort: FROM_PROTOCOL_DEFAULT`.
    pub port_from_protocol: bool,
    pub code: u16,
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Vec<WeightedTarget>),
    // Boxed, as are a rule's rewrite and fault: rarely set, and every rule of a snapshot
    // would otherwise carry their size inline.
    Redirect(Box<Redirect>),
    DirectResponse { status: u16, body: Arc<[u8]> },
}

/// Which conditions trigger a retry (`retryOn`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub five_xx: bool,
    pub gateway_error: bool,
    pub retriable_4xx: bool,
    pub status_codes: Vec<u16>,
}

impl RetryOn {
    /// Parses Envoy's comma-separated `x-envoy-retry-on` tokens; bare numbers are status codes.
    pub fn parse(s: &str) -> RetryOn {
        let mut r = RetryOn::default();
        for tok in s.split(',').map(str::trim) {
            match tok {
                "connect-failure" => r.connect_failure = true,
                "refused-stream" => r.refused_stream = true,
                "reset" | "reset-before-request" => r.reset = true,
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "retriable-4xx" => r.retriable_4xx = true,
                // gRPC and h2-only conditions have no HTTP/1 equivalent here.
                "unavailable"
                | "cancelled"
                | "deadline-exceeded"
                | "resource-exhausted"
                | "retriable-status-codes"
                | "retriable-headers"
                | "envoy-ratelimited"
                | "http3-post-connect-failure"
                | "internal" => {}
                other => {
                    if let Ok(code) = other.parse::<u16>() {
                        r.status_codes.push(code);
                    }
                }
            }
        }
        r
    }

    /// True if a response with `status` should be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.status_codes.contains(&status)
    }
}

/// A route's retry policy (`retries`, or Istio's default when unset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
}

impl Default for RetryPolicy {
    /// Istio's mesh default: 2 retries on connect-failure, refused-stream, unavailable, cancelled,
    /// retriable-status-codes (`retry/retry.go`).
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::parse(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            ),
        }
    }
}

/// `fault`, compiled: each part fires for its percentage of requests.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(u16, f64)>,
}

/// A mirror destination and the percentage of requests copied to it.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub target: ClusterRef,
    pub percent: f64,
}

/// `rewrite`, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex: Option<(Regex, String)>,
}

/// Istio's `x-envoy-decorator-operation` value for a route.
#[derive(Debug, Clone)]
pub enum Operation {
    /// `host:port/path` when the route has a single destination with a known port.
    Fixed(Arc<str>),
    /// `<name>:<listener port><path>` otherwise.
    PerListenerPort { name: Arc<str>, path: Arc<str> },
}

impl Operation {
    /// The decorator for a request that arrived on `port`.
    pub fn render(&self, port: u16) -> String {
        match self {
            Operation::Fixed(s) => s.to_string(),
            Operation::PerListenerPort { name, path } => format!("{name}:{port}{path}"),
        }
    }

    /// [`render`](Self::render) as a header value, without the intermediate `String` for the
    /// usual fixed decorator (this runs for every routed request). `None` when it is not a valid
    /// header value.
    pub fn header_value(&self, port: u16) -> Option<http::HeaderValue> {
        match self {
            Operation::Fixed(s) => http::HeaderValue::from_str(s).ok(),
            other => http::HeaderValue::from_str(&other.render(port)).ok(),
        }
    }
}

/// One compiled HTTP route (a VirtualService `http` rule, or a service's default route).
#[derive(Debug, Clone)]
pub struct HttpRouteRule {
    /// `%ROUTE_NAME%`: the rule's name, `default` for a service without VirtualService.
    pub name: Option<Arc<str>>,
    /// Where the rule came from, e.g. `VirtualService default/httpbin-ext http[0]`.
    pub source: Arc<str>,
    /// Empty means the rule matches every request.
    pub matches: Vec<RequestMatch>,
    pub action: RouteAction,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Option<Box<Fault>>,
    pub mirrors: Vec<Mirror>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Box<Rewrite>>,
    pub operation: Operation,
}

impl HttpRouteRule {
    /// The index of the first match block satisfied by `req` (0 for a rule without matches).
    pub fn matched(&self, req: &HttpRequestFacts<'_>) -> Option<usize> {
        if self.matches.is_empty() {
            return Some(0);
        }
        self.matches.iter().position(|m| m.matches(req))
    }

    /// The path after `rewrite.uri`/`uriRegexRewrite` given the match block that selected the rule.
    /// `None` when the path is unchanged.
    pub fn rewritten_path(
        &self,
        matched: Option<&RequestMatch>,
        path_and_query: &str,
    ) -> Option<String> {
        let rw = self.rewrite.as_ref()?;
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let new_path = if let Some((re, replacement)) = &rw.uri_regex {
            // Istio's `\1` capture syntax is RE2's; the regex crate wants `${1}`.
            let rep = convert_backrefs(replacement);
            re.replace_all(path, rep.as_str()).into_owned()
        } else {
            let uri = rw.uri.as_ref()?;
            match matched.and_then(|m| m.uri.as_ref()) {
                // A prefix match rewrites only the matched prefix.
                Some(StrMatcher::Prefix(p) | StrMatcher::PathSeparatedPrefix(p))
                    if path.len() >= p.len() =>
                {
                    format!("{uri}{}", &path[p.len()..])
                }
                _ => uri.clone(),
            }
        };
        Some(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }
}

fn convert_backrefs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            let d = chars.next().unwrap_or('0');
            out.push_str(&format!("${{{d}}}"));
        } else if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
    out
}

/// A decorator operation for a rule, as Istio's `getRouteOperation`.
pub fn operation_for(
    first_match: Option<&RequestMatch>,
    single: Option<(&str, u16)>,
    vs_name: &str,
) -> Operation {
    let path = first_match
        .and_then(|m| m.uri.as_ref())
        .map_or_else(|| "/*".to_string(), StrMatcher::operation_path);
    match single {
        Some((host, port)) => Operation::Fixed(format!("{host}:{port}{path}").into()),
        None => Operation::PerListenerPort {
            name: vs_name.into(),
            path: path.into(),
        },
    }
}

/// A virtual host: the rules of the VirtualService that owns a host name.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// The host pattern, e.g. `httpbin.org` or `*.example.com`.
    pub domain: Arc<str>,
    /// `VirtualService ns/name`.
    pub source: Arc<str>,
    pub rules: Vec<Arc<HttpRouteRule>>,
}

/// A compiled TLS (`sniHosts`) or TCP match block.
#[derive(Debug, Clone, Default)]
pub struct StreamMatch {
    /// SNI patterns (TLS routes); empty for TCP.
    pub sni_hosts: Vec<Arc<str>>,
    pub destination_subnets: Vec<IpNet>,
    pub port: Option<u16>,
}

/// A compiled TLS or TCP route of a VirtualService.
#[derive(Debug, Clone)]
pub struct StreamRule {
    pub source: Arc<str>,
    /// The VirtualService's hosts (FQDNs), which decide which connections the rule may see.
    pub vs_hosts: Vec<Arc<str>>,
    pub matches: Vec<StreamMatch>,
    pub targets: Vec<WeightedTarget>,
}

/// Picks one target by weight with the random number `roll` in `[0, 1)`.
pub fn pick_weighted(targets: &[WeightedTarget], roll: f64) -> Option<&WeightedTarget> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return targets.first();
    }
    let mut point = (roll * total as f64) as u64;
    for t in targets {
        let w = u64::from(t.weight);
        if point < w {
            return Some(t);
        }
        point -= w;
    }
    targets.last()
}
