//! Fail closed, never stall, drain gracefully: a sidecar whose mesh config cannot be accepted at
//! startup refuses traffic and says why; files it cannot read (no permission, a FIFO, a link to
//! /dev/zero) are reported and never stall it; a gateway that cannot bind a port or load a
//! certificate is not ready, says why and retries on its own; and a rolling restart of a gateway
//! under load loses no request.

use std::time::{Duration, Instant};

use sluice_e2e::config::{mesh_configmap, SE_HTTPBIN_EXT};
use sluice_e2e::gateway::{GATEWAY_NAMESPACE, HTTPBIN_FQDN, HTTPBIN_PORT};
use sluice_e2e::sidecar::STATUS_PORT;
use sluice_e2e::{eventually, GatewayEnv, SidecarOpts, TestEnv};

const MESH: &str = "mesh.yaml";

#[test]
fn a_mesh_config_refused_at_startup_keeps_the_sidecar_closed_until_it_is_fixed() {
    let mut env = TestEnv::new("fail_closed_mesh");
    // REGISTRY_ONLY, and one misspelled value elsewhere.
    env.config.write(
        MESH,
        &mesh_configmap("REGISTRY_ONLY", "connectTimeout: 10 seconds"),
    );
    env.start_sidecar(SidecarOpts::captured().without_waiting());

    // Not ready, and the reason names the file and the field.
    let reason = eventually("readiness says why", Duration::from_secs(10), || {
        let r = env.sidecar().local_get(15021, "/healthz/ready");
        if r.status == 503 && r.body.contains(MESH) {
            Ok(r.body)
        } else {
            Err(format!("{r}"))
        }
    });
    assert!(reason.contains("connectTimeout"), "{reason}");
    assert!(reason.contains("traffic is refused"), "{reason}");

    // Outbound traffic is refused, not passed through as ALLOW_ANY would.
    for _ in 0..3 {
        let r = env.curl("http://httpbin.org/get").max_time(5.0).run();
        assert_ne!(
            r.status, 200,
            "a closed sidecar must not pass traffic:\n{r}"
        );
        assert_ne!(r.exit_code, 0, "{r}");
    }
    let log = std::fs::read_to_string(env.dir().join("sidecar.stderr.log")).unwrap_or_default();
    assert!(log.contains("refusing a connection"), "{log}");

    // Fixed: ready, and REGISTRY_ONLY is what applies.
    env.config.write(
        MESH,
        &mesh_configmap("REGISTRY_ONLY", "connectTimeout: 10s"),
    );
    eventually("ready once fixed", Duration::from_secs(5), || {
        let r = env.sidecar().local_get(15021, "/healthz/ready");
        (r.status == 200).then_some(()).ok_or(format!("{r}"))
    });
    env.curl("http://httpbin.org/get").run().expect_status(502);

    // Emptied in place while running: the mesh stays REGISTRY_ONLY.
    std::fs::write(env.config.file(MESH), "").unwrap();
    sluice_e2e::settle();
    env.curl("http://httpbin.org/get").run().expect_status(502);
    let dump = env.admin_get("/config_dump").body;
    assert!(dump.contains("last good version keeps serving"), "{dump}");
}

#[test]
fn unreadable_files_fifos_and_devices_are_reported_and_never_stall_the_sidecar() {
    let mut env = TestEnv::new("fail_closed_files");
    let h = env.hosts;
    env.config.write(MESH, &mesh_configmap("REGISTRY_ONLY", ""));
    env.config.write("se.yaml", SE_HTTPBIN_EXT);
    env.start_sidecar(SidecarOpts::captured());
    env.curl("http://httpbin.org/get").run().expect_status(200);

    // The sidecar runs as uid 1337: a file it may not read, a FIFO nobody writes, a link to
    // /dev/zero, and a directory it may not list.
    let se = env.config.file("se.yaml");
    std::fs::set_permissions(&se, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let fifo = env.config.file("fifo.yaml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", env.config.file("zero.yaml")).unwrap();
    let private = env.config.file("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();

    // Reported in /config_dump, each with its reason.
    let dump = eventually("problems reported", Duration::from_secs(5), || {
        let d = env.admin_get("/config_dump").body;
        let all = [
            "se.yaml:0: cannot read file: Permission denied",
            "fifo.yaml:0: not a regular file (a FIFO)",
            "zero.yaml:0: not a regular file (a character device)",
            "private:0: cannot read directory: Permission denied",
        ];
        match all.iter().find(|p| !d.contains(*p)) {
            None => Ok(d),
            Some(missing) => Err(format!("missing {missing:?} in {d}")),
        }
    });
    assert!(
        dump.contains("\"refused\": true") || dump.contains("\"refused\":true"),
        "{dump}"
    );
    // The unreadable ServiceEntry keeps its last good version.
    env.curl("http://httpbin.org/get").run().expect_status(200);
    // And the store is not stuck: a new change applies.
    env.config.write(MESH, &mesh_configmap("ALLOW_ANY", ""));
    eventually("the mesh change applies", Duration::from_secs(5), || {
        let r = env.curl(&format!("http://{}/get", h.httpbin)).run();
        (r.status == 200).then_some(()).ok_or(format!("{r}"))
    });
    let r = env.sidecar().local_get(15021, "/healthz/ready");
    assert_eq!(r.status, 200, "a running sidecar stays ready: {r}");
    // Let the teardown remove the directory.
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}

fn gateway_yaml(tls_cert: &str, tls_key: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GATEWAY_NAMESPACE}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [\"*\"]
  - port: {{number: 8080, name: http-alt, protocol: HTTP}}
    hosts: [\"*\"]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [\"*\"]
    tls: {{mode: SIMPLE, serverCertificate: {tls_cert}, privateKey: {tls_key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: {GATEWAY_NAMESPACE}}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: {HTTPBIN_FQDN}, port: {{number: {HTTPBIN_PORT}}}}}
"
    )
}

#[test]
fn a_gateway_with_a_busy_port_or_missing_certificates_is_not_ready_and_retries_on_its_own() {
    let mut env = GatewayEnv::new("fail_closed_gw");
    let certs = env.dir().join("gateway-certs");
    let (cert, key) = (certs.join("late.pem"), certs.join("late.key"));
    env.apply(
        "gateway.yaml",
        &gateway_yaml(&cert.to_string_lossy(), &key.to_string_lossy()),
    );
    // Another process holds 8080 in the gateway's namespace.
    let mut squatter = env
        .gw
        .cmd("python3")
        .args([
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',8080))\ns.listen()\nprint('bound',flush=True)\ntime.sleep(600)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::BufRead;
        let mut line = String::new();
        let out = squatter.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "bound");
    }
    env.start_gateway_unready();

    let body = eventually(
        "not ready, naming both causes",
        Duration::from_secs(10),
        || {
            let r = env.gateway().local_get(STATUS_PORT, "/healthz/ready");
            if r.status == 503 && r.body.contains("8080") && r.body.contains("late.pem") {
                Ok(r.body)
            } else {
                Err(format!("{r}"))
            }
        },
    );
    assert!(body.contains("another process listens"), "{body}");
    let stderr = env.gateway().stderr();
    assert!(
        stderr.contains("gateway port 8080") && stderr.contains("retrying every"),
        "{stderr}"
    );
    assert!(stderr.contains("late.pem"), "{stderr}");
    // Port 80 serves meanwhile.
    env.curl(&env.http_url(80, "/get")).run().expect_status(200);

    // The port is freed: bound on its own, no config change.
    let _ = squatter.kill();
    let _ = squatter.wait();
    eventually(
        "8080 bound after the squatter left",
        Duration::from_secs(10),
        || {
            let r = env.gateway().local_get(STATUS_PORT, "/healthz/ready");
            if r.body.contains("8080") {
                Err(format!("{r}"))
            } else {
                Ok(())
            }
        },
    );
    // The gateway's pooled connection to httpbin may be one gunicorn is closing at that very
    // moment (its keep-alive is 2 s; this comes ~3 s after the request on 80): Envoy answers
    // that race with 503 UC too, and Istio's default retry policy does not retry it. A second
    // request then gets a fresh connection.
    let r = env.curl(&env.http_url(8080, "/get")).run();
    if !(r.exit_code == 0 && r.status == 503 && r.body.contains("connection termination")) {
        r.expect_status(200);
    } else {
        env.curl(&env.http_url(8080, "/get"))
            .run()
            .expect_status(200);
    }
    // The certificate appears (a Secret volume mounted late): ready on its own.
    env.install_cert_files(&env.certs.server.clone(), "late");
    eventually(
        "ready once the certificate exists",
        Duration::from_secs(10),
        || {
            let r = env.gateway().local_get(STATUS_PORT, "/healthz/ready");
            (r.status == 200).then_some(()).ok_or(format!("{r}"))
        },
    );
    env.curl(&env.https_url(443, "/get"))
        .run()
        .expect_status(200);
}

/// Keep-alive clients that count every failure: N threads, each reusing its connection until the
/// server says `connection: close`; one request in four is slow (in flight during the restart).
const LOAD: &str = r#"
import http.client, json, sys, threading, time
host, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
stats = {"ok": 0, "errors": [], "statuses": {}, "closed_by_server": 0}
lock = threading.Lock()
def worker(i):
    conn = None
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        n += 1
        path = "/delay/1" if n % 4 == 0 else "/get"
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, 80, timeout=10)
            conn.request("GET", path, headers={"Host": "httpbin.example.com"})
            r = conn.getresponse()
            r.read()
            with lock:
                stats["statuses"][r.status] = stats["statuses"].get(r.status, 0) + 1
                if r.status == 200:
                    stats["ok"] += 1
                else:
                    stats["errors"].append("status %d on %s" % (r.status, path))
            if (r.getheader("connection") or "").lower() == "close":
                with lock:
                    stats["closed_by_server"] += 1
                conn.close()
                conn = None
        except Exception as e:
            with lock:
                stats["errors"].append("%s on %s: %r" % (type(e).__name__, path, e))
            if conn is not None:
                conn.close()
            conn = None
ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(stats))
"#;

#[test]
fn a_rolling_restart_of_a_gateway_under_load_fails_no_request() {
    let mut env = GatewayEnv::new("fail_closed_drain");
    let a = env.addrs;
    let vip = format!("10.234.{}.50", a.subnet);
    env.apply("gateway.yaml", &gateway_yaml("/nonexistent.pem", "/nonexistent.key").replace(
        "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, serverCertificate: /nonexistent.pem, privateKey: /nonexistent.key}\n",
        "",
    ));
    env.start_gateway();
    let second = env.add_host("gateway2", 4);
    let second_ip = format!("10.234.{}.4", a.subnet);

    // kube-proxy in miniature: the Service address is DNATed to the ready replica. Existing
    // connections keep their replica (conntrack); new ones follow the rule.
    let dnat = |to: &str| {
        vec![
            "-t".to_string(),
            "nat".into(),
            "-A".into(),
            "OUTPUT".into(),
            "-d".into(),
            vip.clone(),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            "80".into(),
            "-j".into(),
            "DNAT".into(),
            "--to-destination".into(),
            format!("{to}:80"),
        ]
    };
    let iptables = |ns: &sluice_e2e::Netns, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.run("iptables", &args);
    };
    iptables(&env.client, &dnat(&a.gateway.to_string()));
    env.curl(&format!("http://{vip}/get"))
        .header("Host: httpbin.example.com")
        .run()
        .expect_status(200);

    let script = env.dir().join("load.py");
    std::fs::write(&script, LOAD).unwrap();
    let load = env
        .client
        .cmd("python3")
        .arg(&script)
        .args([vip.as_str(), "9", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(2));

    // The rolling restart: a new replica, the Service moves to it, the old one is terminated.
    let mut new = env.spawn_gateway_in(&second);
    let flush = ["-t", "nat", "-F", "OUTPUT"].map(String::from);
    iptables(&env.client, &flush);
    iptables(&env.client, &dnat(&second_ip));
    let mut old = env.take_gateway().expect("the first gateway");
    let terminated = Instant::now();
    old.terminate();
    let draining = eventually(
        "the old replica reports draining",
        Duration::from_secs(2),
        || {
            let r = old.local_get(STATUS_PORT, "/healthz/ready");
            (r.status == 503)
                .then_some(r.body.clone())
                .ok_or(format!("{r}"))
        },
    );
    assert!(draining.contains("DRAINING"), "{draining}");
    let status = old
        .wait_exit(Duration::from_secs(10))
        .expect("the old replica exits after draining");
    assert!(status.success(), "the old replica exited with {status}");
    let drained_in = terminated.elapsed();

    let out = load.wait_with_output().expect("load generator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "load generator failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).expect("load stats");
    let errors = stats["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.is_empty(),
        "failed requests during the rolling restart: {stats}"
    );
    assert!(stats["ok"].as_u64().unwrap_or(0) > 50, "{stats}");
    assert!(
        stats["closed_by_server"].as_u64().unwrap_or(0) > 0,
        "the draining replica should have closed keep-alive connections: {stats}"
    );
    assert!(
        drained_in < Duration::from_secs(8),
        "drain took {drained_in:?} (limit 5 s)"
    );
    // Both replicas served.
    let old_log = std::fs::read_to_string(env.dir().join("gateway.stdout.log")).unwrap_or_default();
    assert!(old_log.contains("GET /get"), "{old_log}");
    eventually("the new replica served", Duration::from_secs(3), || {
        let l = new.access_log();
        (!l.is_empty())
            .then_some(())
            .ok_or("no access log yet".into())
    });
    new.stop();
}

#[test]
fn gateway_tls_prefers_the_server_cipher_order_and_resumes_sessions() {
    let mut env = GatewayEnv::new("fail_closed_tls");
    let (cert, key) = (env.certs.server.cert.clone(), env.certs.server.key.clone());
    env.apply(
        "gateway.yaml",
        &gateway_yaml(&cert.to_string_lossy(), &key.to_string_lossy()),
    );
    env.start_gateway();
    let connect = format!("{}:443", env.addrs.gateway);
    let s_client = |extra: &[&str]| -> String {
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "httpbin.example.com",
            "-tls1_2",
        ];
        args.extend_from_slice(extra);
        let out = env
            .client
            .cmd("openssl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The client lists AES-128 first; the server's order (AES-256 first, as Envoy's) wins.
    let out = s_client(&[
        "-cipher",
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
         ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384",
    ]);
    assert!(
        out.contains("AES256-GCM-SHA384"),
        "server cipher preference not applied:\n{out}"
    );
    // Session resumption: a ticket from the first handshake is accepted by the second.
    let sess = env.dir().join("tls12.sess");
    let sess = sess.to_string_lossy();
    let first = s_client(&["-sess_out", &sess]);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let second = s_client(&["-sess_in", &sess]);
    assert!(
        second.contains("Reused, TLSv1.2"),
        "session not resumed:\n{second}"
    );
}
