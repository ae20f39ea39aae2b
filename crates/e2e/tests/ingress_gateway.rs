//! End-to-end proof of seed 003 ("Control Ingress Traffic") and of the ingress gateway's TLS
//! features, with `sluice gateway` in its own network namespace ([`GatewayEnv`]): curl in a client
//! namespace, httpbin (HTTP :8000, and TLS :8443 for PASSTHROUGH) in a backend namespace,
//! registered as Kubernetes Services with a WorkloadEntry each, names from the test's dnsmasq and
//! certificates from a per-test CA.
//!
//! The seed's YAML is used as written (`sluice_e2e::gateway_config`, checked against the decoded
//! fixtures in `crates/api/tests/fixtures/seeds/003-*.yaml`); only the certificate paths point
//! at the test's files and the Secret holds the test's real certificate. Config changes are polled
//! for (live within a second).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_e2e::gateway::{
    peer_cert, PeerCert, A_HOST, BOOKINFO_HOST, B_HOST, GATEWAY_NAMESPACE, HTTPBIN_FQDN,
    HTTPBIN_HOST, HTTPBIN_PORT, SECURE_HOST, TLS_BACKEND_FQDN, TLS_BACKEND_PORT,
};
use sluice_e2e::gateway_config::{
    seed003_gateway, tls_secret_with_ca_yaml, tls_secret_yaml, INGRESS_SECRET, INGRESS_SECURE,
    INGRESS_SIMPLE, VS_HTTPBIN,
};
use sluice_e2e::pki::Leaf;
use sluice_e2e::prereq::tools;
use sluice_e2e::{eventually, CurlResult, GatewayEnv};

/// How long a gateway may take to serve new config (the contract says 1 s; polled).
const LIVE: Duration = Duration::from_secs(10);
/// curl's exit codes for a TLS handshake the server refused (35) or a connection it closed
/// right after the handshake (56, TLS 1.3 reports a missing client certificate that way).
const TLS_REFUSED: [i32; 2] = [35, 56];

/// Asserts what every response the gateway made from a backend response carries.
#[track_caller]
fn assert_from_upstream(r: &CurlResult) {
    assert_eq!(
        r.header("server"),
        Some("istio-envoy"),
        "expected `server: istio-envoy` from the gateway:\n{r}"
    );
    let t = r
        .header("x-envoy-upstream-service-time")
        .unwrap_or_else(|| panic!("expected x-envoy-upstream-service-time from the gateway:\n{r}"));
    assert!(
        t.parse::<u64>().is_ok(),
        "x-envoy-upstream-service-time is not a number of milliseconds: {t:?}\n{r}"
    );
}

/// Asserts a 404 that the gateway made itself (no route: no upstream time, an `NR` log line).
#[track_caller]
fn assert_no_route(env: &GatewayEnv, r: &CurlResult, path: &str) {
    r.expect_status(404);
    assert_eq!(
        r.header("x-envoy-upstream-service-time"),
        None,
        "a 404 for no route must not come from upstream:\n{r}"
    );
    let e = env.wait_for_log(&format!("404 NR for {path}"), |e| {
        e.path == path && e.response_code == 404
    });
    assert_eq!(e.response_flags, "NR", "{}", e.raw);
}

/// A VirtualService in `default` for `hosts` through `gateway` (`name` or `ns/name`), every path
/// to httpbin:8000.
fn vs_to_httpbin(name: &str, hosts: &[&str], gateway: &str) -> String {
    let hosts: String = hosts.iter().map(|h| format!("  - {h}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: default
spec:
  hosts:
{hosts}  gateways:
  - {gateway}
  http:
  - route:
    - destination:
        host: httpbin
        port:
          number: {HTTPBIN_PORT}
"
    )
}

/// The certificate the gateway presents for `sni` on 443; panics with openssl's output otherwise.
#[track_caller]
fn cert_for(env: &GatewayEnv, sni: &str) -> PeerCert {
    env.peer_cert(Some(sni), 443)
        .unwrap_or_else(|e| panic!("no certificate from the gateway for SNI {sni}: {e}"))
}

/// The gateway world itself, without any sluice feature: DNS, both backends, the certificates.
#[test]
fn gateway_harness_self_test() {
    let env = GatewayEnv::new("gateway_harness_self_test");
    let a = env.addrs;
    // Every test name resolves to the gateway, from the client.
    for name in [HTTPBIN_HOST, BOOKINFO_HOST, A_HOST, B_HOST, SECURE_HOST] {
        let (ok, out) = env.client.try_run("getent", &["ahostsv4", name]);
        assert!(
            ok && out.starts_with(&a.gateway.to_string()),
            "{name}: {out}"
        );
    }
    let (ok, out) = env.client.try_run("getent", &["ahostsv4", "example.org"]);
    assert!(!ok, "names outside the test must not resolve: {out}");
    // httpbin over HTTP, from the client by IP (the bridge joins every namespace).
    let r = env
        .curl(&format!("http://{}:{HTTPBIN_PORT}/headers", a.httpbin))
        .run();
    r.expect_status(200);
    assert_eq!(
        r.echoed_header("Host").as_deref(),
        Some(&*format!("{}:{HTTPBIN_PORT}", a.httpbin))
    );
    // The TLS backend presents its own certificate (another CA than the gateway's).
    let c = peer_cert(
        &env.client,
        &format!("{}:{TLS_BACKEND_PORT}", a.tls_backend),
        Some(SECURE_HOST),
        &[],
    )
    .expect("the TLS backend's certificate");
    assert_eq!(c.cn(), SECURE_HOST);
    assert_eq!(c.issuer_cn(), "sluice e2e test CA backend");
    assert_eq!(c.serial, env.certs.backend.serial);
    // The certificates verify against their CAs (and the client one not against the other CA).
    let verify = |ca: &std::path::Path, leaf: &Leaf, purpose: &str| {
        env.client.try_run(
            "openssl",
            &[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                &ca.to_string_lossy(),
                &leaf.cert.to_string_lossy(),
            ],
        )
    };
    let certs = &env.certs;
    for (leaf, purpose) in [
        (&certs.server, "sslserver"),
        (&certs.a, "sslserver"),
        (&certs.b, "sslserver"),
        (&certs.client, "sslclient"),
    ] {
        let (ok, out) = verify(&certs.ca.cert, leaf, purpose);
        assert!(ok, "{} does not verify: {out}", leaf.cert.display());
    }
    let (ok, out) = verify(&certs.ca.cert, &certs.other_client, "sslclient");
    assert!(
        !ok,
        "the other CA's client certificate must not verify: {out}"
    );
    // Nothing answers on the gateway's address before the gateway runs.
    let r = env
        .curl(&env.http_url(80, "/status/200"))
        .max_time(3.0)
        .run();
    r.expect_exit(7);
    // No way out of the test's subnet.
    let (ok, out) = env.client.try_run("ip", &["route", "get", "1.1.1.1"]);
    assert!(!ok, "the client must have no route out: {out}");
}

/// Seed 003, Gateway + VirtualService as written: /status and /delay through the gateway on 80
/// and on 443 (TLS terminated with the certificate files), everything else 404 NR.
#[test]
fn seed003_gateway_serves_status_and_delay_on_80_and_443() {
    let mut env = GatewayEnv::new("seed003_gateway");
    env.apply(
        "gateway.yaml",
        &seed003_gateway(&env.certs.server.cert, &env.certs.server.key),
    );
    env.apply("virtualservice.yaml", VS_HTTPBIN);
    env.start_gateway();

    // curl -I http://$INGRESS_HOST/status/200 (with the VirtualService's host)
    let http = |path: &str| {
        env.curl(&env.http_url(80, path))
            .head()
            .header("Host: httpbin")
    };
    let r = env.wait_for(
        "the gateway serves /status/200 for Host: httpbin on :80",
        LIVE,
        || http("/status/200"),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    assert!(r.status_line.starts_with("HTTP/1.1 200"), "{r}");
    let e = env.wait_for_log("200 for /status/200", |e| {
        e.path == "/status/200" && e.response_code == 200
    });
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.authority, "httpbin", "{}", e.raw);
    assert_eq!(
        e.upstream_host,
        format!("{}:{HTTPBIN_PORT}", env.addrs.httpbin),
        "the gateway routes to the WorkloadEntry, never to the cluster IP: {}",
        e.raw
    );
    assert_eq!(
        e.upstream_cluster,
        format!("outbound|{HTTPBIN_PORT}||{HTTPBIN_FQDN}"),
        "{}",
        e.raw
    );

    let r = http("/delay/1").run();
    r.expect_status(200);
    assert_from_upstream(&r);
    assert!(r.time_total >= 1.0, "/delay/1 answered too early:\n{r}");

    let r = http("/headers").run();
    assert_no_route(&env, &r, "/headers");
    assert_eq!(r.header("server"), Some("istio-envoy"), "{r}");

    // The short host matches its FQDN too, and a port in Host is ignored; other hosts do not match.
    for host in [
        HTTPBIN_FQDN,
        "httpbin:80",
        "httpbin.default.svc.cluster.local:80",
    ] {
        let r = env
            .curl(&env.http_url(80, "/status/200"))
            .head()
            .header(&format!("Host: {host}"))
            .run();
        r.expect_status(200);
        assert_from_upstream(&r);
    }
    let r = env
        .curl(&env.http_url(80, "/status/200"))
        .head()
        .header("Host: other.example.com")
        .run();
    r.expect_status(404);

    // curl -I -k https://$SECURE_INGRESS_HOST/status/200, as the seed does (no SNI).
    let https = |path: &str| {
        env.curl(&env.https_url(443, path))
            .insecure()
            .head()
            .header("Host: httpbin")
    };
    let r = env.wait_for(
        "the gateway serves /status/200 over TLS on :443",
        LIVE,
        || https("/status/200"),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    let r = https("/delay/1").run();
    r.expect_status(200);
    assert!(r.time_total >= 1.0, "/delay/1 answered too early:\n{r}");
    let r = https("/headers").run();
    r.expect_status(404);
    assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{r}");

    // The same, verifying the certificate: by name (SNI httpbin) and by the gateway's IP (SAN).
    let r = env.curl_host("httpbin", 443, "/status/200").head().run();
    r.expect_status(200);
    assert_from_upstream(&r);
    let r = env
        .curl(&env.https_url(443, "/status/418"))
        .header("Host: httpbin")
        .run();
    r.expect_status(418);
    let c = env.peer_cert(None, 443).expect("the gateway's certificate");
    assert_eq!(c.serial, env.certs.server.serial, "{}", c.handshake);

    // Both ports counted in the gateway's metrics.
    let m = env.metrics();
    let count = |code: &str| -> f64 {
        m.iter()
            .filter(|s| {
                s.name == "istio_requests_total"
                    && s.labels.get("response_code").map(String::as_str) == Some(code)
            })
            .map(|s| s.value)
            .sum()
    };
    assert!(count("200") >= 4.0, "istio_requests_total for 200: {m:?}");
    let to_httpbin = m.iter().find(|s| {
        s.name == "istio_requests_total"
            && s.labels.get("response_code").map(String::as_str) == Some("200")
    });
    let labels = &to_httpbin.expect("counted").labels;
    assert_eq!(
        labels.get("reporter").map(String::as_str),
        Some("source"),
        "{labels:?}"
    );
    assert_eq!(
        labels.get("destination_service").map(String::as_str),
        Some(HTTPBIN_FQDN),
        "{labels:?}"
    );
    assert!(count("404") >= 2.0, "istio_requests_total for 404: {m:?}");
}

/// What httpbin sees through the seed's gateway: the client's address appended to
/// x-forwarded-for, x-forwarded-proto http/https, an x-request-id, the Host as sent.
#[test]
fn seed003_gateway_forwards_client_address_and_protocol() {
    let mut env = GatewayEnv::new("seed003_forwarded");
    env.apply(
        "gateway.yaml",
        &seed003_gateway(&env.certs.server.cert, &env.certs.server.key),
    );
    env.apply("virtualservice.yaml", VS_HTTPBIN);
    env.apply(
        "virtualservice-echo.yaml",
        &vs_to_httpbin("httpbin-echo", &[HTTPBIN_HOST], "httpbin-gateway"),
    );
    env.start_gateway();
    let client = env.addrs.client.to_string();

    let r = env.wait_for(
        "the gateway serves http://httpbin.example.com/anything",
        LIVE,
        || env.curl(&format!("http://{HTTPBIN_HOST}/anything?show_env=1")),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    let xff = r.echoed_header("X-Forwarded-For").unwrap_or_default();
    assert!(
        xff.split(',').any(|a| a.trim() == client),
        "x-forwarded-for must hold the client's address {client}:\n{r}"
    );
    assert_eq!(
        r.echoed_header("X-Forwarded-Proto").as_deref(),
        Some("http"),
        "{r}"
    );
    assert!(
        r.echoed_header("X-Request-Id")
            .is_some_and(|v| !v.is_empty()),
        "x-request-id missing:\n{r}"
    );
    assert_eq!(
        r.echoed_header("Host").as_deref(),
        Some(HTTPBIN_HOST),
        "{r}"
    );

    // An x-forwarded-for from the client is kept, with the client's address appended.
    let r = env
        .curl(&format!("http://{HTTPBIN_HOST}/anything?show_env=1"))
        .header("X-Forwarded-For: 203.0.113.9")
        .run();
    r.expect_status(200);
    let xff = r.echoed_header("X-Forwarded-For").unwrap_or_default();
    let parts: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(parts.first(), Some(&"203.0.113.9"), "{r}");
    assert_eq!(parts.last(), Some(&client.as_str()), "{r}");

    // Over TLS on 443: x-forwarded-proto https.
    let r = env.wait_for(
        "the gateway serves https://httpbin.example.com/anything",
        LIVE,
        || env.curl(&format!("https://{HTTPBIN_HOST}/anything?show_env=1")),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    assert_eq!(
        r.echoed_header("X-Forwarded-Proto").as_deref(),
        Some("https"),
        "{r}"
    );
    let xff = r.echoed_header("X-Forwarded-For").unwrap_or_default();
    assert!(xff.split(',').any(|a| a.trim() == client), "{r}");
    let e = env.wait_for_log("for the TLS /anything", |e| {
        e.path == "/anything?show_env=1" && e.requested_server_name == HTTPBIN_HOST
    });
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert!(
        e.x_forwarded_for.split(',').any(|a| a.trim() == client),
        "the access log's x-forwarded-for must hold the client's address: {}",
        e.raw
    );
}

/// Seed 003, Kubernetes Ingress: the simple and the secure Ingress as written, and the Secret
/// `istio-ingress-certs` (the test's real certificate): /status and /delay on 80 and 443.
#[test]
fn seed003_ingress_serves_status_and_delay_on_80_and_443() {
    let mut env = GatewayEnv::new("seed003_ingress");
    env.apply("simple-ingress.yaml", INGRESS_SIMPLE);
    env.apply(
        "secret-istio-ingress-certs.yaml",
        &tls_secret_yaml(
            INGRESS_SECRET,
            GATEWAY_NAMESPACE,
            &env.certs.server.cert,
            &env.certs.server.key,
        ),
    );
    env.apply("secure-ingress.yaml", INGRESS_SECURE);
    env.start_gateway();

    // curl -I http://$INGRESS_HOST/status/200
    let r = env.wait_for(
        "the Ingress serves /status/200 on :80",
        LIVE,
        || env.curl(&env.http_url(80, "/status/200")).head(),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    let r = env.curl(&env.http_url(80, "/delay/1")).head().run();
    r.expect_status(200);
    assert!(r.time_total >= 1.0, "/delay/1 answered too early:\n{r}");
    let r = env.curl(&env.http_url(80, "/headers")).head().run();
    assert_no_route(&env, &r, "/headers");
    // `/status/*` is a prefix: everything below /status/ is exposed. (Whether `/status` itself
    // is — Istio trims `/*`, leaving the prefix `/status` — is not asserted here.)
    let r = env.curl(&env.http_url(80, "/status/418")).run();
    r.expect_status(418);
    assert_from_upstream(&r);
    // Rules without a host take any Host.
    let r = env
        .curl(&env.http_url(80, "/status/201"))
        .header("Host: anything.example.com")
        .run();
    r.expect_status(201);

    // curl -I -k https://$SECURE_INGRESS_HOST/status/200
    let r = env.wait_for(
        "the Ingress serves /status/200 over TLS on :443",
        LIVE,
        || {
            env.curl(&env.https_url(443, "/status/200"))
                .insecure()
                .head()
        },
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    let r = env
        .curl(&env.https_url(443, "/delay/1"))
        .insecure()
        .head()
        .run();
    r.expect_status(200);
    assert!(r.time_total >= 1.0, "/delay/1 answered too early:\n{r}");
    let r = env
        .curl(&env.https_url(443, "/headers"))
        .insecure()
        .head()
        .run();
    r.expect_status(404);
    assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{r}");
    // The certificate is the Secret's: it verifies against the test CA (IP SAN) and by name.
    let r = env.curl(&env.https_url(443, "/status/200")).run();
    r.expect_status(200);
    let r = env.curl_host(HTTPBIN_HOST, 443, "/status/200").run();
    r.expect_status(200);
    let c = env.peer_cert(None, 443).expect("the Secret's certificate");
    assert_eq!(c.serial, env.certs.server.serial, "{}", c.handshake);
}

/// Which Ingresses the gateway serves: not one without a class, not one of another class; a
/// networking.k8s.io/v1 Ingress of an IngressClass whose controller is Istio's, with a host,
/// `Prefix` (path segments) and `Exact` paths, a backend port by name, and TLS from its Secret.
#[test]
fn ingress_classes_and_networking_v1_paths() {
    let mut env = GatewayEnv::new("ingress_classes");
    env.apply(
        "ingresses.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: unclassed
spec:
  rules:
  - http:
      paths:
      - path: /ip
        pathType: Prefix
        backend:
          service:
            name: httpbin
            port:
              number: {HTTPBIN_PORT}
---
apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: other-class
  annotations:
    kubernetes.io/ingress.class: nginx
spec:
  rules:
  - http:
      paths:
      - path: /user-agent
        backend:
          serviceName: httpbin
          servicePort: {HTTPBIN_PORT}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: istio
spec:
  controller: istio.io/ingress-controller
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: bookinfo
  namespace: default
spec:
  ingressClassName: istio
  tls:
  - hosts:
    - {BOOKINFO_HOST}
    secretName: bookinfo-certs
  rules:
  - host: {BOOKINFO_HOST}
    http:
      paths:
      - path: /anything
        pathType: Prefix
        backend:
          service:
            name: httpbin
            port:
              name: http
      - path: /get
        pathType: Exact
        backend:
          service:
            name: httpbin
            port:
              name: http
"
        ),
    );
    env.apply(
        "secret-bookinfo.yaml",
        &tls_secret_yaml(
            "bookinfo-certs",
            GATEWAY_NAMESPACE,
            &env.certs.server.cert,
            &env.certs.server.key,
        ),
    );
    env.start_gateway();
    let url = |path: &str| format!("http://{BOOKINFO_HOST}{path}");

    let r = env.wait_for(
        "the v1 Ingress serves bookinfo.example.com/anything",
        LIVE,
        || env.curl(&url("/anything")),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    assert_eq!(
        r.json()["url"],
        format!("http://{BOOKINFO_HOST}/anything"),
        "{r}"
    );
    // Prefix matches whole path segments.
    env.curl(&url("/anything/deeper/path"))
        .run()
        .expect_status(200);
    let r = env.curl(&url("/anythingelse")).run();
    assert_no_route(&env, &r, "/anythingelse");
    // Exact is exact.
    env.curl(&url("/get")).run().expect_status(200);
    let r = env.curl(&url("/get/more")).run();
    assert_no_route(&env, &r, "/get/more");
    // The rule's host only.
    let r = env
        .curl(&env.http_url(80, "/anything"))
        .header("Host: other.example.com")
        .run();
    r.expect_status(404);
    // Ingresses without the class annotation, or of another class, are not the gateway's.
    let r = env.curl(&env.http_url(80, "/ip")).run();
    assert_no_route(&env, &r, "/ip");
    let r = env.curl(&env.http_url(80, "/user-agent")).run();
    assert_no_route(&env, &r, "/user-agent");
    // TLS on 443 with the Ingress's Secret.
    let r = env.wait_for(
        "the v1 Ingress serves https://bookinfo.example.com/anything",
        LIVE,
        || env.curl(&format!("https://{BOOKINFO_HOST}/anything?show_env=1")),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    assert_eq!(
        r.echoed_header("X-Forwarded-Proto").as_deref(),
        Some("https"),
        "{r}"
    );
}

/// A Gateway's selector must be a subset of the gateway's labels; a Gateway without a selector
/// binds to every gateway.
#[test]
fn gateway_selector_must_match_the_labels() {
    let mut env = GatewayEnv::new("gateway_selector");
    let gateway = |name: &str, selector: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {GATEWAY_NAMESPACE}
spec:
{selector}  servers:
  - port:
      number: {port}
      name: http
      protocol: HTTP
    hosts:
    - \"*\"
"
        )
    };
    env.apply(
        "gateways.yaml",
        &[
            gateway("ours", "  selector:\n    istio: ingressgateway\n", 8080),
            gateway("egress", "  selector:\n    istio: egressgateway\n", 8081),
            gateway("anyone", "", 8082),
        ]
        .join("---\n"),
    );
    env.apply(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: everything
  namespace: default
spec:
  hosts:
  - \"*\"
  gateways:
  - {GATEWAY_NAMESPACE}/ours
  - {GATEWAY_NAMESPACE}/egress
  - {GATEWAY_NAMESPACE}/anyone
  http:
  - route:
    - destination:
        host: {HTTPBIN_FQDN}
        port:
          number: {HTTPBIN_PORT}
"
        ),
    );
    env.start_gateway();
    for port in [8080, 8082] {
        let r = env.wait_for(
            &format!("the gateway serves :{port}"),
            LIVE,
            || env.curl(&env.http_url(port, "/status/200")),
            |r| r.status == 200,
        );
        assert_from_upstream(&r);
    }
    let r = env.curl(&env.http_url(8081, "/status/200")).run();
    assert_eq!(
        (r.exit_code, r.status),
        (7, 0),
        "a Gateway for istio=egressgateway must not be served by istio=ingressgateway:\n{r}"
    );
    // The same config seen by an egress gateway: the other way round.
    env.stop_gateway();
    env.start_gateway_with_labels("istio=egressgateway,app=istio-egressgateway");
    for port in [8081, 8082] {
        let r = env.wait_for(
            &format!("the egress gateway serves :{port}"),
            LIVE,
            || env.curl(&env.http_url(port, "/status/200")),
            |r| r.status == 200,
        );
        assert_from_upstream(&r);
    }
    let r = env.curl(&env.http_url(8080, "/status/200")).run();
    assert_eq!((r.exit_code, r.status), (7, 0), "{r}");
}

/// Config applies live: a Gateway and VirtualService written while the gateway runs open the
/// port and route; editing, deleting the VirtualService and deleting the Gateway take effect too.
#[test]
fn gateway_config_applies_live() {
    let mut env = GatewayEnv::new("gateway_live_config");
    env.start_gateway();
    let status = || {
        env.curl(&env.http_url(80, "/status/200"))
            .header("Host: httpbin")
    };
    let r = status().run();
    assert_eq!(
        (r.exit_code, r.status),
        (7, 0),
        "no Gateway yet, no port 80:\n{r}"
    );

    let started = Instant::now();
    env.apply(
        "gateway.yaml",
        &seed003_gateway(&env.certs.server.cert, &env.certs.server.key),
    );
    env.apply("virtualservice.yaml", VS_HTTPBIN);
    let r = env.wait_for("the new Gateway is served", LIVE, status, |r| {
        r.status == 200
    });
    assert_from_upstream(&r);
    eprintln!(
        "[e2e] Gateway + VirtualService live after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    env.wait_for(
        "the new Gateway's TLS port is served",
        LIVE,
        || env.curl_host("httpbin", 443, "/status/200"),
        |r| r.status == 200,
    );

    // /headers added to the VirtualService.
    env.apply(
        "virtualservice.yaml",
        &VS_HTTPBIN.replace("prefix: /delay", "prefix: /headers"),
    );
    let r = env.wait_for(
        "the edited VirtualService routes /headers",
        LIVE,
        || {
            env.curl(&env.http_url(80, "/headers"))
                .header("Host: httpbin")
        },
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    let r = env
        .curl(&env.http_url(80, "/delay/0"))
        .header("Host: httpbin")
        .run();
    r.expect_status(404);

    // No VirtualService: 404 NR.
    env.delete("virtualservice.yaml");
    let r = env.wait_for("no route without the VirtualService", LIVE, status, |r| {
        r.status == 404
    });
    assert_no_route(&env, &r, "/status/200");

    // No Gateway: the ports close.
    env.delete("gateway.yaml");
    env.wait_for("port 80 closes with its Gateway", LIVE, status, |r| {
        r.exit_code == 7
    });
    env.wait_for(
        "port 443 closes with its Gateway",
        LIVE,
        || env.curl_host("httpbin", 443, "/status/200"),
        |r| r.exit_code == 7,
    );
}

/// MUTUAL: the gateway asks for a client certificate and accepts only one from its CA.
#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let mut env = GatewayEnv::new("mutual_tls");
    let certs = env.certs.clone();
    env.apply(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mtls-gateway
  namespace: {GATEWAY_NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - {HTTPBIN_HOST}
    tls:
      mode: MUTUAL
      serverCertificate: {}
      privateKey: {}
      caCertificates: {}
  - port:
      number: 9443
      name: https-secret
      protocol: HTTPS
    hosts:
    - {HTTPBIN_HOST}
    tls:
      mode: MUTUAL
      credentialName: mtls-credential
",
            certs.server.cert.display(),
            certs.server.key.display(),
            certs.ca.cert.display()
        ),
    );
    env.apply(
        "secret.yaml",
        &tls_secret_with_ca_yaml(
            "mtls-credential",
            GATEWAY_NAMESPACE,
            &certs.server.cert,
            &certs.server.key,
            &certs.ca.cert,
        ),
    );
    env.apply(
        "vs.yaml",
        &vs_to_httpbin(
            "httpbin-mtls",
            &[HTTPBIN_HOST],
            &format!("{GATEWAY_NAMESPACE}/mtls-gateway"),
        ),
    );
    env.start_gateway();
    let url = format!("https://{HTTPBIN_HOST}/status/200");

    let r = env.wait_for(
        "the MUTUAL server answers a client with a certificate from its CA",
        LIVE,
        || {
            env.curl(&url)
                .client_cert(&certs.client.cert, &certs.client.key)
        },
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    // Over HTTP/2 too.
    let r = env
        .curl(&url)
        .arg("--http2")
        .client_cert(&certs.client.cert, &certs.client.key)
        .run();
    r.expect_status(200);
    assert!(r.status_line.starts_with("HTTP/2"), "{r}");

    let r = env.curl(&url).arg("--http1.1").run();
    assert!(
        TLS_REFUSED.contains(&r.exit_code) && r.status == 0,
        "without a client certificate the handshake must fail (curl exit 35 or 56):\n{r}"
    );
    let r = env
        .curl(&url)
        .arg("--http1.1")
        .client_cert(&certs.other_client.cert, &certs.other_client.key)
        .run();
    assert!(
        TLS_REFUSED.contains(&r.exit_code) && r.status == 0,
        "a client certificate from another CA must be refused (curl exit 35 or 56):\n{r}"
    );
    // Still fine afterwards.
    env.curl(&url)
        .client_cert(&certs.client.cert, &certs.client.key)
        .run()
        .expect_status(200);

    // The same with the server certificate and the client CA from a Secret (`ca.crt`).
    let url = format!("https://{HTTPBIN_HOST}:9443/status/200");
    let r = env.wait_for(
        "the MUTUAL server with a credentialName answers a client with a certificate",
        LIVE,
        || {
            env.curl(&url)
                .client_cert(&certs.client.cert, &certs.client.key)
        },
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    for (what, cert) in [
        ("without a client certificate", None),
        ("with another CA's certificate", Some(&certs.other_client)),
    ] {
        let mut c = env.curl(&url).arg("--http1.1");
        if let Some(leaf) = cert {
            c = c.client_cert(&leaf.cert, &leaf.key);
        }
        let r = c.run();
        assert!(
            TLS_REFUSED.contains(&r.exit_code) && r.status == 0,
            "{what} the handshake with the Secret's MUTUAL server must fail:\n{r}"
        );
    }
}

/// PASSTHROUGH: the gateway routes by SNI to the TLS backend without terminating: the client
/// sees the backend's certificate and the backend sees no gateway headers.
#[test]
fn passthrough_routes_by_sni_to_the_tls_backend() {
    let mut env = GatewayEnv::new("passthrough");
    env.apply(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: passthrough-gateway
  namespace: {GATEWAY_NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: tls
      protocol: TLS
    hosts:
    - {SECURE_HOST}
    tls:
      mode: PASSTHROUGH
"
        ),
    );
    env.apply(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: secure
  namespace: default
spec:
  hosts:
  - {SECURE_HOST}
  gateways:
  - {GATEWAY_NAMESPACE}/passthrough-gateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - {SECURE_HOST}
    route:
    - destination:
        host: {TLS_BACKEND_FQDN}
        port:
          number: {TLS_BACKEND_PORT}
"
        ),
    );
    env.start_gateway();
    let backend_ca = env.certs.backend_ca.cert.clone();

    let r = env.wait_for(
        "the gateway passes secure.example.com through to the TLS backend",
        LIVE,
        || {
            env.curl_host(SECURE_HOST, 443, "/headers?show_env=1")
                .cacert(&backend_ca)
                .verbose()
        },
        |r| r.status == 200,
    );
    assert!(
        r.stderr.contains("CN=sluice e2e test CA backend"),
        "curl -v must show the backend CA as the issuer:\n{r}"
    );
    assert!(
        r.stderr.contains(&format!("CN={SECURE_HOST}")),
        "curl -v must show the backend's subject:\n{r}"
    );
    assert_eq!(
        r.header("x-envoy-upstream-service-time"),
        None,
        "a passed-through response is the backend's own:\n{r}"
    );
    assert_eq!(r.echoed_header("X-Forwarded-For"), None, "{r}");
    assert_eq!(r.echoed_header("Host").as_deref(), Some(SECURE_HOST), "{r}");
    let c = cert_for(&env, SECURE_HOST);
    assert_eq!(
        c.issuer_cn(),
        "sluice e2e test CA backend",
        "{}",
        c.handshake
    );
    assert_eq!(c.serial, env.certs.backend.serial, "{}", c.handshake);
    env.curl_host(SECURE_HOST, 443, "/status/200")
        .cacert(&backend_ca)
        .run()
        .expect_status(200);

    let e = env.wait_for_log("for the passed-through connection", |e| {
        e.is_tcp() && e.requested_server_name == SECURE_HOST
    });
    assert_eq!(
        e.upstream_host,
        format!("{}:{TLS_BACKEND_PORT}", env.addrs.tls_backend),
        "{}",
        e.raw
    );
    // Counted as TCP by the gateway, as Istio's ingress gateway reports it.
    let m = env.metrics();
    let opened: f64 = m
        .iter()
        .filter(|s| {
            s.name == "istio_tcp_connections_opened_total"
                && s.labels.get("destination_service").map(String::as_str) == Some(TLS_BACKEND_FQDN)
                && s.labels.get("reporter").map(String::as_str) == Some("source")
        })
        .map(|s| s.value)
        .sum();
    assert!(
        opened >= 2.0,
        "istio_tcp_connections_opened_total for {TLS_BACKEND_FQDN}: {m:?}"
    );
    // An SNI no server covers gets no backend.
    let r = env
        .curl_host(A_HOST, 443, "/status/200")
        .cacert(&backend_ca)
        .run();
    assert!(
        r.exit_code != 0 && r.status == 0,
        "an SNI without a PASSTHROUGH server must not reach a backend:\n{r}"
    );
}

/// `tls.httpsRedirect`: plain HTTP gets a 301 to the same URL over https; the https server
/// (SIMPLE from a credentialName Secret) serves it.
#[test]
fn https_redirect_answers_301_to_https() {
    let mut env = GatewayEnv::new("https_redirect");
    env.apply(
        "secret.yaml",
        &tls_secret_yaml(
            "httpbin-credential",
            GATEWAY_NAMESPACE,
            &env.certs.server.cert,
            &env.certs.server.key,
        ),
    );
    env.apply(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: redirect-gateway
  namespace: {GATEWAY_NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - {HTTPBIN_HOST}
    tls:
      httpsRedirect: true
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - {HTTPBIN_HOST}
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
"
        ),
    );
    env.apply(
        "vs.yaml",
        &vs_to_httpbin(
            "httpbin",
            &[HTTPBIN_HOST],
            &format!("{GATEWAY_NAMESPACE}/redirect-gateway"),
        ),
    );
    env.start_gateway();

    let r = env.wait_for(
        "http://httpbin.example.com/status/200 is redirected",
        LIVE,
        || env.curl(&format!("http://{HTTPBIN_HOST}/status/200")),
        |r| r.status == 301,
    );
    assert_eq!(
        r.header("location"),
        Some(&*format!("https://{HTTPBIN_HOST}/status/200")),
        "{r}"
    );
    assert_eq!(r.header("server"), Some("istio-envoy"), "{r}");
    let r = env
        .curl(&format!("http://{HTTPBIN_HOST}/anything?a=1&b=2"))
        .run();
    r.expect_status(301);
    assert_eq!(
        r.header("location"),
        Some(&*format!("https://{HTTPBIN_HOST}/anything?a=1&b=2")),
        "{r}"
    );
    // Following it ends at httpbin over TLS.
    let r = env.wait_for(
        "curl -L follows the redirect to https",
        LIVE,
        || {
            env.curl(&format!("http://{HTTPBIN_HOST}/anything?a=1&show_env=1"))
                .arg("-L")
        },
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    assert_eq!(
        r.json()["url"],
        format!("https://{HTTPBIN_HOST}/anything?a=1&show_env=1"),
        "{r}"
    );
    assert_eq!(
        r.echoed_header("X-Forwarded-Proto").as_deref(),
        Some("https"),
        "{r}"
    );
}

/// Runs `n` sequential requests (each a new curl: a new TLS handshake) from a background thread
/// while `during` runs; returns (failures, requests done when `during` returned).
fn under_load(
    env: &GatewayEnv,
    n: usize,
    url: &str,
    during: impl FnOnce(&AtomicUsize),
) -> (Vec<String>, usize) {
    let done = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let mut at_end = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..n {
                let r = env.curl(url).max_time(5.0).run();
                if r.exit_code != 0 || r.status != 200 {
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("request {i}:\n{r}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Start the change once the load is going.
        eventually("the load is running", Duration::from_secs(10), || {
            if done.load(Ordering::SeqCst) >= n / 4 {
                Ok(())
            } else {
                Err(format!("{} requests so far", done.load(Ordering::SeqCst)))
            }
        });
        during(&done);
        at_end = done.load(Ordering::SeqCst);
    });
    (
        failures.into_inner().unwrap_or_else(|e| e.into_inner()),
        at_end,
    )
}

/// Waits for new handshakes to present the certificate with `serial`; returns it.
#[track_caller]
fn wait_for_serial(env: &GatewayEnv, sni: &str, serial: u64) -> PeerCert {
    eventually(
        &format!("the gateway presents serial {serial} for {sni}"),
        Duration::from_secs(5),
        || match env.peer_cert(Some(sni), 443) {
            Ok(c) if c.serial == serial => Ok(c),
            Ok(c) => Err(format!("serial {} ({})", c.serial, c.subject)),
            Err(e) => Err(e),
        },
    )
}

/// Certificate files replaced under load (atomic renames, key then certificate): no request
/// fails and new handshakes get the new certificate.
#[test]
fn certificate_files_rotate_without_failed_requests() {
    let mut env = GatewayEnv::new("cert_file_rotation");
    let (cert, key) = env.install_cert_files(&env.certs.server.clone(), "httpbin");
    env.apply(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: rotating
  namespace: {GATEWAY_NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - {HTTPBIN_HOST}
    tls:
      mode: SIMPLE
      serverCertificate: {}
      privateKey: {}
",
            cert.display(),
            key.display()
        ),
    );
    env.apply(
        "vs.yaml",
        &vs_to_httpbin(
            "httpbin",
            &[HTTPBIN_HOST],
            &format!("{GATEWAY_NAMESPACE}/rotating"),
        ),
    );
    env.start_gateway();
    let url = format!("https://{HTTPBIN_HOST}/status/200");
    env.wait_for(
        "the SIMPLE server answers",
        LIVE,
        || env.curl(&url),
        |r| r.status == 200,
    );
    let before = cert_for(&env, HTTPBIN_HOST);
    assert_eq!(
        before.serial, env.certs.server.serial,
        "{}",
        before.handshake
    );

    let renewed = env.certs.issue_server(
        "server-renewed",
        "renewed.httpbin.example.com",
        &[HTTPBIN_HOST],
        20,
    );
    let mut swapped_at = 0;
    let mut after = None;
    let mut kept = None;
    let mut live_at = 0;
    let (failures, _) = under_load(&env, 200, &url, |done| {
        // A connection made before the swap that is still in use after it.
        let long = KeepAlive::start(&env, &format!("https://{HTTPBIN_HOST}/delay/1"), 3);
        std::thread::sleep(Duration::from_millis(300));
        swapped_at = done.load(Ordering::SeqCst);
        env.replace_cert_files(&renewed, &cert, &key);
        after = Some(wait_for_serial(&env, HTTPBIN_HOST, renewed.serial));
        live_at = done.load(Ordering::SeqCst);
        kept = Some(long.finish());
    });
    assert!(
        failures.is_empty(),
        "{} of 200 requests failed around the certificate swap (after request {swapped_at}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        live_at < 200,
        "requests must still run once the new certificate is live (swap after request \
         {swapped_at}, live after request {live_at})"
    );
    let after = after.expect("checked");
    assert_eq!(
        after.cn(),
        "renewed.httpbin.example.com",
        "{}",
        after.handshake
    );
    // curl agrees, and the gateway kept serving.
    let r = env.curl(&url).verbose().run();
    r.expect_status(200);
    assert!(r.stderr.contains("CN=renewed.httpbin.example.com"), "{r}");
    // The connection from before the swap carried on: three 200s, one connection.
    let (results, output) = kept.expect("checked");
    assert_eq!(
        results,
        vec![(200, 1), (200, 0), (200, 0)],
        "three requests on one keep-alive connection across the swap (status, new connections):\n{output}"
    );
    // A restarted gateway reads the renewed files from the start.
    env.restart_gateway();
    env.wait_for(
        "the restarted gateway answers",
        LIVE,
        || env.curl(&url),
        |r| r.status == 200,
    );
    assert_eq!(cert_for(&env, HTTPBIN_HOST).serial, renewed.serial);
}

/// One curl run making `n` requests on one keep-alive connection, in the background.
struct KeepAlive {
    child: std::process::Child,
}

impl KeepAlive {
    fn start(env: &GatewayEnv, url: &str, n: usize) -> KeepAlive {
        let mut cmd = env.client.cmd(&tools().curl);
        cmd.args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--http1.1",
            "--cacert",
        ])
        .arg(&env.certs.ca.cert)
        .args(["-w", "%{http_code} %{num_connects}\\n"]);
        for _ in 0..n {
            cmd.args(["-o", "/dev/null", url]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        KeepAlive { child }
    }

    /// (status, connections made) of each request, and curl's whole output.
    fn finish(self) -> (Vec<(u16, u32)>, String) {
        let out = self
            .child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let results = stdout
            .lines()
            .filter_map(|l| {
                let (code, connects) = l.split_once(' ')?;
                Some((code.parse().ok()?, connects.parse().ok()?))
            })
            .collect();
        let text = format!(
            "exit {}\nstdout:\n{stdout}stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (results, text)
    }
}

/// A Gateway `name` with one HTTPS server for httpbin.example.com (SIMPLE, the server
/// certificate from the `httpbin-credential` Secret) and a VirtualService routing it to httpbin.
fn https_to_httpbin(env: &GatewayEnv, name: &str) {
    env.apply(
        "secret.yaml",
        &tls_secret_yaml(
            "httpbin-credential",
            GATEWAY_NAMESPACE,
            &env.certs.server.cert,
            &env.certs.server.key,
        ),
    );
    env.apply(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {GATEWAY_NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - {HTTPBIN_HOST}
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
"
        ),
    );
    env.apply(
        "vs.yaml",
        &vs_to_httpbin(
            "httpbin",
            &[HTTPBIN_HOST],
            &format!("{GATEWAY_NAMESPACE}/{name}"),
        ),
    );
}

/// A credentialName Secret edited in the config directory under load: no request fails and new
/// handshakes get the new certificate.
#[test]
fn credential_secret_rotates_without_failed_requests() {
    let mut env = GatewayEnv::new("secret_rotation");
    let secret = |leaf: &Leaf| {
        tls_secret_yaml(
            "httpbin-credential",
            GATEWAY_NAMESPACE,
            &leaf.cert,
            &leaf.key,
        )
    };
    https_to_httpbin(&env, "rotating");
    env.start_gateway();
    let url = format!("https://{HTTPBIN_HOST}/status/200");
    env.wait_for(
        "the SIMPLE server answers",
        LIVE,
        || env.curl(&url),
        |r| r.status == 200,
    );
    assert_eq!(cert_for(&env, HTTPBIN_HOST).serial, env.certs.server.serial);

    let renewed = env.certs.issue_server(
        "server-renewed",
        "renewed.httpbin.example.com",
        &[HTTPBIN_HOST],
        21,
    );
    let mut after = None;
    let (failures, done) = under_load(&env, 120, &url, |_| {
        env.apply("secret.yaml", &secret(&renewed));
        after = Some(wait_for_serial(&env, HTTPBIN_HOST, renewed.serial));
    });
    assert!(
        failures.is_empty(),
        "{} of 120 requests failed around the Secret change:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        done < 120,
        "the change must happen while requests run (done: {done})"
    );
    assert_eq!(after.expect("checked").cn(), "renewed.httpbin.example.com");
}

/// Two servers on 443 for two hosts: one certificate from a credentialName Secret, one from
/// files, each chosen by SNI; the VirtualService for `hosts` binds both.
fn two_hosts_config(env: &GatewayEnv) {
    env.apply(
        "secret-a.yaml",
        &tls_secret_yaml(
            "a-credential",
            GATEWAY_NAMESPACE,
            &env.certs.a.cert,
            &env.certs.a.key,
        ),
    );
    env.apply(
        "gateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: two-hosts
  namespace: {GATEWAY_NAMESPACE}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https-a
      protocol: HTTPS
    hosts:
    - {A_HOST}
    tls:
      mode: SIMPLE
      credentialName: a-credential
  - port:
      number: 443
      name: https-b
      protocol: HTTPS
    hosts:
    - {B_HOST}
    tls:
      mode: SIMPLE
      serverCertificate: {}
      privateKey: {}
",
            env.certs.b.cert.display(),
            env.certs.b.key.display()
        ),
    );
    env.apply(
        "vs.yaml",
        &vs_to_httpbin(
            "ab",
            &[A_HOST, B_HOST],
            &format!("{GATEWAY_NAMESPACE}/two-hosts"),
        ),
    );
}

/// Several servers on 443: each SNI gets its own certificate, and both hosts are served.
#[test]
fn two_hosts_get_their_own_certificates_by_sni() {
    let mut env = GatewayEnv::new("two_hosts_sni");
    two_hosts_config(&env);
    env.start_gateway();
    for (host, leaf) in [(A_HOST, env.certs.a.clone()), (B_HOST, env.certs.b.clone())] {
        let r = env.wait_for(
            &format!("https://{host}/status/200 through the gateway"),
            LIVE,
            || env.curl(&format!("https://{host}/status/200")).verbose(),
            |r| r.status == 200,
        );
        assert_from_upstream(&r);
        assert!(
            r.stderr.contains(&format!("CN={host}")),
            "curl -v must show the certificate of {host}:\n{r}"
        );
        let c = cert_for(&env, host);
        assert_eq!(c.cn(), host, "{}", c.handshake);
        assert_eq!(c.serial, leaf.serial, "{}", c.handshake);
        // With --resolve as well (SNI and Host from the URL).
        env.curl_host(host, 443, "/status/200")
            .run()
            .expect_status(200);
    }
}

/// HTTP/2 connection coalescing guard: on a connection for a.example.com, a request whose
/// :authority is b.example.com (another server's host) gets 421 Misdirected Request.
#[test]
fn http2_request_for_another_servers_host_gets_421() {
    let mut env = GatewayEnv::new("misdirected_421");
    two_hosts_config(&env);
    env.start_gateway();
    let r = env.wait_for(
        "https://a.example.com/status/200 over HTTP/2",
        LIVE,
        || env.curl_host(A_HOST, 443, "/status/200").arg("--http2"),
        |r| r.status == 200,
    );
    assert!(r.status_line.starts_with("HTTP/2"), "{r}");

    let started = Instant::now();
    let r = env
        .curl_host(A_HOST, 443, "/status/200")
        .arg("--http2")
        .header(&format!("Host: {B_HOST}"))
        .run();
    r.expect_status(421);
    assert!(r.status_line.starts_with("HTTP/2"), "{r}");
    assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{r}");
    assert!(started.elapsed() < Duration::from_secs(5), "{r}");
    // The other way round too, and each host on its own connection is fine.
    env.curl_host(B_HOST, 443, "/status/200")
        .arg("--http2")
        .header(&format!("Host: {A_HOST}"))
        .run()
        .expect_status(421);
    env.curl_host(B_HOST, 443, "/status/200")
        .arg("--http2")
        .run()
        .expect_status(200);
}

/// A gateway in a cluster, as Istio's gets its credentials: no identity of its own at start, a
/// certificate from the control plane's certificate service for its service-account token
/// (reviewed by the API server), then its `credentialName` Secret over mutual TLS on 15012 (the
/// only way Secrets travel), and the HTTPS server it names serves.
#[test]
fn a_gateway_gets_its_identity_for_its_token_and_its_credentials_over_mutual_tls() {
    let mut env = GatewayEnv::new("gateway_ca");
    https_to_httpbin(&env, "httpbin-gateway");
    // The mesh root with its key for the control plane; the root alone for the gateway.
    let dir = env.dir().to_path_buf();
    let ca = dir.join("mesh-ca");
    let out = std::process::Command::new(sluice_e2e::prereq::sluice_bin())
        .args(["ca", "init", "--dir", &ca.to_string_lossy()])
        .output()
        .expect("sluice ca init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root_only = dir.join("mesh-root");
    std::fs::create_dir_all(&root_only).unwrap();
    std::fs::copy(ca.join("root-cert.pem"), root_only.join("root-cert.pem")).unwrap();
    let token = dir.join("istio-token");
    std::fs::write(&token, "gateway-token\n").unwrap();

    // The API server, which knows the gateway's token, and the control plane that asks it.
    let api = "127.0.0.1:16443";
    let mut apiserver = env.gw.cmd(env!("CARGO_BIN_EXE_fake-apiserver"));
    apiserver.arg(api);
    env.spawn_server("apiserver", apiserver);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, sluice_e2e::fake_apiserver::kubeconfig(api)).unwrap();
    eventually("the API server", Duration::from_secs(10), || {
        let out = env
            .gw
            .cmd("curl")
            .args(["-sS", "-f", "-X", "POST", "--data-binary"])
            .arg(
                serde_json::json!({"token": "gateway-token", "namespace": GATEWAY_NAMESPACE,
                    "serviceAccount": "istio-ingressgateway-service-account",
                    "audiences": ["istio-ca"]})
                .to_string(),
            )
            .arg(format!("http://{api}/fake/token"))
            .output()
            .expect("curl");
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).to_string())
    });
    let mut control = env.gw.cmd(sluice_e2e::prereq::sluice_bin());
    control
        .args(["control", "--bind", "127.0.0.1", "--kube", "--config"])
        .arg(env.config.path())
        .arg("--mesh-ca")
        .arg(&ca)
        .env("KUBECONFIG", &kubeconfig);
    env.spawn_server("control", control);

    let mut args = env.gateway_args(sluice_e2e::gateway::GATEWAY_LABELS);
    let config_at = args.iter().position(|a| a == "--config").unwrap();
    args.drain(config_at..config_at + 2);
    args.extend(
        [
            "--xds",
            "127.0.0.1:15012",
            "--service-account",
            "istio-ingressgateway-service-account",
            "--mesh-ca",
            &root_only.to_string_lossy(),
            "--ca-address",
            "127.0.0.1:15012",
            "--ca-token",
            &token.to_string_lossy(),
        ]
        .map(String::from),
    );
    env.start_gateway_with_args(args);

    let r = env.wait_for(
        "https through the credential the control plane sent",
        LIVE,
        || env.curl(&format!("https://{HTTPBIN_HOST}/status/200")),
        |r| r.status == 200,
    );
    assert_from_upstream(&r);
    let log = std::fs::read_to_string(dir.join("control.stderr.log")).unwrap_or_default()
        + &std::fs::read_to_string(dir.join("control.stdout.log")).unwrap_or_default();
    assert!(
        log.contains("certificate signed")
            && log.contains(
                "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
            ),
        "the control plane signed the gateway's certificate:\n{log}"
    );
}
