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
