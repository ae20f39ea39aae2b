//! End-to-end scenarios for the sidecar's egress control, after the seed documents 000 and 001
//! (Istio "Control Egress Traffic") and 002 (timeouts). Each test has its own namespaces, DNS,
//! httpbin and sidecar; see the crate docs of `sluice_e2e` for the topology:
//! httpbin.org → httpbin on :80, www.google.com and edition.cnn.com → httpbin over TLS on :443
//! (certificate from the test CA, which curl trusts with `--cacert`).
//!
//! Every sidecar test runs the sidecar with `accessLogFile: /dev/stdout` (or no mesh config at all,
//! whose default is also stdout) and reads the access log from the sidecar's stdout.

use std::time::{Duration, Instant};

use sluice_e2e::config::{
    mesh_configmap, vs_httpbin_timeout, SE_HTTPBIN_EXT, SE_VS_GOOGLE, VS_HTTPBIN_TIMEOUT_05S,
    VS_HTTPBIN_TIMEOUT_3S,
};
use sluice_e2e::env::{CNN, GOOGLE, HTTPBIN};
use sluice_e2e::metrics;
use sluice_e2e::sidecar::{ADMIN_PORT, STATUS_PORT};
use sluice_e2e::{eventually, settle, AccessLogEntry, CurlResult, Pki, SidecarOpts, TestEnv};

const MESH: &str = "istio-configmap.yaml";

fn registry_only(env: &TestEnv) {
    env.config.write(MESH, &mesh_configmap("REGISTRY_ONLY", ""));
}

/// The X-Envoy-* request headers httpbin received.
fn envoy_headers(r: &CurlResult) -> Vec<(String, String)> {
    r.echoed_headers()
        .into_iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-envoy"))
        .collect()
}

fn http_line<'a>(
    method: &'a str,
    path: &'a str,
    authority: &'a str,
) -> impl Fn(&AccessLogEntry) -> bool + 'a {
    move |e| e.method == method && e.path == path && e.authority == authority
}

fn tcp_line_to(dst: String) -> impl Fn(&AccessLogEntry) -> bool {
    move |e| e.is_tcp() && e.downstream_local_address == dst
}

/// The harness itself, without sluice: namespaces, DNS, httpbin over HTTP and TLS, curl, the
/// proxy user, iptables, and no way out of the test network.
#[test]
fn harness_self_test() {
    let env = TestEnv::new("harness_self_test");
    let h = env.hosts;

    // HTTP through the test DNS.
    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(200);
    assert_eq!(r.echoed_header("Host").as_deref(), Some(HTTPBIN), "{r}");
    assert!(
        !r.echoed_headers()
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().starts_with("x-envoy")),
        "no proxy in the path yet, so no X-Envoy-* headers:\n{r}"
    );

    // HTTPS with the test CA, for each TLS host.
    for host in [GOOGLE, CNN, HTTPBIN] {
        let r = env.curl(&format!("https://{host}/get")).run();
        r.expect_status(200);
        assert_eq!(r.json()["url"], format!("https://{host}/get"), "{r}");
    }
    // The seeds' `curl -I https://…`.
    let r = env.curl("https://www.google.com").head().run();
    r.expect_status(200);
    assert!(r.status_line.starts_with("HTTP/1.1 200"), "{r}");
    // Without the CA the certificate is not trusted (exit 60): the TLS server really is ours.
    let r = env
        .curl("https://www.google.com/get")
        .arg("--cacert")
        .arg("/dev/null")
        .run();
    assert_ne!(r.exit_code, 0, "{r}");

    // Unknown names do not resolve (curl exit 6), quickly.
    let r = env.curl("http://nothere.example/").run();
    r.expect_exit(6);
    assert!(r.elapsed < Duration::from_secs(3), "{r}");

    // www.google.com has nothing on port 80: connection refused (exit 7).
    env.curl("http://www.google.com/").run().expect_exit(7);

    // httpbin serves slow requests concurrently (the timeout tests rely on it).
    std::thread::scope(|s| {
        let a = s.spawn(|| env.curl("http://httpbin.org/delay/1").run());
        let b = s.spawn(|| env.curl("http://httpbin.org/delay/1").run());
        let start = std::time::Instant::now();
        let (a, b) = (a.join().expect("thread"), b.join().expect("thread"));
        a.expect_status(200);
        b.expect_status(200);
        assert!(a.time_total >= 1.0 && a.time_total < 1.9, "{a}");
        assert!(
            start.elapsed() < Duration::from_millis(1900),
            "two /delay/1 took {:?}",
            start.elapsed()
        );
    });

    // No way out: no default route in either namespace, and the kernel refuses anything off-subnet
    // (`ip route get` asks the routing table; no packet is sent).
    for ns in [&env.pod, &env.ext] {
        let routes = ns.run("ip", &["route", "show"]);
        assert!(
            !routes.contains("default"),
            "{} has a default route:\n{routes}",
            ns.name()
        );
        let (ok, out) = ns.try_run("ip", &["route", "get", "192.0.2.1"]);
        assert!(
            !ok && out.contains("unreachable"),
            "{}: ip route get 192.0.2.1 → {out}",
            ns.name()
        );
    }
    let routes = env.pod.run("ip", &["-4", "route", "show"]);
    assert_eq!(routes.lines().count(), 1, "pod routes:\n{routes}");
    assert!(routes.starts_with(&h.cidr()), "pod routes:\n{routes}");

    // The proxy user exists as far as the kernel cares, and iptables works in the pod.
    let id = env.pod.run(
        "setpriv",
        &[
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            "id",
            "-u",
        ],
    );
    assert_eq!(id.trim(), "1337");
    let (ok, out) = env.pod.try_run("iptables", &["-t", "nat", "-S", "OUTPUT"]);
    assert!(ok, "iptables does not work in the pod netns: {out}");
}

/// Seed 001: with the default ALLOW_ANY (here: no mesh ConfigMap at all), `curl -I
/// https://www.google.com` works, and the sidecar logs the TLS connection as passthrough with its SNI.
#[test]
fn allow_any_reaches_unknown_https() {
    let mut env = TestEnv::new("allow_any_reaches_unknown_https");
    let h = env.hosts;
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("https://www.google.com").head().run();
    r.expect_status(200);
    assert!(r.status_line.starts_with("HTTP/1.1 200"), "{r}");
    let e = env.wait_for_log(
        "TCP PassthroughCluster to www.google.com:443",
        tcp_line_to(format!("{}:443", h.google)),
    );
    assert_eq!(e.upstream_cluster, "PassthroughCluster", "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.requested_server_name, GOOGLE, "{}", e.raw);
    assert_eq!(e.upstream_host, format!("{}:443", h.google), "{}", e.raw);
    assert!(
        e.downstream_remote_address
            .starts_with(&format!("{}:", h.pod)),
        "{}",
        e.raw
    );
    assert!(
        e.bytes_received_n() > 0 && e.bytes_sent_n() > 0,
        "bytes both ways: {}",
        e.raw
    );

    // edition.cnn.com too (the seed's second host).
    env.curl("https://edition.cnn.com")
        .head()
        .run()
        .expect_status(200);

    // Plain HTTP to an unknown host is passed through as well.
    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(200);
    let e = env.wait_for_log("passthrough to httpbin.org:80", |e| {
        e.downstream_local_address == format!("{}:80", h.httpbin)
    });
    assert_eq!(e.upstream_cluster, "PassthroughCluster", "{}", e.raw);
    assert_eq!(e.upstream_host, format!("{}:80", h.httpbin), "{}", e.raw);
    if !e.is_tcp() {
        // Handled as HTTP: Istio's catch-all route for ALLOW_ANY.
        assert_eq!(
            (e.response_code, e.route_name.as_str()),
            (200, "allow_any"),
            "{}",
            e.raw
        );
    }
}

/// Seed 001 (REGISTRY_ONLY): unknown HTTPS fails with curl exit 35, unknown HTTP gets an empty
/// 502 from route `block_all`, and the TLS attempt is logged against BlackHoleCluster with flag UH
/// (and, unlike Istio, with the SNI that was asked for).
#[test]
fn registry_only_blocks_unknown() {
    let mut env = TestEnv::new("registry_only_blocks_unknown");
    let h = env.hosts;
    registry_only(&env);
    env.start_sidecar(SidecarOpts::captured());

    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_exit(35);
    env.curl("https://edition.cnn.com")
        .head()
        .run()
        .expect_exit(35);

    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(502);
    assert!(
        r.body.is_empty(),
        "502 from block_all has an empty body:\n{r}"
    );
    assert_eq!(r.header("server"), Some("envoy"), "{r}");

    let e = env.wait_for_log(
        "GET /headers 502 block_all",
        http_line("GET", "/headers", HTTPBIN),
    );
    assert_eq!(e.response_code, 502, "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.response_code_details, "direct_response", "{}", e.raw);
    assert_eq!(e.route_name, "block_all", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);
    assert_eq!(e.upstream_cluster, "-", "{}", e.raw);
    assert_eq!(e.protocol, "HTTP/1.1", "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("{}:80", h.httpbin),
        "{}",
        e.raw
    );
    assert!(e.user_agent.starts_with("curl/"), "{}", e.raw);
    assert!(e.raw.contains(" 502 - direct_response "), "{}", e.raw);

    let e = env.wait_for_log(
        "TCP BlackHoleCluster to www.google.com:443",
        tcp_line_to(format!("{}:443", h.google)),
    );
    assert_eq!(e.response_flags, "UH", "{}", e.raw);
    assert_eq!(e.upstream_cluster, "BlackHoleCluster", "{}", e.raw);
    assert_eq!(e.upstream_host, "-", "{}", e.raw);
    assert_eq!(
        e.requested_server_name, GOOGLE,
        "sluice logs the SNI of blocked TLS: {}",
        e.raw
    );
    assert!(e.raw.contains("\"- - -\" 0 UH "), "{}", e.raw);
    let e = env.wait_for_log(
        "TCP BlackHoleCluster to edition.cnn.com:443",
        tcp_line_to(format!("{}:443", h.cnn)),
    );
    assert_eq!(
        (e.response_flags.as_str(), e.upstream_cluster.as_str()),
        ("UH", "BlackHoleCluster"),
        "{}",
        e.raw
    );
    assert_eq!(e.requested_server_name, CNN, "{}", e.raw);
}

/// Seeds 000/001: the `httpbin-ext` ServiceEntry lets HTTP to httpbin.org through under
/// REGISTRY_ONLY, with Envoy's request headers and an access log line for cluster
/// `outbound|80||httpbin.org`.
#[test]
fn service_entry_allows_http() {
    let mut env = TestEnv::new("service_entry_allows_http");
    let h = env.hosts;
    registry_only(&env);
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(200);
    assert_eq!(r.echoed_header("Host").as_deref(), Some(HTTPBIN), "{r}");
    assert_eq!(
        r.echoed_header("X-Envoy-Decorator-Operation").as_deref(),
        Some("httpbin.org:80/*"),
        "{r}"
    );
    assert_eq!(
        r.echoed_header("X-Envoy-Attempt-Count").as_deref(),
        Some("1"),
        "{r}"
    );
    assert_eq!(
        r.header("server"),
        Some("envoy"),
        "the sidecar replaces the Server header:\n{r}"
    );
    let ust = r
        .header("x-envoy-upstream-service-time")
        .unwrap_or_else(|| panic!("x-envoy-upstream-service-time:\n{r}"));
    assert!(ust.parse::<u64>().is_ok(), "{r}");

    let e = env.wait_for_log("GET /headers 200", http_line("GET", "/headers", HTTPBIN));
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.response_code_details, "via_upstream", "{}", e.raw);
    assert_eq!(e.upstream_cluster, "outbound|80||httpbin.org", "{}", e.raw);
    assert_eq!(e.upstream_host, format!("{}:80", h.httpbin), "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("{}:80", h.httpbin),
        "{}",
        e.raw
    );
    assert_eq!(
        e.route_name, "default",
        "no VirtualService: Istio's route name is `default`: {}",
        e.raw
    );
    assert!(
        e.raw
            .contains("\"GET /headers HTTP/1.1\" 200 - via_upstream "),
        "{}",
        e.raw
    );
    assert!(e.bytes_sent_n() > 0, "{}", e.raw);

    // httpbin shows X-Request-Id only with show_env; it must be the id in the access log.
    let r = env.curl("http://httpbin.org/headers?show_env=1").run();
    r.expect_status(200);
    let id = r
        .echoed_header("X-Request-Id")
        .unwrap_or_else(|| panic!("no X-Request-Id upstream:\n{r}"));
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let e = env.wait_for_log(
        "GET /headers?show_env=1",
        http_line("GET", "/headers?show_env=1", HTTPBIN),
    );
    assert_eq!(e.request_id, id, "{}", e.raw);

    // A client-supplied X-Request-Id is kept.
    let r = env
        .curl("http://httpbin.org/headers?show_env=1")
        .header("X-Request-Id: 11111111-2222-3333-4444-555555555555")
        .run();
    r.expect_status(200);
    assert_eq!(
        r.echoed_header("X-Request-Id").as_deref(),
        Some("11111111-2222-3333-4444-555555555555"),
        "{r}"
    );

    // Other hosts stay blocked.
    env.curl("http://edition.cnn.com/").run().expect_status(502);
    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_exit(35);
}

/// Seed 000: HTTPS to www.google.com through a ServiceEntry plus a VirtualService `tls` rule on
/// `sni_hosts` (snake_case, exactly as written); the connection is SNI-routed, not terminated.
#[test]
fn service_entry_allows_https_by_sni() {
    let mut env = TestEnv::new("service_entry_allows_https_by_sni");
    let h = env.hosts;
    registry_only(&env);
    env.config.write("google.yaml", SE_VS_GOOGLE);
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("https://www.google.com").head().run();
    r.expect_status(200);
    let r = env.curl("https://www.google.com/get").run();
    r.expect_status(200);
    assert_eq!(r.json()["url"], "https://www.google.com/get", "{r}");
    assert!(
        envoy_headers(&r).is_empty(),
        "TLS is not terminated, so no X-Envoy-* headers:\n{r}"
    );

    let e = env.wait_for_log("TCP outbound|443||www.google.com", |e| {
        e.is_tcp() && e.upstream_cluster == "outbound|443||www.google.com"
    });
    assert_eq!(e.requested_server_name, GOOGLE, "{}", e.raw);
    assert_eq!(e.response_flags, "-", "{}", e.raw);
    assert_eq!(e.upstream_host, format!("{}:443", h.google), "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("{}:443", h.google),
        "{}",
        e.raw
    );
    assert!(
        e.bytes_received_n() > 0 && e.bytes_sent_n() > 0,
        "{}",
        e.raw
    );

    env.curl("https://edition.cnn.com")
        .head()
        .run()
        .expect_exit(35);
    env.curl("http://httpbin.org/headers")
        .run()
        .expect_status(502);
}

/// Seeds 000/001 (`timeout: 3s` → 504 after 3 s) and 002 (`timeout: 0.5s` → 504 after 0.5 s),
/// applied while the sidecar runs.
#[test]
fn timeout_gives_504() {
    let mut env = TestEnv::new("timeout_gives_504");
    registry_only(&env);
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.start_sidecar(SidecarOpts::captured());

    // No timeout yet: a slow answer comes through.
    let r = env.curl("http://httpbin.org/delay/2").run();
    r.expect_status(200);
    assert!(r.time_total >= 2.0, "{r}");

    env.config.write("httpbin-vs.yaml", VS_HTTPBIN_TIMEOUT_3S);
    settle();
    let r = env.curl("http://httpbin.org/delay/5").run();
    r.expect_status(504);
    assert!(
        (2.7..=4.5).contains(&r.time_total),
        "504 after about 3 s:\n{r}"
    );
    assert_eq!(r.body, "upstream request timeout", "{r}");
    let e = env.wait_for_log("GET /delay/5 504 UT", http_line("GET", "/delay/5", HTTPBIN));
    assert_eq!(e.response_code, 504, "{}", e.raw);
    assert_eq!(e.response_flags, "UT", "{}", e.raw);
    assert_eq!(
        e.response_code_details, "upstream_response_timeout",
        "{}",
        e.raw
    );
    assert_eq!(e.upstream_cluster, "outbound|80||httpbin.org", "{}", e.raw);
    assert!(
        e.raw.contains(" 504 UT upstream_response_timeout "),
        "{}",
        e.raw
    );
    // Fast requests are unaffected.
    env.curl("http://httpbin.org/get").run().expect_status(200);

    // Seed 002's VirtualService (v1beta1, exportTo ".") replaces it.
    env.config.write("httpbin-vs.yaml", VS_HTTPBIN_TIMEOUT_05S);
    settle();
    let r = env.curl("http://httpbin.org/delay/1").run();
    r.expect_status(504);
    assert!(
        (0.4..=1.5).contains(&r.time_total),
        "504 after about 0.5 s:\n{r}"
    );
    let e = env.wait_for_log("GET /delay/1 504 UT", http_line("GET", "/delay/1", HTTPBIN));
    assert_eq!(
        (e.response_code, e.response_flags.as_str()),
        (504, "UT"),
        "{}",
        e.raw
    );
    env.curl("http://httpbin.org/get").run().expect_status(200);
}

/// The seeds' cleanup: deleting the VirtualService removes the timeout; deleting the
/// ServiceEntries under REGISTRY_ONLY blocks the hosts again.
#[test]
fn deleting_resources_reverts() {
    let mut env = TestEnv::new("deleting_resources_reverts");
    registry_only(&env);
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.config
        .write("httpbin-vs.yaml", &vs_httpbin_timeout("1s"));
    env.config.write("google.yaml", SE_VS_GOOGLE);
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://httpbin.org/delay/2").run();
    r.expect_status(504);
    assert!(
        (0.8..=2.0).contains(&r.time_total),
        "504 after about 1 s:\n{r}"
    );
    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_status(200);

    env.config.remove("httpbin-vs.yaml");
    let r = eventually(
        "/delay/2 answers 200 once the VirtualService is deleted",
        Duration::from_secs(10),
        || {
            let r = env.curl("http://httpbin.org/delay/2").run();
            if r.exit_code == 0 && r.status == 200 {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    );
    assert!(r.time_total >= 2.0, "{r}");

    env.config.remove("google.yaml");
    eventually(
        "HTTPS to www.google.com fails once its ServiceEntry is deleted",
        Duration::from_secs(5),
        || {
            let r = env.curl("https://www.google.com").head().run();
            if r.exit_code == 35 {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );

    env.config.remove("httpbin-ext.yaml");
    eventually(
        "HTTP to httpbin.org gets 502 once its ServiceEntry is deleted",
        Duration::from_secs(5),
        || {
            let r = env.curl("http://httpbin.org/headers").run();
            if r.exit_code == 0 && r.status == 502 {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );
}

/// Seed 001: switching the mesh ConfigMap from ALLOW_ANY to REGISTRY_ONLY with the seed's own
/// `sed` takes effect live (and back again).
#[test]
fn live_configmap_switch() {
    let mut env = TestEnv::new("live_configmap_switch");
    env.config.write(MESH, &mesh_configmap("ALLOW_ANY", ""));
    assert!(env.config.read(MESH).contains("mode: ALLOW_ANY"));
    env.start_sidecar(SidecarOpts::captured());

    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_status(200);
    env.curl("https://edition.cnn.com")
        .head()
        .run()
        .expect_status(200);

    env.config
        .sed_in_place(MESH, "s/mode: ALLOW_ANY/mode: REGISTRY_ONLY/g");
    assert!(env.config.read(MESH).contains("mode: REGISTRY_ONLY"));
    let started = Instant::now();
    eventually(
        "HTTPS to www.google.com fails with exit 35 after the switch",
        Duration::from_secs(5),
        || {
            let r = env.curl("https://www.google.com").head().run();
            if r.exit_code == 35 {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );
    eprintln!("REGISTRY_ONLY live after {:?}", started.elapsed());
    env.curl("https://edition.cnn.com")
        .head()
        .run()
        .expect_exit(35);
    env.curl("http://httpbin.org/headers")
        .run()
        .expect_status(502);

    env.config
        .sed_in_place(MESH, "s/mode: REGISTRY_ONLY/mode: ALLOW_ANY/g");
    eventually(
        "HTTPS to www.google.com works again after switching back",
        Duration::from_secs(5),
        || {
            let r = env.curl("https://www.google.com").head().run();
            if r.exit_code == 0 && r.status == 200 {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );
}

/// Checks that httpbin.org was reached directly (no sidecar in the path) while www.google.com
/// went through the sidecar.
fn assert_httpbin_bypassed(env: &TestEnv) {
    let h = env.hosts;
    let r = env.curl("http://httpbin.org/headers").run();
    r.expect_status(200);
    assert!(
        envoy_headers(&r).is_empty(),
        "bypassed traffic carries no X-Envoy-* headers:\n{r}"
    );
    assert_ne!(
        r.header("server"),
        Some("envoy"),
        "answered by httpbin itself, not the sidecar:\n{r}"
    );

    // This one is captured, and logged after the httpbin request: once its line is there, a line
    // for httpbin would be too.
    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_status(200);
    env.wait_for_log(
        "TCP to www.google.com:443 (captured)",
        tcp_line_to(format!("{}:443", h.google)),
    );
    let httpbin_lines: Vec<String> = env
        .access_log()
        .into_iter()
        .filter(|e| {
            e.authority == HTTPBIN
                || e.downstream_local_address
                    .starts_with(&format!("{}:", h.httpbin))
        })
        .map(|e| e.raw)
        .collect();
    assert!(
        httpbin_lines.is_empty(),
        "bypassed traffic must not be logged:\n{}",
        httpbin_lines.join("\n")
    );
}

/// Seed 000/001 "Calling external services directly": with `sluice init -i <internal range>`,
/// traffic to other addresses (httpbin.org here) bypasses the sidecar completely.
#[test]
fn include_ip_ranges_bypass() {
    let mut env = TestEnv::new("include_ip_ranges_bypass");
    let internal = env.hosts.tls_hosts_cidr();
    env.config.write(MESH, &mesh_configmap("ALLOW_ANY", ""));
    env.start_sidecar(SidecarOpts::captured().include(&internal));
    let rules = env.iptables_nat();
    assert!(
        rules.contains(&internal),
        "the nat rules name the -i range {internal}:\n{rules}"
    );
    assert_httpbin_bypassed(&env);
}

/// The same with `-i '*' -x <httpbin.org's /32>` (excludeOutboundIPRanges).
#[test]
fn exclude_ip_ranges_bypass() {
    let mut env = TestEnv::new("exclude_ip_ranges_bypass");
    let excluded = format!("{}/32", env.hosts.httpbin);
    env.config.write(MESH, &mesh_configmap("ALLOW_ANY", ""));
    env.start_sidecar(SidecarOpts::captured().exclude(&excluded));
    let rules = env.iptables_nat();
    assert!(
        rules.contains(&excluded),
        "the nat rules name the -x range {excluded}:\n{rules}"
    );
    assert_httpbin_bypassed(&env);
}

/// TLS origination, as in Istio's "Egress TLS Origination" task: the app speaks plain HTTP to
/// edition.cnn.com:80; the ServiceEntry maps port 80 to `targetPort: 443` and a DestinationRule
/// makes the sidecar open TLS (`mode: SIMPLE`, SNI edition.cnn.com, verified against the test CA
/// given as `caCertificates`). edition.cnn.com has nothing on port 80, so a 200 can only come
/// through TLS; the TLS server's own log confirms it. With an unrelated CA the handshake is
/// refused: 503 with flag UF.
#[test]
fn tls_origination() {
    let mut env = TestEnv::new("tls_origination");
    let h = env.hosts;
    let se_dr = |ca: &std::path::Path| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: edition-cnn-com
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: 443
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: SIMPLE # initiates HTTPS when accessing edition.cnn.com
        sni: edition.cnn.com
        caCertificates: {}
",
            ca.display()
        )
    };
    registry_only(&env);
    env.config
        .write("cnn.yaml", &se_dr(&env.pki.ca_cert.clone()));
    env.start_sidecar(SidecarOpts::captured());

    let r = env.curl("http://edition.cnn.com/get?origination=1").run();
    r.expect_status(200);
    assert_eq!(r.echoed_header("Host").as_deref(), Some(CNN), "{r}");
    assert_eq!(
        r.echoed_header("X-Envoy-Decorator-Operation").as_deref(),
        Some("edition.cnn.com:80/*"),
        "{r}"
    );
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log(
        "GET /get 200 via TLS origination",
        http_line("GET", "/get?origination=1", CNN),
    );
    assert_eq!(
        (e.response_code, e.response_code_details.as_str()),
        (200, "via_upstream"),
        "{}",
        e.raw
    );
    assert_eq!(
        e.upstream_cluster, "outbound|80||edition.cnn.com",
        "{}",
        e.raw
    );
    assert_eq!(e.upstream_host, format!("{}:443", h.cnn), "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("{}:80", h.cnn),
        "{}",
        e.raw
    );
    // Only the TLS server listens on edition.cnn.com's address, and it saw the request. (httpbin's
    // "url" says http://, from the X-Forwarded-Proto: http that Envoy sets for the plain-text client.)
    let served = env.server_log("httpbin-https");
    assert!(
        served.contains("\"GET /get?origination=1 HTTP/1.1\" 200"),
        "the TLS server did not log the request:\n{served}"
    );

    // A CA that did not sign the server's certificate: the upstream handshake fails.
    let other = Pki::generate(env.dir(), "other", &["unrelated.example"]);
    env.config.write("cnn.yaml", &se_dr(&other.ca_cert));
    let r = eventually(
        "503 once the DestinationRule trusts another CA",
        Duration::from_secs(5),
        || {
            let r = env.curl("http://edition.cnn.com/get?untrusted=1").run();
            if r.exit_code == 0 && r.status == 503 {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    );
    assert_eq!(r.header("server"), Some("envoy"), "{r}");
    let e = env.wait_for_log("503 UF for the untrusted upstream", |e| {
        e.authority == CNN && e.path.starts_with("/get?untrusted=1") && e.response_code == 503
    });
    assert!(e.response_flags.split(',').any(|f| f == "UF"), "{}", e.raw);
}

/// Config reloads under traffic drop nothing: ≥200 sequential requests through the ServiceEntry
/// while another thread adds and removes an unrelated VirtualService, rewrites the ServiceEntry
/// with identical content and touches the mesh config, ≥20 times.
#[test]
fn reload_under_load() {
    let mut env = TestEnv::new("reload_under_load");
    registry_only(&env);
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.start_sidecar(SidecarOpts::captured());
    let unrelated_vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: cnn-timeout
spec:
  hosts:
  - edition.cnn.com
  http:
  - timeout: 2s
    route:
    - destination:
        host: edition.cnn.com
";
    let done = std::sync::atomic::AtomicBool::new(false);
    let writes = std::sync::atomic::AtomicUsize::new(0);
    let config = env.config.clone();
    let (requests, failures) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match i % 4 {
                    0 => config.write("unrelated-vs.yaml", unrelated_vs),
                    1 => config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT),
                    2 => config.remove("unrelated-vs.yaml"),
                    _ => config.touch(MESH),
                }
                i += 1;
                writes.store(i, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(120));
            }
            if i % 4 == 1 || i % 4 == 2 {
                config.remove("unrelated-vs.yaml");
            }
        });
        let mut failures: Vec<String> = Vec::new();
        let mut n = 0usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while (n < 200 || writes.load(std::sync::atomic::Ordering::SeqCst) < 20)
            && Instant::now() < deadline
        {
            let r = env
                .curl(&format!("http://httpbin.org/get?n={n}"))
                .max_time(10.0)
                .run();
            if r.exit_code != 0 || r.status != 200 {
                failures.push(format!("request {n}:\n{r}"));
            }
            n += 1;
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (n, failures)
    });
    let writes = writes.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "{requests} requests, {writes} config writes, {} failures",
        failures.len()
    );
    assert!(
        requests >= 200 && writes >= 20,
        "only {requests} requests / {writes} writes in 120 s"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during {writes} config writes; first failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `accessLogEncoding: JSON` gives one JSON object per request/connection with Istio's keys;
/// numbers are JSON numbers.
#[test]
fn access_log_json() {
    let mut env = TestEnv::new("access_log_json");
    let h = env.hosts;
    env.config.write(
        MESH,
        &mesh_configmap("REGISTRY_ONLY", "accessLogEncoding: JSON"),
    );
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.start_sidecar(SidecarOpts::captured());

    env.curl("http://httpbin.org/headers")
        .run()
        .expect_status(200);
    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_exit(35);

    let e = env.wait_for_json_log("for GET /headers", |e| e["authority"] == HTTPBIN);
    const KEYS: [&str; 24] = [
        "start_time",
        "route_name",
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "response_code_details",
        "connection_termination_details",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_service_time",
        "x_forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_host",
        "upstream_cluster",
        "upstream_local_address",
        "downstream_local_address",
        "downstream_remote_address",
        "requested_server_name",
        "upstream_transport_failure_reason",
    ];
    let missing: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| !e.contains_key(*k))
        .collect();
    let line = serde_json::Value::Object(e.clone());
    assert!(missing.is_empty(), "missing keys {missing:?} in {line}");
    assert!(
        e["response_code"].is_number() && e["response_code"] == 200,
        "{line}"
    );
    assert!(e["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{line}");
    assert!(
        e["bytes_received"].is_number() && e["duration"].is_number(),
        "{line}"
    );
    assert_eq!(e["method"], "GET", "{line}");
    assert_eq!(e["path"], "/headers", "{line}");
    assert_eq!(e["protocol"], "HTTP/1.1", "{line}");
    assert_eq!(e["response_code_details"], "via_upstream", "{line}");
    assert_eq!(e["upstream_cluster"], "outbound|80||httpbin.org", "{line}");
    assert_eq!(e["upstream_host"], format!("{}:80", h.httpbin), "{line}");
    assert!(
        e["user_agent"]
            .as_str()
            .is_some_and(|u| u.starts_with("curl/")),
        "{line}"
    );
    assert!(
        e["request_id"].as_str().is_some_and(|r| r.len() == 36),
        "{line}"
    );
    assert!(
        e["start_time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );

    let e = env.wait_for_json_log("for the blocked TLS connection", |e| {
        e["upstream_cluster"] == "BlackHoleCluster"
    });
    let line = serde_json::Value::Object(e.clone());
    assert!(
        e["response_code"].is_number() && e["response_code"] == 0,
        "{line}"
    );
    assert_eq!(e["response_flags"], "UH", "{line}");
    assert_eq!(e["requested_server_name"], GOOGLE, "{line}");
    assert_eq!(
        e["downstream_local_address"],
        format!("{}:443", h.google),
        "{line}"
    );

    let text = env.access_log();
    assert!(
        text.is_empty(),
        "JSON encoding replaces the TEXT lines, found {} TEXT lines",
        text.len()
    );
}

/// Istio's standard metrics on :15090 after allowed, passthrough and blocked calls, and the admin
/// API on 127.0.0.1:15000.
#[test]
fn metrics_exposed() {
    let mut env = TestEnv::new("metrics_exposed");
    env.config.write(MESH, &mesh_configmap("ALLOW_ANY", ""));
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.start_sidecar(SidecarOpts::captured());

    env.curl("http://httpbin.org/headers")
        .run()
        .expect_status(200); // allowed (ServiceEntry)
    env.curl("https://www.google.com")
        .head()
        .run()
        .expect_status(200); // passthrough
    env.config
        .sed_in_place(MESH, "s/mode: ALLOW_ANY/mode: REGISTRY_ONLY/g");
    eventually(
        "HTTP to edition.cnn.com is blocked with 502",
        Duration::from_secs(5),
        || {
            let r = env.curl("http://edition.cnn.com/").run();
            if r.exit_code == 0 && r.status == 502 {
                Ok(())
            } else {
                Err(r.to_string())
            }
        },
    );

    let checks: [(&str, &[(&str, &str)]); 4] = [
        (
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("destination_service_name", "httpbin.org"),
                ("response_code", "200"),
            ],
        ),
        (
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("destination_service_name", "BlackHoleCluster"),
                ("response_code", "502"),
            ],
        ),
        (
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_service_name", "PassthroughCluster"),
            ],
        ),
        (
            "istio_request_duration_milliseconds_count",
            &[("destination_service_name", "httpbin.org")],
        ),
    ];
    eventually(
        "Istio metrics for the calls made",
        Duration::from_secs(5),
        || {
            let samples = env.metrics();
            let missing: Vec<String> = checks
                .iter()
                .filter(|(name, labels)| metrics::sum(&samples, name, labels) < 1.0)
                .map(|(name, labels)| format!("{name}{labels:?}"))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                let ours: Vec<String> = samples
                    .iter()
                    .filter(|s| s.name.starts_with("istio_"))
                    .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
                    .collect();
                Err(format!(
                    "missing or zero: {missing:?}; istio_* samples:\n{}",
                    ours.join("\n")
                ))
            }
        },
    );

    let r = env.admin_get("/config_dump");
    r.expect_status(200);
    assert!(r.json().is_object(), "{r}");
    let r = env.admin_get("/ready");
    r.expect_status(200);
    assert_eq!(r.body.trim(), "LIVE", "{r}");
    env.local_get(STATUS_PORT, "/healthz/ready")
        .expect_status(200);
    // The admin API is local to the pod: not on the pod's address.
    let r = env
        .curl(&format!("http://{}:{ADMIN_PORT}/ready", env.hosts.pod))
        .max_time(3.0)
        .run();
    assert_ne!(
        (r.exit_code, r.status),
        (0, 200),
        "admin must listen on 127.0.0.1 only:\n{r}"
    );
}
