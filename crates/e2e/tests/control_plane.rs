//! `sluice control` feeding sidecars (`sluice sidecar --xds`): the sidecar is not ready and
//! refuses traffic until the control plane has sent a complete config; it enforces what the
//! control plane's folder says (REGISTRY_ONLY, seed 001's timeout); a control plane killed and
//! restarted under load fails no request, and the change made meanwhile reaches the sidecar;
//! with two replicas, losing the one in use changes nothing; `sluice proxy-status` and istiod's
//! metrics show the proxy as synced.

use std::time::{Duration, Instant};

use sluice_e2e::config::{mesh_configmap, vs_httpbin_timeout, SE_HTTPBIN_EXT, SE_VS_GOOGLE};
use sluice_e2e::sidecar::STATUS_PORT;
use sluice_e2e::{eventually, SidecarOpts, TestEnv};

/// GETs `http://httpbin.org/get` from `threads` keep-alive connections for `seconds` and
/// prints counts and every failure as JSON.
const LOAD: &str = r#"
import http.client, json, sys, threading, time
seconds, threads = float(sys.argv[1]), int(sys.argv[2])
stats = {"ok": 0, "errors": []}
lock = threading.Lock()
def worker(i):
    conn = None
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("httpbin.org", 80, timeout=10)
            conn.request("GET", "/get")
            r = conn.getresponse()
            r.read()
            with lock:
                if r.status == 200:
                    stats["ok"] += 1
                else:
                    stats["errors"].append("status %d" % r.status)
        except Exception as e:
            with lock:
                stats["errors"].append("%s: %r" % (type(e).__name__, e))
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(0.01)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(stats))
"#;

fn ready_status(env: &TestEnv) -> (u16, String) {
    let r = env.sidecar().local_get(STATUS_PORT, "/healthz/ready");
    (r.status, r.body)
}

/// `sluice proxy-status` run in the pod against the monitoring port `port`.
fn proxy_status(env: &TestEnv, port: u16, node: Option<&str>) -> String {
    let mut cmd = env.pod.cmd(sluice_e2e::prereq::sluice_bin());
    cmd.args(["proxy-status", "--control", &format!("127.0.0.1:{port}")]);
    cmd.args(node);
    let out = cmd.output().expect("sluice proxy-status");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "sluice proxy-status failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_sidecar_fed_by_sluice_control_enforces_its_config_and_outlives_it() {
    let mut env = TestEnv::new("control_plane_feed");
    env.config
        .write("mesh.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    env.config.write("vs.yaml", &vs_httpbin_timeout("3s"));

    // No control plane yet: not ready, says why, and refuses traffic.
    env.start_sidecar(
        SidecarOpts::captured()
            .xds("127.0.0.1:15010")
            .without_waiting(),
    );
    let why = eventually("not ready, waiting", Duration::from_secs(10), || {
        let (status, body) = ready_status(&env);
        (status == 503 && body.contains("control plane"))
            .then_some(body.clone())
            .ok_or(format!("{status} {body}"))
    });
    assert!(why.contains("127.0.0.1:15010"), "{why}");
    let r = env.curl("http://httpbin.org/get").max_time(3.0).run();
    assert_ne!(
        r.status, 200,
        "a sidecar without config must not pass traffic:\n{r}"
    );

    // The control plane comes up: the sidecar connects (within its backoff), applies, is ready.
    env.start_control("control-a", 15010);
    eventually("ready once fed", Duration::from_secs(20), || {
        let (status, body) = ready_status(&env);
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    });
    env.curl("http://httpbin.org/get").run().expect_status(200);
    // REGISTRY_ONLY from the mesh config the control plane sent: an unknown host is blocked.
    env.curl("http://edition.cnn.com/").run().expect_status(502);
    // Seed 001's 3 s timeout, from the VirtualService the control plane sent.
    let started = Instant::now();
    env.curl("http://httpbin.org/delay/5")
        .max_time(10.0)
        .run()
        .expect_status(504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800) && took < Duration::from_secs(5),
        "the 3 s route timeout answered after {took:?}"
    );

    // proxy-status and istiod's metrics see one synced proxy.
    let status = eventually("proxy-status SYNCED", Duration::from_secs(5), || {
        let out = proxy_status(&env, 15014, None);
        (out.contains("sidecar~") && out.contains("SYNCED") && out.contains("control-a"))
            .then_some(out.clone())
            .ok_or(out)
    });
    assert!(status.starts_with("NAME"), "{status}");
    let per_type = proxy_status(&env, 15014, Some("sidecar~"));
    assert!(
        per_type.contains("networking.istio.io/v1/VirtualService") && per_type.contains("SYNCED"),
        "{per_type}"
    );
    let metrics = env.local_get(15014, "/metrics");
    metrics.expect_status(200);
    assert!(
        metrics.body.contains("\npilot_xds{version="),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("pilot_xds{") && l.ends_with(" 1")),
        "one connected proxy:\n{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("pilot_xds_pushes{type=\"networking.istio.io/v1/ServiceEntry\"}"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("pilot_proxy_convergence_time_bucket"),
        "{}",
        metrics.body
    );

    // The control plane dies under load: no request fails. The timeout changes while it is
    // down; once it is back, the sidecar reconnects and applies the change.
    let script = env.dir().join("load.py");
    std::fs::write(&script, LOAD).unwrap();
    let load = env
        .pod
        .cmd("python3")
        .arg(&script)
        .args(["8", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(1));
    env.stop_server("control-a");
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = ready_status(&env);
    assert_eq!(
        status, 200,
        "a lost control plane must not change readiness: {body}"
    );
    env.config.write("vs.yaml", &vs_httpbin_timeout("1s"));
    env.start_control("control-a2", 15010);
    let out = load.wait_with_output().expect("load generator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "load generator failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).expect("load stats");
    assert!(
        stats["errors"].as_array().is_some_and(Vec::is_empty),
        "requests failed while the control plane was away: {stats}"
    );
    assert!(stats["ok"].as_u64().unwrap_or(0) > 50, "{stats}");
    eventually(
        "the 1 s timeout arrives after the restart",
        Duration::from_secs(20),
        || {
            let started = Instant::now();
            let r = env.curl("http://httpbin.org/delay/2").max_time(5.0).run();
            (r.status == 504 && started.elapsed() < Duration::from_millis(1900))
                .then_some(())
                .ok_or(format!("{r}"))
        },
    );

    // A config the control plane refuses is never sent: the sidecar keeps the last good one.
    env.config
        .write("vs.yaml", &vs_httpbin_timeout("2 seconds"));
    sluice_e2e::settle();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    env.curl("http://httpbin.org/delay/2")
        .max_time(5.0)
        .run()
        .expect_status(504);
    assert!(started.elapsed() < Duration::from_millis(1900));
    let control_log = env.server_log("control-a2");
    assert!(
        control_log.contains("vs.yaml") && control_log.contains("timeout"),
        "the control plane names the refused file and field:\n{control_log}"
    );
}

#[test]
fn with_two_control_plane_replicas_losing_the_one_in_use_changes_nothing_delta_xds() {
    let mut env = TestEnv::new("control_plane_replicas");
    env.config
        .write("mesh.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    env.config.write("vs.yaml", &vs_httpbin_timeout("3s"));
    env.start_control("control-a", 15010);
    env.start_control("control-b", 15020);
    // Delta xDS: after the failover, the sidecar resumes from the versions it holds.
    env.start_sidecar(
        SidecarOpts::captured()
            .xds("127.0.0.1:15010,127.0.0.1:15020")
            .arg("--xds-delta"),
    );
    env.curl("http://httpbin.org/get").run().expect_status(200);
    let a = proxy_status(&env, 15014, None);
    assert!(
        a.contains("sidecar~"),
        "the sidecar starts on the first replica:\n{a}"
    );

    env.stop_server("control-a");
    env.curl("http://httpbin.org/get").run().expect_status(200);
    eventually(
        "the sidecar moves to the second replica",
        Duration::from_secs(20),
        || {
            let b = proxy_status(&env, 15024, None);
            (b.contains("sidecar~") && b.contains("SYNCED"))
                .then_some(())
                .ok_or(b)
        },
    );
    // A change now arrives through the second replica.
    env.config.write("vs.yaml", &vs_httpbin_timeout("1s"));
    eventually("the change arrives", Duration::from_secs(10), || {
        let started = Instant::now();
        let r = env.curl("http://httpbin.org/delay/2").max_time(5.0).run();
        (r.status == 504 && started.elapsed() < Duration::from_millis(1900))
            .then_some(())
            .ok_or(format!("{r}"))
    });
}

// === against the independent peer (apps/xds_peer.py: grpcio, Envoy's ADS from PyPI) ===

const SERVICE_ENTRY: &str = "networking.istio.io/v1/ServiceEntry";
const VIRTUAL_SERVICE: &str = "networking.istio.io/v1/VirtualService";
const MESH_CONFIG: &str = "core/v1alpha1/MeshConfig";

/// REGISTRY_ONLY, httpbin.org, and a VirtualService with `route`.
fn peer_config(version: &str, route: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "version": version,
        MESH_CONFIG: [{"spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}, "accessLogFile": "/dev/stdout"}}],
        SERVICE_ENTRY: [{
            "name": "default/httpbin-ext",
            "spec": {"hosts": ["httpbin.org"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "resolution": "DNS", "location": "MESH_EXTERNAL"},
        }],
        VIRTUAL_SERVICE: [{
            "name": "default/httpbin-ext",
            "spec": {"hosts": ["httpbin.org"], "http": [{"timeout": "3s", "route": route}]},
        }],
    })
}

#[test]
fn a_config_the_sidecar_refuses_is_nacked_with_the_field_and_traffic_is_untouched() {
    use sluice_e2e::xds_peer::XdsPeerServer;
    let mut env = TestEnv::new("control_plane_nack");
    let route = serde_json::json!([{"destination": {"host": "httpbin.org"}}]);
    let server = XdsPeerServer::start_in(
        &env.pod,
        "127.0.0.1".parse().unwrap(),
        env.dir(),
        15010,
        &peer_config("1", route),
    )
    .unwrap();
    env.start_sidecar(SidecarOpts::captured().xds("127.0.0.1:15010"));
    env.curl("http://httpbin.org/get").run().expect_status(200);
    env.curl("http://edition.cnn.com/").run().expect_status(502);
    // Everything the peer sent was ACKed, at the version it sent.
    server
        .wait_for(
            |r| {
                r["type_url"] == VIRTUAL_SERVICE
                    && r["version_info"] == "1"
                    && r["error_detail"].is_null()
                    && r["response_nonce"] != ""
            },
            Duration::from_secs(10),
        )
        .unwrap();

    // Version 2 has a negative weight, which proto3 carries and Istio's validation refuses.
    let bad = serde_json::json!([{"destination": {"host": "httpbin.org"}, "weight": -5}]);
    server.update(&peer_config("2", bad)).unwrap();
    let nack = server
        .wait_for(
            |r| r["type_url"] == VIRTUAL_SERVICE && !r["error_detail"].is_null(),
            Duration::from_secs(10),
        )
        .unwrap();
    let message = nack["error_detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("VirtualService default/httpbin-ext: spec.http[0].route[0].weight"),
        "the NACK names the resource and field as validate does: {nack}"
    );
    assert_eq!(
        nack["version_info"], "1",
        "a NACK reports the version still held: {nack}"
    );
    // The last good config keeps serving.
    env.curl("http://httpbin.org/get").run().expect_status(200);
    env.curl("http://edition.cnn.com/").run().expect_status(502);
    let (status, _) = ready_status(&env);
    assert_eq!(status, 200);
}

#[test]
fn an_independent_client_reads_what_sluice_control_serves() {
    use sluice_e2e::xds_peer::{xds_peer_client, XdsClientOptions};
    let mut env = TestEnv::new("control_plane_peer_client");
    env.config
        .write("mesh.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    env.config.write("vs.yaml", &vs_httpbin_timeout("3s"));
    env.start_control("control-a", 15010);
    let lines = xds_peer_client(
        "127.0.0.1:15010",
        &[
            SERVICE_ENTRY,
            "networking.istio.io/v1alpha3/VirtualService",
            MESH_CONFIG,
        ],
        &XdsClientOptions::default()
            .in_netns(&env.pod)
            .node_id("sidecar~10.0.0.9~peer.default~default.svc.cluster.local")
            .with_defaults()
            .responses(3)
            .timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let response = |t: &str| {
        lines
            .iter()
            .find(|l| l["type_url"] == t && l.get("sent").is_none())
            .unwrap_or_else(|| panic!("no {t} response in {lines:?}"))
            .clone()
    };
    let se = response(SERVICE_ENTRY);
    let resource = &se["resources"][0];
    assert_eq!(resource["name"], "default/httpbin-ext", "{se}");
    assert_eq!(resource["mcp"], true, "{se}");
    assert_eq!(
        resource["spec"]["hosts"],
        serde_json::json!(["httpbin.org"]),
        "{se}"
    );
    assert_eq!(resource["spec"]["ports"][0]["number"], 80, "{se}");
    assert_eq!(resource["spec"]["resolution"], "DNS", "{se}");
    assert_eq!(resource["spec"]["location"], "MESH_EXTERNAL", "{se}");
    // Asked by its v1alpha3 alias: served, under the type URL asked for.
    let vs = response("networking.istio.io/v1alpha3/VirtualService");
    assert_eq!(
        vs["resources"][0]["spec"]["http"][0]["timeout"], "3s",
        "{vs}"
    );
    // MeshConfig is the bare message, as istiod sends it.
    let mesh = response(MESH_CONFIG);
    assert_eq!(mesh["resources"][0]["mcp"], false, "{mesh}");
    assert_eq!(
        mesh["resources"][0]["spec"]["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY",
        "{mesh}"
    );
    assert_eq!(
        mesh["resources"][0]["spec"]["accessLogFile"], "/dev/stdout",
        "{mesh}"
    );
    // The control plane counted the peer's three ACKs (the stream has ended since, so it is
    // no longer among the connected proxies).
    eventually(
        "the peer's ACKs reach the control plane",
        Duration::from_secs(5),
        || {
            let m = env.local_get(15014, "/metrics");
            m.body
                .lines()
                .any(|l| l == "pilot_proxy_convergence_time_count 3")
                .then_some(())
                .ok_or(m.body)
        },
    );
}

/// Two Secrets, one in the sidecar's namespace and one in another.
const SECRETS: &str = "\
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: default}
type: Opaque
data: {token: c2VjcmV0}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: other}
type: Opaque
data: {token: b3RoZXI=}
";

#[test]
fn over_mutual_tls_the_certificate_fixes_the_namespace_and_only_its_secrets_are_sent() {
    use sluice_e2e::xds_peer::{xds_peer_client, XdsClientOptions};
    let mut env = TestEnv::new("control_plane_mtls");
    env.config
        .write("mesh.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    env.config.write("secrets.yaml", SECRETS);
    // A mesh root; the control plane and the sidecar each issue their own identity from it.
    let ca = env.dir().join("mesh-ca");
    let out = std::process::Command::new(sluice_e2e::prereq::sluice_bin())
        .args(["ca", "init", "--dir", &ca.to_string_lossy()])
        .output()
        .expect("sluice ca init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The sidecar runs as uid 1337 and issues its own certificate with the root key (a test
    // shortcut; `sluice ca issue` hands out certificates otherwise).
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX", &ca.to_string_lossy()])
        .status();
    let ca_arg = ca.to_string_lossy().to_string();
    env.start_control_with("control-tls", 15010, &["--mesh-ca", &ca_arg]);
    env.start_sidecar(
        SidecarOpts::captured()
            .xds("127.0.0.1:15012")
            .arg("--mesh-ca")
            .arg(&ca_arg),
    );
    env.curl("http://httpbin.org/get").run().expect_status(200);

    // The control plane knows the sidecar by its certificate.
    let syncz = env.local_get(15014, "/debug/syncz");
    let proxies: serde_json::Value = serde_json::from_str(&syncz.body).expect("syncz JSON");
    let sidecar = &proxies[0];
    assert_eq!(
        sidecar["identity"], "spiffe://cluster.local/ns/default/sa/default",
        "{proxies}"
    );
    assert_eq!(sidecar["namespace"], "default", "{proxies}");
    assert_eq!(
        sidecar["types"]["core/v1/Secret"]["acked"], sidecar["types"]["core/v1/Secret"]["sent"],
        "{proxies}"
    );
    // It received its namespace's Secret and not the other one.
    let metrics = env.local_get(15014, "/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "sluice_xds_scoped_resources_total{type=\"core/v1/Secret\"} 1"),
        "{metrics}"
    );

    // Over plaintext, no Secret at all, whatever the node claims.
    let lines = xds_peer_client(
        "127.0.0.1:15010",
        &["core/v1/Secret"],
        &XdsClientOptions::default()
            .in_netns(&env.pod)
            .node_id("sidecar~10.0.0.9~peer.default~default.svc.cluster.local")
            .node_metadata(serde_json::json!({"NAMESPACE": "default"}))
            .timeout(Duration::from_secs(30)),
    )
    .unwrap();
    let response = lines
        .iter()
        .find(|l| l["type_url"] == "core/v1/Secret" && l.get("sent").is_none())
        .expect("a Secret response");
    assert_eq!(
        response["resources"].as_array().map(Vec::len),
        Some(0),
        "no Secret crosses the plaintext port: {response}"
    );

    // A plaintext client cannot reach 15012.
    let r = env.curl("http://127.0.0.1:15012/").max_time(3.0).run();
    assert_ne!(r.status, 200, "{r}");
}

#[test]
fn the_first_request_after_ready_is_logged_as_the_control_planes_mesh_config_says() {
    let mut env = TestEnv::new("control_plane_access_log");
    env.config.write(
        "mesh.yaml",
        &mesh_configmap("REGISTRY_ONLY", "accessLogEncoding: JSON"),
    );
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    env.start_control("control-a", 15010);
    // Ready means the config has arrived; the log settings arrive with it, not a tick later.
    env.start_sidecar(SidecarOpts::captured().xds("127.0.0.1:15010"));
    env.curl("http://httpbin.org/get").run().expect_status(200);
    let lines = eventually("the request is logged", Duration::from_secs(5), || {
        let lines = env.sidecar().stdout_lines();
        (!lines.is_empty())
            .then_some(lines.clone())
            .ok_or(format!("{lines:?}"))
    });
    let first: serde_json::Value = serde_json::from_str(&lines[0])
        .unwrap_or_else(|e| panic!("the first access-log line is not JSON ({e}): {lines:?}"));
    assert_eq!(first["authority"], "httpbin.org", "{first}");
}

/// The `Sidecar` of the sidecar's namespace (`default`): its own namespace, plus `extra`.
fn sidecar_importing(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress:
  - hosts: [./*{extra}]
"
    )
}

/// The count of `sluice_xds_scoped_resources_total` for `type_url` on the control plane.
fn scoped_resources(env: &TestEnv, type_url: &str) -> u64 {
    let metrics = env.local_get(15014, "/metrics");
    metrics.expect_status(200);
    let prefix = format!("sluice_xds_scoped_resources_total{{type=\"{type_url}\"}} ");
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

#[test]
fn a_sidecar_resource_scopes_what_the_control_plane_sends_and_its_change_is_pushed() {
    let mut env = TestEnv::new("control_plane_sidecar_scope");
    env.config
        .write("mesh.yaml", &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    // www.google.com's ServiceEntry and VirtualService live in another namespace.
    env.config.write(
        "google.yaml",
        &SE_VS_GOOGLE.replace("metadata:\n", "metadata:\n  namespace: partners\n"),
    );
    env.config.write("sidecar.yaml", &sidecar_importing(""));
    env.start_control("control-a", 15010);
    env.start_sidecar(SidecarOpts::captured().xds("127.0.0.1:15010"));

    env.curl("http://httpbin.org/get").run().expect_status(200);
    // Not imported: an unknown host, which REGISTRY_ONLY blocks, as with the folder.
    let r = env.curl("https://www.google.com/get").max_time(5.0).run();
    assert_ne!(r.status, 200, "www.google.com is not imported:\n{r}");
    // And the control plane never sent it: partners' ServiceEntry and VirtualService were
    // withheld from this proxy.
    let se = "networking.istio.io/v1/ServiceEntry";
    let vs = "networking.istio.io/v1/VirtualService";
    assert!(scoped_resources(&env, se) >= 1, "the ServiceEntry withheld");
    assert!(
        scoped_resources(&env, vs) >= 1,
        "the VirtualService withheld"
    );

    // The Sidecar now imports partners/*: no ServiceEntry changed, but what this proxy
    // receives did, so it is pushed, and www.google.com works.
    env.config
        .write("sidecar.yaml", &sidecar_importing(", partners/*"));
    eventually(
        "www.google.com imported once the Sidecar says so",
        Duration::from_secs(20),
        || {
            let r = env.curl("https://www.google.com/get").max_time(5.0).run();
            (r.status == 200).then_some(()).ok_or(format!("{r}"))
        },
    );
    let log = env.server_log("control-a");
    assert!(!log.contains("panicked"), "{log}");
}
