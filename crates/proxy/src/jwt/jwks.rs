//! JSON Web Key Sets: parsed once per key set, a `jwksUri` fetched by the proxy over HTTP or
//! HTTPS and cached for Envoy's default `cache_duration` (5 minutes). A fetch that fails fails
//! the tokens that need it (Envoy's "Jwks remote fetch is failed"), and is retried after
//! Envoy's default `failed_refetch_duration` (1 s) rather than for every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sluice_model::jwt::{JwksSource, JwtProvider};
use tokio::io::{AsyncRead, AsyncWrite};

use super::JwtFailure;

/// Envoy's default `cache_duration` of a remote key set.
const CACHE_DURATION: Duration = Duration::from_secs(300);
/// Envoy's default `failed_refetch_duration`.
const FAILED_REFETCH: Duration = Duration::from_secs(1);
/// Largest key set document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Key sets kept; past it the cache starts over (config changes can leave old URIs behind).
const MAX_ENTRIES: usize = 1024;

/// One usable public key of a key set.
struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, if it names one: only tokens of that algorithm may use the key.
    alg: Option<String>,
    /// The algorithms this key's type can verify.
    family: KeyFamily,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            KeyFamily::Rsa => matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            KeyFamily::EcP256 => alg == A::ES256,
            KeyFamily::EcP384 => alg == A::ES384,
            KeyFamily::Ed25519 => alg == A::EdDSA,
        }
    }
}

/// A parsed key set: its public keys (symmetric `oct` keys and keys sluice cannot use are
/// left out).
#[derive(Default)]
pub(crate) struct Jwks {
    keys: Vec<Key>,
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`, or a single JWK as Envoy also accepts).
    pub(crate) fn parse(text: &[u8]) -> Jwks {
        let Ok(doc) = serde_json::from_slice::<Value>(text) else {
            return Jwks::default();
        };
        let list: Vec<&Value> = match doc.get("keys").and_then(Value::as_array) {
            Some(keys) => keys.iter().collect(),
            None if doc.get("kty").is_some() => vec![&doc],
            None => Vec::new(),
        };
        Jwks {
            keys: list.into_iter().filter_map(key).collect(),
        }
    }

    /// Verifies `token`'s signature with a key that matches its `kid` and algorithm (Envoy:
    /// a key without `kid` matches any; a key whose `alg` differs is skipped).
    pub(crate) fn verify(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        token: &str,
    ) -> Result<(), JwtFailure> {
        let mut candidates = self.keys.iter().filter(|k| {
            k.family.verifies(alg)
                && k.alg.as_deref().is_none_or(|a| alg_name(alg) == a)
                && match (kid, k.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut any = false;
        // The claims were checked already; only the signature (and the algorithm family,
        // which jsonwebtoken checks against the key) is left to it.
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        for k in candidates.by_ref() {
            any = true;
            if jsonwebtoken::decode::<Value>(token, &k.key, &validation).is_ok() {
                return Ok(());
            }
        }
        Err(if any {
            JwtFailure::VerificationFails
        } else {
            JwtFailure::KidAlgMismatch
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm as A;
    match alg {
        A::RS256 => "RS256",
        A::RS384 => "RS384",
        A::RS512 => "RS512",
        A::PS256 => "PS256",
        A::PS384 => "PS384",
        A::PS512 => "PS512",
        A::ES256 => "ES256",
        A::ES384 => "ES384",
        A::EdDSA => "EdDSA",
        A::HS256 => "HS256",
        A::HS384 => "HS384",
        A::HS512 => "HS512",
    }
}

/// One JWK as a public key, or `None` for a key that cannot verify any accepted algorithm.
fn key(jwk: &Value) -> Option<Key> {
    let field = |k: &str| jwk.get(k).and_then(Value::as_str);
    let (family, key) = match (field("kty")?, field("crv")) {
        ("RSA", _) => (
            KeyFamily::Rsa,
            DecodingKey::from_rsa_components(field("n")?, field("e")?).ok()?,
        ),
        ("EC", Some("P-256")) => (
            KeyFamily::EcP256,
            DecodingKey::from_ec_components(field("x")?, field("y")?).ok()?,
        ),
        ("EC", Some("P-384")) => (
            KeyFamily::EcP384,
            DecodingKey::from_ec_components(field("x")?, field("y")?).ok()?,
        ),
        ("OKP", Some("Ed25519")) => (
            KeyFamily::Ed25519,
            DecodingKey::from_ed_components(field("x")?).ok()?,
        ),
        // `oct` (HMAC secrets have no place in a published key set) and anything else.
        _ => return None,
    };
    Some(Key {
        kid: field("kid").map(str::to_string),
        alg: field("alg").map(str::to_string),
        family,
        key,
    })
}

/// What the cache holds for one key set.
struct Cached {
    keys: Result<Arc<Jwks>, ()>,
    at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Key sets by source, shared by every request of the proxy. A slot's lock is held while its
/// key set is fetched, so concurrent requests wait for one fetch instead of starting many.
#[derive(Default)]
pub(crate) struct JwksCache {
    slots: Mutex<HashMap<JwksSource, Slot>>,
}

impl JwksCache {
    /// The key set of `provider`: parsed (inline), or cached or fetched (`jwksUri`).
    pub(crate) async fn get(&self, provider: &JwtProvider) -> Result<Arc<Jwks>, JwtFailure> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_ENTRIES && !slots.contains_key(&provider.jwks) {
                slots.clear();
            }
            slots.entry(provider.jwks.clone()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = match (&provider.jwks, &c.keys) {
                (JwksSource::Inline(_), _) => true,
                (JwksSource::Uri(_), Ok(_)) => c.at.elapsed() < CACHE_DURATION,
                (JwksSource::Uri(_), Err(())) => c.at.elapsed() < FAILED_REFETCH,
            };
            if fresh {
                return c.keys.clone().map_err(|()| JwtFailure::JwksFetchFail);
            }
        }
        let keys = match &provider.jwks {
            JwksSource::Inline(text) => Ok(Arc::new(Jwks::parse(text.as_bytes()))),
            JwksSource::Uri(uri) => {
                match tokio::time::timeout(provider.timeout, fetch(uri)).await {
                    Ok(Ok(body)) => Ok(Arc::new(Jwks::parse(&body))),
                    Ok(Err(e)) => {
                        tracing::warn!("{}: jwksUri {uri}: {e}", provider.name);
                        Err(())
                    }
                    Err(_) => {
                        tracing::warn!(
                            "{}: jwksUri {uri}: no answer within {:?}",
                            provider.name,
                            provider.timeout
                        );
                        Err(())
                    }
                }
            }
        };
        *cached = Some(Cached {
            keys: keys.clone(),
            at: Instant::now(),
        });
        keys.map_err(|()| JwtFailure::JwksFetchFail)
    }
}

/// GETs a key set document over HTTP or HTTPS (the system's roots, as Envoy's default).
async fn fetch(uri: &str) -> Result<Bytes, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let host = parsed.host().ok_or("no host")?.to_string();
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let authority = parsed
        .authority()
        .map_or(host.clone(), |a| a.as_str().to_string());
    if https {
        let tls = sluice_model::UpstreamTls {
            mutual: false,
            sni: None,
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: false,
            subject_alt_names: Vec::new(),
            istio_mutual: false,
        };
        let config = crate::tls::client_config(&tls).map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(bare_host)
            .map_err(|e| format!("server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        get(stream, &authority, &path).await
    } else {
        get(tcp, &authority, &path).await
    }
}

async fn get<S>(io: S, authority: &str, path: &str) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_left_out() {
        let set = Jwks::parse(
            br#"{"keys": [
                {"kty": "oct", "k": "c2VjcmV0"},
                {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "RSA"},
                {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
            ]}"#,
        );
        assert_eq!(set.len(), 1);
        assert_eq!(Jwks::parse(b"not json").len(), 0);
        assert_eq!(Jwks::parse(b"{\"keys\": 5}").len(), 0);
    }
}
