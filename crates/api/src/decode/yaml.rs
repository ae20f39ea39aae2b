//! YAML text → JSON values plus the line of every field.
//!
//! Decoding goes through `serde_json::Value` because the typed structs are plain serde structs and
//! `serde_path_to_error` reports failures as a path; keeping a path → line table next to the value
//! turns every such path back into a line of the user's file.

use std::collections::BTreeMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

/// Field path (`spec.http[0].timeout`) → 1-based line.
pub(crate) type Positions = BTreeMap<String, u32>;

/// One YAML document, converted.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    pub value: Value,
    /// Paths relative to the document root.
    pub positions: Positions,
    /// Line of the document's first key (or of the node when it is not a mapping).
    pub line: u32,
}

/// A problem that makes the text unreadable as YAML, or unrepresentable as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct YamlError {
    pub line: u32,
    pub message: String,
}

/// Parses every document of `text`, skipping empty ones (`---` with nothing after it).
///
/// A syntax error anywhere fails the whole text: the parser cannot tell where the broken document
/// ends, so documents after it cannot be trusted, and a half-read file is worse than a reported one.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let nodes = MarkedYaml::load_from_str(text).map_err(|e| YamlError {
        line: to_line(e.marker().line()),
        message: format!(
            "invalid YAML: {} (column {})",
            e.info(),
            e.marker().col() + 1
        ),
    })?;
    let mut docs = Vec::new();
    for node in &nodes {
        if is_empty_document(node) {
            continue;
        }
        let mut positions = Positions::new();
        let value = convert(node, "", &mut positions)?;
        let line = first_key_line(node);
        add_camel_case_aliases(&mut positions);
        docs.push(Document {
            value,
            positions,
            line,
        });
    }
    Ok(docs)
}

fn to_line(line: usize) -> u32 {
    u32::try_from(line.max(1)).unwrap_or(u32::MAX)
}

fn is_empty_document(node: &MarkedYaml<'_>) -> bool {
    matches!(
        node.data,
        YamlData::BadValue | YamlData::Value(Scalar::Null)
    )
}

fn first_key_line(node: &MarkedYaml<'_>) -> u32 {
    match &node.data {
        YamlData::Mapping(map) => map
            .iter()
            .next()
            .map_or(to_line(node.span.start.line()), |(k, _)| {
                to_line(k.span.start.line())
            }),
        YamlData::Tagged(_, inner) => first_key_line(inner),
        _ => to_line(node.span.start.line()),
    }
}

/// Joins a parent path and a map key the way paths are written everywhere: `a.b`, `a[0].b`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn convert(
    node: &MarkedYaml<'_>,
    path: &str,
    positions: &mut Positions,
) -> Result<Value, YamlError> {
    match &node.data {
        YamlData::Value(scalar) => Ok(scalar_to_json(scalar)),
        YamlData::Representation(text, style, tag) => {
            // Only produced when early parsing is off; resolve it the same way the loader would.
            match Scalar::parse_from_cow_and_metadata(text.clone(), *style, tag.as_ref()) {
                Some(s) => Ok(scalar_to_json(&s)),
                None => Err(bad_value(node)),
            }
        }
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                positions.insert(item_path.clone(), to_line(item.span.start.line()));
                out.push(convert(item, &item_path, positions)?);
            }
            Ok(Value::Array(out))
        }
        YamlData::Mapping(map) => {
            let mut out = Map::new();
            // `<<: *anchor` merge keys (YAML 1.1, which Kubernetes' decoder speaks): explicit
            // keys win over merged ones, so merges are applied after the explicit keys.
            let mut merges = Vec::new();
            for (k, v) in map.iter() {
                let key = key_to_string(k)?;
                if key == "<<" {
                    merges.push(v);
                    continue;
                }
                let key_path = join(path, &key);
                positions.insert(key_path.clone(), to_line(k.span.start.line()));
                let value = convert(v, &key_path, positions)?;
                out.insert(key, value);
            }
            for merge in merges {
                let sources: Vec<&MarkedYaml<'_>> = match &merge.data {
                    YamlData::Sequence(items) => items.iter().collect(),
                    _ => vec![merge],
                };
                for source in sources {
                    let Value::Object(merged) = convert(source, path, positions)? else {
                        return Err(YamlError {
                            line: to_line(source.span.start.line()),
                            message: "a `<<` merge key must refer to a mapping".to_string(),
                        });
                    };
                    for (k, v) in merged {
                        out.entry(k).or_insert(v);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        YamlData::Tagged(_, inner) => convert(inner, path, positions),
        YamlData::Alias(_) | YamlData::BadValue => Err(bad_value(node)),
    }
}

fn bad_value(node: &MarkedYaml<'_>) -> YamlError {
    YamlError {
        line: to_line(node.span.start.line()),
        message: "invalid YAML value (a tagged scalar that does not parse as its tag, or an unknown alias)"
            .to_string(),
    }
}

fn key_to_string(key: &MarkedYaml<'_>) -> Result<String, YamlError> {
    match &key.data {
        YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
        YamlData::Value(Scalar::Null) => Ok(String::new()),
        YamlData::Value(scalar) => Ok(match scalar_to_json(scalar) {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        YamlData::Representation(text, _, _) => Ok(text.to_string()),
        YamlData::Tagged(_, inner) => key_to_string(inner),
        _ => Err(YamlError {
            line: to_line(key.span.start.line()),
            message: "mapping keys must be plain scalars (complex `? key` keys are not supported)"
                .to_string(),
        }),
    }
}

fn scalar_to_json(scalar: &Scalar<'_>) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number(Number::from(*i)),
        // NaN and infinities have no JSON form; keep the text so the typed decoder can say what
        // it expected instead of silently reading null.
        Scalar::FloatingPoint(f) => Number::from_f64(f.0)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.0.to_string())),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

/// Also records every path under its camelCase spelling (`sni_hosts` → `sniHosts`), so code that
/// reports on a field by its canonical name finds the line however the user spelled it.
fn add_camel_case_aliases(positions: &mut Positions) {
    let aliases: Vec<(String, u32)> = positions
        .iter()
        .filter(|(path, _)| path.contains('_'))
        .map(|(path, line)| (camel_case_path(path), *line))
        .filter(|(alias, _)| !positions.contains_key(alias))
        .collect();
    positions.extend(aliases);
}

fn camel_case_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper_next = false;
    let mut segment_start = true;
    for c in path.chars() {
        match c {
            '_' if !segment_start => upper_next = true,
            '.' | '[' | ']' => {
                out.push(c);
                upper_next = false;
                segment_start = true;
                continue;
            }
            _ if upper_next => {
                out.extend(c.to_uppercase());
                upper_next = false;
            }
            _ => out.push(c),
        }
        segment_start = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_values() {
        let docs = parse_documents(
            "# comment\napiVersion: v1\nkind: X\nspec:\n  http:\n  - timeout: 3s\n    route:\n    - destination: {host: a}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.line, 2);
        assert_eq!(d.positions["spec.http[0]"], 6);
        assert_eq!(d.positions["spec.http[0].timeout"], 6);
        assert_eq!(d.positions["spec.http[0].route[0].destination.host"], 8);
        assert_eq!(d.value["spec"]["http"][0]["timeout"], "3s");
    }

    #[test]
    fn camel_case_alias() {
        assert_eq!(
            camel_case_path("spec.tls[0].match[0].sni_hosts"),
            "spec.tls[0].match[0].sniHosts"
        );
        assert_eq!(camel_case_path("a._b"), "a._b");
    }

    #[test]
    fn merge_keys_and_empty_documents() {
        let docs =
            parse_documents("---\n---\nbase: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value["m"]["x"], 1);
        assert_eq!(docs[0].value["m"]["y"], 3);
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(err.message.starts_with("invalid YAML"));
    }
}
