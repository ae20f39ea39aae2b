//! Envoy's `jwt_authn` filter as Istio configures it for RequestAuthentication: on the inbound
//! side of a sidecar and on gateways, before authorization.
//!
//! For every JWT rule that applies ([`sluice_model::jwt`]) the token is read from the rule's
//! locations; a request without any token passes (Istio's `allow_missing`, unless a rule says
//! `presence: REQUIRED`), a request with one passes only if some rule verifies its token, and
//! is otherwise answered 401 with Envoy's body, details and `www-authenticate` header.
//!
//! The checks run in Envoy's order (`jwt_verify_lib` and the filter's authenticator): the
//! token's form, then its issuer, its time window (60 s of clock skew), its audience, and only
//! then its keys (a `jwksUri` is fetched, see [`jwks`]) and signature, so an expired token is
//! reported as expired whatever its signature.
//!
//! Signatures are verified by `jsonwebtoken`. Only public-key algorithms are accepted (RS*,
//! PS*, ES256, ES384, EdDSA): `none` is not an algorithm here, and symmetric (HMAC) keys are
//! never loaded from a key set, so a token signed with HMAC over a public key (algorithm
//! confusion) finds no key.

pub(crate) mod jwks;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sluice_model::jwt::{JwtProvider, RequestAuth, RequestAuthentication, TokenLocation};

pub(crate) use jwks::JwksCache;

/// Envoy's allowed clock skew for `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 60;

/// Longest token looked at; a longer one is refused as malformed without being decoded.
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a request's JWT was refused: Envoy's `jwt_verify_lib` status, whose message is the
/// response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtFailure {
    Missing,
    BadFormat,
    HeaderBadBase64,
    HeaderBadJson,
    HeaderBadAlg,
    AlgNotImplemented,
    PayloadBadBase64,
    PayloadBadJson,
    IssNotString,
    AudNotString,
    ExpNotInteger,
    NbfNotInteger,
    SignatureBadBase64,
    UnknownIssuer,
    Expired,
    NotYetValid,
    AudienceNotAllowed,
    KidAlgMismatch,
    VerificationFails,
    JwksFetchFail,
}

impl JwtFailure {
    /// Envoy's message, the body of the 401.
    pub(crate) fn message(self) -> &'static str {
        match self {
            JwtFailure::Missing => "Jwt is missing",
            JwtFailure::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtFailure::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtFailure::HeaderBadJson => "Jwt header is an invalid JSON",
            JwtFailure::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtFailure::AlgNotImplemented => "Jwt header [alg] is not supported",
            JwtFailure::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtFailure::PayloadBadJson => "Jwt payload is an invalid JSON",
            JwtFailure::IssNotString => "Jwt payload [iss] field is not a string",
            JwtFailure::AudNotString => "Jwt payload [aud] field is not a string or string list",
            JwtFailure::ExpNotInteger => "Jwt payload [exp] field is not a positive 64 bit integer",
            JwtFailure::NbfNotInteger => "Jwt payload [nbf] field is not a positive 64 bit integer",
            JwtFailure::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtFailure::UnknownIssuer => "Jwt issuer is not configured",
            JwtFailure::Expired => "Jwt is expired",
            JwtFailure::NotYetValid => "Jwt not yet valid",
            JwtFailure::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtFailure::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwtFailure::VerificationFails => "Jwt verification fails",
            JwtFailure::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`: `jwt_authn_access_denied{Jwt_is_expired}` (the message with
    /// spaces as `_`, as Envoy writes details).
    pub(crate) fn details(self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.message().replace(' ', "_")
        )
    }
}

/// A token split and decoded, not yet verified.
struct ParsedJwt<'a> {
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
    /// The whole token, for the signature check.
    token: &'a str,
}

fn b64(segment: &str) -> Option<Vec<u8>> {
    // base64url; Envoy accepts it with or without padding.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()
}

/// The token's three segments, decoded (Envoy's `Jwt::parseFromString`).
fn parse(token: &str) -> Result<ParsedJwt<'_>, JwtFailure> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtFailure::BadFormat);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtFailure::BadFormat);
    };
    let header_json = b64(header).ok_or(JwtFailure::HeaderBadBase64)?;
    let header_json: Map<String, Value> =
        serde_json::from_slice(&header_json).map_err(|_| JwtFailure::HeaderBadJson)?;
    let alg = header_json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtFailure::HeaderBadAlg)?;
    let alg = accepted_algorithm(alg).ok_or(JwtFailure::AlgNotImplemented)?;
    let kid = match header_json.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtFailure::HeaderBadJson),
    };
    let payload_json = b64(payload).ok_or(JwtFailure::PayloadBadBase64)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload_json).map_err(|_| JwtFailure::PayloadBadJson)?;
    if claims.get("iss").is_some_and(|v| !v.is_string()) {
        return Err(JwtFailure::IssNotString);
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(JwtFailure::AudNotString),
    }
    if claims.get("exp").is_some_and(|v| unix_time(v).is_none()) {
        return Err(JwtFailure::ExpNotInteger);
    }
    if claims.get("nbf").is_some_and(|v| unix_time(v).is_none()) {
        return Err(JwtFailure::NbfNotInteger);
    }
    if b64(signature).is_none_or(|s| s.is_empty()) {
        return Err(JwtFailure::SignatureBadBase64);
    }
    Ok(ParsedJwt {
        alg,
        kid,
        claims,
        token,
    })
}

/// A time claim: a non-negative number of seconds (a JSON number with a fraction is read as
/// Envoy reads it, truncated).
fn unix_time(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// The algorithms a token may be signed with: public-key ones only. `none` and HMAC are
/// refused here, before any key is looked at.
fn accepted_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The checks that need no key: issuer, time window, audience (Envoy's order).
fn check_claims(provider: &JwtProvider, jwt: &ParsedJwt<'_>, now: u64) -> Result<(), JwtFailure> {
    let iss = jwt.claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if !provider.issuer.is_empty() && iss != provider.issuer {
        return Err(JwtFailure::UnknownIssuer);
    }
    if let Some(exp) = jwt.claims.get("exp").and_then(unix_time) {
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JwtFailure::Expired);
        }
    }
    if let Some(nbf) = jwt.claims.get("nbf").and_then(unix_time) {
        if nbf > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JwtFailure::NotYetValid);
        }
    }
    if !provider.audiences.is_empty() {
        let auds: Vec<&str> = match jwt.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // Envoy compares audiences without a trailing slash or scheme differences mattering
        // only in its URL form; an exact match covers what Istio users write.
        if !auds
            .iter()
            .any(|a| provider.audiences.iter().any(|p| p == a))
        {
            return Err(JwtFailure::AudienceNotAllowed);
        }
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates a request against the RequestAuthentications that apply: `Ok(None)` without
/// a token, `Ok(Some)` with a verified one (the request's headers then carry the provider's
/// outputs, and the token is removed unless the rule forwards it), `Err` for a token no rule
/// verifies (or a missing one a rule requires).
pub(crate) async fn authenticate(
    authn: &RequestAuthentication,
    keys: &JwksCache,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Result<Option<RequestAuth>, JwtFailure> {
    // Only a verified token may set these: a client's own values never reach the application.
    for h in &authn.output_headers {
        headers.remove(h);
    }
    let found: Vec<(&JwtProvider, String, TokenLocation)> = authn
        .providers
        .iter()
        .filter_map(|p| {
            p.token(headers, query)
                .map(|f| (p.as_ref(), f.token.to_string(), f.location.clone()))
        })
        .collect();
    if found.is_empty() {
        if authn.providers.iter().any(|p| p.required) {
            return Err(JwtFailure::Missing);
        }
        return Ok(None);
    }
    let now = now_secs();
    // The failure reported is the one of the rule whose issuer the token names, when there is
    // one (what the user wants to read), else the first.
    let mut failure: Option<(bool, JwtFailure)> = None;
    for (provider, token, location) in &found {
        let verdict = verify(provider, token, keys, now).await;
        match verdict {
            Ok(jwt_claims) => {
                apply_outputs(provider, token, location, &jwt_claims, headers);
                return Ok(Some(RequestAuth::new(provider, jwt_claims)));
            }
            Err(f) => {
                let issuer_matches = f != JwtFailure::UnknownIssuer;
                if failure.is_none_or(|(m, _)| !m && issuer_matches) {
                    failure = Some((issuer_matches, f));
                }
            }
        }
    }
    Err(failure.map_or(JwtFailure::VerificationFails, |(_, f)| f))
}

/// One token against one provider, all checks in Envoy's order.
async fn verify(
    provider: &JwtProvider,
    token: &str,
    keys: &JwksCache,
    now: u64,
) -> Result<Map<String, Value>, JwtFailure> {
    let jwt = parse(token)?;
    check_claims(provider, &jwt, now)?;
    let jwks = keys.get(provider).await?;
    jwks.verify(jwt.alg, jwt.kid.as_deref(), jwt.token)?;
    Ok(jwt.claims)
}

/// `forwardOriginalToken: false` removes the token's header (Envoy leaves a query parameter or
/// cookie in place); `outputPayloadToHeader` and `outputClaimToHeaders` add theirs.
fn apply_outputs(
    provider: &JwtProvider,
    token: &str,
    location: &TokenLocation,
    claims: &Map<String, Value>,
    headers: &mut HeaderMap,
) {
    if !provider.forward_original_token {
        if let TokenLocation::Header { name, .. } = location {
            headers.remove(name);
        }
    }
    if let Some(h) = &provider.payload_header {
        // The segment as sent: parse() read it from this very token.
        let segment = token.split('.').nth(1).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(segment) {
            headers.insert(h.clone(), v);
        }
    }
    for (h, claim) in &provider.claim_headers {
        let value = match claims.get(claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(h.clone(), v);
        }
    }
}

/// Envoy's `www-authenticate` for a refused token: the realm is the request's URL without its
/// query.
pub(crate) fn www_authenticate(
    failure: JwtFailure,
    scheme: &str,
    host: &str,
    path: &str,
) -> HeaderValue {
    let realm = format!("{scheme}://{host}{path}");
    let value = if failure == JwtFailure::Missing {
        format!("Bearer realm=\"{realm}\"")
    } else {
        format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value, payload: Value) -> String {
        format!("{}.{}.c2ln", segment(&header), segment(&payload))
    }

    #[test]
    fn malformed_tokens_are_named_as_envoy_names_them() {
        let ok_header = serde_json::json!({"alg": "RS256"});
        let cases = [
            ("a.b".to_string(), JwtFailure::BadFormat),
            ("a.b.c.d".to_string(), JwtFailure::BadFormat),
            ("....".to_string(), JwtFailure::BadFormat),
            ("!!.e30.c2ln".to_string(), JwtFailure::HeaderBadBase64),
            (
                format!("{}.e30.c2ln", b64_text("not json")),
                JwtFailure::HeaderBadJson,
            ),
            (
                token(serde_json::json!({"alg": "none"}), serde_json::json!({})),
                JwtFailure::AlgNotImplemented,
            ),
            (
                token(serde_json::json!({"alg": "HS256"}), serde_json::json!({})),
                JwtFailure::AlgNotImplemented,
            ),
            (
                token(serde_json::json!({"typ": "JWT"}), serde_json::json!({})),
                JwtFailure::HeaderBadAlg,
            ),
            (
                format!("{}.%%%.c2ln", segment(&ok_header)),
                JwtFailure::PayloadBadBase64,
            ),
            (
                format!("{}.{}.c2ln", segment(&ok_header), b64_text("[1,")),
                JwtFailure::PayloadBadJson,
            ),
            (
                token(ok_header.clone(), serde_json::json!({"iss": 5})),
                JwtFailure::IssNotString,
            ),
            (
                token(ok_header.clone(), serde_json::json!({"aud": [1]})),
                JwtFailure::AudNotString,
            ),
            (
                token(ok_header.clone(), serde_json::json!({"exp": "soon"})),
                JwtFailure::ExpNotInteger,
            ),
            (
                format!("{}.e30.", segment(&ok_header)),
                JwtFailure::SignatureBadBase64,
            ),
            ("x".repeat(MAX_TOKEN_LEN + 1), JwtFailure::BadFormat),
        ];
        for (t, want) in cases {
            assert_eq!(parse(&t).err(), Some(want), "{t:.80}");
        }
        assert!(parse(&token(ok_header, serde_json::json!({"iss": "a"}))).is_ok());
    }

    fn b64_text(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn details_read_like_envoys() {
        assert_eq!(
            JwtFailure::Expired.details(),
            "jwt_authn_access_denied{Jwt_is_expired}"
        );
        assert_eq!(
            www_authenticate(JwtFailure::Expired, "http", "a.example", "/x"),
            "Bearer realm=\"http://a.example/x\", error=\"invalid_token\""
        );
    }
}
