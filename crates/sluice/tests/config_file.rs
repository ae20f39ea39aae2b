//! `--config FILE`: the proxies and the CLI commands take one file as well as a directory; a
//! sidecar started on a file applies an edit of it, live.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

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

/// The status line of a request through the explicit proxy on `port`, if it answers.
fn via_proxy(port: u16, host: &str) -> Option<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        c,
        "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok()?;
    resp.lines().next().map(str::to_string)
}

/// A REGISTRY_ONLY mesh that knows `host`, served by an upstream that answers 200.
fn config(host: &str, upstream: u16) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: default}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstream}}}}}]
"
    )
}

fn hello_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

#[test]
fn a_sidecar_on_one_config_file_applies_its_edits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("istio.yaml");
    let upstream = hello_upstream();
    std::fs::write(&file, config("one.example", upstream)).unwrap();
    let proxy = free_port();
    let _sidecar = Child(
        Command::new(SLUICE)
            .args(["sidecar", "--config"])
            .arg(&file)
            .args(["--inbound-port", "0"])
            .args(["--outbound-port", &free_port().to_string()])
            .args(["--proxy-port", &proxy.to_string()])
            .args(["--admin-port", &free_port().to_string()])
            .args(["--status-port", &free_port().to_string()])
            .args(["--stats-port", &free_port().to_string()])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let wait_for = |host: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = via_proxy(proxy, host);
            if got.as_deref().is_some_and(|l| l.contains(want)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: wanted {want}, got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("one.example", " 200");
    assert!(via_proxy(proxy, "two.example").unwrap().contains(" 502"));

    // The operator edits the file: two.example is allowed, one.example no longer.
    std::fs::write(&file, config("two.example", upstream)).unwrap();
    wait_for("two.example", " 200");
    wait_for("one.example", " 502");
}

#[test]
fn explain_takes_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("istio.yaml");
    std::fs::write(&file, config("one.example", 8080)).unwrap();
    let out = Command::new(SLUICE)
        .args(["explain", "--config"])
        .arg(&file)
        .arg("http://one.example/")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("outbound|80||one.example"), "{stdout}");

    let missing = dir.path().join("missing.yaml");
    let out = Command::new(SLUICE)
        .args(["explain", "--config"])
        .arg(&missing)
        .arg("http://one.example/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such file or directory"), "{stderr}");
}
