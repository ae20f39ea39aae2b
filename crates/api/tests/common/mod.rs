//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sluice_api::{decode_str, validate, Diagnostic, LoadResult, Resource, Severity};

/// The file name every in-memory test document is decoded as.
pub const FILE: &str = "t.yaml";

/// Decodes `text` as if it were the file `t.yaml`.
pub fn decode(text: &str) -> LoadResult {
    decode_str(Path::new(FILE), text)
}

/// Decodes `text`, which must hold exactly one resource and no decode errors.
pub fn decode_one(text: &str) -> Resource {
    let out = decode(text);
    let errors: Vec<String> = out
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "unexpected decode errors: {errors:#?}");
    assert_eq!(out.resources.len(), 1, "expected one resource in:\n{text}");
    out.resources.into_iter().next().expect("one resource")
}

/// Number of lines before `spec:`'s content in documents built by [`doc`].
pub const HEADER_LINES: u32 = 6;

/// A document of `kind` named `ns/t` whose `spec` is `spec` (written at column 0). Spec line `n`
/// is file line `HEADER_LINES + n`.
pub fn doc(kind: &str, spec: &str) -> String {
    let api = match kind {
        "Service" | "Endpoints" | "ConfigMap" | "Secret" => "v1",
        "Ingress" | "IngressClass" => "networking.k8s.io/v1",
        _ => "networking.istio.io/v1",
    };
    let mut out =
        format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: t\n  namespace: ns\nspec:\n");
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Decodes one document and validates it; decode warnings are included.
pub fn check(text: &str) -> Vec<Diagnostic> {
    let out = decode(text);
    let errors: Vec<String> = out
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "unexpected decode errors: {errors:#?}\nin:\n{text}"
    );
    assert_eq!(out.resources.len(), 1, "expected one resource in:\n{text}");
    let mut diags = out.diagnostics;
    diags.extend(validate(&out.resources[0]));
    diags
}

/// Renders diagnostics one per line, for assertion messages.
pub fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}\n")).collect()
}

/// Asserts that `diags` holds exactly this diagnostic (field, line, severity, message).
pub fn assert_has(diags: &[Diagnostic], severity: Severity, field: &str, line: u32, message: &str) {
    let found = diags.iter().any(|d| {
        d.severity == severity && d.field == field && d.line == line && d.message == message
    });
    assert!(
        found,
        "expected {severity:?} at line {line} on {field}: {message}\ngot:\n{}",
        render(diags)
    );
}

/// Path of a fixture under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}
