//! YAML is read the way Kubernetes reads it. kubectl, the API server and istioctl cut a file
//! into documents on `---` lines (`YAMLReader`, k8s.io/apimachinery/pkg/util/yaml), then turn
//! each into JSON with sigs.k8s.io/yaml, which parses with go-yaml v2 (a port of libyaml) and
//! encodes with Go's encoding/json. Each test states what that pipeline gives for its input.

mod common;

use common::{decode, render};
use serde_json::{json, Value};
use sluice_api::decode::parse_documents;
use sluice_api::{Diagnostic, Spec};

/// The single document of `text`, as JSON.
fn value(text: &str) -> Value {
    let docs = parse_documents(text).unwrap_or_else(|e| panic!("line {}: {e}\n{text}", e.line));
    assert_eq!(docs.len(), 1, "{text}");
    docs.into_iter().next().map(|d| d.value).unwrap_or_default()
}

fn errors(text: &str) -> Vec<Diagnostic> {
    decode(text)
        .diagnostics
        .into_iter()
        .filter(Diagnostic::is_error)
        .collect()
}

#[test]
fn a_flow_sequence_may_close_at_its_keys_indentation() {
    // go-yaml (like libyaml) does not check indentation inside `[...]`: kubectl reads both
    // `hosts` as ["a.example.com", "b.example.com"].
    let nested = "spec:\n  hosts: [\n    \"a.example.com\",\n    \"b.example.com\"\n  ]\n  resolution: DNS\n";
    assert_eq!(
        value(nested),
        json!({"spec": {"hosts": ["a.example.com", "b.example.com"], "resolution": "DNS"}})
    );
    let top_level = "hosts: [\n  \"a.example.com\",\n  \"b.example.com\"\n]\nnext: 1\n";
    assert_eq!(
        value(top_level),
        json!({"hosts": ["a.example.com", "b.example.com"], "next": 1})
    );
    // Items at the key's own column, plain or quoted, and a `{...}` closing at column 1.
    let items_at_key_column =
        "spec:\n  hosts: [\n  a.example.com,\n  \"b.example.com\"\n  ]\n  labels: {\n    app: a\n}\n";
    assert_eq!(
        value(items_at_key_column),
        json!({"spec": {"hosts": ["a.example.com", "b.example.com"], "labels": {"app": "a"}}})
    );
    // A quoted string continued on a line less indented than its key: go-yaml folds the line
    // break into a space and ignores the indentation.
    assert_eq!(value("a:\n  b: \"x\ny\"\n"), json!({"a": {"b": "x y"}}));

    // Lines are those of the text as written.
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\n{nested}  ports: [{{number: 443, name: https, protocol: TLS}}]\n"
    );
    let out = decode(&text);
    assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));
    let r = &out.resources[0];
    let Spec::ServiceEntry(se) = &r.spec else {
        panic!("not a ServiceEntry")
    };
    assert_eq!(se.hosts, ["a.example.com", "b.example.com"]);
    assert_eq!(r.origin.line_of("spec.hosts[1]"), 8);
    assert_eq!(r.origin.line_of("spec.resolution"), 10);
}

#[test]
fn a_syntax_error_after_a_lenient_flow_sequence_is_reported_where_it_is() {
    // The `]` at column 1 is fine for kubectl; the unclosed `[` on line 5 is not.
    let errs = errors("a: [\n  \"x\"\n]\nkind: X\nb: [1, 2\n");
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert!(errs[0].line >= 5, "{}", errs[0]);
    assert!(errs[0].message.starts_with("invalid YAML: "), "{}", errs[0]);
}

#[test]
fn plain_scalars_in_flow_collections_may_contain_colons() {
    // go-yaml ends a plain scalar at `:` only before a space or a line break: `2001:db8::`
    // and `a:b` are strings, not `{2001:db8:: null}`.
    assert_eq!(
        value("addresses: [1.2.3.4, 2001:db8::, a:b, fe80::1]\n"),
        json!({"addresses": ["1.2.3.4", "2001:db8::", "a:b", "fe80::1"]})
    );
    assert_eq!(
        value("m: {k: 2001:db8::}\n"),
        json!({"m": {"k": "2001:db8::"}})
    );
    // `: ` still separates a key from its value.
    assert_eq!(
        value("m: {2001:db8::: x}\n"),
        json!({"m": {"2001:db8::": "x"}})
    );

    let out = decode("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: v6}\nspec:\n  hosts: [v6.example.com]\n  addresses: [2001:db8::]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints: [{address: \"2001:db8::1\"}]\n");
    assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));
    let Spec::ServiceEntry(se) = &out.resources[0].spec else {
        panic!("not a ServiceEntry")
    };
    assert_eq!(se.addresses, ["2001:db8::"]);
}

#[test]
fn scalars_resolve_as_go_yaml_v2_and_json_make_them() {
    let text = "\
port: 8080
signed: +80
octal: 0644
hex: 0x1F
new_octal: 0o17
binary: 0b101
underscores: 1_000
leading_zero_not_octal: 08
whole_float: 8.0
exponent: 1e3
fraction: .5
big: 18446744073709551615
bool: True
null_word: ~
empty:
date: 2001-12-14
time: 1:30
word: yes
quoted: \"80\"
block: |
  80
tagged_int: !!int \"12\"
tagged_str: !!str 12
1: int key
0x10: hex key
1.5: float key
true: bool key
";
    // Octal by a leading zero is Go's ParseInt (0644 is 420, as in a pod's defaultMode); `08`
    // is not octal and reads as the float 8; encoding/json writes whole floats as integers.
    // Timestamps stay text (go-yaml v2 keeps them as strings in an interface{}). Keys that
    // are numbers or booleans become their JSON text.
    assert_eq!(
        value(text),
        json!({
            "port": 8080,
            "signed": 80,
            "octal": 420,
            "hex": 31,
            "new_octal": 15,
            "binary": 5,
            "underscores": 1000,
            "leading_zero_not_octal": 8,
            "whole_float": 8,
            "exponent": 1000,
            "fraction": 0.5,
            "big": 18_446_744_073_709_551_615u64,
            "bool": true,
            "null_word": null,
            "empty": null,
            "date": "2001-12-14",
            "time": "1:30",
            // go-yaml v2 would make this `true`; sluice keeps YAML 1.1 words as text and reads
            // them as booleans only in boolean fields (see resolve.rs).
            "word": "yes",
            "quoted": "80",
            "block": "80\n",
            "tagged_int": 12,
            "tagged_str": "12",
            "1": "int key",
            "16": "hex key",
            "1.5": "float key",
            "true": "bool key",
        })
    );

    // A whole float in an integer field reads as the integer, as after encoding/json.
    let out = decode("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 443.0, name: https, protocol: TLS}]\n  resolution: DNS\n");
    assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));

    // Infinity and NaN have no JSON form: sigs.k8s.io/yaml fails on them, so the document is
    // an error at their line.
    let errs = errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  x: .inf\n");
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(errs[0].line, 5);
    assert!(errs[0].message.contains("infinity"), "{}", errs[0]);
    // So does a null key.
    let errs = errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  ~: x\n");
    assert_eq!((errs.len(), errs[0].line), (1, 5), "{}", render(&errs));
    // A tag the value does not fit: go-yaml's "cannot decode !!str `abc` as a !!int".
    let errs = errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nx: !!int abc\n");
    assert_eq!(errs[0].message, "cannot decode !!str `abc` as a !!int");
}

#[test]
fn a_key_written_twice_is_an_error_naming_both_lines() {
    // go-yaml's strict decoding (istioctl, the API server's strict field validation) refuses
    // duplicate keys: "mapping key \"x\" already defined at line 6".
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  x: \"1\"\n  y: \"2\"\n  x: \"3\"\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(
        errs[0].to_string(),
        "t.yaml:8: mapping key \"x\" already defined at line 6"
    );
    // Keys are compared as JSON keys: `1` and "1" are the same key.
    let errs = errors("a: 1\n\"a\": 2\n");
    assert_eq!((errs.len(), errs[0].line), (1, 2), "{}", render(&errs));
    // Merged keys are not duplicates: go-yaml v2 merges where `<<` is written, so what comes
    // after it overrides it and it overrides what comes before.
    assert_eq!(
        value("b: &b {x: 1, y: 2}\nm:\n  y: 0\n  <<: *b\n  x: 3\n"),
        json!({"b": {"x": 1, "y": 2}, "m": {"y": 2, "x": 3}})
    );
    // With a list of mappings, earlier ones win.
    assert_eq!(
        value("a: &a {k: a}\nb: &b {k: b, j: b}\nm:\n  <<: [*a, *b]\n"),
        json!({"a": {"k": "a"}, "b": {"k": "b", "j": "b"}, "m": {"k": "a", "j": "b"}})
    );
}

const THREE_RULES: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: one}
spec: {host: a.example.com}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: two]
spec: {host: b.example.com}
--- # the third
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: three}
spec:
  host: c.example.com
";

#[test]
fn one_bad_document_drops_only_itself() {
    let out = decode(THREE_RULES);
    let names: Vec<&str> = out.resources.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(names, ["one", "three"], "{}", render(&out.diagnostics));
    // The error is at the broken line of the second document, counted in the whole file.
    assert_eq!(out.diagnostics.len(), 1, "{}", render(&out.diagnostics));
    let d = &out.diagnostics[0];
    assert!(d.is_error());
    assert_eq!(d.line, 8, "{d}");
    assert!(d.to_string().starts_with("t.yaml:8: invalid YAML: "), "{d}");
    // The third document's lines are the file's.
    let three = &out.resources[1];
    assert_eq!(three.origin.line, 11);
    assert_eq!(three.origin.line_of("spec.host"), 15);

    // All the broken documents of a text are reported in one run.
    let first = THREE_RULES.split("---\n").next().unwrap_or_default();
    let twice = format!("{THREE_RULES}---\nkind: [\n---\n{first}");
    let out = decode(&twice);
    let lines: Vec<u32> = out
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.line)
        .collect();
    assert_eq!(lines.len(), 2, "{}", render(&out.diagnostics));
    assert_eq!(lines[0], 8);
    assert!((17..=18).contains(&lines[1]), "{lines:?}");
    assert_eq!(out.resources.len(), 3, "{}", render(&out.diagnostics));

    // `parse_documents`, for callers that want all or nothing, fails on the first.
    let err = parse_documents(THREE_RULES).unwrap_err();
    assert_eq!(err.line, 8);
}

#[test]
fn documents_are_cut_on_dash_lines_before_parsing() {
    // kubectl cuts the text on `---` lines before any YAML parsing, so one inside a block
    // scalar ends the document there, and what follows is a document of its own.
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: script}\ndata:\n  run.sh: |\n    echo start\n---\n    echo end\n";
    let out = decode(text);
    assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));
    let Spec::ConfigMap { data, .. } = &out.resources[0].spec else {
        panic!("not a ConfigMap")
    };
    assert_eq!(data["run.sh"], "echo start\n");
    let errs: Vec<&Diagnostic> = out.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errs.len(), 1, "{}", render(&out.diagnostics));
    assert_eq!(errs[0].line, 8);

    // After `---` only spaces or a comment may follow; kubectl refuses anything else ("invalid
    // Yaml document separator") and does not read the document it starts.
    let out = decode("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n--- {kind: ConfigMap}\napiVersion: v1\nmetadata: {name: b}\n");
    assert_eq!(out.resources.len(), 1, "{}", render(&out.diagnostics));
    assert_eq!(out.diagnostics.len(), 1, "{}", render(&out.diagnostics));
    assert_eq!(out.diagnostics[0].line, 4);
    assert!(
        out.diagnostics[0]
            .message
            .starts_with("invalid document separator `--- {kind: ConfigMap}`"),
        "{}",
        out.diagnostics[0]
    );
}
