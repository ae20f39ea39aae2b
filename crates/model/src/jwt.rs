//! RequestAuthentication: the JWT rules a workload applies to its requests, compiled per proxy,
//! and what a verified token tells AuthorizationPolicies (the request principal and claims).
//!
//! This follows what istiod generates for Envoy's `jwt_authn` filter
//! (`pilot/pkg/security/authn/policy_applier.go`): one provider per `jwtRules` entry of every
//! RequestAuthentication that selects the workload, each required "or missing", and any of them
//! succeeding is enough. So a request without a token passes (an AuthorizationPolicy decides
//! whether that is allowed), a request with a token passes only if one rule verifies it, and a
//! token no rule verifies is refused with 401.
//!
//! Verifying a token (signatures, clocks, fetching a `jwksUri`) is I/O and time, and lives in
//! the proxy; this module holds what to verify and where tokens are found.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use serde::Serialize;
use serde_json::{Map, Value};
use sluice_api::networking::Labels;
use sluice_api::unenforced::JwtRule;
use sluice_api::{Diagnostic, Resource, Spec};

/// Istio's timeout for fetching a `jwksUri` when the rule sets none.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims whose string value is split at spaces for authorization (Istio always adds these to
/// `spaceDelimitedClaims`).
const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["permission", "scope"];

/// The RequestAuthentications that apply to this proxy, compiled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestAuthentication {
    /// `ns/name` of every RequestAuthentication applied, for the config dump and `explain`.
    pub policies: Vec<String>,
    /// One provider per `jwtRules` entry, in policy order.
    pub providers: Vec<Arc<JwtProvider>>,
    /// Every header a provider writes (`outputPayloadToHeader`, `outputClaimToHeaders`): a
    /// client's own values are removed before authentication, so only a verified token's
    /// claims ever reach the application under those names.
    #[serde(skip)]
    pub output_headers: Vec<HeaderName>,
}

/// One `jwtRules` entry: Envoy's `JwtProvider`.
#[derive(Debug, Clone, Serialize)]
pub struct JwtProvider {
    /// `ns/name jwtRules[i]`, for logs.
    pub name: String,
    pub issuer: String,
    /// If not empty, the token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Where the token is read, in order.
    pub locations: Vec<TokenLocation>,
    /// Keep the token in the request sent upstream (`forwardOriginalToken`).
    pub forward_original_token: bool,
    /// `outputPayloadToHeader`: the token's payload segment (base64url) in this header.
    #[serde(serialize_with = "serialize_header_opt")]
    pub payload_header: Option<HeaderName>,
    /// `outputClaimToHeaders`: (header, claim).
    #[serde(serialize_with = "serialize_claim_headers")]
    pub claim_headers: Vec<(HeaderName, String)>,
    /// Claims split at spaces for authorization (`spaceDelimitedClaims` plus Istio's defaults).
    pub space_delimited_claims: Vec<String>,
    /// How long a `jwksUri` fetch may take.
    #[serde(with = "duration_seconds")]
    pub timeout: Duration,
    /// `presence: REQUIRED`: a request without a token in this rule's locations is refused.
    pub required: bool,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JwksSource {
    /// `jwks`: an inline JSON Web Key Set.
    Inline(Arc<str>),
    /// `jwksUri`: fetched (and cached) by the proxy.
    Uri(Arc<str>),
}

/// Where a token is read from a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenLocation {
    /// A header, with the prefix its value starts with (`Bearer `).
    Header {
        #[serde(serialize_with = "serialize_header")]
        name: HeaderName,
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Envoy's defaults when a rule names no location: `Authorization: Bearer <token>` and the
    /// `access_token` query parameter.
    fn defaults() -> Vec<TokenLocation> {
        vec![
            TokenLocation::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            TokenLocation::Param("access_token".into()),
        ]
    }

    /// The token at this location of a request, if any.
    pub fn extract<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        match self {
            TokenLocation::Header { name, prefix } => headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| strip_prefix_ignore_case(v.trim(), prefix))
                .map(str::trim)
                .filter(|t| !t.is_empty()),
            TokenLocation::Param(param) => query?
                .split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .find(|(k, _)| k == param)
                .map(|(_, v)| v)
                .filter(|t| !t.is_empty()),
            TokenLocation::Cookie(cookie) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == cookie)
                .map(|(_, v)| v.trim_matches('"'))
                .filter(|t| !t.is_empty()),
        }
    }
}

/// `s` without `prefix`, compared without case (an HTTP auth scheme is case-insensitive).
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl JwtProvider {
    /// The first token found at this provider's locations.
    pub fn token<'a>(
        &'a self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Option<Found<'a>> {
        self.locations.iter().find_map(|location| {
            location
                .extract(headers, query)
                .map(|token| Found { token, location })
        })
    }
}

/// A token and where it was found.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub token: &'a str,
    pub location: &'a TokenLocation,
}

impl RequestAuthentication {
    /// True when no RequestAuthentication applies: requests are not looked at.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The RequestAuthentications of `resources` that apply to a workload in `namespace` with
    /// `labels`: those of the root namespace and of its own namespace, without a selector or
    /// with one its labels match (as AuthorizationPolicies are selected). Policies attached
    /// with `targetRef(s)` (waypoints, Gateway API gateways) are reported and left out.
    pub fn compile(
        resources: &[Resource],
        namespace: &str,
        labels: &Labels,
        root_namespace: &str,
    ) -> (RequestAuthentication, Vec<Diagnostic>) {
        let mut out = RequestAuthentication::default();
        let mut diags = Vec::new();
        for res in resources {
            let Spec::RequestAuthentication(ra) = &res.spec else {
                continue;
            };
            let attached = ra.target_ref.is_some() || !ra.target_refs.is_empty();
            let scope = crate::security::WorkloadScope {
                namespace,
                labels,
                root_namespace,
            };
            if !scope.selects(res, ra.selector.as_ref(), attached, &mut diags) {
                continue;
            }
            out.policies.push(res.key());
            for (i, rule) in ra.jwt_rules.iter().enumerate() {
                let provider = provider(&format!("{} jwtRules[{i}]", res.key()), rule);
                for h in provider
                    .payload_header
                    .iter()
                    .chain(provider.claim_headers.iter().map(|(h, _)| h))
                {
                    if !out.output_headers.contains(h) {
                        out.output_headers.push(h.clone());
                    }
                }
                out.providers.push(Arc::new(provider));
            }
        }
        (out, diags)
    }
}

/// One rule, compiled. Validation has refused rules without an issuer, with both `jwks` and
/// `jwksUri`, or with unusable header names; what is left over is handled fail-closed (a header
/// name that does not parse is never read and never written).
fn provider(name: &str, rule: &JwtRule) -> JwtProvider {
    let mut locations: Vec<TokenLocation> = rule
        .from_headers
        .iter()
        .filter_map(|h| {
            Some(TokenLocation::Header {
                name: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?,
                prefix: h.prefix.clone().unwrap_or_default(),
            })
        })
        .collect();
    locations.extend(rule.from_params.iter().cloned().map(TokenLocation::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(TokenLocation::Cookie));
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        locations = TokenLocation::defaults();
    }
    let jwks = match (&rule.jwks, &rule.jwks_uri) {
        (Some(inline), _) => JwksSource::Inline(inline.as_str().into()),
        (None, Some(uri)) => JwksSource::Uri(uri.as_str().into()),
        // Istio derives the URI from the issuer's OpenID discovery document; sluice does not,
        // and an empty key set verifies nothing (fail closed).
        (None, None) => JwksSource::Inline(r#"{"keys":[]}"#.into()),
    };
    let header = |h: &str| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok();
    let mut space_delimited: Vec<String> = rule.space_delimited_claims.clone();
    for c in DEFAULT_SPACE_DELIMITED_CLAIMS {
        if !space_delimited.iter().any(|s| s == c) {
            space_delimited.push(c.to_string());
        }
    }
    JwtProvider {
        name: name.to_string(),
        issuer: rule.issuer.clone().unwrap_or_default(),
        audiences: rule.audiences.clone(),
        jwks,
        locations,
        forward_original_token: rule.forward_original_token.unwrap_or(false),
        payload_header: rule.output_payload_to_header.as_deref().and_then(header),
        claim_headers: rule
            .output_claim_to_headers
            .iter()
            .filter_map(|c| Some((header(&c.header)?, c.claim.clone())))
            .collect(),
        space_delimited_claims: space_delimited,
        timeout: rule.timeout.map_or(DEFAULT_JWKS_TIMEOUT, |d| d.0),
        required: rule
            .presence
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("REQUIRED")),
    }
}

/// What a verified token says about the request, for AuthorizationPolicies: Istio's
/// `request.auth.*` attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    /// The token's claims, with the provider's space-delimited claims split into lists.
    pub claims: Map<String, Value>,
}

impl RequestAuth {
    /// The identity of a verified token's `claims` for `provider`.
    pub fn new(provider: &JwtProvider, mut claims: Map<String, Value>) -> RequestAuth {
        let text = |k: &str, claims: &Map<String, Value>| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let principal = format!("{}/{}", text("iss", &claims), text("sub", &claims));
        for name in &provider.space_delimited_claims {
            if let Some(Value::String(s)) = claims.get(name) {
                let parts = s.split(' ').filter(|p| !p.is_empty());
                let list = parts.map(|p| Value::String(p.to_string())).collect();
                claims.insert(name.clone(), Value::Array(list));
            }
        }
        RequestAuth { principal, claims }
    }

    /// `request.auth.audiences`: `aud`, a string or a list.
    pub fn audiences(&self) -> Vec<&str> {
        strings(self.claims.get("aud"))
    }

    /// `request.auth.presenter`: `azp`.
    pub fn presenter(&self) -> Option<&str> {
        self.claims.get("azp").and_then(Value::as_str)
    }

    /// `request.auth.claims[a][b]`: the string values at a claim path (a string claim, or the
    /// strings of a list claim). Numbers, booleans and objects are not strings and match nothing,
    /// as Istio's metadata list matcher.
    pub fn claim(&self, path: &[String]) -> Vec<&str> {
        let Some((first, rest)) = path.split_first() else {
            return Vec::new();
        };
        let mut value = self.claims.get(first);
        for key in rest {
            value = value.and_then(|v| v.as_object()).and_then(|o| o.get(key));
        }
        strings(value)
    }
}

/// The strings of a string or list-of-strings claim.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The names in `request.auth.claims[a][b]` (`["a", "b"]`); `None` if the key is not of that
/// form.
pub fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        path.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    (!path.is_empty() && path.iter().all(|p| !p.is_empty())).then_some(path)
}

fn serialize_header<S: serde::Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

fn serialize_header_opt<S: serde::Serializer>(
    h: &Option<HeaderName>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_some(h.as_str()),
        None => s.serialize_none(),
    }
}

fn serialize_claim_headers<S: serde::Serializer>(
    list: &[(HeaderName, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(list.len()))?;
    for (h, claim) in list {
        seq.serialize_element(&serde_json::json!({"header": h.as_str(), "claim": claim}))?;
    }
    seq.end()
}

mod duration_seconds {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth(claims: Value) -> RequestAuth {
        let rule = JwtRule {
            issuer: Some("https://issuer.example".into()),
            ..JwtRule::default()
        };
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        RequestAuth::new(&provider("p", &rule), map)
    }

    #[test]
    fn principal_audiences_presenter_and_claims() {
        let a = auth(json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": ["web", "api"], "azp": "cli",
            "groups": ["dev", "ops"], "scope": "read  write", "nested": {"team": {"name": "core"}},
            "n": 5
        }));
        assert_eq!(a.principal, "https://issuer.example/alice");
        assert_eq!(a.audiences(), ["web", "api"]);
        assert_eq!(a.presenter(), Some("cli"));
        assert_eq!(a.claim(&["groups".into()]), ["dev", "ops"]);
        assert_eq!(a.claim(&["scope".into()]), ["read", "write"]);
        assert_eq!(
            a.claim(&["nested".into(), "team".into(), "name".into()]),
            ["core"]
        );
        assert!(a.claim(&["n".into()]).is_empty());
        assert!(a.claim(&["nested".into(), "missing".into()]).is_empty());
        assert_eq!(auth(json!({"aud": "one"})).audiences(), ["one"]);
    }

    #[test]
    fn claim_paths() {
        assert_eq!(claim_path("request.auth.claims[a]"), Some(vec!["a".into()]));
        assert_eq!(
            claim_path("request.auth.claims[a][b]"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(claim_path("request.auth.claims"), None);
        assert_eq!(claim_path("request.auth.claims[]"), None);
        assert_eq!(claim_path("request.auth.claims[a]x"), None);
        assert_eq!(claim_path("request.auth.claims.a"), None);
    }

    #[test]
    fn tokens_are_found_where_the_rule_says() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bearer abc.def.ghi".parse().unwrap());
        headers.insert("cookie", "a=1; session=tok.en.x".parse().unwrap());
        headers.insert("x-jwt", "Token t.o.k".parse().unwrap());
        let defaults = provider("p", &JwtRule::default());
        let found = defaults.token(&headers, None).unwrap();
        assert_eq!(found.token, "abc.def.ghi");
        let no_header = HeaderMap::new();
        let found = defaults
            .token(&no_header, Some("x=1&access_token=q.r.s"))
            .unwrap();
        assert_eq!(found.token, "q.r.s");
        let custom = provider(
            "p",
            &JwtRule {
                from_headers: vec![sluice_api::unenforced::JwtHeader {
                    name: "X-Jwt".into(),
                    prefix: Some("Token ".into()),
                }],
                from_cookies: vec!["session".into()],
                ..JwtRule::default()
            },
        );
        // The defaults are replaced: `Authorization` is not read any more.
        assert_eq!(custom.token(&headers, None).unwrap().token, "t.o.k");
        headers.remove("x-jwt");
        assert_eq!(custom.token(&headers, None).unwrap().token, "tok.en.x");
        headers.remove("cookie");
        assert!(custom.token(&headers, Some("access_token=a.b.c")).is_none());
    }
}
