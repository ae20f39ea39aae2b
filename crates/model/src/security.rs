//! Security policy a proxy enforces: PeerAuthentication (is mutual TLS required on the inbound
//! side?) and AuthorizationPolicy (who may call what). Compiled per proxy from
//! `security.istio.io` resources; evaluated by the data path per request or connection.
//!
//! The evaluation follows what istiod generates for Envoy's RBAC filters
//! (`pilot/pkg/security/authz/{builder,model}`):
//! - DENY policies first: any matching rule denies; then, if any ALLOW policy applies to the
//!   workload, one ALLOW rule must match; else the request is allowed. A policy without rules
//!   never matches (so an ALLOW policy with `spec: {}` denies everything).
//! - Request principals and `request.auth.*` come from the request's JWT, verified by the
//!   RequestAuthentications that apply ([`crate::jwt`]); a request without one has none, so
//!   `requestPrincipals: ["*"]` requires a valid token.
//! - On a TCP connection, HTTP-only attributes (hosts, methods, paths, request principals,
//!   `request.headers`, `request.auth.*`) cannot be evaluated: an ALLOW rule using any of them
//!   is dropped (it never matches), while in a DENY rule those conditions are dropped and the
//!   rest of the rule still applies, so the deny gets wider ("the proxy will deny the request if
//!   the rule contains HTTP-only fields and the policy is DENY"; `checkError` in
//!   `authz/model/model.go`).
//! - AUDIT and CUSTOM policies, and dry-run (`istio.io/dry-run`) ones, are not enforced.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;
use sluice_api::networking::Labels;
use sluice_api::security::{
    AuthorizationPolicy, Condition, Operation, PeerAuthentication, PolicySelector, Rule, Source,
    DRY_RUN_ANNOTATION,
};
use sluice_api::{Diagnostic, Resource, Severity, Spec};

use crate::registry::labels_subset;

/// Inbound mutual-TLS requirement for one port of this workload (PeerAuthentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum MtlsMode {
    /// Only mutual TLS with a mesh identity is accepted; plaintext is refused.
    Strict,
    /// Both mutual TLS and plaintext are accepted (Istio's default).
    #[default]
    Permissive,
    /// Plaintext only: TLS is not terminated by the proxy.
    Disable,
}

impl MtlsMode {
    /// A PeerAuthentication `mode`; `None` for `UNSET` (or absent), which inherits.
    pub fn parse(mode: Option<&str>) -> Option<MtlsMode> {
        match mode?.to_ascii_uppercase().as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLE" => Some(MtlsMode::Disable),
            _ => None,
        }
    }
}

/// What an authorization decision can look at. Fields the listener does not know are `None`
/// (a TCP connection has no method or path), and rules that need them do not match, as Envoy's
/// RBAC filter does for HTTP-only fields on TCP.
///
/// `method` is what tells the two apart: it is `Some` for every HTTP request and `None` for a
/// TCP or TLS connection, which is then evaluated as Istio's TCP RBAC filter would.
#[derive(Debug, Clone, Default)]
pub struct AuthzRequest<'a> {
    /// The peer's mesh identity from its mTLS certificate, `cluster.local/ns/NS/sa/SA`
    /// (Istio's principal form, without `spiffe://`).
    pub source_principal: Option<&'a str>,
    /// The namespace in the peer's identity.
    pub source_namespace: Option<&'a str>,
    /// The peer's address (`source.ip`, `ipBlocks`; also used for `remoteIpBlocks`).
    pub source_ip: Option<IpAddr>,
    /// HTTP Host / :authority (port stripped); for TLS/TCP, `None`.
    pub host: Option<&'a str>,
    /// The destination port the client connected to.
    pub port: u16,
    /// The HTTP method; `None` for a TCP/TLS connection.
    pub method: Option<&'a str>,
    /// Path without the query string.
    pub path: Option<&'a str>,
    /// `connection.sni`.
    pub sni: Option<&'a str>,
    /// The request headers (`request.headers[…]`).
    pub headers: Option<&'a http::HeaderMap>,
    /// What the request's verified JWT says (`requestPrincipals`, `request.auth.*`); `None`
    /// without a token (or without a RequestAuthentication that verified it).
    pub request_auth: Option<&'a crate::jwt::RequestAuth>,
}

impl AuthzRequest<'_> {
    /// True for an HTTP request, false for a TCP/TLS connection.
    pub fn is_http(&self) -> bool {
        self.method.is_some()
    }
}

/// The outcome of [`Authorization::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzDecision {
    Allow,
    /// Denied; `policy` is `ns[NS]-policy[NAME]-rule[N]` as Envoy's RBAC shadow/enforce stats
    /// name it, for the access log's `response_code_details` (`rbac_access_denied_matched_policy[…]`).
    /// `none` when ALLOW policies apply and none of their rules matched.
    Deny {
        policy: Arc<str>,
    },
}

/// The policy name Envoy reports when ALLOW policies apply but none matched.
pub const NO_MATCHING_POLICY: &str = "none";

/// The AuthorizationPolicies that apply to this proxy (its namespace, the root namespace, and
/// its workload selector), compiled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authorization {
    /// `ACTION ns/name` of every enforced policy, for the config dump.
    pub policies: Vec<String>,
    #[serde(skip)]
    deny: Vec<CompiledRule>,
    #[serde(skip)]
    allow: Vec<CompiledRule>,
    /// Some ALLOW policy applies (even one without rules, which then denies everything).
    #[serde(skip)]
    allow_applies: bool,
}

impl Authorization {
    /// Istio's evaluation order: any matching DENY policy denies; else, if ALLOW policies apply
    /// to this workload, one of them must match; else allow.
    pub fn check(&self, req: &AuthzRequest<'_>) -> AuthzDecision {
        let http = req.is_http();
        if let Some(rule) = self.deny.iter().find(|r| r.matches(req, http)) {
            return AuthzDecision::Deny {
                policy: rule.name.clone(),
            };
        }
        if !self.allow_applies
            || self
                .allow
                .iter()
                .any(|r| (http || !r.http_only) && r.matches(req, http))
        {
            return AuthzDecision::Allow;
        }
        AuthzDecision::Deny {
            policy: Arc::from(NO_MATCHING_POLICY),
        }
    }

    /// True when no policy applies (the data path can skip building requests).
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && !self.allow_applies
    }

    /// The policies of `resources` that apply to a workload in `namespace` with `labels`:
    /// those of the root namespace and of its own namespace, without a selector or with one
    /// its labels match (Istio's `ListAuthorizationPolicies`). Policies sluice does not enforce
    /// (AUDIT, CUSTOM, dry-run, `targetRef`) are reported as warnings.
    pub fn compile(
        resources: &[Resource],
        namespace: &str,
        labels: &Labels,
        root_namespace: &str,
    ) -> (Authorization, Vec<Diagnostic>) {
        let mut out = Authorization::default();
        let mut diags = Vec::new();
        for res in resources {
            let Spec::AuthorizationPolicy(ap) = &res.spec else {
                continue;
            };
            let attached = ap.target_ref.is_some() || !ap.target_refs.is_empty();
            let scope = WorkloadScope {
                namespace,
                labels,
                root_namespace,
            };
            if !scope.selects(res, ap.selector.as_ref(), attached, &mut diags) {
                continue;
            }
            let action = ap.action();
            if action == "AUDIT" || action == "CUSTOM" {
                diags.push(Diagnostic::at(
                    res,
                    Severity::Warning,
                    "spec.action",
                    crate::references::unenforced_action_message(&action),
                ));
                continue;
            }
            if res
                .meta
                .annotations
                .get(DRY_RUN_ANNOTATION)
                .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
            {
                diags.push(Diagnostic::at(
                    res,
                    Severity::Warning,
                    format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                    "dry-run policies are not enforced; sluice does not evaluate them",
                ));
                continue;
            }
            let deny = action == "DENY";
            out.policies.push(format!("{action} {}", res.key()));
            if !deny {
                out.allow_applies = true;
            }
            compile_policy(res, ap, deny, &mut out, &mut diags);
        }
        (out, diags)
    }
}

/// True if a policy with `selector` applies to a workload with `labels` (no selector, or an
/// empty one, selects every workload of the namespace).
fn selects(selector: Option<&PolicySelector>, labels: &Labels) -> bool {
    selector.is_none_or(|s| labels_subset(&s.match_labels, labels))
}

/// The workload a security policy may apply to: its namespace and labels, and the mesh's root
/// namespace.
pub(crate) struct WorkloadScope<'a> {
    pub namespace: &'a str,
    pub labels: &'a Labels,
    pub root_namespace: &'a str,
}

impl WorkloadScope<'_> {
    /// Whether policy `res` (with `selector`; `attached` when it has `targetRef(s)`) applies to
    /// this workload, as Istio selects AuthorizationPolicies and RequestAuthentications: those of
    /// the root namespace and of its own namespace, without a selector or with one its labels
    /// match. A policy attached with `targetRef(s)` is reported in `diags` and applies to none.
    pub fn selects(
        &self,
        res: &Resource,
        selector: Option<&PolicySelector>,
        attached: bool,
        diags: &mut Vec<Diagnostic>,
    ) -> bool {
        let ns = res.meta.namespace.as_str();
        if ns != self.namespace && ns != self.root_namespace {
            return false;
        }
        if attached {
            diags.push(Diagnostic::at(
                res,
                Severity::Warning,
                "spec.targetRefs",
                "policies attached with targetRef(s) apply to waypoints and Kubernetes \
                 Gateway API gateways; sluice does not apply this policy",
            ));
            return false;
        }
        selects(selector, self.labels)
    }
}

fn compile_policy(
    res: &Resource,
    ap: &AuthorizationPolicy,
    deny: bool,
    out: &mut Authorization,
    diags: &mut Vec<Diagnostic>,
) {
    for (i, rule) in ap.rules.iter().flatten().enumerate() {
        let name: Arc<str> = format!(
            "ns[{}]-policy[{}]-rule[{i}]",
            res.meta.namespace, res.meta.name
        )
        .into();
        let compiled = compile_rule(name, rule, &res.meta.namespace, |field, msg| {
            diags.push(Diagnostic::at(
                res,
                Severity::Warning,
                format!("spec.rules[{i}].{field}"),
                msg,
            ));
        });
        if deny {
            out.deny.push(compiled);
        } else {
            out.allow.push(compiled);
        }
    }
}

/// One rule: `from` (any source), `to` (any operation) and `when` (all conditions).
#[derive(Debug, Clone)]
struct CompiledRule {
    name: Arc<str>,
    /// `None`: any source. Each source is an AND of conditions.
    from: Option<Vec<Vec<Cond>>>,
    to: Option<Vec<Vec<Cond>>>,
    when: Vec<Cond>,
    /// The rule uses an attribute only HTTP requests have.
    http_only: bool,
}

impl CompiledRule {
    /// On TCP (`!http`), HTTP-only conditions are left out: callers skip ALLOW rules that have
    /// any, so only DENY rules get wider this way.
    fn matches(&self, req: &AuthzRequest<'_>, http: bool) -> bool {
        let all = |conds: &[Cond]| conds.iter().all(|c| c.matches(req, http));
        self.from.as_ref().is_none_or(|f| f.iter().any(|s| all(s)))
            && self.to.as_ref().is_none_or(|t| t.iter().any(|o| all(o)))
            && all(&self.when)
    }
}

fn compile_rule(
    name: Arc<str>,
    rule: &Rule,
    policy_ns: &str,
    mut warn: impl FnMut(String, String),
) -> CompiledRule {
    let mut when = Vec::new();
    for (j, c) in rule.when.iter().enumerate() {
        match condition(c, policy_ns) {
            Some(cond) => when.push(cond),
            None => {
                warn(
                    format!("when[{j}].key"),
                    format!(
                        "sluice cannot evaluate `{}`: it never matches (so `notValues` always do)",
                        c.key
                    ),
                );
                // Kept as a condition that never matches: left out, it would widen an ALLOW
                // rule to requests the policy did not allow.
                let never = |v: &Vec<String>| v.iter().map(|_| Pattern::Never).collect();
                when.push(Cond {
                    attr: Attr::Metadata,
                    values: never(&c.values),
                    not_values: never(&c.not_values),
                });
            }
        }
        if c.key == "destination.ip" {
            warn(
                format!("when[{j}].key"),
                "sluice does not know the destination IP when authorizing: `destination.ip` \
                 values never match"
                    .into(),
            );
        }
    }
    let from = rule.from.as_ref().map(|list| {
        list.iter()
            .map(|f| {
                f.source
                    .as_ref()
                    .map_or_else(Vec::new, |s| source(s, policy_ns))
            })
            .collect::<Vec<_>>()
    });
    let to = rule.to.as_ref().map(|list| {
        list.iter()
            .map(|t| t.operation.as_ref().map_or_else(Vec::new, operation))
            .collect::<Vec<_>>()
    });
    let http_only = when.iter().any(Cond::http_only)
        || from.iter().flatten().flatten().any(Cond::http_only)
        || to.iter().flatten().flatten().any(Cond::http_only);
    CompiledRule {
        name,
        from,
        to,
        when,
        http_only,
    }
}

/// An attribute a condition looks at.
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Principal,
    Namespace,
    /// Service accounts, `NAME` resolved against the policy's namespace.
    ServiceAccount,
    /// The trust domain of the peer's SPIFFE identity (`spiffe://TD/…`).
    TrustDomain,
    SourceIp,
    RemoteIp,
    /// `requestPrincipals`, `request.auth.principal`: the verified JWT's `iss/sub`.
    RequestPrincipal,
    /// `request.auth.audiences`: the verified JWT's `aud`.
    RequestAudiences,
    /// `request.auth.presenter`: the verified JWT's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]`: a claim of the verified JWT, by path.
    RequestClaim(Vec<String>),
    Host,
    Method,
    Path,
    Port,
    DestinationIp,
    Sni,
    /// `request.headers[name]`, lower-cased.
    Header(String),
    /// `experimental.envoy.filters.*`: Envoy dynamic metadata, which sluice has none of.
    Metadata,
}

impl Attr {
    fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::RequestPrincipal
                | Attr::RequestAudiences
                | Attr::RequestPresenter
                | Attr::RequestClaim(_)
                | Attr::Host
                | Attr::Method
                | Attr::Path
                | Attr::Header(_)
        )
    }
}

/// A value to compare an attribute with.
#[derive(Debug, Clone)]
enum Pattern {
    Str(StrPattern),
    Net(IpNet),
    Port(u16),
    /// A host, with the port the value named, if any.
    Host(StrPattern, Option<u16>),
    /// A service account `(namespace, name)`.
    ServiceAccount(String, String),
    /// A trust domain: `*` (any SPIFFE identity), exact, or one `*` standing for any characters
    /// but `/` (Istio's `spiffe://PREFIX[^/]*SUFFIX/.*`).
    TrustDomain(TrustDomainPattern),
    /// A value that can never match (unparsable; validation reports it).
    Never,
}

/// Istio's `StringMatcher` forms: `*` (any non-empty), `*suffix`, `prefix*`, exact; or a glob
/// with `*` anywhere (namespaces, which Istio turns into a regex).
#[derive(Debug, Clone)]
enum StrPattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Glob(Vec<String>),
    /// A `{*}`/`{**}` path template, as segments.
    Template(Vec<String>),
}

impl StrPattern {
    fn new(v: &str, lower: bool) -> StrPattern {
        let v = if lower {
            v.to_ascii_lowercase()
        } else {
            v.to_string()
        };
        if v == "*" {
            StrPattern::Any
        } else if let Some(s) = v.strip_prefix('*') {
            StrPattern::Suffix(s.to_string())
        } else if let Some(p) = v.strip_suffix('*') {
            StrPattern::Prefix(p.to_string())
        } else {
            StrPattern::Exact(v)
        }
    }

    fn glob(v: &str) -> StrPattern {
        if v == "*" {
            StrPattern::Any
        } else if v.contains('*') {
            StrPattern::Glob(v.split('*').map(str::to_string).collect())
        } else {
            StrPattern::Exact(v.to_string())
        }
    }

    fn path(v: &str) -> StrPattern {
        if v.contains("{*}") || v.contains("{**}") {
            StrPattern::Template(v.split('/').map(str::to_string).collect())
        } else {
            StrPattern::new(v, false)
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            StrPattern::Any => !s.is_empty(),
            StrPattern::Exact(e) => s == e,
            StrPattern::Prefix(p) => s.starts_with(p.as_str()),
            StrPattern::Suffix(x) => s.ends_with(x.as_str()),
            StrPattern::Glob(parts) => glob_matches(parts, s),
            StrPattern::Template(segs) => {
                let path: Vec<&str> = s.split('/').collect();
                template_matches(segs, &path)
            }
        }
    }
}

/// `parts` are the pieces of a pattern split at `*`.
fn glob_matches(parts: &[String], s: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return s.is_empty();
    };
    let Some(mut remaining) = s.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part.as_str()) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last.as_str())
}

/// `{*}` matches one non-empty segment, `{**}` any number (at least one) of them; other
/// segments match literally.
fn template_matches(pattern: &[String], path: &[&str]) -> bool {
    let Some((seg, rest)) = pattern.split_first() else {
        return path.is_empty();
    };
    match seg.as_str() {
        "{**}" => (1..=path.len())
            .any(|n| path[..n].iter().all(|p| !p.is_empty()) && template_matches(rest, &path[n..])),
        "{*}" => path
            .split_first()
            .is_some_and(|(p, tail)| !p.is_empty() && template_matches(rest, tail)),
        lit => path
            .split_first()
            .is_some_and(|(p, tail)| *p == lit && template_matches(rest, tail)),
    }
}

/// One attribute with the values it must have (any) and must not have (none).
#[derive(Debug, Clone)]
struct Cond {
    attr: Attr,
    values: Vec<Pattern>,
    not_values: Vec<Pattern>,
}

impl Cond {
    fn new(attr: Attr, values: &[String], not_values: &[String], policy_ns: &str) -> Option<Cond> {
        if values.is_empty() && not_values.is_empty() {
            return None;
        }
        let compile = |v: &String| pattern(&attr, v, policy_ns);
        Some(Cond {
            values: values.iter().map(compile).collect(),
            not_values: not_values.iter().map(compile).collect(),
            attr,
        })
    }

    fn http_only(&self) -> bool {
        self.attr.http_only()
    }

    fn matches(&self, req: &AuthzRequest<'_>, http: bool) -> bool {
        if !http && self.attr.http_only() {
            // Only DENY rules get here on TCP: Istio leaves HTTP-only conditions out of the
            // TCP filter, widening the deny.
            return true;
        }
        let any = |list: &[Pattern]| list.iter().any(|p| self.value_matches(p, req));
        (self.values.is_empty() || any(&self.values))
            && (self.not_values.is_empty() || !any(&self.not_values))
    }

    fn value_matches(&self, p: &Pattern, req: &AuthzRequest<'_>) -> bool {
        let principal = req
            .source_principal
            .map(|s| s.strip_prefix("spiffe://").unwrap_or(s));
        match (&self.attr, p) {
            (_, Pattern::Never) => false,
            (Attr::Principal, Pattern::Str(m)) => principal.is_some_and(|s| m.matches(s)),
            (Attr::Namespace, Pattern::Str(m)) => req
                .source_namespace
                .or_else(|| principal.and_then(namespace_of))
                .is_some_and(|s| m.matches(s)),
            (Attr::ServiceAccount, Pattern::ServiceAccount(ns, sa)) => {
                principal.is_some_and(|p| principal_has_service_account(p, ns, sa))
            }
            (Attr::TrustDomain, Pattern::TrustDomain(td)) => {
                principal.is_some_and(|p| td.matches(p))
            }
            (Attr::SourceIp | Attr::RemoteIp, Pattern::Net(net)) => {
                req.source_ip.is_some_and(|ip| net.contains(&ip))
            }
            (Attr::Host, Pattern::Host(m, port)) => {
                req.host.is_some_and(|h| m.matches(&h.to_ascii_lowercase()))
                    && port.is_none_or(|p| p == req.port)
            }
            (Attr::Method, Pattern::Str(m)) => req.method.is_some_and(|s| m.matches(s)),
            (Attr::Path, Pattern::Str(m)) => req.path.is_some_and(|s| m.matches(s)),
            (Attr::Port, Pattern::Port(p)) => req.port == *p,
            (Attr::Sni, Pattern::Str(m)) => req.sni.is_some_and(|s| m.matches(s)),
            (Attr::Header(name), Pattern::Str(m)) => req.headers.is_some_and(|h| {
                let values: Vec<&str> = h
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                // Envoy matches a repeated header as its values joined with `,`; a present
                // header with an empty value still satisfies `*`.
                !values.is_empty() && (matches!(m, StrPattern::Any) || m.matches(&values.join(",")))
            }),
            (Attr::RequestPrincipal, Pattern::Str(m)) => {
                req.request_auth.is_some_and(|a| m.matches(&a.principal))
            }
            (Attr::RequestAudiences, Pattern::Str(m)) => req
                .request_auth
                .is_some_and(|a| a.audiences().into_iter().any(|v| m.matches(v))),
            (Attr::RequestPresenter, Pattern::Str(m)) => req
                .request_auth
                .and_then(crate::jwt::RequestAuth::presenter)
                .is_some_and(|v| m.matches(v)),
            // A string claim, or any string of a list claim (Istio's metadata list matcher).
            (Attr::RequestClaim(path), Pattern::Str(m)) => req
                .request_auth
                .is_some_and(|a| a.claim(path).into_iter().any(|v| m.matches(v))),
            // Destination IPs and Envoy metadata are not known here.
            _ => false,
        }
    }
}

/// The namespace of a principal `TD/ns/NS/sa/SA`.
fn namespace_of(principal: &str) -> Option<&str> {
    let mut segs = principal.split('/');
    segs.by_ref().find(|s| *s == "ns")?;
    segs.next()
}

/// Istio's `spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?`.
fn principal_has_service_account(principal: &str, ns: &str, sa: &str) -> bool {
    let segs: Vec<&str> = principal.split('/').collect();
    (1..segs.len().saturating_sub(1)).any(|i| {
        segs[i] == "ns"
            && segs[i + 1] == ns
            && (i + 2..segs.len().saturating_sub(1)).any(|j| segs[j] == "sa" && segs[j + 1] == sa)
    })
}

fn pattern(attr: &Attr, v: &str, policy_ns: &str) -> Pattern {
    match attr {
        Attr::Principal | Attr::Sni | Attr::Method | Attr::Header(_) => Pattern::Str(
            StrPattern::new(v.strip_prefix("spiffe://").unwrap_or(v), false),
        ),
        Attr::Namespace => Pattern::Str(StrPattern::glob(v)),
        Attr::Path => Pattern::Str(StrPattern::path(v)),
        Attr::Host => {
            // `host:port` names a port too; a bare host matches any port.
            let (h, port) = match v.rsplit_once(':') {
                // A bare IPv6 address has colons of its own; only `[addr]:port` names a port.
                Some((h, p)) if !h.contains(':') || (h.starts_with('[') && h.ends_with(']')) => {
                    match p.parse() {
                        Ok(port) => (h, Some(port)),
                        Err(_) => (v, None),
                    }
                }
                _ => (v, None),
            };
            Pattern::Host(StrPattern::new(h, true), port)
        }
        Attr::SourceIp | Attr::RemoteIp | Attr::DestinationIp => {
            crate::registry::parse_net(v).map_or(Pattern::Never, Pattern::Net)
        }
        Attr::Port => v.parse().map_or(Pattern::Never, Pattern::Port),
        Attr::ServiceAccount => match v.split_once('/') {
            Some((ns, sa)) => Pattern::ServiceAccount(ns.into(), sa.into()),
            None => Pattern::ServiceAccount(policy_ns.into(), v.into()),
        },
        Attr::TrustDomain => Pattern::TrustDomain(TrustDomainPattern::new(v)),
        Attr::RequestPrincipal
        | Attr::RequestAudiences
        | Attr::RequestPresenter
        | Attr::RequestClaim(_)
        | Attr::Metadata => Pattern::Str(StrPattern::new(v, false)),
    }
}

/// The conditions of one `source`.
fn source(s: &Source, policy_ns: &str) -> Vec<Cond> {
    [
        (Attr::Principal, &s.principals, &s.not_principals),
        (
            Attr::RequestPrincipal,
            &s.request_principals,
            &s.not_request_principals,
        ),
        (Attr::Namespace, &s.namespaces, &s.not_namespaces),
        (Attr::TrustDomain, &s.trust_domains, &s.not_trust_domains),
        (Attr::SourceIp, &s.ip_blocks, &s.not_ip_blocks),
        (Attr::RemoteIp, &s.remote_ip_blocks, &s.not_remote_ip_blocks),
        (
            Attr::ServiceAccount,
            &s.service_accounts,
            &s.not_service_accounts,
        ),
    ]
    .into_iter()
    .filter_map(|(attr, v, n)| Cond::new(attr, v, n, policy_ns))
    .collect()
}

/// The conditions of one `operation`.
fn operation(o: &Operation) -> Vec<Cond> {
    [
        (Attr::Host, &o.hosts, &o.not_hosts),
        (Attr::Method, &o.methods, &o.not_methods),
        (Attr::Path, &o.paths, &o.not_paths),
        (Attr::Port, &o.ports, &o.not_ports),
    ]
    .into_iter()
    .filter_map(|(attr, v, n)| Cond::new(attr, v, n, ""))
    .collect()
}

/// A `when` condition; `None` for a key sluice cannot evaluate at all (validation refuses
/// unknown keys, so this is only reached for keys of newer Istio releases).
fn condition(c: &Condition, policy_ns: &str) -> Option<Cond> {
    let key = c.key.as_str();
    let attr = match key {
        "source.principal" => Attr::Principal,
        "source.namespace" => Attr::Namespace,
        "source.serviceAccount" => Attr::ServiceAccount,
        "source.trustDomain" => Attr::TrustDomain,
        "source.ip" => Attr::SourceIp,
        "remote.ip" => Attr::RemoteIp,
        "request.auth.principal" => Attr::RequestPrincipal,
        "destination.ip" => Attr::DestinationIp,
        "destination.port" => Attr::Port,
        "connection.sni" => Attr::Sni,
        "request.auth.audiences" => Attr::RequestAudiences,
        "request.auth.presenter" => Attr::RequestPresenter,
        _ if key.starts_with("request.auth.claims") => {
            Attr::RequestClaim(crate::jwt::claim_path(key)?)
        }
        _ if key.starts_with("request.headers[") && key.ends_with(']') => {
            Attr::Header(key["request.headers[".len()..key.len() - 1].to_ascii_lowercase())
        }
        _ if key.starts_with("experimental.envoy.filters.") => Attr::Metadata,
        _ => return None,
    };
    Cond::new(attr, &c.values, &c.not_values, policy_ns)
}

/// A `trustDomains` value, matched against a principal without its `spiffe://`.
#[derive(Debug, Clone)]
struct TrustDomainPattern {
    /// Before and after the `*`; `None` for an exact value.
    wildcard: Option<(String, String)>,
    exact: String,
}

impl TrustDomainPattern {
    fn new(v: &str) -> TrustDomainPattern {
        TrustDomainPattern {
            wildcard: v
                .split_once('*')
                .map(|(pre, post)| (pre.to_string(), post.to_string())),
            exact: v.to_string(),
        }
    }

    /// `principal` is `TD/ns/…`: its trust domain is what comes before the first `/` (a
    /// principal without one has none, and matches nothing, as Istio's prefix `spiffe://TD/`).
    fn matches(&self, principal: &str) -> bool {
        let Some((td, _)) = principal.split_once('/') else {
            return false;
        };
        match &self.wildcard {
            None => td == self.exact,
            Some((pre, post)) => {
                td.len() >= pre.len() + post.len()
                    && td.starts_with(pre.as_str())
                    && td.ends_with(post.as_str())
            }
        }
    }
}

/// The PeerAuthentication of a workload in `namespace` with `labels`: the mode for its ports and
/// the port-level overrides, by the workload's own port (Istio's
/// `ComposePeerAuthentication`). The oldest policy of each level wins; a workload-level policy
/// (with a selector, not in the root namespace) overrides the namespace-level one (no selector),
/// which overrides the mesh-level one (no selector, root namespace); `UNSET` inherits from the
/// level above; with nothing set the mode is PERMISSIVE. Root-namespace policies with a selector
/// are ignored, as in Istio.
pub fn peer_authentication(
    resources: &[Resource],
    namespace: &str,
    labels: &Labels,
    root_namespace: &str,
) -> (MtlsMode, HashMap<u16, MtlsMode>) {
    let mut mesh: Option<&PeerAuthentication> = None;
    let mut ns_level: Option<&PeerAuthentication> = None;
    let mut workload: Option<&PeerAuthentication> = None;
    for res in resources {
        let Spec::PeerAuthentication(pa) = &res.spec else {
            continue;
        };
        let ns = res.meta.namespace.as_str();
        let has_selector = pa
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !has_selector {
            if ns == root_namespace {
                mesh.get_or_insert(pa);
            } else if ns == namespace {
                ns_level.get_or_insert(pa);
            }
        } else if ns == namespace && ns != root_namespace && selects(pa.selector.as_ref(), labels) {
            workload.get_or_insert(pa);
        }
    }
    let mode_of = |pa: Option<&PeerAuthentication>| {
        pa.and_then(|p| p.mtls.as_ref())
            .and_then(|m| MtlsMode::parse(m.mode.as_deref()))
    };
    let mut mode = MtlsMode::default();
    for level in [mesh, ns_level, workload] {
        if let Some(m) = mode_of(level) {
            mode = m;
        }
    }
    let mut ports = HashMap::new();
    for (port, mtls) in workload
        .and_then(|w| w.port_level_mtls.as_ref())
        .into_iter()
        .flatten()
    {
        let Ok(port) = port.trim().parse::<u16>() else {
            continue;
        };
        ports.insert(port, MtlsMode::parse(mtls.mode.as_deref()).unwrap_or(mode));
    }
    (mode, ports)
}
