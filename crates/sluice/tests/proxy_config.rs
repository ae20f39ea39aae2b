//! `sluice proxy-config` against a running `sluice sidecar` (the binary, on loopback ports), the
//! sidecar's `POST /logging` changing what it logs, and `--concurrency` as `/server_info`
//! reports it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Kills the sidecar when the test ends, however it ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; the raw response, or `None` if nothing listens.
fn http(port: u16, method: &str, target: &str, host: &str) -> Option<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        c,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok()?;
    Some(resp)
}

fn proxy_config(admin: u16, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(SLUICE)
        .arg("proxy-config")
        .args(args)
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rows of a table, cells split on runs of 2+ spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn has_row(table: &str, want: &[&str]) -> bool {
    rows(table).iter().any(|r| r == want)
}

#[test]
fn proxy_config_prints_a_running_sidecars_config() {
    let dir = tempfile::tempdir().unwrap();
    let dead_port = free_port();
    std::fs::write(
        dir.path().join("httpbin.yaml"),
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-ext, namespace: default}}
spec:
  hosts: [httpbin.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {dead_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: default}}
spec:
  host: httpbin.example.com
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 10}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.example.com]
  http:
  - match: [{{uri: {{prefix: /status}}}}]
    route: [{{destination: {{host: httpbin.example.com}}}}]
  - route: [{{destination: {{host: httpbin.example.com}}}}]
"#
        ),
    )
    .unwrap();
    let (admin, status, stats, outbound, proxy) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let _child = Child(
        Command::new(SLUICE)
            .args(["sidecar", "--config"])
            .arg(dir.path())
            .args(["--inbound-port", "0"])
            .args(["--outbound-port", &outbound.to_string()])
            .args(["--proxy-port", &proxy.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(["--status-port", &status.to_string()])
            .args(["--stats-port", &stats.to_string()])
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(admin, "GET", "/ready", "admin").is_none_or(|r| !r.contains("LIVE")) {
        assert!(
            Instant::now() < deadline,
            "the sidecar did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (ok, out, err) = proxy_config(admin, &["cluster"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SERVICE FQDN"), "{out}");
    assert!(
        has_row(
            &out,
            &[
                "httpbin.example.com",
                "80",
                "-",
                "outbound",
                "EDS",
                "httpbin.default"
            ]
        ),
        "{out}"
    );
    assert!(
        has_row(&out, &["BlackHoleCluster", "-", "-", "-", "STATIC", "-"]),
        "{out}"
    );

    let (ok, out, err) = proxy_config(admin, &["listener"]);
    assert!(ok, "{err}");
    assert!(
        has_row(&out, &["0.0.0.0", "80", "ALL", "Route: 80"]),
        "{out}"
    );
    assert!(
        has_row(
            &out,
            &[
                "0.0.0.0",
                "443",
                "SNI: httpbin.example.com",
                "Cluster: outbound|443||httpbin.example.com"
            ]
        ),
        "{out}"
    );
    assert!(
        has_row(
            &out,
            &[
                "0.0.0.0",
                &outbound.to_string(),
                "ALL",
                "PassthroughCluster"
            ]
        ),
        "{out}"
    );

    let (ok, out, err) = proxy_config(admin, &["route"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("NAME") && out.lines().next().unwrap().contains("VIRTUAL SERVICE"),
        "{out}"
    );
    assert!(
        has_row(
            &out,
            &[
                "80",
                "httpbin.example.com:80",
                "httpbin.example.com",
                "/status*",
                "httpbin.default"
            ]
        ),
        "{out}"
    );
    assert!(
        has_row(
            &out,
            &[
                "80",
                "httpbin.example.com:80",
                "httpbin.example.com",
                "/*",
                "httpbin.default"
            ]
        ),
        "{out}"
    );

    let (ok, out, err) = proxy_config(admin, &["ep"]);
    assert!(ok, "{err}");
    assert!(
        has_row(
            &out,
            &[
                &format!("127.0.0.1:{dead_port}"),
                "HEALTHY",
                "OK",
                "outbound|80||httpbin.example.com"
            ]
        ),
        "{out}"
    );

    let (ok, out, err) = proxy_config(admin, &["cluster", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["clusters"].as_array().is_some_and(|c| !c.is_empty()),
        "{out}"
    );
    // Only the asked section, in JSON and in YAML.
    assert_eq!(v.as_object().unwrap().len(), 1, "{out}");
    let (ok, out, err) = proxy_config(admin, &["route", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert_eq!(
        yaml_top_keys(&out),
        ["virtual_hosts", "tls_routes", "tcp_routes"],
        "{out}"
    );
    assert!(out.contains("- domain: httpbin.example.com\n"), "{out}");

    // /logging: a debug line appears only once debug is switched on.
    let call = || {
        let resp = http(
            proxy,
            "GET",
            "http://httpbin.example.com/get",
            "httpbin.example.com",
        )
        .expect("the explicit proxy answers");
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    };
    let marker = "outbound|80||httpbin.example.com failed";
    call();
    std::thread::sleep(Duration::from_millis(300));
    let before = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!before.contains(marker), "debug logged at info: {before}");
    let resp = http(admin, "POST", "/logging?sluice_proxy=debug", "admin").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("  sluice_proxy: debug\n"), "{resp}");
    call();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = std::fs::read_to_string(&stderr_path).unwrap();
        if after.contains(marker) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no debug line after POST /logging: {after}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn proxy_config_names_the_address_it_could_not_reach() {
    let port = free_port();
    let (ok, out, err) = proxy_config(port, &["cluster"]);
    assert!(!ok, "{out}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("admin API"), "{err}");
}

/// Starts `sluice <kind>` on free loopback ports with `extra` arguments, waits for its admin
/// API and returns `/server_info`'s `command_line_options.concurrency` (Envoy's: the data-plane
/// worker threads).
fn reported_concurrency(kind: &str, extra: &[&str]) -> u64 {
    let dir = tempfile::tempdir().expect("temporary config dir");
    let admin = free_port();
    let mut cmd = Command::new(SLUICE);
    cmd.args([kind, "--config"])
        .arg(dir.path())
        .args(["--admin-port", &admin.to_string()])
        .args(["--status-port", &free_port().to_string()])
        .args(["--stats-port", &free_port().to_string()])
        .args(["--log-level", "warn"])
        .env_remove("SLUICE_CONCURRENCY")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if kind == "sidecar" {
        cmd.args(["--proxy-port", &free_port().to_string()])
            .args(["--outbound-port", &free_port().to_string()])
            .args(["--inbound-port", "0"]);
    } else {
        cmd.args(["--bind", "127.0.0.1"]);
    }
    let _child = Child(cmd.args(extra).spawn().expect("start sluice"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let resp = http(admin, "GET", "/server_info", "localhost");
        match resp.as_deref().and_then(|r| r.split_once("\r\n\r\n")) {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => break body.to_string(),
            _ => assert!(
                Instant::now() < deadline,
                "{kind}: no /server_info on 127.0.0.1:{admin}: {resp:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let info: serde_json::Value = serde_json::from_str(&body).expect("/server_info is JSON");
    info["command_line_options"]["concurrency"]
        .as_u64()
        .unwrap_or_else(|| panic!("no command_line_options.concurrency in {info}"))
}

#[test]
fn concurrency_sets_the_data_plane_workers() {
    assert_eq!(reported_concurrency("sidecar", &["--concurrency", "3"]), 3);
    assert_eq!(reported_concurrency("gateway", &["--concurrency", "1"]), 1);
}

#[test]
fn sidecars_default_to_two_workers_and_gateways_to_one_per_cpu() {
    assert_eq!(reported_concurrency("sidecar", &[]), 2);
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(reported_concurrency("gateway", &[]), cpus);
    assert_eq!(
        reported_concurrency("sidecar", &["--concurrency", "0"]),
        cpus
    );
}

/// A plain HTTP/1.1 upstream on a free loopback port: answers every request `200 hello`,
/// keep-alive. Returns its port.
fn hello_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
                        if conn.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

#[test]
fn one_worker_serves_traffic_on_the_main_thread() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = hello_upstream();
    std::fs::write(
        dir.path().join("one.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: one, namespace: default}}
spec:
  hosts: [one.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstream}}}}}]
"
        ),
    )
    .unwrap();
    let (status, proxy) = (free_port(), free_port());
    let child = Child(
        Command::new(SLUICE)
            .args(["sidecar", "--concurrency", "1", "--config"])
            .arg(dir.path())
            .args(["--inbound-port", "0"])
            .args(["--outbound-port", &free_port().to_string()])
            .args(["--proxy-port", &proxy.to_string()])
            .args(["--admin-port", &free_port().to_string()])
            .args(["--status-port", &status.to_string()])
            .args(["--stats-port", &free_port().to_string()])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluice"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http(status, "GET", "/healthz/ready", "localhost")
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(Instant::now() < deadline, "the sidecar never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..20 {
        let resp = http(
            proxy,
            "GET",
            &format!("http://one.example/{i}"),
            "one.example",
        )
        .expect("the proxy port answers");
        assert!(resp.starts_with("HTTP/1.1 200"), "request {i}: {resp}");
        assert!(resp.ends_with("hello"), "request {i}: {resp}");
    }
    // One worker is the main thread itself (tokio's current-thread scheduler): no worker pool.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.0.id()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        !threads.iter().any(|t| t.starts_with("tokio-rt-worker")),
        "{threads:?}"
    );
}

/// The top-level keys of a YAML document printed by `-o yaml` (lines that start a mapping key
/// at column 0).
fn yaml_top_keys(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter(|l| !l.starts_with([' ', '-', '#']) && !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn proxy_config_route_reads_a_gateway_and_output_formats_print_only_the_section() {
    // docs/ingress-gateway.md's Gateway and VirtualService as written, on a free port, with
    // the Service they route to, in one file.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  servers:
  - port:
      number: {port}
      name: http
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  gateways:
  - httpbin-gateway
  http:
  - match:
      uri:
        prefix: /status
    route:
    - destination:
        port:
          number: 8000
        name: httpbin
  - match:
      uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        name: httpbin
---
apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: default}}
spec:
  ports: [{{port: 8000, name: http}}]
  selector: {{app: httpbin}}
"
        ),
    )
    .unwrap();
    let admin = free_port();
    let _gateway = Child(
        Command::new(SLUICE)
            .args(["gateway", "--bind", "127.0.0.1", "--config"])
            .arg(&file)
            .args(["--admin-port", &admin.to_string()])
            .args(["--status-port", &free_port().to_string()])
            .args(["--stats-port", &free_port().to_string()])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(admin, "GET", "/ready", "admin").is_none_or(|r| !r.contains("LIVE")) {
        assert!(
            Instant::now() < deadline,
            "the gateway did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (ok, out, err) = proxy_config(admin, &["route"]);
    assert!(ok, "{err}");
    let table = format!("http.{port}");
    let vhost = format!("httpbin.default.svc.cluster.local:{port}");
    for prefix in ["/status*", "/delay*"] {
        assert!(
            has_row(
                &out,
                &[
                    &table,
                    &vhost,
                    "httpbin.default.svc.cluster.local",
                    prefix,
                    "httpbin.default"
                ]
            ),
            "{out}"
        );
    }

    // -o yaml / -o json: the asked section, not the whole dump.
    let (ok, out, err) = proxy_config(admin, &["route", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert_eq!(yaml_top_keys(&out), ["gateway_routes"], "{out}");
    assert!(out.contains(&format!("- name: {table}\n")), "{out}");
    assert!(out.contains("\"/status*\""), "{out}");
    let (ok, out, err) = proxy_config(admin, &["cluster", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert_eq!(yaml_top_keys(&out), ["clusters"], "{out}");
    assert!(
        out.contains("- name: \"outbound|8000||httpbin.default.svc.cluster.local\""),
        "{out}"
    );
    let (ok, out, err) = proxy_config(admin, &["listener", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["listeners", "gateway_ports", "listener_errors"],
        "{out}"
    );
    assert_eq!(
        v["listeners"][0]["address"],
        format!("127.0.0.1:{port}").as_str(),
        "{out}"
    );
    let (ok, out, err) = proxy_config(admin, &["route", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["gateway_routes"], "{out}");
}
