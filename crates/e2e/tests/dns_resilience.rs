//! DNS never stalls a request (issue "Never stall"): a sidecar whose name server is dead still
//! serves names from the pod's hosts file at once, fails names it cannot resolve within the
//! cluster's connect timeout (`503`, flag `DF`, `dns_resolution_failure{…}`), and keeps using
//! the last answer when its name server goes away after answering.
//!
//! "Dead" is the case: a name server that never answers. The test's dnsmasq stays up but
//! the external namespace drops every DNS packet (iptables), so queries time out instead of
//! failing fast; the DROP rules' packet counters tell how many DNS queries were sent at all.
//! The pod's resolv.conf is a Kubernetes pod's (search domains, `ndots:5`, glibc's default
//! 5 s timeout), where each query to a dead server costs the most.

use std::time::{Duration, Instant};

use sluice_e2e::config::{mesh_configmap, SE_HTTPBIN_EXT, SE_VS_GOOGLE};
use sluice_e2e::env::{GOOGLE, HTTPBIN};
use sluice_e2e::{AccessLogEntry, CurlResult, SidecarOpts, TestEnv};

const MESH: &str = "istio-configmap.yaml";

/// Generous bound for "did not wait for DNS": far above what a cached answer costs, far below
/// one query to a dead server (5 s).
const QUICK: Duration = Duration::from_secs(3);

/// A Kubernetes pod's resolv.conf pointing at the test's name server.
fn pod_resolv_conf(env: &TestEnv) -> String {
    format!(
        "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        env.hosts.dns
    )
}

/// Makes the test's name server silent: every DNS packet to the external namespace is dropped.
fn drop_dns(env: &TestEnv) {
    for proto in ["udp", "tcp"] {
        env.ext.run(
            "iptables",
            &["-A", "INPUT", "-p", proto, "--dport", "53", "-j", "DROP"],
        );
    }
}

/// DNS packets the DROP rules have swallowed so far.
fn dropped_dns_packets(env: &TestEnv) -> u64 {
    let out = env.ext.run("iptables", &["-nvxL", "INPUT"]);
    out.lines()
        .filter(|l| l.contains("DROP") && l.contains("dpt:53"))
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unexpected iptables line: {l}"))
        })
        .sum()
}

fn line_for(authority: &'static str) -> impl Fn(&AccessLogEntry) -> bool {
    move |e| e.authority == authority
}

fn assert_quick(r: &CurlResult, what: &str) {
    assert!(
        r.elapsed < QUICK,
        "{what} took {:?} (expected well under one DNS timeout):\n{r}",
        r.elapsed
    );
}

/// Names in the pod's hosts file are answered from it: no DNS query at all (not even AAAA), so a
/// dead name server costs nothing, request after request, over HTTP and TLS.
#[test]
fn hosts_file_names_never_wait_for_a_dead_name_server() {
    let mut env = TestEnv::new("dns_hosts_file");
    let h = env.hosts;
    env.config.write(MESH, &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.config.write("google.yaml", SE_VS_GOOGLE);
    env.pod.set_hosts(&format!(
        "127.0.0.1 localhost\n{} {HTTPBIN}\n{} {GOOGLE}\n",
        h.httpbin, h.google
    ));
    env.pod.set_resolv_conf(&pod_resolv_conf(&env));
    drop_dns(&env);
    env.start_sidecar(SidecarOpts::captured());

    for i in 0..5 {
        let r = env.curl("http://httpbin.org/get").max_time(30.0).run();
        r.expect_status(200);
        assert_quick(&r, &format!("HTTP request {i}"));
    }
    let line = env.wait_for_log("for httpbin.org", line_for(HTTPBIN));
    assert_eq!(
        line.upstream_cluster, "outbound|80||httpbin.org",
        "{}",
        line.raw
    );
    assert_eq!(
        line.upstream_host,
        format!("{}:80", h.httpbin),
        "{}",
        line.raw
    );

    for i in 0..3 {
        let r = env.curl("https://www.google.com/get").max_time(30.0).run();
        r.expect_status(200);
        assert_quick(&r, &format!("TLS request {i}"));
    }
    let tls = env.wait_for_log("for www.google.com", |e| {
        e.is_tcp() && e.requested_server_name == GOOGLE
    });
    assert_eq!(
        tls.upstream_host,
        format!("{}:443", h.google),
        "{}",
        tls.raw
    );

    assert_eq!(
        dropped_dns_packets(&env),
        0,
        "names in the hosts file must not be asked to the name server (A or AAAA)"
    );
}

/// A name that is nowhere (not in the hosts file, name server dead) fails within the cluster's
/// connect timeout with Envoy's DNS failure flag, for HTTP and for TLS passthrough, and once
/// the resolution has given up, at once.
#[test]
fn unresolvable_names_fail_within_the_connect_timeout() {
    let mut env = TestEnv::new("dns_unresolvable");
    let h = env.hosts;
    env.config.write(MESH, &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write(
        "nowhere.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: nowhere
spec:
  hosts:
  - nowhere.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: tls-nowhere
spec:
  hosts:
  - tls.nowhere.test
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: nowhere
spec:
  host: nowhere.test
  trafficPolicy:
    connectionPool:
      tcp:
        connectTimeout: 1s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tls-nowhere
spec:
  host: tls.nowhere.test
  trafficPolicy:
    connectionPool:
      tcp:
        connectTimeout: 1s
",
    );
    env.pod.set_resolv_conf(&pod_resolv_conf(&env));
    drop_dns(&env);
    env.start_sidecar(SidecarOpts::captured());

    // curl cannot resolve the name either: it is told where to connect, and the sidecar routes
    // by the Host header (or the SNI) to the ServiceEntry's cluster.
    let limit = Duration::from_secs(1) + Duration::from_millis(1500);
    let http = || {
        env.curl("http://nowhere.test/get")
            .resolve("nowhere.test", 80, h.httpbin)
            .max_time(30.0)
            .run()
    };
    let started = Instant::now();
    for i in 0..3 {
        let r = http();
        r.expect_status(503);
        assert_eq!(r.body, "DNS resolution failure", "{r}");
        assert!(
            r.elapsed < limit,
            "request {i} took {:?}: more than the 1 s connect timeout\n{r}",
            r.elapsed
        );
    }
    let line = env.wait_for_log("for nowhere.test", line_for("nowhere.test"));
    assert_eq!(line.response_code, 503, "{}", line.raw);
    assert_eq!(line.response_flags, "DF", "{}", line.raw);
    assert!(
        line.response_code_details
            .starts_with("dns_resolution_failure{"),
        "{}",
        line.raw
    );
    assert_eq!(
        line.upstream_cluster, "outbound|80||nowhere.test",
        "{}",
        line.raw
    );
    assert!(
        dropped_dns_packets(&env) > 0,
        "the sidecar did ask the (dead) name server"
    );

    // Once the resolution gave up (its budget is 5 s), the failure is remembered: callers are
    // answered at once instead of waiting their connect timeout again.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()));
    let r = http();
    r.expect_status(503);
    assert!(
        r.elapsed < Duration::from_millis(900),
        "a remembered failure took {:?}\n{r}",
        r.elapsed
    );

    // TLS passthrough: the connection is closed, and the log line carries the flag.
    let r = env
        .curl("https://tls.nowhere.test/get")
        .resolve("tls.nowhere.test", 443, h.google)
        .max_time(30.0)
        .run();
    assert_ne!(r.exit_code, 0, "{r}");
    assert!(r.elapsed < limit, "TLS took {:?}\n{r}", r.elapsed);
    let tcp = env.wait_for_log("for tls.nowhere.test", |e| {
        e.is_tcp() && e.requested_server_name == "tls.nowhere.test"
    });
    assert_eq!(tcp.response_flags, "DF", "{}", tcp.raw);
    assert!(
        tcp.response_code_details
            .starts_with("dns_resolution_failure{"),
        "{}",
        tcp.raw
    );
}

/// The name server answers, then goes away: requests keep working with the last answer well
/// past its TTL (dnsmasq gives its records a TTL of 0; the cache's floor is 5 s).
#[test]
fn the_last_answer_is_served_when_the_name_server_goes_away() {
    let mut env = TestEnv::new("dns_stale");
    let h = env.hosts;
    env.config.write(MESH, &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("httpbin-ext.yaml", SE_HTTPBIN_EXT);
    env.pod.set_resolv_conf(&pod_resolv_conf(&env));
    env.start_sidecar(SidecarOpts::captured());

    // curl is told the address, so any query for the name comes from the sidecar.
    let r = env
        .curl("http://httpbin.org/get")
        .resolve(HTTPBIN, 80, h.httpbin)
        .run();
    r.expect_status(200);
    let dns_log = env.server_log("dnsmasq");
    assert!(
        dns_log.contains(&format!("query[A] {HTTPBIN} from {}", h.pod)),
        "the sidecar resolved {HTTPBIN} through dnsmasq:\n{dns_log}"
    );

    env.stop_server("dnsmasq");
    let (ok, out) = env
        .pod
        .try_run("getent", &["ahostsv4", "dns-is-gone.example."]);
    assert!(!ok, "nothing answers DNS any more: {out}");

    // Past the TTL floor and a few failed refreshes.
    let stop = Instant::now() + Duration::from_secs(12);
    let mut n = 0;
    while Instant::now() < stop {
        let r = env
            .curl("http://httpbin.org/get")
            .resolve(HTTPBIN, 80, h.httpbin)
            .max_time(30.0)
            .run();
        r.expect_status(200);
        assert_quick(&r, &format!("request {n} after the name server went away"));
        n += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let lines: Vec<AccessLogEntry> = env
        .access_log()
        .into_iter()
        .filter(|e| e.authority == HTTPBIN)
        .collect();
    assert!(lines.len() > n, "{} lines for {n} requests", lines.len());
    for l in &lines {
        assert_eq!(l.upstream_host, format!("{}:80", h.httpbin), "{}", l.raw);
    }
}
