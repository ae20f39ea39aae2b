//! RequestAuthentication (JWT) on a sidecar's inbound listener and on an ingress gateway, with
//! AuthorizationPolicies that read the request principal and claims.
//!
//! Real parts only: httpbin under gunicorn (from the test venv) is the application, curl is the
//! client, keys and tokens are made by PyJWT with cryptography (`jwt_tokens.py`), and a
//! `jwksUri` is served by Python's own `http.server`. Everything listens on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_model::{compile, ProxyIdentity, ProxyKind};
use sluice_proxy::inbound::serve_inbound;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

mod common;
use common::Telemetry;

const ISSUER: &str = "https://issuer.test";
const LOG_FORMAT: &str =
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% path=%REQ(:PATH)%\n";

// === Fixtures ===

/// The test venv (`SLUICE_TEST_VENV`, else `<repo>/.venv`), which must have httpbin, gunicorn
/// and PyJWT.
fn venv() -> PathBuf {
    let dir = std::env::var_os("SLUICE_TEST_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"),
        PathBuf::from,
    );
    for exe in ["bin/python", "bin/gunicorn"] {
        assert!(
            dir.join(exe).is_file(),
            "missing {} (set SLUICE_TEST_VENV or run scripts/install-test-deps.sh)",
            dir.join(exe).display()
        );
    }
    dir
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Keys and tokens from `jwt_tokens.py`: the public key set and each named token.
struct Tokens {
    jwks: Value,
    tokens: HashMap<String, String>,
}

impl Tokens {
    async fn make(specs: Value) -> Tokens {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jwt_tokens.py");
        let mut child = Command::new(venv().join("bin/python"))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run jwt_tokens.py");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(json!({ "tokens": specs }).to_string().as_bytes())
            .await
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "jwt_tokens.py failed (is PyJWT in the venv? scripts/install-test-deps.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let tokens = v["tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
            .collect();
        Tokens {
            jwks: v["jwks"].clone(),
            tokens,
        }
    }

    fn get(&self, name: &str) -> &str {
        &self.tokens[name]
    }
}

/// The standard claims of a valid token for `sub`, plus `extra`.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER, "sub": sub, "aud": ["web"], "iat": now(), "exp": now() + 3600,
    });
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// A child process killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until `addr` accepts connections, or panics naming `what`.
async fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on {addr} within 20 s");
}

/// httpbin under gunicorn on loopback.
async fn httpbin() -> Server {
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(venv().join("bin/gunicorn"))
        .args([
            "--bind",
            &addr.to_string(),
            "--workers",
            "1",
            "--threads",
            "8",
        ])
        .args(["--worker-class", "gthread", "httpbin:app"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start gunicorn");
    wait_listening(addr, "httpbin (gunicorn)", &mut child).await;
    Server { child, addr }
}

/// Python's `http.server` serving `files` (name → content) on loopback.
async fn file_server(files: &[(&str, String)]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(venv().join("bin/python"))
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start http.server");
    wait_listening(addr, "http.server", &mut child).await;
    (Server { child, addr }, dir)
}

/// What curl got: status, response head (lower-cased names) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request headers httpbin saw (`/headers`, `/anything`), by lower-cased name.
    fn upstream_headers(&self) -> HashMap<String, String> {
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not httpbin's JSON ({e}): {}", self.body));
        v["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string()))
            .collect()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.body)
    }
}

/// `curl -i URL` with extra `-H` headers.
async fn curl(url: &str, headers: &[String]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "15", "-H", "Host: server"]);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg(url)
        .output()
        .await
        .expect("run curl (install it: scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

/// A sidecar of `app=server` in namespace `server`, compiled from `yaml`, whose inbound listener
/// sends everything to `app`. Returns its address and telemetry.
async fn sidecar(yaml: &str, app: SocketAddr) -> (SocketAddr, Telemetry) {
    let loaded = sluice_api::decode_str(std::path::Path::new("jwt.yaml"), yaml);
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    let identity = ProxyIdentity {
        namespace: "server".into(),
        labels: [("app".to_string(), "server".to_string())].into(),
        service_account: Some("server-sa".into()),
        kind: ProxyKind::Sidecar,
    };
    let snap = compile(&loaded.resources, &identity, 1);
    assert!(
        !snap.request_authentication.is_empty(),
        "no JWT rule applies: {:?}",
        snap.diagnostics
    );
    let t = Telemetry::new(LOG_FORMAT);
    let proxy = t.proxy(snap, "server", None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_inbound(
        listener,
        Arc::new(proxy),
        move |_: &TcpStream| Ok(app),
        std::future::pending(),
    ));
    (addr, t)
}

fn request_authentication(namespace: &str, selector: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  jwtRules:
{rules}"
    )
}

// === Tests ===

/// Istio's example and every way a token can be wrong: RequestAuthentication with an inline key
/// set (RSA, EC and Ed25519 keys) and an ALLOW policy that requires a request principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_inbound_validates_tokens_and_authorizes_on_their_claims() {
    let t = Tokens::make(json!({
        "alice": {"alg": "RS256", "claims": claims("alice", json!({
            "groups": ["dev"], "scope": "read write", "azp": "cli",
            "org": {"team": "core"}}))},
        "alice-ps": {"alg": "PS384", "claims": claims("alice", json!({}))},
        "bob-ec": {"alg": "ES256", "key": "ec", "claims": claims("bob", json!({"groups": ["admin", "dev"]}))},
        "carol-ed": {"alg": "EdDSA", "key": "ed", "claims": claims("carol", json!({}))},
        "mallory": {"alg": "RS256", "claims": claims("mallory", json!({}))},
        "expired": {"alg": "RS256", "claims": claims("alice", json!({"exp": now() - 600}))},
        "skewed": {"alg": "RS256", "claims": claims("alice", json!({"exp": now() - 20}))},
        "not-yet": {"alg": "RS256", "claims": claims("alice", json!({"nbf": now() + 600}))},
        "wrong-aud": {"alg": "RS256", "claims": claims("alice", json!({"aud": "other"}))},
        "wrong-iss": {"alg": "RS256", "claims": claims("alice", json!({"iss": "https://evil.test"}))},
        "bad-sig": {"alg": "RS256", "key": "other-rsa", "claims": claims("alice", json!({}))},
        "unknown-kid": {"alg": "RS256", "claims": claims("alice", json!({})), "headers": {"kid": "nope"}},
        "alg-none": {"alg": "none", "claims": claims("alice", json!({}))},
        "alg-confusion": {"alg": "HS256-confused", "claims": claims("alice", json!({}))},
    }))
    .await;
    let app = httpbin().await;
    let jwks = t.jwks.to_string();
    let yaml = format!(
        "{}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: server}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ['*']}}}}]
    to: [{{operation: {{paths: [/headers]}}}}]
  - from: [{{source: {{requestPrincipals: ['{ISSUER}/alice']}}}}]
    to: [{{operation: {{paths: [/anything/alice]}}}}]
  - to: [{{operation: {{paths: [/anything/admin]}}}}]
    when: [{{key: 'request.auth.claims[groups]', values: [admin]}}]
  - to: [{{operation: {{paths: [/anything/team]}}}}]
    when:
    - {{key: 'request.auth.claims[org][team]', values: [core]}}
    - {{key: request.auth.audiences, values: [web]}}
    - {{key: request.auth.presenter, values: [cli]}}
    - {{key: 'request.auth.claims[scope]', values: [write]}}
  - from: [{{source: {{notRequestPrincipals: ['{ISSUER}/*']}}}}]
    to: [{{operation: {{paths: [/anything/public]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-mallory, namespace: server}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{requestPrincipals: ['*/mallory']}}}}]
",
        request_authentication(
            "server",
            "app: server",
            &format!("  - issuer: {ISSUER}\n    audiences: [web]\n    jwks: '{jwks}'\n"),
        ),
    );
    let (proxy, telemetry) = sidecar(&yaml, app.addr).await;
    let url = |path: &str| format!("http://{proxy}{path}");

    // Istio's example: no token → RBAC denies; a valid token passes; an invalid one is 401.
    let r = curl(&url("/headers"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r}"
    );
    let r = curl(&url("/headers"), &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 200, "{r}");
    // forwardOriginalToken defaults to false: the application never sees the token.
    assert!(!r.upstream_headers().contains_key("authorization"), "{r}");
    for name in ["alice-ps", "bob-ec", "carol-ed"] {
        let r = curl(&url("/headers"), &bearer(t.get(name))).await;
        assert_eq!(r.status, 200, "{name}: {r}");
    }
    // The `access_token` query parameter is a default location too.
    let r = curl(
        &url(&format!("/headers?access_token={}", t.get("alice"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r}");
    // Within Envoy's 60 s of clock skew.
    let r = curl(&url("/headers"), &bearer(t.get("skewed"))).await;
    assert_eq!(r.status, 200, "{r}");

    // Every invalid token: 401 with Envoy's body and www-authenticate, whatever the path.
    let realm = "Bearer realm=\"http://server/headers\", error=\"invalid_token\"";
    for (name, body) in [
        ("expired", "Jwt is expired"),
        ("not-yet", "Jwt not yet valid"),
        ("wrong-aud", "Audiences in Jwt are not allowed"),
        ("wrong-iss", "Jwt issuer is not configured"),
        ("bad-sig", "Jwt verification fails"),
        (
            "unknown-kid",
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        ("alg-none", "Jwt header [alg] is not supported"),
        ("alg-confusion", "Jwt header [alg] is not supported"),
    ] {
        let r = curl(&url("/headers"), &bearer(t.get(name))).await;
        assert_eq!((r.status, r.body.as_str()), (401, body), "{name}: {r}");
        assert_eq!(r.header("www-authenticate"), Some(realm), "{r}");
    }
    // Malformed and hostile tokens: 401, never a pass.
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(30_000),
        "b".repeat(30_000),
        "c".repeat(10_000)
    );
    let alice = t.get("alice");
    let (h, rest) = alice.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    for (what, token) in [
        ("garbage", "not-a-token".to_string()),
        ("many dots", "a.b.c.d.e.f.g".to_string()),
        ("only dots", "....".to_string()),
        ("bad base64", format!("{h}.%%%.{s}")),
        ("payload not JSON", format!("{h}.bm90IGpzb24.{s}")),
        ("no signature", format!("{h}.{p}.")),
        ("extra segment", format!("{alice}.{s}")),
        ("huge", huge),
    ] {
        let r = curl(&url("/headers"), &bearer(&token)).await;
        assert!(
            r.status == 401 || (what == "huge" && r.status == 431),
            "{what}: {r}"
        );
    }

    // requestPrincipals with a principal, claims (string list, nested, space-delimited scope),
    // audiences and presenter in `when`.
    let r = curl(&url("/anything/alice"), &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 200, "{r}");
    let r = curl(&url("/anything/alice"), &bearer(t.get("bob-ec"))).await;
    assert_eq!(r.status, 403, "{r}");
    let r = curl(&url("/anything/admin"), &bearer(t.get("bob-ec"))).await;
    assert_eq!(r.status, 200, "{r}");
    let r = curl(&url("/anything/admin"), &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 403, "{r}");
    let r = curl(&url("/anything/team"), &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 200, "{r}");
    let r = curl(&url("/anything/team"), &bearer(t.get("bob-ec"))).await;
    assert_eq!(r.status, 403, "{r}");
    // notRequestPrincipals: anonymous callers only.
    let r = curl(&url("/anything/public"), &[]).await;
    assert_eq!(r.status, 200, "{r}");
    let r = curl(&url("/anything/public"), &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 403, "{r}");
    // A DENY on a request principal suffix.
    let r = curl(&url("/headers"), &bearer(t.get("mallory"))).await;
    assert_eq!(r.status, 403, "{r}");

    // The access log names the refusal as Envoy does.
    let lines = telemetry.lines(1).await;
    assert!(
        lines
            .iter()
            .any(|l| l == "401 - jwt_authn_access_denied{Jwt_is_expired} path=/headers"),
        "{lines:#?}"
    );
}

/// `fromHeaders`/`fromParams` replace the default locations; `outputPayloadToHeader`,
/// `outputClaimToHeaders` and `forwardOriginalToken: true`; a client cannot forge the output
/// headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_locations_and_outputs() {
    let t = Tokens::make(json!({
        "alice": {"alg": "RS256", "claims": claims("alice", json!({"email": "alice@example.com"}))},
        "expired": {"alg": "RS256", "claims": claims("alice", json!({"exp": now() - 600}))},
    }))
    .await;
    let app = httpbin().await;
    let rules = format!(
        "  - issuer: {ISSUER}
    jwks: '{}'
    fromHeaders: [{{name: x-jwt-assertion}}, {{name: x-token, prefix: 'Token '}}]
    fromParams: [token]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-email, claim: email}}]
",
        t.jwks
    );
    let yaml = request_authentication("server", "app: server", &rules);
    let (proxy, _telemetry) = sidecar(&yaml, app.addr).await;
    let url = |path: &str| format!("http://{proxy}{path}");
    let alice = t.get("alice");
    let payload = alice.split('.').nth(1).unwrap();

    let r = curl(&url("/headers"), &[format!("x-jwt-assertion: {alice}")]).await;
    assert_eq!(r.status, 200, "{r}");
    let seen = r.upstream_headers();
    assert_eq!(
        seen.get("x-jwt-payload").map(String::as_str),
        Some(payload),
        "{r}"
    );
    assert_eq!(
        seen.get("x-jwt-email").map(String::as_str),
        Some("alice@example.com")
    );
    // forwardOriginalToken: true keeps it.
    assert_eq!(seen.get("x-jwt-assertion").map(String::as_str), Some(alice));

    let r = curl(&url("/headers"), &[format!("x-token: Token {alice}")]).await;
    assert_eq!(r.status, 200, "{r}");
    assert!(r.upstream_headers().contains_key("x-jwt-payload"), "{r}");
    let r = curl(&url(&format!("/headers?token={alice}")), &[]).await;
    assert_eq!(r.status, 200, "{r}");
    assert!(r.upstream_headers().contains_key("x-jwt-email"), "{r}");
    let r = curl(&url(&format!("/headers?token={}", t.get("expired"))), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (401, "Jwt is expired"), "{r}");

    // The defaults are replaced: a bearer token (even an expired one) is not read at all.
    let r = curl(&url("/headers"), &bearer(t.get("expired"))).await;
    assert_eq!(r.status, 200, "{r}");
    // A client's own output headers never reach the application.
    let forged = vec![
        "x-jwt-payload: eyJzdWIiOiJhZG1pbiJ9".to_string(),
        "x-jwt-email: admin@example.com".to_string(),
    ];
    let r = curl(&url("/headers"), &forged).await;
    assert_eq!(r.status, 200, "{r}");
    let seen = r.upstream_headers();
    assert!(
        !seen.contains_key("x-jwt-payload") && !seen.contains_key("x-jwt-email"),
        "{r}"
    );
    let mut with_token = forged.clone();
    with_token.push(format!("x-jwt-assertion: {alice}"));
    let r = curl(&url("/headers"), &with_token).await;
    assert_eq!(
        r.upstream_headers().get("x-jwt-email").map(String::as_str),
        Some("alice@example.com"),
        "{r}"
    );
}

/// `jwksUri`: fetched from a local HTTP server; an unreachable one fails its issuer's tokens
/// (fail closed) while requests without a token and tokens of the other rule still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_is_fetched_and_an_unreachable_one_fails_closed() {
    const OTHER: &str = "https://other-issuer.test";
    let t = Tokens::make(json!({
        "alice": {"alg": "ES256", "key": "ec", "claims": claims("alice", json!({}))},
        "other": {"alg": "RS256", "claims": claims("x", json!({"iss": OTHER}))},
    }))
    .await;
    let (keys, _dir) = file_server(&[("jwks.json", t.jwks.to_string())]).await;
    let app = httpbin().await;
    let closed = common::free_port();
    let rules = format!(
        "  - issuer: {ISSUER}
    jwksUri: http://{}/jwks.json
  - issuer: {OTHER}
    jwksUri: http://127.0.0.1:{closed}/jwks.json
    timeout: 2s
",
        keys.addr
    );
    let yaml = request_authentication("server", "app: server", &rules);
    let (proxy, _telemetry) = sidecar(&yaml, app.addr).await;
    let url = format!("http://{proxy}/headers");

    let r = curl(&url, &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 200, "{r}");
    let r = curl(&url, &bearer(t.get("other"))).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Jwks remote fetch is failed"),
        "{r}"
    );
    let r = curl(&url, &[]).await;
    assert_eq!(r.status, 200, "{r}");
    // Cached: the key server going away does not matter for 5 minutes.
    drop(keys);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = curl(&url, &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 200, "{r}");
}

/// On the ingress gateway: a mesh-wide RequestAuthentication (root namespace) and a policy on
/// the gateway workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_gateway_enforces_request_authentication() {
    let t = Tokens::make(json!({
        "alice": {"alg": "RS256", "claims": claims("alice", json!({}))},
        "expired": {"alg": "RS256", "claims": claims("alice", json!({"exp": now() - 600}))},
    }))
    .await;
    let app = httpbin().await;
    let port = common::free_port();
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: mesh-jwt, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: gw-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ['{ISSUER}/*']}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: istio-system}}
spec:
  hosts: [httpbin.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: istio-system}}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route: [{{destination: {{host: httpbin.test}}}}]
",
        jwks = t.jwks,
        up = app.addr.port(),
    );
    let (_log, access_log) = common::file_access_log();
    let _listeners = common::loopback_gateway(&yaml, access_log, Default::default()).await;
    let url = format!("http://127.0.0.1:{port}/headers");

    let r = curl(&url, &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r}"
    );
    let r = curl(&url, &bearer(t.get("alice"))).await;
    assert_eq!(r.status, 200, "{r}");
    assert!(!r.upstream_headers().contains_key("authorization"), "{r}");
    let r = curl(&url, &bearer(t.get("expired"))).await;
    assert_eq!((r.status, r.body.as_str()), (401, "Jwt is expired"), "{r}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"http://server/headers\", error=\"invalid_token\""),
        "{r}"
    );
}
