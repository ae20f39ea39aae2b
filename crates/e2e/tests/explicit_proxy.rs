//! The sidecar as an explicit forward proxy (`--proxy-port 15080`), for hosts where nobody can
//! install iptables rules: no `sluice init`, the app uses `curl -x http://127.0.0.1:15080`
//! (absolute-URI requests for http://, CONNECT for https://). The mesh is REGISTRY_ONLY.

use sluice_e2e::config::{mesh_configmap, vs_httpbin_timeout, SE_HTTPBIN_EXT, SE_VS_GOOGLE};
use sluice_e2e::env::HTTPBIN;
use sluice_e2e::{SidecarOpts, TestEnv};

fn env_with(test: &str, files: &[(&str, &str)]) -> TestEnv {
    let mut env = TestEnv::new(test);
    env.config
        .write("istio-configmap.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    for (name, content) in files {
        env.config.write(name, content);
    }
    env.start_sidecar(SidecarOpts::explicit_proxy());
    let rules = env.iptables_nat();
    assert!(
        !rules.contains("15001"),
        "explicit proxy mode sets up no capture:\n{rules}"
    );
    env
}

/// Plain HTTP through the proxy: a ServiceEntry host is forwarded like captured traffic (same
/// headers, same log line); an unknown host gets 502 from `block_all`.
#[test]
fn explicit_proxy_http() {
    let env = env_with(
        "explicit_proxy_http",
        &[("httpbin-ext.yaml", SE_HTTPBIN_EXT)],
    );
    let h = env.hosts;

    let r = env.curl_via_proxy("http://httpbin.org/headers").run();
    r.expect_status(200);
    assert_eq!(r.echoed_header("Host").as_deref(), Some(HTTPBIN), "{r}");
    assert_eq!(
        r.echoed_header("X-Envoy-Decorator-Operation").as_deref(),
        Some("httpbin.org:80/*"),
        "{r}"
    );
    assert!(
        r.echoed_header("Proxy-Connection").is_none(),
        "hop-by-hop proxy headers are not forwarded:\n{r}"
    );
    let e = env.wait_for_log("GET /headers 200 via the explicit proxy", |e| {
        e.method == "GET" && e.path == "/headers" && e.authority == HTTPBIN
    });
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(e.upstream_cluster, "outbound|80||httpbin.org", "{}", e.raw);
    assert_eq!(e.upstream_host, format!("{}:80", h.httpbin), "{}", e.raw);

    let r = env.curl_via_proxy("http://edition.cnn.com/").run();
    r.expect_status(502);
    assert!(r.body.is_empty(), "{r}");
    let e = env.wait_for_log("502 block_all for edition.cnn.com", |e| {
        e.authority == "edition.cnn.com"
    });
    assert_eq!(
        (e.response_code, e.route_name.as_str()),
        (502, "block_all"),
        "{}",
        e.raw
    );

    // Direct traffic is not captured in this mode (no iptables), so it reaches httpbin unproxied.
    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(200);
    assert!(
        r.echoed_header("X-Envoy-Decorator-Operation").is_none(),
        "{r}"
    );
}

/// HTTPS through CONNECT: allowed for the ServiceEntry host (with the seed's `sni_hosts`
/// VirtualService), refused for an unknown one.
#[test]
fn explicit_proxy_connect() {
    let env = env_with("explicit_proxy_connect", &[("google.yaml", SE_VS_GOOGLE)]);

    let r = env.curl_via_proxy("https://www.google.com/get").run();
    r.expect_status(200);
    assert_eq!(r.connect_status, 200, "CONNECT accepted:\n{r}");
    assert_eq!(r.json()["url"], "https://www.google.com/get", "{r}");
    env.curl_via_proxy("https://www.google.com")
        .head()
        .run()
        .expect_status(200);
    let e = env.wait_for_log("tunnel to www.google.com:443", |e| {
        e.upstream_cluster == "outbound|443||www.google.com"
    });
    assert_eq!(e.response_flags, "-", "{}", e.raw);

    // Unknown host: the CONNECT is refused (e.g. 403) or the tunnel is closed once the proxy has
    // seen the ClientHello (curl exit 35); either way curl fails and gets no response.
    let r = env.curl_via_proxy("https://edition.cnn.com/").run();
    assert_ne!(
        r.exit_code, 0,
        "CONNECT to an unknown host must fail under REGISTRY_ONLY:\n{r}"
    );
    assert_eq!(r.status, 0, "no response from edition.cnn.com:\n{r}");
    assert!(
        r.connect_status == 0 || r.connect_status == 200 || r.connect_status >= 400,
        "{r}"
    );
    let e = env.wait_for_log("blocked tunnel to edition.cnn.com:443", |e| {
        e.upstream_cluster == "BlackHoleCluster"
            || (e.authority == "edition.cnn.com:443" && e.response_code >= 400)
    });
    assert!(
        e.raw.contains("edition.cnn.com"),
        "the blocked destination is named: {}",
        e.raw
    );
}

/// A VirtualService timeout applies to requests that come through the explicit proxy.
#[test]
fn explicit_proxy_timeout() {
    let env = env_with(
        "explicit_proxy_timeout",
        &[
            ("httpbin-ext.yaml", SE_HTTPBIN_EXT),
            ("httpbin-vs.yaml", &vs_httpbin_timeout("1s")),
        ],
    );
    let r = env.curl_via_proxy("http://httpbin.org/delay/3").run();
    r.expect_status(504);
    assert!(
        (0.8..=2.0).contains(&r.time_total),
        "504 after about 1 s:\n{r}"
    );
    assert_eq!(r.body, "upstream request timeout", "{r}");
    let e = env.wait_for_log("504 UT", |e| e.path == "/delay/3");
    assert_eq!(
        (e.response_code, e.response_flags.as_str()),
        (504, "UT"),
        "{}",
        e.raw
    );
    env.curl_via_proxy("http://httpbin.org/get")
        .run()
        .expect_status(200);
}
