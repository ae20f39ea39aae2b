//! `sluice analyze`, `explain` and `suggest` as users run them: output lines and exit codes.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures/seeds")
        .join(name)
}

fn sluice(args: &[&str]) -> Output {
    Command::new(SLUICE)
        .args(args)
        .output()
        .expect("run sluice")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn analyze_seed_004_prints_istioctl_lines_and_exits_79() {
    let files: Vec<PathBuf> = [
        "004-1-destinationrule-recommendation.yaml",
        "004-2-virtualservice-recommendation.yaml",
        "004-3-serviceentry-worldclockapi-port81.yaml",
        "004-4-virtualservice-worldclockapi-timeout.yaml",
    ]
    .iter()
    .map(|f| seed(f))
    .collect();
    let out = Command::new(SLUICE)
        .arg("analyze")
        .args(&files)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(79), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "Error [IST0101] (VirtualService default/recommendation {}:12) Referenced host not found: \"recommendation\"",
            files[1].display()
        )
    );
    assert!(lines[1].starts_with("Warning [IST0174] (DestinationRule default/recommendation "));
    assert!(lines[2].starts_with(&format!(
        "Warning [SLU0001] (VirtualService default/worldclockapi-timeout {}:13) ",
        files[3].display()
    )));
    assert!(lines[2].contains("clients calling port 80 fail"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Analyzers found issues"));

    let json = Command::new(SLUICE)
        .args(["analyze", "-o", "json"])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(79));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v[0]["code"], "IST0101");
    assert_eq!(v[0]["level"], "Error");
    assert_eq!(v[0]["origin"], "VirtualService default/recommendation");
    assert_eq!(
        v[0]["documentationUrl"],
        "https://istio.io/latest/docs/reference/config/analysis/ist0101/"
    );
}

#[test]
fn analyze_fixed_seed_004_is_clean_and_exits_0() {
    let out = Command::new(SLUICE)
        .arg("analyze")
        .arg(seed("004-4-virtualservice-worldclockapi-timeout.yaml"))
        .arg(seed("004-5-serviceentry-worldclockapi-port80.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No validation issues found"));
}

#[test]
fn analyze_warnings_only_exit_0_and_schema_errors_exit_79() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gw.yaml"),
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http}\n",
    )
    .unwrap();
    let out = sluice(&["analyze", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Warning [IST0133] (Gateway default/g "),
        "{}",
        stdout(&out)
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {host: a.example.com}\n      weight: -5\n",
    )
    .unwrap();
    let out = sluice(&["analyze", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(79), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Error [IST0106] (VirtualService default/bad "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn analyze_help_documents_sluice_codes() {
    let out = sluice(&["analyze", "--help"]);
    let text = stdout(&out);
    assert!(text.contains("SLU0001"), "{text}");
    assert!(text.contains("79"), "{text}");
    let list = sluice(&["analyze", "--list-analyzers"]);
    assert_eq!(list.status.code(), Some(0));
    let text = stdout(&list);
    assert!(
        text.contains("IST0173 [Error] DestinationRuleSubsetNotSelectPods"),
        "{text}"
    );
    assert!(text.contains("IST0101 Gateway selector"), "{text}");
}

const EXPLAIN_CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route:
    - destination: {host: httpbin.org}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
";

#[test]
fn explain_routed_and_blocked_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), EXPLAIN_CONFIG).unwrap();
    let cfg = dir.path().to_str().unwrap();
    let out = sluice(&[
        "explain",
        "--config",
        cfg,
        "--from",
        "default/app=sleep",
        "http://httpbin.org/get",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Cluster:   outbound|80||httpbin.org"),
        "{text}"
    );
    assert!(
        text.contains("Rule:      VirtualService default/httpbin http[0]"),
        "{text}"
    );
    assert!(text.contains("Timeout:   3s"), "{text}");

    let out = sluice(&[
        "explain",
        "--config",
        cfg,
        "--from",
        "default/app=sleep",
        "http://example.org/",
    ]);
    let text = stdout(&out);
    assert!(text.contains("block_all"), "{text}");

    let out = sluice(&[
        "explain",
        "--config",
        cfg,
        "-o",
        "json",
        "tcp://192.0.2.7:5432",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outcome"], "blocked");

    let bad = sluice(&["explain", "--config", cfg, "ftp://x:1"]);
    assert_eq!(bad.status.code(), Some(1));
}

const METRICS: &str = "# TYPE sluice_egress_blocked_total counter
sluice_egress_blocked_total{source_workload=\"sleep\",destination_host=\"httpbin.org\",port=\"80\",protocol=\"http\"} 4
sluice_egress_blocked_total{source_workload=\"sleep\",destination_host=\"api.example.com\",port=\"443\",protocol=\"tls\"} 1
";

/// Serves `METRICS` on 127.0.0.1:0 for `n` requests; returns the port.
fn metrics_server(n: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{METRICS}",
                METRICS.len()
            );
        }
    });
    port
}

#[test]
fn suggest_prints_service_entries_for_blocked_hosts() {
    let port = metrics_server(2);
    let out = sluice(&["suggest", "--admin", &format!("127.0.0.1:{port}")]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# blocked for: sleep (4)"), "{text}");
    assert!(text.contains("  name: httpbin-org\n"), "{text}");
    assert!(
        text.contains("    name: tls-443\n    protocol: TLS\n"),
        "{text}"
    );

    // What it prints is accepted by `sluice validate`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("suggested.yaml");
    std::fs::write(&file, &text).unwrap();
    let v = sluice(&["validate", file.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));

    let out = sluice(&[
        "suggest",
        "--stats",
        &format!("http://127.0.0.1:{port}/stats/prometheus"),
    ]);
    assert!(stdout(&out).contains("api-example-com"));

    let refused = sluice(&["suggest", "--admin", "127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(1));
}
