//! Kubernetes manifests in and out: YAML text → one `serde_json::Value` per document (with the
//! line of every field, for error messages), and JSON values → block-style YAML that `kubectl`
//! reads back as the same values.
//!
//! Documents are split the way `kubectl` splits them (Kubernetes' `YAMLReader`): on lines that
//! start with `---`. Each piece keeps its own text, so a document that injection leaves alone is
//! written back byte for byte, comments and all. Each piece is read by the same YAML reader as
//! sluice's config files ([`sluice_api::decode::parse_documents`]), with its bounds on depth,
//! size and alias expansion (a manifest comes from people and tools we do not control, and the
//! webhook's callers are the API server's clients).

use std::fmt::Write as _;

use serde_json::{Map, Value};
pub use sluice_api::decode::{Document, Positions, YamlError, MAX_TEXT_BYTES};

/// One `---`-separated piece of a manifest: its text as written, and what it holds (usually
/// one document; none for a piece of only comments).
#[derive(Debug, Clone)]
pub struct Piece {
    pub text: String,
    pub documents: Vec<Document>,
}

/// Splits `text` into its `---`-separated pieces and parses each. A piece that is only blank
/// lines is dropped; one that is only comments is kept (its text is written back as it was).
pub fn parse_pieces(text: &str) -> Result<Vec<Piece>, YamlError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(YamlError {
            line: 1,
            message: format!(
                "the text is {} bytes; at most {} MiB are read",
                text.len(),
                MAX_TEXT_BYTES / (1024 * 1024)
            ),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut pieces = Vec::new();
    for (first_line, chunk) in split_documents(text) {
        if chunk.trim().is_empty() {
            continue;
        }
        let documents = parse_documents(chunk, first_line - 1)?;
        let mut text = chunk.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        pieces.push(Piece { text, documents });
    }
    Ok(pieces)
}

/// Pieces of `text` between separator lines (`---`, optionally followed by blanks or a
/// comment), each with the 1-based line it starts on.
fn split_documents(text: &str) -> Vec<(u32, &str)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u32;
    let mut offset = 0usize;
    for (line_no, line) in (1u32..).zip(text.split_inclusive('\n')) {
        if is_separator(line) {
            out.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

fn is_separator(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("---") else {
        return false;
    };
    let rest = rest.trim();
    rest.is_empty() || rest.starts_with('#')
}

/// Parses every document of `text` (lines reported as `line + line_offset`).
pub fn parse_documents(text: &str, line_offset: u32) -> Result<Vec<Document>, YamlError> {
    let mut docs = sluice_api::decode::parse_documents(text).map_err(|e| YamlError {
        line: e.line + line_offset,
        message: e.message,
    })?;
    for doc in &mut docs {
        doc.line += line_offset;
        for line in doc.positions.values_mut() {
            *line += line_offset;
        }
    }
    Ok(docs)
}

/// `parent.key`, or `key` at the root.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The line of `path` in `positions`, or of its closest recorded ancestor, or `default`.
pub fn line_of(positions: &Positions, path: &str, default: u32) -> u32 {
    let mut p = path;
    loop {
        if let Some(line) = positions.get(p) {
            return *line;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => return default,
        }
    }
}

// === Emitting ===

/// `value` as a block-style YAML document (no `---`), ending with a newline. Key order is kept;
/// strings are quoted whenever a YAML 1.1 or 1.2 reader (kubectl, PyYAML) could take them for
/// anything but the same string.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => emit_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => emit_seq(&mut out, items, 0, false),
        scalar => {
            emit_scalar(&mut out, scalar, 2);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A mapping at indentation `n`; `inline_first`: the first key goes where the cursor is (after
/// a sequence's `- `).
fn emit_map(out: &mut String, map: &Map<String, Value>, n: usize, inline_first: bool) {
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 || !inline_first {
            indent(out, n);
        }
        emit_string(out, k, true, n);
        out.push(':');
        match v {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                emit_map(out, m, n + 2, false);
            }
            // kubectl's style: a list under a key starts at the key's indentation.
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                emit_seq(out, items, n, false);
            }
            scalar => {
                out.push(' ');
                emit_scalar(out, scalar, n + 2);
                out.push('\n');
            }
        }
    }
}

fn emit_seq(out: &mut String, items: &[Value], n: usize, inline_first: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !inline_first {
            indent(out, n);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => emit_map(out, m, n + 2, true),
            Value::Array(inner) if !inner.is_empty() => emit_seq(out, inner, n + 2, true),
            scalar => {
                emit_scalar(out, scalar, n + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection; a multi-line string becomes a literal block whose lines
/// are indented by `block_indent`.
fn emit_scalar(out: &mut String, value: &Value, block_indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => emit_string(out, s, false, block_indent),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn emit_string(out: &mut String, s: &str, is_key: bool, block_indent: usize) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if !is_key && literal_block_ok(s) {
        let body = s.strip_suffix('\n');
        out.push_str(if body.is_some() { "|" } else { "|-" });
        for line in body.unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                indent(out, block_indent);
                out.push_str(line);
            }
        }
    } else if s.contains('"') && !s.contains('\'') && !s.chars().any(needs_escape) {
        // JSON in an annotation reads best in single quotes (as kubectl writes it).
        out.push('\'');
        out.push_str(s);
        out.push('\'');
    } else {
        double_quoted(out, s);
    }
}

/// Words that YAML 1.1 (go-yaml v2, PyYAML) or 1.2 read as something other than a string.
const RESERVED_WORDS: [&str; 11] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nil", "~",
];

/// True when `s` can be written without quotes and reads back as the same string under YAML
/// 1.1 and 1.2: it starts with a letter, `/` or `_`, holds only characters that are never
/// indicators in a block scalar, and is not a boolean or null word. (Anything starting with a
/// digit, sign or dot is quoted: numbers, octals, sexagesimals and floats differ between the
/// two versions.)
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Command-line flags (`-p`, `--xds`) read as strings in both versions.
    let flag = s
        .trim_start_matches('-')
        .starts_with(|c: char| c.is_ascii_alphabetic())
        && s.len() - s.trim_start_matches('-').len() <= 2;
    if first.is_ascii_digit() {
        return is_quantity_like(s);
    }
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_' || flag) {
        return false;
    }
    if s.ends_with(':') || s.contains(": ") {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./-:=,@+()$".contains(c))
    {
        return false;
    }
    !RESERVED_WORDS.iter().any(|w| s.eq_ignore_ascii_case(w))
}

/// Digits, an optional fraction, then letters that cannot start an exponent (`100m`, `1Gi`,
/// `0.5Mi`): strings in every YAML version, unlike `1e3`, `0x1F`, `0o17` or `1_000`.
fn is_quantity_like(s: &str) -> bool {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    number.matches('.').count() <= 1
        && !number.ends_with('.')
        && !suffix.is_empty()
        && !suffix.starts_with(['e', 'E', 'x', 'X', 'o', 'O', 'b', 'B'])
        && suffix.chars().all(|c| c.is_ascii_alphabetic())
}

/// A literal block (`|`) reads back exactly when the text has several lines, printable
/// characters only, no line that starts with a space (that would need an indentation
/// indicator) and at most one final newline.
fn literal_block_ok(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.contains('\n')
        && !body.ends_with('\n')
        && body
            .split('\n')
            .find(|l| !l.is_empty())
            .is_some_and(|l| !l.starts_with(' '))
        && !body.split('\n').any(|l| l.ends_with(' '))
        && body.chars().all(|c| c == '\n' || !needs_escape(c))
}

/// Characters a YAML reader does not accept raw (C0/C1 controls, DEL, line and paragraph
/// separators, BOM).
fn needs_escape(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: &Value) -> Value {
        let text = to_yaml(v);
        let docs = parse_documents(&text, 0).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(docs.len(), 1, "{text}");
        docs.into_iter().next().map(|d| d.value).unwrap_or_default()
    }

    #[test]
    fn tricky_strings_round_trip() {
        let strings = [
            "",
            "*",
            "-",
            "- x",
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "null",
            "~",
            "true",
            "1",
            "0777",
            "1:30",
            "1e3",
            ".5",
            "0x1F",
            "-1",
            "+1",
            "a: b",
            "a:",
            "a #b",
            "#x",
            "@x",
            "`x",
            "!x",
            "&x",
            "%x",
            "{x}",
            "[x]",
            "a\nb",
            "a\nb\n",
            "a\n\nb\n",
            " a\nb",
            "a\n b",
            "a \nb",
            "a\n\n",
            "\n",
            "tab\there",
            "quote\"s",
            "back\\slash",
            "\u{7f}",
            "\u{85}",
            "é",
            "$(POD_NAMESPACE).svc.cluster.local",
            "15090,15021",
            "sidecar.istio.io/status",
            "{\"a\":1}",
            "a=b,c=d",
            "host:15010",
            "'single'",
            "x\r\ny",
            "-p",
            "--xds",
            "---",
            "---x",
            "-",
            "--",
            "-1",
            "-.5",
            "-e5",
            "- -x",
        ];
        for s in strings {
            let v = json!({ s: s, "list": [s, {"k": s}] });
            assert_eq!(round_trip(&v), v, "{s:?} as {}", to_yaml(&v));
        }
    }

    #[test]
    fn structures_round_trip() {
        let v = json!({
            "a": {"b": [1, 2.5, -3, true, null, {}, [], [[1, 2], {"x": [3]}]]},
            "empty": {},
            "list": [],
            "nested": [{"name": "c", "ports": [{"containerPort": 80}]}],
        });
        assert_eq!(round_trip(&v), v);
        assert_eq!(
            to_yaml(&json!({"spec": {"containers": [{"name": "a", "args": ["-p", "15001"]}]}})),
            "spec:\n  containers:\n  - name: a\n    args:\n    - -p\n    - \"15001\"\n"
        );
    }

    #[test]
    fn pieces_keep_their_text_and_lines() {
        let text = "# head\n---\napiVersion: v1\nkind: A # c\n--- # sep\n\n---\nkind: B\nspec:\n  x: [1, 2\n";
        let err = parse_pieces(text).unwrap_err();
        assert!(err.line >= 10, "{err:?}");
        let text =
            "# head\n---\napiVersion: v1\nkind: A # c\n--- # sep\n\n---\nkind: B\nspec:\n  x: 1\n";
        let pieces = parse_pieces(text).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].text, "# head\n");
        assert!(pieces[0].documents.is_empty());
        assert_eq!(pieces[1].text, "apiVersion: v1\nkind: A # c\n");
        assert_eq!(pieces[2].documents[0].positions["spec.x"], 10);
        assert_eq!(pieces[2].documents[0].line, 8);
    }

    #[test]
    fn merge_keys_anchors_and_limits() {
        let docs = parse_documents("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n", 0).unwrap();
        assert_eq!(docs[0].value["m"], json!({"y": 3, "x": 1}));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("a{}", i - 1)
            };
            bomb.push_str(&format!(
                "a{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(parse_documents(&bomb, 0)
            .unwrap_err()
            .message
            .contains("nodes"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_documents(&deep, 0)
            .unwrap_err()
            .message
            .contains("deeper"));
    }
}
