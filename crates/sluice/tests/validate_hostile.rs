//! `sluice validate` on files that once crashed it: each is an ordinary error (exit 1, one line
//! naming the file, line and problem), never a panic or a stack overflow.

use std::process::Command;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn validate(name: &str, text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write test file");
    let out = Command::new(SLUICE)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&*path.to_string_lossy(), name);
    (
        out.status.code(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_document_nested_2500_levels_is_an_error_not_a_crash() {
    let (code, stdout, stderr) = validate("deep.yaml", &format!("{}x\n", "- ".repeat(2_500)));
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "deep.yaml:1: document nested deeper than {} levels\n",
            sluice_api::decode::MAX_DEPTH
        )
    );
}

#[test]
fn a_huge_timeout_is_an_error_naming_the_field_not_a_panic() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts:\n  - a.example.com\n  http:\n  - timeout: 99999999999999999999s\n    route:\n    - destination:\n        host: a.example.com\n";
    let (code, stdout, stderr) = validate("timeout.yaml", text);
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(
        stdout,
        "timeout.yaml:9: VirtualService default/vs: spec.http[0].timeout: duration \"99999999999999999999s\" is too long: the maximum is 315576000000s (10,000 years, the range of a protobuf Duration)\n"
    );
}

#[test]
fn one_host_written_3000_times_prints_a_few_lines() {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts:\n",
    );
    text.push_str(&"  - a.example.com\n".repeat(3_000));
    text.push_str("  http:\n  - route:\n    - destination:\n        host: a.example.com\n");
    let (code, stdout, stderr) = validate("hosts.yaml", &text);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(
        lines[0],
        "hosts.yaml:8: VirtualService default/vs: spec.hosts[1]: duplicate hosts in virtual service: a.example.com & a.example.com"
    );
    assert_eq!(
        lines[5],
        "hosts.yaml:13: VirtualService default/vs: spec.hosts[*]: \u{2026} and 2994 more like this"
    );
}

/// Gateway and DestinationRule certificate files: present, missing, a directory, a FIFO, and a
/// path through a regular file. Each that cannot be read is a warning naming the file, line,
/// resource and field; the resources are not refused (exit 0). Looking at a FIFO must not
/// block on it.
#[test]
fn certificate_files_that_cannot_be_read_are_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("tls.crt"), "not checked for PEM here").expect("write");
    std::fs::create_dir(d.join("ca-dir")).expect("mkdir");
    let fifo = d.join("key.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo (coreutils)");
    assert!(made.success(), "mkfifo failed");
    let text = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [a.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: {d}/tls.crt
      privateKey: {d}/key.fifo
      caCertificates: {d}/ca-dir
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr}}
spec:
  host: a.example.com
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: {d}/missing.crt
      privateKey: {d}/tls.crt/key
      caCertificates: {d}/tls.crt
",
        d = d.display()
    );
    let path = d.join("gw.yaml");
    std::fs::write(&path, &text).expect("write config");
    let out = Command::new(SLUICE)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout)
        .replace(&*path.to_string_lossy(), "gw.yaml")
        .replace(&*d.to_string_lossy(), "D");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout,
        "gw.yaml:12: Gateway istio-system/gw: spec.servers[0].tls.privateKey: warning: file D/key.fifo is not a regular file (the gateway will not be ready until it is a regular file)
gw.yaml:13: Gateway istio-system/gw: spec.servers[0].tls.caCertificates: warning: file D/ca-dir is not a regular file (the gateway will not be ready until it is a regular file)
gw.yaml:23: DestinationRule default/dr: spec.trafficPolicy.tls.clientCertificate: warning: file D/missing.crt does not exist (TLS connections to a.example.com will fail until it does)
gw.yaml:24: DestinationRule default/dr: spec.trafficPolicy.tls.privateKey: warning: file D/tls.crt/key is not readable: Not a directory (TLS connections to a.example.com will fail until it is readable)
✔ 2 resources valid, 4 warnings
"
    );

    let out = Command::new(SLUICE)
        .args(["analyze", "--all-namespaces"])
        .arg(&path)
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout)
        .replace(&*path.to_string_lossy(), "gw.yaml")
        .replace(&*d.to_string_lossy(), "D");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let slu: Vec<&str> = stdout.lines().filter(|l| l.contains("[SLU0002]")).collect();
    assert_eq!(
        slu,
        [
            "Warning [SLU0002] (DestinationRule default/dr gw.yaml:23) spec.trafficPolicy.tls.clientCertificate: file D/missing.crt does not exist (TLS connections to a.example.com will fail until it does)",
            "Warning [SLU0002] (DestinationRule default/dr gw.yaml:24) spec.trafficPolicy.tls.privateKey: file D/tls.crt/key is not readable: Not a directory (TLS connections to a.example.com will fail until it is readable)",
            "Warning [SLU0002] (Gateway istio-system/gw gw.yaml:12) spec.servers[0].tls.privateKey: file D/key.fifo is not a regular file (the gateway will not be ready until it is a regular file)",
            "Warning [SLU0002] (Gateway istio-system/gw gw.yaml:13) spec.servers[0].tls.caCertificates: file D/ca-dir is not a regular file (the gateway will not be ready until it is a regular file)",
        ],
        "{stdout}"
    );
}
