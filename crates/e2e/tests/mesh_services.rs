//! End-to-end proof of seed 004 ("services inside the mesh", the OpenShift Service Mesh tutorial's
//! egress part) and of the traffic policies around it, in a small mesh of network namespaces
//! ([`MeshEnv`]): pods with their own IPs on one bridge, Kubernetes Services with cluster IPs
//! (`customer`, `preference`, `recommendation` in namespace `tutorial`), one WorkloadEntry per pod,
//! a sidecar in every pod (`sluice init -b '*'`, inbound on 15006) and the external
//! `worldclockapi.com` on the hub.
//!
//! The apps are `apps/chain.py`: customer calls `http://preference:8080/`, preference calls
//! `http://recommendation:8080/`, recommendation answers
//! `recommendation v3 <time> from 'recommendation-v3': <count>` (with the time from
//! worldclockapi.com when `CLOCK_URL` is set). Errors travel back up as
//! `customer => Error: 503 - preference => Error: 500 - …`, as in the seed.
//!
//! The seed's YAML is used as written (`sluice_e2e::config`), put into namespace `tutorial` as
//! `oc apply -n tutorial` does. Config changes are polled for (live within a second).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_e2e::config::{
    DR_RECOMMENDATION_V3, SE_WORLDCLOCK_PORT80, SE_WORLDCLOCK_PORT81, VS_RECOMMENDATION_V3,
    VS_WORLDCLOCK_TIMEOUT,
};
use sluice_e2e::mesh::{APP_PORT, CLOCK_HOST, CLOCK_URL, MESH_FILE, NAMESPACE};
use sluice_e2e::metrics;
use sluice_e2e::prereq::sluice_bin;
use sluice_e2e::{eventually, AccessLogEntry, CurlResult, MeshEnv, PodSpec};

const CUSTOMER: &str = "http://customer:8080/";
const RECOMMENDATION: &str = "http://recommendation:8080/";
/// How long a config change may take to show, polled (the contract says 1 s).
const CONFIG_POLL: Duration = Duration::from_secs(10);

/// The full name of a tutorial Service.
fn fqdn(app: &str) -> String {
    format!("{app}.{NAMESPACE}.svc.cluster.local")
}

/// `outbound|8080|<subset>|<app>.tutorial.svc.cluster.local`.
fn outbound_cluster(app: &str, subset: &str) -> String {
    format!("outbound|{APP_PORT}|{subset}|{}", fqdn(app))
}

/// One answer of recommendation: `recommendation <version> [<time> ]from '<pod>': <count>`.
#[derive(Debug, Clone, PartialEq)]
struct Recommendation {
    version: String,
    time: Option<String>,
    pod: String,
    count: u64,
}

fn parse_recommendation(s: &str) -> Option<Recommendation> {
    let rest = s.trim_end().strip_prefix("recommendation ")?;
    let (head, tail) = rest.split_once(" from '")?;
    let (pod, count) = tail.split_once("': ")?;
    let mut words = head.split(' ');
    let version = words.next()?.to_string();
    let time = words.next().map(str::to_string);
    if words.next().is_some() {
        return None;
    }
    Some(Recommendation {
        version,
        time,
        pod: pod.to_string(),
        count: count.parse().ok()?,
    })
}

/// `2020-04-06T18:31+01:00`, as the clock app (and worldclockapi.com) formats `currentDateTime`.
fn is_clock_time(t: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd+01:00";
    t.len() == pattern.len()
        && t.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// The answer of the whole chain, `customer => preference => recommendation …`, taken apart;
/// panics with the response when it is not one.
#[track_caller]
fn chain_ok(r: &CurlResult) -> Recommendation {
    r.expect_status(200);
    r.body
        .trim_end()
        .strip_prefix("customer => preference => ")
        .and_then(parse_recommendation)
        .unwrap_or_else(|| {
            panic!("expected `customer => preference => recommendation …` from the chain:\n{r}")
        })
}

/// A direct answer of recommendation, taken apart.
#[track_caller]
fn recommendation_ok(status: u16, body: &str) -> Recommendation {
    assert_eq!(status, 200, "expected 200 from recommendation, got: {body}");
    parse_recommendation(body)
        .unwrap_or_else(|| panic!("expected `recommendation … from '…': N`, got: {body}"))
}

/// The tutorial's pods: the client (curl), customer, preference and recommendation in `versions`.
fn tutorial(versions: &[&str]) -> Vec<PodSpec> {
    let mut pods = vec![
        PodSpec::client(),
        PodSpec::customer(),
        PodSpec::preference(),
    ];
    pods.extend(versions.iter().map(|v| PodSpec::recommendation(v)));
    pods
}

/// recommendation-v3 as the seed deploys it: it asks worldclockapi.com for the time.
fn recommendation_v3_with_clock() -> PodSpec {
    PodSpec::recommendation("v3").env("CLOCK_URL", CLOCK_URL)
}

/// Polls the chain from the client until `ok` accepts the response; returns it.
#[track_caller]
fn poll_chain(mesh: &MeshEnv, what: &str, ok: impl Fn(&CurlResult) -> bool) -> CurlResult {
    let client = mesh.pod("client");
    eventually(what, CONFIG_POLL, || {
        let r = client.get(CUSTOMER);
        if ok(&r) {
            Ok(r)
        } else {
            Err(format!("{r}"))
        }
    })
}

fn line_with_authority<'a>(authority: &'a str) -> impl Fn(&AccessLogEntry) -> bool + 'a {
    move |e| e.authority == authority
}

/// The harness alone, without sluice: the chain apps talking to each other by pod IP, the DNS
/// of the cluster (search path, Service names → cluster IPs), worldclockapi.com on :80 and nothing
/// on :81, cluster IPs unreachable without a sidecar, no way out of the test network, and the
/// generated Services and WorkloadEntries.
#[test]
fn mesh_harness_self_test() {
    let mut mesh = MeshEnv::new("mesh_harness_self_test");
    let rec = mesh.add_pod(recommendation_v3_with_clock().without_sidecar());
    let pref = mesh.add_pod(
        PodSpec::preference()
            .env("NEXT_URL", &format!("http://{rec}:{APP_PORT}/"))
            .without_sidecar(),
    );
    let cust = mesh.add_pod(
        PodSpec::customer()
            .env("NEXT_URL", &format!("http://{pref}:{APP_PORT}/"))
            .without_sidecar(),
    );
    let fail_file = mesh.fail_file("recommendation-v1");
    let rec_v1 = mesh.add_pod(
        PodSpec::recommendation("v1")
            .env(
                "CLOCK_URL",
                &format!("http://{CLOCK_HOST}:81/api/json/cet/now"),
            )
            .env("FAIL_FILE", &fail_file.to_string_lossy())
            .without_sidecar(),
    );
    mesh.add_pod(PodSpec::client().without_sidecar());
    let client = mesh.pod("client");

    // The chain, pod to pod, with the time from worldclockapi.com.
    for n in 1..=2 {
        let r = client.get(&format!("http://{cust}:{APP_PORT}/"));
        let rec = chain_ok(&r);
        assert_eq!(
            (rec.version.as_str(), rec.pod.as_str(), rec.count),
            ("v3", "recommendation-v3", n),
            "{r}"
        );
        let time = rec.time.unwrap_or_default();
        assert!(is_clock_time(&time), "time {time:?} in\n{r}");
        assert_eq!(
            r.header("server"),
            Some("chain.py"),
            "no proxy in the path:\n{r}"
        );
    }
    // /delay sleeps, then answers as / does.
    let r = client
        .curl(&format!("http://{rec}:{APP_PORT}/delay?ms=300"))
        .run();
    let answer = recommendation_ok(r.status, &r.body);
    assert_eq!(answer.count, 3, "{r}");
    assert!(r.time_total >= 0.3, "{r}");

    // A clock call to the wrong port: 500 from recommendation, the errors travel up as in the seed.
    let r = client.get(&format!("http://{rec_v1}:{APP_PORT}/"));
    assert_eq!(r.status, 500, "{r}");
    assert!(
        r.body.starts_with(
            "recommendation v1 from 'recommendation-v1': Error fetching time: URLError:"
        ) && r.body.contains("Connection refused"),
        "{r}"
    );
    // FAIL_FILE: 503 while it exists.
    std::fs::write(&fail_file, "").expect("create FAIL_FILE");
    let r = client.get(&format!("http://{rec_v1}:{APP_PORT}/"));
    assert_eq!(
        (r.status, r.body.trim_end()),
        (503, "recommendation misbehavior from 'recommendation-v1'"),
        "{r}"
    );
    std::fs::remove_file(&fail_file).expect("remove FAIL_FILE");

    // DNS as in a pod of namespace tutorial.
    let vip = mesh.service_ip("customer");
    for name in [
        "customer",
        "customer.tutorial",
        "customer.tutorial.svc",
        "customer.tutorial.svc.cluster.local",
    ] {
        let (ok, out) = client.ns.try_run("getent", &["ahostsv4", name]);
        assert!(
            ok && out.split_whitespace().next() == Some(vip.to_string().as_str()),
            "{name} should resolve to customer's cluster IP {vip}: {out}"
        );
    }
    assert_ne!(mesh.service_ip("preference"), vip);
    let (ok, out) = client.ns.try_run("getent", &["ahostsv4", "nothere"]);
    assert!(!ok, "unknown names do not resolve: {out}");

    // worldclockapi.com: the clock on :80, nothing on :81.
    let r = client.get(CLOCK_URL);
    r.expect_status(200);
    let time = r.json()["currentDateTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(is_clock_time(&time), "{r}");
    client
        .get(&format!("http://{CLOCK_HOST}:81/api/json/cet/now"))
        .expect_exit(7);

    // A cluster IP belongs to no interface: without a sidecar nothing answers there.
    let r = client
        .curl(CUSTOMER)
        .arg("--connect-timeout")
        .arg("1")
        .run();
    assert!(
        r.exit_code == 7 || r.exit_code == 28,
        "a cluster IP must not answer without a sidecar:\n{r}"
    );

    // No way out.
    for ns in [&client.ns, &mesh.hub] {
        let routes = ns.run("ip", &["-4", "route", "show"]);
        assert!(!routes.contains("default"), "{}: {routes}", ns.name());
        let (ok, out) = ns.try_run("ip", &["route", "get", "192.0.2.1"]);
        assert!(!ok && out.contains("unreachable"), "{}: {out}", ns.name());
    }

    // The generated registry.
    let svc = mesh.config.read("service-recommendation.yaml");
    assert!(
        svc.contains("kind: Service\n")
            && svc.contains("  namespace: tutorial\n")
            && svc.contains(&format!(
                "  clusterIP: {}\n",
                mesh.service_ip("recommendation")
            ))
            && svc.contains("  - name: http\n    port: 8080\n"),
        "{svc}"
    );
    let we = mesh.config.read("workload-recommendation-v3.yaml");
    assert!(
        we.contains("kind: WorkloadEntry\n")
            && we.contains(&format!("  address: {rec}\n"))
            && we.contains("    app: recommendation\n    version: v3\n"),
        "{we}"
    );
    assert!(mesh.config.read(MESH_FILE).contains("mode: ALLOW_ANY"));
}

/// Seed 004's starting point: the chain customer → preference → recommendation (v1, v2, v3) works
/// through sidecars by Service name; the Service load-balances over its WorkloadEntries; the
/// inbound side forwards to the app from 127.0.0.6, logs `inbound|8080||`, counts
/// `reporter="destination"`, and answers with `server: istio-envoy`.
#[test]
fn chain_through_sidecars_with_inbound_capture() {
    let mut mesh = MeshEnv::new("chain_through_sidecars");
    let ips = mesh.add_pods(tutorial(&["v1", "v2", "v3"]));
    let (customer_ip, rec_v1_ip) = (ips[1], ips[3]);

    // The generated config and the seed's resources are valid as far as `sluice validate` goes.
    let out = std::process::Command::new(sluice_bin())
        .arg("validate")
        .arg(mesh.config.path())
        .output()
        .expect("run sluice validate");
    assert!(
        out.status.success(),
        "sluice validate {} failed:\n{}{}",
        mesh.config.path().display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let client = mesh.pod("client");
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..12 {
        let r = client.get(CUSTOMER);
        let rec = chain_ok(&r);
        assert_eq!(rec.pod, format!("recommendation-{}", rec.version), "{r}");
        assert_eq!(rec.time, None, "{r}");
        assert_eq!(
            r.header("server"),
            Some("envoy"),
            "the client's sidecar answers with server: envoy:\n{r}"
        );
        *versions.entry(rec.version).or_default() += 1;
    }
    assert!(
        versions.len() >= 2
            && versions
                .keys()
                .all(|v| ["v1", "v2", "v3"].contains(&v.as_str())),
        "12 requests should be spread over recommendation v1, v2, v3: {versions:?}"
    );

    // The client's sidecar: outbound to the customer Service.
    let e = client.wait_for_log("to customer", line_with_authority("customer:8080"));
    assert_eq!(
        (e.response_code, e.upstream_cluster.as_str()),
        (200, outbound_cluster("customer", "").as_str()),
        "{}",
        e.raw
    );
    assert_eq!(
        e.upstream_host,
        format!("{customer_ip}:{APP_PORT}"),
        "{}",
        e.raw
    );
    assert_eq!(
        e.downstream_local_address,
        format!("{}:{APP_PORT}", mesh.service_ip("customer")),
        "{}",
        e.raw
    );
    let m = client.sidecar().metrics();
    let sent = metrics::sum(
        &m,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", &fqdn("customer")),
            ("response_code", "200"),
        ],
    );
    assert!(sent >= 12.0, "client metrics: {sent} requests to customer");
    // The registry knows customer's address (its WorkloadEntry), so the source side names the
    // destination workload, as Istio's metadata exchange would.
    let named = metrics::sum(
        &m,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", &fqdn("customer")),
            ("destination_app", "customer"),
            ("destination_version", "v1"),
            ("destination_workload_namespace", "tutorial"),
        ],
    );
    assert_eq!(named, sent, "client metrics name the customer workload");

    // Inbound on recommendation v1 (it served at least one request through preference's sidecar,
    // or gets one now).
    let v1 = mesh.pod("recommendation-v1");
    let r = mesh
        .hub_curl(&format!("http://{rec_v1_ip}:{APP_PORT}/"))
        .run();
    let rec = recommendation_ok(r.status, &r.body);
    assert_eq!(rec.pod, "recommendation-v1", "{r}");
    assert_eq!(
        r.header("server"),
        Some("istio-envoy"),
        "a response through the inbound listener:\n{r}"
    );
    let e = v1.wait_for_log("inbound from the hub", |e| {
        e.upstream_cluster == format!("inbound|{APP_PORT}||")
            && e.downstream_remote_address
                .starts_with(&format!("{}:", mesh.addrs.dns))
    });
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(
        e.downstream_local_address,
        format!("{rec_v1_ip}:{APP_PORT}"),
        "{}",
        e.raw
    );
    assert_eq!(
        e.upstream_host,
        format!("{rec_v1_ip}:{APP_PORT}"),
        "{}",
        e.raw
    );
    assert!(
        e.upstream_local_address.starts_with("127.0.0.6:"),
        "inbound forwards from 127.0.0.6: {}",
        e.raw
    );
    // `sluice init -d 15090,...`: an excluded port is not captured. The hub reaches the
    // sidecar's own stats port directly; the inbound listener neither answers nor logs it.
    let r = mesh
        .hub_curl(&format!("http://{rec_v1_ip}:15090/stats/prometheus"))
        .run();
    r.expect_status(200);
    assert_ne!(r.header("server"), Some("istio-envoy"), "{r}");
    let stats_dst = format!("{rec_v1_ip}:15090");
    assert!(
        !v1.access_log()
            .iter()
            .any(|e| e.downstream_local_address == stats_dst),
        "port 15090 is excluded from inbound capture (-d) and must not be proxied"
    );
    // From preference's sidecar, the inbound line names the Service authority.
    let served_v1 = versions.get("v1").copied().unwrap_or(0);
    if served_v1 > 0 {
        let pref_ip = mesh.pod("preference-v1").ip;
        let e = v1.wait_for_log("inbound from preference", |e| {
            e.upstream_cluster == format!("inbound|{APP_PORT}||")
                && e.downstream_remote_address
                    .starts_with(&format!("{pref_ip}:"))
        });
        assert_eq!(
            (e.response_code, e.authority.as_str()),
            (200, "recommendation:8080"),
            "{}",
            e.raw
        );
    }
    // The app sees the sidecar's 127.0.0.6 as its peer.
    let app_log = v1.app_log();
    assert!(
        app_log.contains(" 127.0.0.6 \"GET / HTTP/1.1\" 200"),
        "recommendation-v1's app log:\n{app_log}"
    );
    let m = v1.sidecar().metrics();
    let received = metrics::sum(
        &m,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("response_code", "200"),
            ("destination_app", "recommendation"),
        ],
    );
    if served_v1 > 0 {
        // Calls from preference's pod: its WorkloadEntry names the source.
        let from_preference = metrics::sum(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("source_app", "preference"),
                ("source_workload_namespace", "tutorial"),
                ("destination_app", "recommendation"),
            ],
        );
        assert!(
            from_preference >= served_v1 as f64,
            "inbound metrics name preference as the source: {from_preference}"
        );
    }
    assert!(
        received >= 1.0 + served_v1 as f64,
        "recommendation-v1 counted {received} inbound requests (reporter=destination), expected ≥ {}:\n{}",
        1 + served_v1,
        metrics::matching(&m, "istio_requests_total", &[])
            .map(|s| format!("  {:?} {}", s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Seed 004: the DestinationRule with subset version-v3 and the VirtualService sending 100 % to it
/// (as written, namespace tutorial) → every answer is v3; then a 50/50 split between subsets
/// version-v1 and version-v2.
#[test]
fn subsets_route_by_version_label() {
    let mut mesh = MeshEnv::new("subsets_route_by_version");
    mesh.add_pods(tutorial(&["v1", "v2", "v3"]));

    mesh.apply("recommendation-dr.yaml", DR_RECOMMENDATION_V3);
    mesh.apply("recommendation-vs.yaml", VS_RECOMMENDATION_V3);
    // Live once preference's sidecar routes to the subset's cluster (a v3 answer alone could be
    // the load balancer's choice before the change).
    let client = mesh.pod("client");
    let pref = mesh.pod("preference-v1");
    let v3_cluster = outbound_cluster("recommendation", "version-v3");
    eventually(
        "preference's sidecar routes to subset version-v3",
        CONFIG_POLL,
        || {
            let r = client.get(CUSTOMER);
            if pref
                .access_log()
                .iter()
                .any(|e| e.upstream_cluster == v3_cluster)
            {
                Ok(())
            } else {
                Err(format!("{r}"))
            }
        },
    );
    let mut last = 0;
    for i in 0..20 {
        let r = client.get(CUSTOMER);
        let rec = chain_ok(&r);
        assert_eq!(
            (rec.version.as_str(), rec.pod.as_str()),
            ("v3", "recommendation-v3"),
            "request {i} after the v3 VirtualService:\n{r}"
        );
        assert!(rec.count > last, "v3's counter goes up: {r}");
        last = rec.count;
    }
    // preference's sidecar routed to the subset's cluster.
    let e = pref.wait_for_log("to subset version-v3", |e| e.upstream_cluster == v3_cluster);
    assert_eq!(e.response_code, 200, "{}", e.raw);
    assert_eq!(
        e.upstream_host,
        format!("{}:{APP_PORT}", mesh.pod("recommendation-v3").ip),
        "{}",
        e.raw
    );

    // 50/50 between v1 and v2.
    mesh.apply(
        "recommendation-dr.yaml",
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: recommendation
spec:
  host: recommendation
  subsets:
  - labels:
      version: v1
    name: version-v1
  - labels:
      version: v2
    name: version-v2
  - labels:
      version: v3
    name: version-v3
",
    );
    mesh.apply(
        "recommendation-vs.yaml",
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: recommendation
spec:
  hosts:
  - recommendation
  http:
  - route:
    - destination:
        host: recommendation
        subset: version-v1
      weight: 50
    - destination:
        host: recommendation
        subset: version-v2
      weight: 50
",
    );
    eventually(
        "the client's sidecar splits between v1 and v2",
        CONFIG_POLL,
        || {
            let got = client.get_many(RECOMMENDATION, 10);
            let v12 = got
                .iter()
                .filter(|(s, b)| *s == 200 && !b.contains(" v3 "))
                .count();
            if v12 == got.len() {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    let got = client.get_many(RECOMMENDATION, 200);
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for (status, body) in &got {
        *by_version
            .entry(recommendation_ok(*status, body).version)
            .or_default() += 1;
    }
    let v1 = by_version.get("v1").copied().unwrap_or(0);
    let v2 = by_version.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "only v1 and v2 answer: {by_version:?}");
    assert!(
        (80..=120).contains(&v1) && (80..=120).contains(&v2),
        "50/50 ± 10 % over 200 requests: {by_version:?}"
    );
}

/// Seed 004's egress part: recommendation v3 calls worldclockapi.com. Under ALLOW_ANY without a
/// ServiceEntry it works; the seed's ServiceEntry with port 81 plus the 3 s timeout VirtualService
/// break it (`customer => Error: 503 - preference => Error: 500 …`, `outbound|81||` `UF` in v3's
/// sidecar); editing the file to port 80 fixes it, live.
#[test]
fn external_call_and_wrong_service_entry_port() {
    let mut mesh = MeshEnv::new("external_call_wrong_port");
    let mut pods = tutorial(&[]);
    pods.push(recommendation_v3_with_clock());
    mesh.add_pods(pods);
    let v3 = mesh.pod("recommendation-v3");

    // ALLOW_ANY, no ServiceEntry: passthrough.
    let r = mesh.pod("client").get(CUSTOMER);
    let rec = chain_ok(&r);
    assert_eq!(
        (rec.version.as_str(), rec.pod.as_str()),
        ("v3", "recommendation-v3"),
        "{r}"
    );
    assert!(is_clock_time(rec.time.as_deref().unwrap_or("")), "{r}");
    let e = v3.wait_for_log("to worldclockapi.com", line_with_authority(CLOCK_HOST));
    assert_eq!(
        (e.response_code, e.upstream_cluster.as_str()),
        (200, "PassthroughCluster"),
        "{}",
        e.raw
    );
    assert_eq!(
        e.upstream_host,
        format!("{}:80", mesh.addrs.clock),
        "{}",
        e.raw
    );

    // The seed's ServiceEntry (port 81 on purpose) and VirtualService.
    mesh.apply("worldclockapi-se.yaml", SE_WORLDCLOCK_PORT81);
    mesh.apply("worldclockapi-vs.yaml", VS_WORLDCLOCK_TIMEOUT);
    // Once the config is live, v3's sidecar sends the call to the ServiceEntry's only port, 81,
    // where nothing listens.
    let client = mesh.pod("client");
    let cluster_81 = format!("outbound|81||{CLOCK_HOST}");
    let e = eventually(
        "v3's sidecar routes worldclockapi.com to outbound|81||worldclockapi.com",
        CONFIG_POLL,
        || {
            client.get(CUSTOMER);
            let lines = v3.access_log();
            lines
                .iter()
                .find(|e| e.authority == CLOCK_HOST && e.upstream_cluster == cluster_81)
                .cloned()
                .ok_or_else(|| {
                    let last: Vec<&str> =
                        lines.iter().rev().take(3).map(|e| e.raw.as_str()).collect();
                    format!("last lines of v3's sidecar:\n{}", last.join("\n"))
                })
        },
    );
    // UF; with Istio's default retries on connect-failure exhausted, Envoy logs `UF,URX`.
    assert!(
        e.response_code == 503
            && e.response_flags.split(',').any(|f| f == "UF")
            && e.upstream_host == format!("{}:81", mesh.addrs.clock),
        "the seed's wrong port: connecting to worldclockapi.com:81 fails (503 UF): {}",
        e.raw
    );
    let r = client.get(CUSTOMER);
    assert_eq!(r.status, 503, "{r}");
    let expected_prefix = "customer => Error: 503 - preference => Error: 500 - \
                           recommendation v3 from 'recommendation-v3': Error fetching time: 503 -";
    assert!(r.body.starts_with(expected_prefix), "{r}");
    assert!(
        r.elapsed < Duration::from_secs(3),
        "connection refused on :81 fails fast (UF), not after the 3 s timeout:\n{r}"
    );

    // Fix the file in place: 81 → 80.
    mesh.config
        .sed_in_place("worldclockapi-se.yaml", "s/number: 81/number: 80/");
    assert!(mesh
        .config
        .read("worldclockapi-se.yaml")
        .contains("number: 80"));
    let r = poll_chain(&mesh, "the chain works again after the fix", |r| {
        r.status == 200
    });
    let rec = chain_ok(&r);
    assert!(is_clock_time(rec.time.as_deref().unwrap_or("")), "{r}");
    let e = v3.wait_for_log("outbound|80||worldclockapi.com", |e| {
        e.authority == CLOCK_HOST && e.upstream_cluster == format!("outbound|80||{CLOCK_HOST}")
    });
    assert_eq!(
        (e.response_code, e.response_flags.as_str()),
        (200, "-"),
        "{}",
        e.raw
    );
}

/// Seed 004's optional part: without the ServiceEntry, REGISTRY_ONLY (the seed's `sed` on the
/// ConfigMap) blocks worldclockapi.com (502 `block_all` in v3's sidecar, the chain shows the
/// error) while the calls inside the mesh keep working; re-creating the fixed ServiceEntry makes
/// it work again.
#[test]
fn registry_only_blocks_external_but_not_mesh_services() {
    let mut mesh = MeshEnv::new("registry_only_mesh");
    let mut pods = tutorial(&[]);
    pods.push(recommendation_v3_with_clock());
    mesh.add_pods(pods);
    // The state the seed cleans up: the fixed ServiceEntry and the timeout VirtualService …
    mesh.apply("worldclockapi-se.yaml", SE_WORLDCLOCK_PORT80);
    mesh.apply("worldclockapi-vs.yaml", VS_WORLDCLOCK_TIMEOUT);
    poll_chain(&mesh, "the chain works with the fixed ServiceEntry", |r| {
        r.status == 200
    });
    // … `oc delete serviceentry …; oc delete virtualservice …` …
    mesh.config.remove("worldclockapi-se.yaml");
    mesh.config.remove("worldclockapi-vs.yaml");
    // … and `sed 's/mode: ALLOW_ANY/mode: REGISTRY_ONLY/g'` on the ConfigMap.
    mesh.config
        .sed_in_place(MESH_FILE, "s/mode: ALLOW_ANY/mode: REGISTRY_ONLY/g");
    assert!(mesh.config.read(MESH_FILE).contains("mode: REGISTRY_ONLY"));

    let r = poll_chain(&mesh, "REGISTRY_ONLY blocks worldclockapi.com", |r| {
        r.status == 503
    });
    // The error went customer → preference → recommendation and back: the mesh calls work.
    let expected_prefix = "customer => Error: 503 - preference => Error: 500 - \
                           recommendation v3 from 'recommendation-v3': Error fetching time: 502 -";
    assert!(r.body.starts_with(expected_prefix), "{r}");
    let v3 = mesh.pod("recommendation-v3");
    let e = v3.wait_for_log("502 block_all", |e| {
        e.authority == CLOCK_HOST && e.route_name == "block_all"
    });
    assert_eq!(e.response_code, 502, "{}", e.raw);
    // Inside the mesh, under REGISTRY_ONLY: the Services are in the registry.
    let client = mesh.pod("client");
    let got = client.get_many(RECOMMENDATION, 3);
    for (status, body) in &got {
        assert_eq!(*status, 500, "recommendation itself is reachable: {body}");
        assert!(body.contains("Error fetching time: 502 -"), "{body}");
    }
    // Each hop of the failing chain went to its Service's cluster, not to block_all.
    for (pod, authority, app, code) in [
        ("client", "customer:8080", "customer", 503),
        ("customer-v1", "preference:8080", "preference", 503),
        (
            "preference-v1",
            "recommendation:8080",
            "recommendation",
            500,
        ),
    ] {
        let e = mesh
            .pod(pod)
            .wait_for_log(&format!("{authority} answered {code} by the app"), |e| {
                e.authority == authority && e.response_code == code
            });
        assert_eq!(
            (e.upstream_cluster.as_str(), e.response_flags.as_str()),
            (outbound_cluster(app, "").as_str(), "-"),
            "{}",
            e.raw
        );
    }

    // `oc create -f ServiceEntry.yaml` (the fixed one): allowed again.
    mesh.apply("worldclockapi-se.yaml", SE_WORLDCLOCK_PORT80);
    let r = poll_chain(
        &mesh,
        "the ServiceEntry lets worldclockapi.com through",
        |r| r.status == 200,
    );
    let rec = chain_ok(&r);
    assert!(is_clock_time(rec.time.as_deref().unwrap_or("")), "{r}");
    assert_eq!(rec.pod, "recommendation-v3", "{r}");
}

/// DestinationRule connectionPool: one connection, one pending request, one request per
/// connection; ten concurrent slow requests from the client → some 503 `UO` with
/// `x-envoy-overloaded: true`, at least one 200.
#[test]
fn connection_pool_limits_trip_the_circuit_breaker() {
    let mut mesh = MeshEnv::new("circuit_breaker");
    mesh.apply(
        "recommendation-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: recommendation
spec:
  host: recommendation
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
",
    );
    mesh.add_pods(vec![PodSpec::client(), PodSpec::recommendation("v1")]);
    let client = mesh.pod("client");
    // One at a time is fine.
    let r = client.get(RECOMMENDATION);
    recommendation_ok(r.status, &r.body);

    let url = format!("{RECOMMENDATION}delay?ms=1000");
    let results: Vec<CurlResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| s.spawn(|| client.curl(&url).run()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect()
    });
    let ok = results.iter().filter(|r| r.status == 200).count();
    let overloaded: Vec<&CurlResult> = results.iter().filter(|r| r.status == 503).collect();
    let all = results
        .iter()
        .map(|r| format!("{r}"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(ok >= 1, "at least one request gets through:\n{all}");
    assert!(
        overloaded.len() >= 5,
        "1 connection + 1 pending: most of 10 concurrent requests overflow:\n{all}"
    );
    assert_eq!(ok + overloaded.len(), 10, "only 200 and 503:\n{all}");
    for r in &overloaded {
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{r}");
    }
    for r in results.iter().filter(|r| r.status == 200) {
        recommendation_ok(r.status, &r.body);
    }
    let e = client.wait_for_log("UO", |e| e.response_flags.contains("UO"));
    assert_eq!(e.response_code, 503, "{}", e.raw);
    assert_eq!(
        e.upstream_cluster,
        outbound_cluster("recommendation", ""),
        "{}",
        e.raw
    );
}

/// DestinationRule outlierDetection: after v2's first 5xx it is ejected (the next 10 requests are
/// all v1, and the client's `/clusters` flags it `failed_outlier_check`); once it is healthy and
/// the 3 s ejection is over, it serves again.
#[test]
fn outlier_detection_ejects_failing_endpoint() {
    let mut mesh = MeshEnv::new("outlier_detection");
    mesh.apply(
        "recommendation-dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: recommendation
spec:
  host: recommendation
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 100
",
    );
    let fail_file = mesh.fail_file("recommendation-v2");
    let ips = mesh.add_pods(vec![
        PodSpec::client(),
        PodSpec::recommendation("v1"),
        PodSpec::recommendation("v2").env("FAIL_FILE", &fail_file.to_string_lossy()),
    ]);
    let v2_ip = ips[2];
    let client = mesh.pod("client");
    let v2 = mesh.pod("recommendation-v2");

    // Both serve, in turn.
    let got = client.get_many(RECOMMENDATION, 4);
    let versions: Vec<String> = got
        .iter()
        .map(|(s, b)| recommendation_ok(*s, b).version)
        .collect();
    assert!(
        versions.iter().any(|v| v == "v1") && versions.iter().any(|v| v == "v2"),
        "ROUND_ROBIN over v1 and v2: {versions:?}"
    );

    // v2 starts failing. Requests until v2 has answered one 503 (the client may see it, or, with
    // Istio's default retry on 503, v1's answer to the retry).
    std::fs::write(&fail_file, "").expect("create FAIL_FILE");
    let failures = |log: &str| log.matches(" HTTP/1.1\" 503 ").count();
    let mut ejected_at = None;
    for _ in 0..10 {
        let r = client.get(RECOMMENDATION);
        assert!(
            r.status == 200 || r.status == 503,
            "v1 answers or v2 fails:\n{r}"
        );
        if r.status == 503 {
            assert_eq!(
                r.body.trim_end(),
                "recommendation misbehavior from 'recommendation-v2'",
                "{r}"
            );
        }
        if failures(&v2.app_log()) > 0 {
            ejected_at = Some(Instant::now());
            break;
        }
    }
    let ejected_at = ejected_at
        .unwrap_or_else(|| panic!("v2 never got a request in 10 tries:\n{}", v2.app_log()));
    let got = client.get_many(RECOMMENDATION, 10);
    for (status, body) in &got {
        let rec = recommendation_ok(*status, body);
        assert_eq!(rec.version, "v1", "v2 is ejected: {got:?}");
    }
    assert_eq!(
        failures(&v2.app_log()),
        1,
        "v2 got no more requests:\n{}",
        v2.app_log()
    );
    let clusters = client.sidecar().admin_get("/clusters");
    clusters.expect_status(200);
    let line = clusters
        .body
        .lines()
        .find(|l| {
            l.starts_with(&outbound_cluster("recommendation", ""))
                && l.contains(&format!("::{v2_ip}:{APP_PORT}::health_flags::"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no health_flags line for v2 in /clusters:\n{}",
                clusters.body
            )
        });
    assert!(line.contains("failed_outlier_check"), "{line}");

    // Healthy again; after the ejection time v2 serves again.
    std::fs::remove_file(&fail_file).expect("remove FAIL_FILE");
    eventually("v2 serves again", Duration::from_secs(10), || {
        let (status, body) = client
            .get_many(RECOMMENDATION, 1)
            .pop()
            .expect("one response");
        match parse_recommendation(&body) {
            Some(rec) if status == 200 && rec.version == "v2" => Ok(()),
            _ => Err(format!("{status} {body}")),
        }
    });
    let back_after = ejected_at.elapsed();
    assert!(
        back_after >= Duration::from_millis(2900),
        "v2 came back after {back_after:?}, before the 3 s baseEjectionTime"
    );
}

/// Routes to subsets that cannot be served: a subset no DestinationRule defines → 503 `NC`; a
/// subset whose labels match no endpoint → 503 `UH` "no healthy upstream".
#[test]
fn subset_errors_no_cluster_and_no_healthy_upstream() {
    let mut mesh = MeshEnv::new("subset_errors");
    // A VirtualService to subset version-v3, and no DestinationRule at all.
    mesh.apply("recommendation-vs.yaml", VS_RECOMMENDATION_V3);
    mesh.add_pods(vec![PodSpec::client(), PodSpec::recommendation("v1")]);
    let client = mesh.pod("client");

    let r = client.get(RECOMMENDATION);
    assert_eq!(r.status, 503, "route to an undefined subset:\n{r}");
    let e = client.wait_for_log("NC", |e| e.response_flags.contains("NC"));
    assert_eq!(e.response_code, 503, "{}", e.raw);
    assert_eq!(
        e.upstream_cluster,
        outbound_cluster("recommendation", "version-v3"),
        "{}",
        e.raw
    );

    // A subset whose labels select nothing.
    mesh.apply(
        "recommendation-dr.yaml",
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: recommendation
spec:
  host: recommendation
  subsets:
  - labels:
      version: v9
    name: version-v9
",
    );
    mesh.apply(
        "recommendation-vs.yaml",
        &VS_RECOMMENDATION_V3.replace("subset: version-v3", "subset: version-v9"),
    );
    let r = eventually("503 no healthy upstream", CONFIG_POLL, || {
        let r = client.get(RECOMMENDATION);
        if r.status == 503 && r.body == "no healthy upstream" {
            Ok(r)
        } else {
            Err(format!("{r}"))
        }
    });
    assert_eq!(r.status, 503);
    let e = client.wait_for_log("UH", |e| {
        e.response_flags.contains("UH")
            && e.upstream_cluster == outbound_cluster("recommendation", "version-v9")
    });
    assert_eq!(e.response_code, 503, "{}", e.raw);
}
