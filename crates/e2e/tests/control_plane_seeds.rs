//! Seeds 002 and 004 with every proxy fed by one `sluice control`: the control plane runs in the
//! test's hub namespace on an address of its own (`10.234.N.5:15010`, which every pod and the
//! gateway reach over the bridge), reading the same config folder the folder-mode tests give the
//! proxies directly; every sidecar and the egress gateway start with `--xds` instead of
//! `--config` (and a node id in Istio's form naming their pod).
//!
//! - Seed 002 ([`EgressEnv`]): REGISTRY_ONLY, the seed's ServiceEntry, its 0.5 s timeout and its
//!   VirtualService sending httpbin.org through the egress gateway, with the sidecar and the
//!   gateway both fed by the control plane; then the control plane is stopped (SIGTERM) under
//!   load and restarted: no request fails, and a change made meanwhile for each of the two
//!   proxies reaches both.
//! - Seed 004 ([`MeshEnv`]): the tutorial's three services, every sidecar fed by the control
//!   plane: load balancing over recommendation v1/v2/v3, the seed's subset v3 (with the time from
//!   worldclockapi.com), its wrong-port ServiceEntry and the fix, REGISTRY_ONLY from the mesh
//!   ConfigMap, a 50/50 split; and the control plane killed (SIGKILL) under load through the whole
//!   chain and restarted: no request fails, and the route changed meanwhile reaches all six
//!   sidecars.
//!
//! The seeds' YAML is used as written (`sluice_e2e::config`, `sluice_e2e::egress_config`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sluice_e2e::config::{
    DR_RECOMMENDATION_V3, SE_WORLDCLOCK_PORT80, SE_WORLDCLOCK_PORT81, VS_RECOMMENDATION_V3,
    VS_WORLDCLOCK_TIMEOUT,
};
use sluice_e2e::egress::{EgressPod, PeerLogLine, HTTPBIN};
use sluice_e2e::egress_config::{
    egress_gateway, gateway_http_vs, myapp_style_gateway, EGRESS_FQDN, ISTIO_SYSTEM, SE_HTTPBIN,
    STUDENT_NS, VS_HTTPBIN_EGRESSGATEWAY, VS_HTTPBIN_TIMEOUT,
};
use sluice_e2e::mesh::{APP_PORT, CLOCK_HOST, CLOCK_URL, NAMESPACE};
use sluice_e2e::mesh::{ISTIOD_FQDN, MESH_FILE};
use sluice_e2e::sidecar::STATUS_PORT;
use sluice_e2e::{
    eventually, AccessLogEntry, AppPod, CurlResult, EgressEnv, MeshEnv, MeshIdentity, Netns,
    PodSpec,
};

/// How long a config change may take to show through the control plane, polled (the folder is
/// read within a second, pushes are debounced by 100 ms).
const LIVE: Duration = Duration::from_secs(10);
/// How long proxies may take to come back to a restarted control plane: their reconnect backoff
/// (0.5 s doubling, ±50 % jitter) after a few seconds away, plus the push.
const RECONNECT: Duration = Duration::from_secs(30);

// ─── load ───

/// GETs `http://HOST:PORT/PATH` from THREADS threads until STOP_FILE exists (120 s at most);
/// even threads keep one connection alive, odd ones open a new connection per request. A
/// request counts as ok when it answers 200 with a body starting with PREFIX. Prints
/// `{"ok": N, "errors": [...], "per_second": {...}, "seconds": S}`.
const LOAD: &str = r#"
import http.client, json, os, sys, threading, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
threads, stop_file, prefix = int(sys.argv[4]), sys.argv[5], sys.argv[6]
start = time.time()
limit = start + 120
stats = {"ok": 0, "errors": [], "per_second": {}}
lock = threading.Lock()
def worker(i):
    fresh = i % 2 == 1
    conn = None
    while not os.path.exists(stop_file) and time.time() < limit:
        t = time.time() - start
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path, headers={"Connection": "close"} if fresh else {})
            r = conn.getresponse()
            body = r.read().decode("utf-8", "replace")
            with lock:
                if r.status == 200 and body.startswith(prefix):
                    stats["ok"] += 1
                    second = str(int(t))
                    stats["per_second"][second] = stats["per_second"].get(second, 0) + 1
                else:
                    stats["errors"].append("%.2fs: status %d: %s" % (t, r.status, body[:300]))
            if fresh:
                conn.close()
                conn = None
        except Exception as e:
            with lock:
                stats["errors"].append("%.2fs: %s: %r" % (t, type(e).__name__, e))
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(0.01)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
stats["seconds"] = round(time.time() - start, 2)
print(json.dumps(stats))
"#;

/// The load generator running in a pod (as root: through the pod's sidecar).
struct Load {
    child: Option<Child>,
    stop_file: std::path::PathBuf,
}

impl Load {
    fn start(ns: &Netns, dir: &Path, host: &str, port: u16, path: &str, prefix: &str) -> Load {
        let script = dir.join("load.py");
        std::fs::write(&script, LOAD).expect("write load.py");
        let stop_file = dir.join("load.stop");
        let _ = std::fs::remove_file(&stop_file);
        let child = ns
            .cmd("python3")
            .arg(&script)
            .args([host, &port.to_string(), path, "4"])
            .arg(&stop_file)
            .arg(prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (the load generator)");
        Load {
            child: Some(child),
            stop_file,
        }
    }

    /// Stops the load and returns its counts; panics unless the generator ran and reported.
    fn finish(mut self) -> serde_json::Value {
        std::fs::write(&self.stop_file, "").expect("write the stop file");
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("load generator");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "load generator failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("load stats are not JSON ({e}): {stdout}"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, "");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Panics unless the load had no failed request and at least `min_ok` good ones.
#[track_caller]
fn assert_no_failures(stats: &serde_json::Value, min_ok: u64) {
    assert!(
        stats["errors"].as_array().is_some_and(Vec::is_empty),
        "requests failed while the control plane was away and back: {stats:#}"
    );
    let ok = stats["ok"].as_u64().unwrap_or(0);
    assert!(ok >= min_ok, "only {ok} requests under load: {stats:#}");
}

// ─── seed 002: the egress gateway ───

/// The `istio-system` side of seed 002's exit, as in `tests/egress_gateway.rs`: the seed's
/// ServiceEntry for httpbin.org (exported to `istio-system` only), a Gateway in the seed's
/// `myapp-egressgateway` style for httpbin.org on port 80, and a VirtualService bound to it
/// sending every request to httpbin.org:80.
fn gateway_side_http(env: &EgressEnv) {
    env.apply_in(ISTIO_SYSTEM, "istio-system-se-httpbin.yaml", SE_HTTPBIN);
    env.apply(
        "istio-system-gw-httpbin.yaml",
        &myapp_style_gateway("httpbin-egressgateway", HTTPBIN),
    );
    env.apply("istio-system-vs-httpbin.yaml", &gateway_vs(None));
}

/// The gateway-side VirtualService of [`gateway_side_http`]; with `header`, its route also sets
/// that request header (`name: value`).
fn gateway_vs(header: Option<(&str, &str)>) -> String {
    let vs = gateway_http_vs(
        "httpbin-egress",
        "httpbin-egressgateway",
        HTTPBIN,
        HTTPBIN,
        80,
    );
    match header {
        None => vs,
        Some((name, value)) => {
            let old = "  http:\n  - route:\n";
            assert!(vs.contains(old), "{vs}");
            vs.replace(
                old,
                &format!(
                    "  http:\n  - headers:\n      request:\n        set:\n          {name}: {value}\n    route:\n"
                ),
            )
        }
    }
}

/// The seed's second `api-egress-vs.yaml` (port 80 to the egress gateway), its route also
/// setting the request header `name: value`.
fn sidecar_vs_with_header(name: &str, value: &str) -> String {
    let old = "      port: 80\n    route:\n";
    assert!(VS_HTTPBIN_EGRESSGATEWAY.contains(old));
    VS_HTTPBIN_EGRESSGATEWAY.replace(
        old,
        &format!("      port: 80\n    headers:\n      request:\n        set:\n          {name}: {value}\n    route:\n"),
    )
}

/// Polls a GET from `pod` until `ok` accepts the result; returns it.
#[track_caller]
fn poll(pod: &EgressPod, what: &str, url: &str, ok: impl Fn(&CurlResult) -> bool) -> CurlResult {
    eventually(what, LIVE, || {
        let r = pod.curl(url).max_time(5.0).run();
        if ok(&r) {
            Ok(r)
        } else {
            Err(format!("\n{r}"))
        }
    })
}

/// A 1 s delay answered after about 1 s.
#[track_caller]
fn assert_about_one_second(r: &CurlResult) {
    r.expect_status(200);
    assert!(
        (0.95..3.0).contains(&r.time_total),
        "/delay/1 answered in {:.3}s, expected about 1 s:\n{r}",
        r.time_total
    );
}

/// Seed 002 with the sidecar and the egress gateway both fed by `sluice control`: 502
/// `block_all` under REGISTRY_ONLY, the seed's ServiceEntry (200 after ~1 s), its 0.5 s timeout
/// (504 after ~0.5 s), its VirtualService to the egress gateway (200 after ~1 s, logged at the
/// gateway with `outbound|80||httpbin.org` and at the sidecar with the gateway's cluster). Then
/// the control plane is stopped (SIGTERM) under load through sidecar and gateway: both stay
/// ready, no request fails; a change for each proxy (a request header set by the sidecar's route,
/// another by the gateway's) is made while it is down, shows nowhere until it is back, and
/// reaches both proxies after the restart.
#[test]
fn seed002_egress_gateway_with_every_proxy_fed_by_sluice_control() {
    let mut env = EgressEnv::new("cp_seed002_egress");
    gateway_side_http(&env);
    env.start_control();
    env.start_gateway(None);
    env.add_pod(AppPod::new("api", STUDENT_NS));
    let gateway_args = env.gateway().args.join(" ");
    assert!(
        gateway_args.contains(&format!("--xds {}", env.control().xds_addr()))
            && !gateway_args.contains("--config"),
        "the gateway takes its config from the control plane: {gateway_args}"
    );
    let sidecar_args = env.pod("api").sidecar().opts.sidecar_args("").join(" ");
    assert!(
        sidecar_args.contains("--xds ") && !sidecar_args.contains("--config"),
        "the sidecar takes its config from the control plane: {sidecar_args}"
    );
    let nodes = vec![env.pod_node_id("api"), env.gateway_node_id()];
    env.control().wait_synced(&nodes, LIVE);
    let status = env.control().proxy_status(None);
    for node in &nodes {
        assert!(
            status.lines().any(|l| l.starts_with(node.as_str())
                && l.contains("control")
                && l.contains("SYNCED")),
            "proxy-status shows {node} synced:\n{status}"
        );
    }
    let app = env.pod("api");

    // No ServiceEntry: REGISTRY_ONLY (the mesh config the control plane sent) answers 502.
    let r = app.get("http://httpbin.org/delay/1");
    r.expect_status(502);
    assert!(
        r.time_total < 0.9,
        "the 502 must not wait for httpbin:\n{r}"
    );
    let e = app.wait_for_log("502 for httpbin.org", |e| {
        e.path == "/delay/1" && e.authority == HTTPBIN
    });
    assert_eq!(
        (e.response_code, e.route_name.as_str()),
        (502, "block_all"),
        "{}",
        e.raw
    );

    // The seed's ServiceEntry (exportTo ".") in student1.
    env.apply_in(STUDENT_NS, "api-egress-se.yaml", SE_HTTPBIN);
    poll(
        app,
        "the ServiceEntry opens httpbin.org",
        "http://httpbin.org/get",
        |r| r.status == 200,
    );
    let r = app.get("http://httpbin.org/delay/1");
    assert_about_one_second(&r);
    let e = app.wait_for_log("200 for /delay/1", |e| {
        e.path == "/delay/1" && e.response_code == 200
    });
    assert_eq!(e.upstream_cluster, "outbound|80||httpbin.org", "{}", e.raw);

    // The seed's VirtualService with `timeout: 0.5s`.
    env.apply_in(STUDENT_NS, "api-egress-vs.yaml", VS_HTTPBIN_TIMEOUT);
    let r = poll(
        app,
        "the 0.5 s timeout applies",
        "http://httpbin.org/delay/1",
        |r| r.status == 504,
    );
    assert!(
        (0.4..1.5).contains(&r.time_total),
        "504 after about 0.5 s:\n{r}"
    );
    let r = app.get("http://httpbin.org/delay/1");
    r.expect_status(504);
    assert!((0.4..1.5).contains(&r.time_total), "{r}");
    assert_eq!(r.body, "upstream request timeout", "{r}");

    // The seed's second version of the VirtualService: port 80 to the egress gateway.
    env.apply_in(STUDENT_NS, "api-egress-vs.yaml", VS_HTTPBIN_EGRESSGATEWAY);
    poll(
        app,
        "httpbin.org goes through the egress gateway",
        "http://httpbin.org/get?via=egress",
        |r| {
            r.status == 200
                && env
                    .gateway_peer_log()
                    .iter()
                    .any(|l| l.entry.path == "/get?via=egress")
        },
    );
    let r = app.get("http://httpbin.org/delay/1");
    assert_about_one_second(&r);
    let g = env.wait_for_gateway_log("GET /delay/1 200 at the gateway", |l| {
        l.entry.path == "/delay/1" && l.entry.response_code == 200
    });
    assert_eq!(g.entry.authority, HTTPBIN, "{}", g.entry.raw);
    assert_eq!(
        (
            g.entry.upstream_cluster.as_str(),
            g.entry.upstream_host.as_str()
        ),
        (
            "outbound|80||httpbin.org",
            format!("{}:80", env.addrs.httpbin).as_str()
        ),
        "{}",
        g.entry.raw
    );
    assert!(
        g.entry
            .downstream_remote_address
            .starts_with(&format!("{}:", app.ip)),
        "the gateway's client is the app pod: {}",
        g.entry.raw
    );
    let e = app.wait_for_log("200 for /delay/1 to the egress gateway", |e| {
        e.path == "/delay/1" && e.response_code == 200 && e.upstream_cluster.contains("egress")
    });
    assert_eq!(
        (e.upstream_cluster.as_str(), e.upstream_host.as_str()),
        (
            format!("outbound|80||{EGRESS_FQDN}").as_str(),
            format!("{}:80", env.addrs.gateway).as_str()
        ),
        "{}",
        e.raw
    );
    let r = app.get("http://httpbin.org/headers");
    r.expect_status(200);
    assert_eq!(r.echoed_header("x-sidecar-config"), None, "{r}");
    assert_eq!(r.echoed_header("x-gateway-config"), None, "{r}");

    // The control plane goes away under load: app → sidecar → egress gateway → httpbin.org.
    let load = Load::start(&app.ns, env.dir(), HTTPBIN, 80, "/get", "{");
    std::thread::sleep(Duration::from_secs(1));
    let stopped_at = Instant::now();
    let exit = env.control_mut().kill(libc::SIGTERM);
    eprintln!("control plane stopped (SIGTERM): {exit}");
    let app = env.pod("api");
    std::thread::sleep(Duration::from_millis(500));
    for (who, r) in [
        (
            "sidecar",
            app.sidecar().local_get(STATUS_PORT, "/healthz/ready"),
        ),
        (
            "gateway",
            env.gateway().local_get(STATUS_PORT, "/healthz/ready"),
        ),
    ] {
        assert_eq!(
            r.status, 200,
            "a lost control plane must not change the {who}'s readiness:\n{r}"
        );
    }
    // A change for each proxy while it is down: nothing changes until it is back.
    env.apply_in(
        STUDENT_NS,
        "api-egress-vs.yaml",
        &sidecar_vs_with_header("x-sidecar-config", "v2"),
    );
    env.apply(
        "istio-system-vs-httpbin.yaml",
        &gateway_vs(Some(("x-gateway-config", "v2"))),
    );
    sluice_e2e::settle();
    let r = app.get("http://httpbin.org/headers");
    r.expect_status(200);
    assert_eq!(
        (
            r.echoed_header("x-sidecar-config"),
            r.echoed_header("x-gateway-config")
        ),
        (None, None),
        "no proxy reads the folder: the change waits for the control plane\n{r}"
    );
    let down_for = stopped_at.elapsed();
    env.control_mut().restart();
    let app = env.pod("api");
    let r = eventually(
        "both proxies apply the change made while the control plane was down",
        RECONNECT,
        || {
            let r = app.curl("http://httpbin.org/headers").max_time(5.0).run();
            let seen = (r.status == 200).then(|| {
                (
                    r.echoed_header("x-sidecar-config"),
                    r.echoed_header("x-gateway-config"),
                )
            });
            if seen == Some((Some("v2".into()), Some("v2".into()))) {
                Ok(r)
            } else {
                Err(format!("\n{r}"))
            }
        },
    );
    let back_after = stopped_at.elapsed();
    assert!(
        r.echoed_header("x-sidecar-config").is_some(),
        "set by the sidecar's route: {r}"
    );
    let syncz = env.control().wait_synced(&nodes, LIVE);
    let stats = load.finish();
    eprintln!(
        "control plane down for {down_for:.1?}, change everywhere {back_after:.1?} after the stop; load: {} ok, per second {}",
        stats["ok"], stats["per_second"]
    );
    assert_no_failures(&stats, 50);
    assert_eq!(
        syncz.as_array().map(Vec::len),
        Some(2),
        "the sidecar and the gateway, each connected once: {syncz:#}"
    );
    // The gateway routed the load to httpbin.org all along.
    let ok = stats["ok"].as_u64().unwrap_or(0);
    eventually(
        "the gateway logged every request of the load",
        Duration::from_secs(5),
        || {
            let at_gateway = env
                .gateway_peer_log()
                .iter()
                .filter(|l| l.entry.path == "/get" && l.entry.response_code == 200)
                .count() as u64;
            (at_gateway >= ok)
                .then_some(())
                .ok_or(format!("{at_gateway} of {ok} logged at the gateway"))
        },
    );
}

/// Beyond the seed (it has no mesh TLS; `tests/egress_gateway.rs` adds it): mutual TLS between
/// the sidecar and the egress gateway, every piece of config that asks for it from the control
/// plane — the Gateway's `ISTIO_MUTUAL` server on 443, the sidecar's DestinationRule for the
/// gateway (`ISTIO_MUTUAL`, `sni: httpbin.org`), the mesh's access-log format with
/// `%DOWNSTREAM_PEER_URI_SAN%` — and the identities from `sluice ca` (`--mesh-ca` on both
/// proxies). The gateway logs the sidecar's SPIFFE ID and the SNI; plaintext is refused.
#[test]
fn seed002_istio_mutual_to_the_egress_gateway_fed_by_sluice_control() {
    let mut env = EgressEnv::new("cp_seed002_mtls");
    let ca = env.mesh_ca_init();
    env.set_mesh(&EgressEnv::peer_format_mesh_line());
    env.apply_in(ISTIO_SYSTEM, "istio-system-se-httpbin.yaml", SE_HTTPBIN);
    env.apply(
        "istio-system-gw-mtls.yaml",
        &egress_gateway(
            "httpbin-mtls-egressgateway",
            443,
            "https",
            "HTTPS",
            &[HTTPBIN],
            Some("ISTIO_MUTUAL"),
        ),
    );
    env.apply(
        "istio-system-vs-mtls.yaml",
        &gateway_http_vs(
            "httpbin-mtls-egress",
            "httpbin-mtls-egressgateway",
            HTTPBIN,
            HTTPBIN,
            80,
        ),
    );
    env.apply_in(STUDENT_NS, "api-egress-se.yaml", SE_HTTPBIN);
    let vs = VS_HTTPBIN_EGRESSGATEWAY.replace("          number: 80\n", "          number: 443\n");
    assert_ne!(vs, VS_HTTPBIN_EGRESSGATEWAY);
    env.apply_in(STUDENT_NS, "api-egress-vs.yaml", &vs);
    env.apply(
        "student1-dr-egressgateway.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: egressgateway-for-httpbin
  namespace: {STUDENT_NS}
spec:
  host: {EGRESS_FQDN}
  exportTo:
  - \".\"
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: ISTIO_MUTUAL
        sni: {HTTPBIN}
"
        ),
    );
    env.start_control();
    let id = MeshIdentity::new(&ca);
    env.start_gateway(Some(&id));
    let spec = AppPod::new("api", STUDENT_NS)
        .service_account("api")
        .identity(id);
    let spiffe = spec.spiffe_id();
    env.add_pod(spec);
    env.control()
        .wait_synced(&[env.pod_node_id("api"), env.gateway_node_id()], LIVE);
    let app = env.pod("api");

    poll(
        app,
        "httpbin.org over mTLS through the gateway",
        "http://httpbin.org/get?mtls=1",
        |r| r.status == 200,
    );
    let g = env.wait_for_gateway_log("GET /get?mtls=1 with the caller's identity", |l| {
        l.entry.path == "/get?mtls=1"
    });
    assert_eq!(
        (
            g.entry.response_code,
            g.entry.upstream_cluster.as_str(),
            g.entry.requested_server_name.as_str()
        ),
        (200, "outbound|80||httpbin.org", HTTPBIN),
        "{}",
        g.entry.raw
    );
    assert_eq!(
        g.peer_uri_san.as_deref(),
        Some(spiffe.as_str()),
        "%DOWNSTREAM_PEER_URI_SAN% (from the mesh config the control plane sent) is the sidecar's SPIFFE ID: {}",
        g.entry.raw
    );
    // The sidecar's line (in the mesh's format, or Istio's default while the proxy has not yet
    // switched its access log to the mesh config's).
    let e = eventually(
        "the sidecar's line for /get?mtls=1",
        Duration::from_secs(5),
        || {
            let lines = app.sidecar().stdout_lines();
            lines
                .iter()
                .filter_map(|l| PeerLogLine::parse(l))
                .find(|l| l.entry.path == "/get?mtls=1")
                .ok_or(format!("sidecar stdout:\n{}", lines.join("\n")))
        },
    );
    assert_eq!(
        e.entry.upstream_cluster,
        format!("outbound|443||{EGRESS_FQDN}"),
        "{}",
        e.entry.raw
    );
    // Plaintext straight to the gateway's 443 is refused.
    let r = env
        .hub_curl(&format!("http://{}:443/get?plain=1", env.addrs.gateway))
        .header(&format!("Host: {HTTPBIN}"))
        .max_time(5.0)
        .run();
    assert!(
        r.exit_code != 0 && r.status == 0,
        "plaintext must be refused:\n{r}"
    );
    assert!(!env.server_log("httpbin-http").contains("plain=1"));
}

// ─── seed 004: three services in the mesh ───

const CUSTOMER: &str = "http://customer:8080/";
const RECOMMENDATION: &str = "http://recommendation:8080/";

/// The seed's DestinationRule with every version as a subset (the 50/50 split's, as in
/// `tests/mesh_services.rs`).
const DR_RECOMMENDATION_ALL: &str = "apiVersion: networking.istio.io/v1alpha3
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
";

/// The seed's VirtualService with its weights over subsets `(subset, weight)`.
fn vs_recommendation(weights: &[(&str, u32)]) -> String {
    let routes: String = weights
        .iter()
        .map(|(subset, weight)| {
            format!(
                "    - destination:\n        host: recommendation\n        subset: {subset}\n      weight: {weight}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: recommendation
spec:
  hosts:
  - recommendation
  http:
  - route:
{routes}"
    )
}

/// `outbound|8080|<subset>|<app>.tutorial.svc.cluster.local`.
fn outbound_cluster(app: &str, subset: &str) -> String {
    format!("outbound|{APP_PORT}|{subset}|{app}.{NAMESPACE}.svc.cluster.local")
}

/// One answer of recommendation: `recommendation <version> [<time> ]from '<pod>': <count>`.
#[derive(Debug, Clone, PartialEq)]
struct Recommendation {
    version: String,
    time: Option<String>,
    pod: String,
}

fn parse_recommendation(s: &str) -> Option<Recommendation> {
    let rest = s.trim_end().strip_prefix("recommendation ")?;
    let (head, tail) = rest.split_once(" from '")?;
    let (pod, count) = tail.split_once("': ")?;
    count.parse::<u64>().ok()?;
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
    })
}

/// `2020-04-06T18:31+01:00`, as the clock app (and worldclockapi.com) formats it.
fn is_clock_time(t: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd+01:00";
    t.len() == pattern.len()
        && t.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// The chain's answer, `customer => preference => recommendation …`, taken apart.
#[track_caller]
fn chain_ok(r: &CurlResult) -> Recommendation {
    r.expect_status(200);
    r.body
        .trim_end()
        .strip_prefix("customer => preference => ")
        .and_then(parse_recommendation)
        .unwrap_or_else(|| panic!("expected `customer => preference => recommendation …`:\n{r}"))
}

/// Polls the chain from the client until `ok` accepts the response; returns it.
#[track_caller]
fn poll_chain(mesh: &MeshEnv, what: &str, ok: impl Fn(&CurlResult) -> bool) -> CurlResult {
    let client = mesh.pod("client");
    eventually(what, LIVE, || {
        let r = client.get(CUSTOMER);
        if ok(&r) {
            Ok(r)
        } else {
            Err(format!("{r}"))
        }
    })
}

/// The versions that answer `n` requests for `http://recommendation:8080/` from `pod` (through
/// its sidecar's route), with their counts; a failed request counts under its status and body.
fn versions_seen_from(mesh: &MeshEnv, pod: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for (status, body) in mesh.pod(pod).get_many(RECOMMENDATION, n) {
        let key = match (status, parse_recommendation(&body)) {
            (200, Some(rec)) => rec.version,
            _ => format!("{status} {body}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

/// The tutorial's pods: client, customer, preference, recommendation v1, v2 and v3 (v3 asking
/// worldclockapi.com for the time, as the seed deploys it).
fn tutorial_with_v3_clock() -> Vec<PodSpec> {
    vec![
        PodSpec::client(),
        PodSpec::customer(),
        PodSpec::preference(),
        PodSpec::recommendation("v1"),
        PodSpec::recommendation("v2"),
        PodSpec::recommendation("v3").env("CLOCK_URL", CLOCK_URL),
    ]
}

/// Starts the control plane and the tutorial with every sidecar fed by it; waits until all six
/// have ACKed their config.
fn mesh_fed_by_control(test: &str) -> MeshEnv {
    let mut mesh = MeshEnv::new(test);
    mesh.start_control();
    mesh.add_pods(tutorial_with_v3_clock());
    let nodes = mesh.node_ids();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    for pod in mesh.pods() {
        let args = pod.sidecar().opts.sidecar_args("").join(" ");
        assert!(
            args.contains(&format!("--xds {ISTIOD_FQDN}:15010")) && !args.contains("--config"),
            "{}: every sidecar takes its config from the control plane: {args}",
            pod.name()
        );
    }
    mesh.control().wait_synced(&nodes, LIVE);
    mesh
}

/// Seed 004 with every sidecar fed by `sluice control`: the chain customer → preference →
/// recommendation by Service name, load-balanced over v1/v2/v3; the seed's DestinationRule and
/// VirtualService → only v3, with the time from worldclockapi.com; the seed's ServiceEntry with
/// port 81 and the 3 s timeout → `customer => Error: 503 - preference => Error: 500 - …` and
/// `UF` on `outbound|81||worldclockapi.com`; the seed's `sed` to 80 → the time again; the seed's
/// REGISTRY_ONLY (`sed` on the mesh ConfigMap, after deleting the two) blocks worldclockapi.com
/// but not the services; then a 50/50 split between v1 and v2 over 200 requests.
#[test]
fn seed004_three_services_with_every_sidecar_fed_by_sluice_control() {
    let mesh = mesh_fed_by_control("cp_seed004_routing");
    let status = mesh.control().proxy_status(None);
    for node in mesh.node_ids() {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(node.as_str()) && l.contains("SYNCED")),
            "proxy-status shows {node} synced:\n{status}"
        );
    }
    let client = mesh.pod("client");

    // The chain by Service name, load-balanced over the three versions.
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..12 {
        let r = client.get(CUSTOMER);
        let rec = chain_ok(&r);
        assert_eq!(rec.pod, format!("recommendation-{}", rec.version), "{r}");
        assert_eq!(
            r.header("server"),
            Some("envoy"),
            "the client's sidecar answers:\n{r}"
        );
        *versions.entry(rec.version).or_default() += 1;
    }
    assert!(
        versions.len() >= 2,
        "12 requests should be spread over recommendation v1, v2, v3: {versions:?}"
    );
    let e = client.wait_for_log("to customer", |e| e.authority == "customer:8080");
    assert_eq!(
        (e.response_code, e.upstream_cluster.as_str()),
        (200, outbound_cluster("customer", "").as_str()),
        "{}",
        e.raw
    );
    assert_eq!(
        e.upstream_host,
        format!("{}:{APP_PORT}", mesh.pod("customer-v1").ip),
        "{}",
        e.raw
    );
    // The inbound side of recommendation, configured through the control plane as well.
    let served = mesh
        .pods()
        .iter()
        .filter(|p| p.spec.app == "recommendation")
        .find(|p| {
            p.access_log()
                .iter()
                .any(|e| e.upstream_cluster == format!("inbound|{APP_PORT}||"))
        });
    assert!(
        served.is_some(),
        "a recommendation sidecar logged the inbound requests"
    );

    // The seed's DestinationRule (subset version-v3) and VirtualService (100 % to it).
    mesh.apply("recommendation-dr.yaml", DR_RECOMMENDATION_V3);
    mesh.apply("recommendation-vs.yaml", VS_RECOMMENDATION_V3);
    let pref = mesh.pod("preference-v1");
    let v3_cluster = outbound_cluster("recommendation", "version-v3");
    eventually(
        "preference's sidecar routes to subset version-v3",
        LIVE,
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
    for i in 0..10 {
        let r = client.get(CUSTOMER);
        let rec = chain_ok(&r);
        assert_eq!(
            (rec.version.as_str(), rec.pod.as_str()),
            ("v3", "recommendation-v3"),
            "request {i} after the seed's VirtualService:\n{r}"
        );
        let time = rec.time.unwrap_or_default();
        assert!(
            is_clock_time(&time),
            "v3 shows the time from worldclockapi.com: {time:?}\n{r}"
        );
    }

    // The seed's ServiceEntry with the wrong port 81, and its 3 s timeout VirtualService.
    mesh.apply("worldclockapi-se.yaml", SE_WORLDCLOCK_PORT81);
    mesh.apply("worldclockapi-vs.yaml", VS_WORLDCLOCK_TIMEOUT);
    let r = poll_chain(&mesh, "the wrong port breaks the chain", |r| {
        r.status == 503
    });
    let expected = "customer => Error: 503 - preference => Error: 500 - \
                    recommendation v3 from 'recommendation-v3': Error fetching time: 503 -";
    assert!(r.body.starts_with(expected), "{r}");
    assert!(
        r.elapsed < Duration::from_secs(3),
        "connection refused on :81 fails fast (UF), not after the 3 s timeout:\n{r}"
    );
    let v3 = mesh.pod("recommendation-v3");
    let e = v3.wait_for_log("outbound|81||worldclockapi.com", |e| {
        e.authority == CLOCK_HOST && e.upstream_cluster == format!("outbound|81||{CLOCK_HOST}")
    });
    assert!(
        e.response_code == 503 && e.response_flags.split(',').any(|f| f == "UF"),
        "503 UF: {}",
        e.raw
    );
    // The seed's fix, in place: 81 → 80.
    mesh.config
        .sed_in_place("worldclockapi-se.yaml", "s/number: 81/number: 80/");
    let r = poll_chain(&mesh, "the chain works again after the fix", |r| {
        r.status == 200
    });
    assert!(
        is_clock_time(chain_ok(&r).time.as_deref().unwrap_or("")),
        "{r}"
    );
    v3.wait_for_log("outbound|80||worldclockapi.com 200", |e| {
        e.authority == CLOCK_HOST
            && e.upstream_cluster == format!("outbound|80||{CLOCK_HOST}")
            && e.response_code == 200
    });

    // The seed's optional part: delete both, `sed` the ConfigMap to REGISTRY_ONLY (the mesh
    // config travels through the control plane too).
    mesh.config.remove("worldclockapi-se.yaml");
    mesh.config.remove("worldclockapi-vs.yaml");
    mesh.config
        .sed_in_place(MESH_FILE, "s/mode: ALLOW_ANY/mode: REGISTRY_ONLY/g");
    let r = poll_chain(&mesh, "REGISTRY_ONLY blocks worldclockapi.com", |r| {
        r.status == 503
    });
    let expected = "customer => Error: 503 - preference => Error: 500 - \
                    recommendation v3 from 'recommendation-v3': Error fetching time: 502 -";
    assert!(r.body.starts_with(expected), "{r}");
    let e = v3.wait_for_log("502 block_all", |e| {
        e.authority == CLOCK_HOST && e.route_name == "block_all"
    });
    assert_eq!(e.response_code, 502, "{}", e.raw);
    // The fixed ServiceEntry opens it again.
    mesh.apply("worldclockapi-se.yaml", SE_WORLDCLOCK_PORT80);
    let r = poll_chain(
        &mesh,
        "the ServiceEntry lets worldclockapi.com through",
        |r| r.status == 200,
    );
    assert!(
        is_clock_time(chain_ok(&r).time.as_deref().unwrap_or("")),
        "{r}"
    );

    // 50/50 between v1 and v2.
    mesh.apply("recommendation-dr.yaml", DR_RECOMMENDATION_ALL);
    mesh.apply(
        "recommendation-vs.yaml",
        &vs_recommendation(&[("version-v1", 50), ("version-v2", 50)]),
    );
    eventually(
        "the client's sidecar splits between v1 and v2",
        LIVE,
        || {
            let seen = versions_seen_from(&mesh, "client", 10);
            if seen.keys().all(|v| v == "v1" || v == "v2") {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    );
    let seen = versions_seen_from(&mesh, "client", 200);
    let (v1, v2) = (
        seen.get("v1").copied().unwrap_or(0),
        seen.get("v2").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 200, "only v1 and v2 answer: {seen:?}");
    assert!(
        (80..=120).contains(&v1) && (80..=120).contains(&v2),
        "50/50 ± 10 % over 200 requests: {seen:?}"
    );
}

/// Seed 004's mesh with the control plane killed (SIGKILL) under load through the whole chain
/// (client → customer → preference → recommendation, every hop through two sidecars): every
/// sidecar stays ready and no request fails; the VirtualService changed from subset v3 to v2
/// while it is down applies nowhere until it is back, and then at every one of the six sidecars
/// (each routes `recommendation` itself), all synced with the new replica.
#[test]
fn seed004_control_plane_killed_under_load_fails_no_request() {
    let mut mesh = mesh_fed_by_control("cp_seed004_restart");
    mesh.apply("recommendation-dr.yaml", DR_RECOMMENDATION_ALL);
    mesh.apply(
        "recommendation-vs.yaml",
        &vs_recommendation(&[("version-v3", 100)]),
    );
    let pods: Vec<String> = mesh.pods().iter().map(|p| p.name().to_string()).collect();
    for pod in &pods {
        eventually(&format!("{pod}'s sidecar routes to v3"), LIVE, || {
            let seen = versions_seen_from(&mesh, pod, 5);
            (seen.keys().collect::<Vec<_>>() == ["v3"])
                .then_some(())
                .ok_or(format!("{seen:?}"))
        });
    }
    let nodes = mesh.node_ids();
    mesh.control().wait_synced(&nodes, LIVE);
    let metrics = mesh.control().get("/metrics");
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("pilot_xds{") && l.ends_with(" 6")),
        "six connected proxies:\n{}",
        metrics.body
    );

    let client = mesh.pod("client");
    let load = Load::start(
        &client.ns,
        mesh.dir(),
        "customer",
        APP_PORT,
        "/",
        "customer => preference => recommendation v",
    );
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    let exit = mesh.control_mut().kill(libc::SIGKILL);
    eprintln!("control plane killed: {exit}");
    std::thread::sleep(Duration::from_millis(500));
    for pod in mesh.pods() {
        let r = pod.sidecar().local_get(STATUS_PORT, "/healthz/ready");
        assert_eq!(
            r.status,
            200,
            "a lost control plane must not change {}'s readiness:\n{r}",
            pod.name()
        );
    }
    // v3 → v2 while it is down: nothing changes until it is back.
    mesh.apply(
        "recommendation-vs.yaml",
        &vs_recommendation(&[("version-v2", 100)]),
    );
    sluice_e2e::settle();
    let r = mesh.pod("client").get(CUSTOMER);
    assert_eq!(
        chain_ok(&r).version,
        "v3",
        "no sidecar reads the folder: the change waits for the control plane\n{r}"
    );
    let down_for = killed_at.elapsed();
    mesh.control_mut().restart();
    for pod in &pods {
        eventually(
            &format!("{pod}'s sidecar applies the change made while the control plane was down"),
            RECONNECT,
            || {
                let seen = versions_seen_from(&mesh, pod, 5);
                (seen.keys().collect::<Vec<_>>() == ["v2"])
                    .then_some(())
                    .ok_or(format!("{seen:?}"))
            },
        );
    }
    let everywhere_after = killed_at.elapsed();
    let syncz = mesh.control().wait_synced(&nodes, LIVE);
    // The load ran on until every sidecar had the change.
    let r = mesh.pod("client").get(CUSTOMER);
    assert_eq!(chain_ok(&r).version, "v2", "{r}");
    let stats = load.finish();
    eprintln!(
        "control plane down for {down_for:.1?}, change at all six sidecars {everywhere_after:.1?} after the kill; load: {} ok, per second {}",
        stats["ok"], stats["per_second"]
    );
    assert_no_failures(&stats, 50);
    assert_eq!(
        syncz.as_array().map(Vec::len),
        Some(6),
        "each sidecar connected once to the new replica: {syncz:#}"
    );
    let status = mesh.control().proxy_status(None);
    assert_eq!(
        status.lines().filter(|l| l.contains("control-2")).count(),
        6,
        "{status}"
    );
    // preference's sidecar sent the load's requests to subset v2 after the change.
    let v2_cluster = outbound_cluster("recommendation", "version-v2");
    let pref_lines: Vec<AccessLogEntry> = mesh.pod("preference-v1").access_log();
    assert!(
        pref_lines
            .iter()
            .any(|e| e.upstream_cluster == v2_cluster && e.response_code == 200),
        "preference's sidecar routed to {v2_cluster}"
    );
}
