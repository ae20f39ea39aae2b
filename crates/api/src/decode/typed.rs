//! JSON value → typed struct, with the field path and a message a user can act on when it fails.
//!
//! Istio's decoder is protobuf JSON, which is more lenient than serde in a few places that real
//! YAML relies on: numbers written as strings (`number: "80"`), `null` meaning "unset", YAML 1.1
//! booleans (`yes`). Rather than teach every struct those rules, decoding retries: when serde
//! fails on a scalar that protobuf JSON would have accepted, the scalar is rewritten in place and
//! decoding starts again. Each retry fixes one value, so the loop is bounded by the input size.

use serde::de::DeserializeOwned;
use serde_json::{Number, Value};
use serde_path_to_error::{Path, Segment};

use super::yaml::join;

/// A typed-decoding failure: the full field path (`spec.http[0].timeout`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub message: String,
}

/// Upper bound on in-place rewrites, far above what a hand-written resource needs.
const MAX_COERCIONS: usize = 4096;

/// Decodes `value` into `T`; `base` is the path of `value` in the document (`spec`, `metadata`).
pub(crate) fn from_json<T: DeserializeOwned>(
    mut value: Value,
    base: &str,
) -> Result<T, FieldError> {
    for _ in 0..MAX_COERCIONS {
        let err = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return Ok(v),
            Err(err) => err,
        };
        let message = err.inner().to_string();
        if !coerce(&mut value, err.path(), &message) {
            return Err(translate(err.path(), &message, base));
        }
    }
    Err(FieldError {
        path: base.to_string(),
        message: "too many values needed conversion; the resource is too large to decode".into(),
    })
}

/// Renders a serde path as `a.b[0].c`.
fn path_string(path: &Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } => {}
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// `base` + relative path, without a dot before `[i]`.
fn full_path(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_string()
    } else if rel.starts_with('[') {
        format!("{base}{rel}")
    } else {
        join(base, rel)
    }
}

fn value_at<'v>(root: &'v mut Value, path: &Path) -> Option<&'v mut Value> {
    let mut cur = root;
    for seg in path.iter() {
        cur = match seg {
            Segment::Seq { index } => cur.get_mut(*index)?,
            Segment::Map { key } => cur.get_mut(key.as_str())?,
            Segment::Enum { .. } => cur,
            Segment::Unknown => return None,
        };
    }
    Some(cur)
}

/// The `expected …` part of a serde "invalid type"/"invalid value" message.
fn expected_of(message: &str) -> Option<&str> {
    if message.starts_with("invalid type: ") || message.starts_with("invalid value: ") {
        message.rsplit_once(", expected ").map(|(_, e)| e)
    } else {
        None
    }
}

fn is_int_type(expected: &str) -> bool {
    matches!(
        expected,
        "u8" | "u16"
            | "u32"
            | "u64"
            | "u128"
            | "usize"
            | "i8"
            | "i16"
            | "i32"
            | "i64"
            | "i128"
            | "isize"
    )
}

fn is_float_type(expected: &str) -> bool {
    matches!(expected, "f32" | "f64")
}

/// Rewrites the value serde choked on if protobuf JSON would have accepted it. Returns whether
/// anything changed (and decoding should be retried).
fn coerce(root: &mut Value, path: &Path, message: &str) -> bool {
    let Some(expected) = expected_of(message) else {
        return false;
    };
    let expected = expected.to_string();

    // `key:` with no value is null; protobuf JSON reads null as "unset". Struct-typed map values
    // and list items cannot be unset, so they become `{}` (for a header match: presence only).
    if message.starts_with("invalid type: null") {
        if expected.starts_with("struct ") {
            if let Some(v) = value_at(root, path) {
                *v = Value::Object(Default::default());
                return true;
            }
            return false;
        }
        return remove_at(root, path);
    }

    let Some(target) = value_at(root, path) else {
        return false;
    };
    let replacement = match &*target {
        Value::String(s) if is_int_type(&expected) => {
            let t = s.trim();
            t.parse::<i64>()
                .map(Number::from)
                .or_else(|_| t.parse::<u64>().map(Number::from))
                .ok()
                .map(Value::Number)
        }
        Value::String(s) if is_float_type(&expected) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        Value::String(s) if expected == "a boolean" => {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" => Some(Value::Bool(true)),
                "false" | "no" | "off" | "n" => Some(Value::Bool(false)),
                _ => None,
            }
        }
        Value::Number(n) if is_int_type(&expected) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| Value::Number(Number::from(f as i64))),
        _ => None,
    };
    match replacement {
        Some(r) if r != *target => {
            *target = r;
            true
        }
        _ => false,
    }
}

/// Removes the object key at `path` (a null field), so the struct's default applies.
fn remove_at(root: &mut Value, path: &Path) -> bool {
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parent_segments)) = segments.split_last() else {
        return false;
    };
    let mut cur = &mut *root;
    for seg in parent_segments {
        cur = match seg {
            Segment::Seq { index } => match cur.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            Segment::Map { key } => match cur.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            Segment::Enum { .. } => cur,
            Segment::Unknown => return false,
        };
    }
    match cur {
        Value::Object(map) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// Turns serde's message into one that names what was expected in the user's terms.
fn translate(path: &Path, message: &str, base: &str) -> FieldError {
    let rel = path_string(path);
    let here = full_path(base, &rel);

    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let candidates = backticked(expected);
            // serde reports the path of the struct, not of the unknown key; point at the key.
            let path = if rel.rsplit(['.', '[']).next() == Some(field) && !rel.is_empty() {
                here
            } else {
                join(&here, field)
            };
            let message = match (removed_field(field), suggest(field, &candidates)) {
                (Some(instead), _) => {
                    format!("field `{field}` was removed from Istio's API; use `{instead}`")
                }
                (None, Some(s)) => format!("unknown field `{field}`; did you mean `{s}`?"),
                (None, None) if candidates.is_empty() => {
                    format!("unknown field `{field}`; no fields are allowed here")
                }
                (None, None) => format!(
                    "unknown field `{field}`; expected one of {}",
                    candidates
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return FieldError { path, message };
        }
    }

    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return FieldError {
            path: join(&here, field),
            message: format!("missing required field `{field}`"),
        };
    }

    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            return FieldError {
                path: here,
                message: format!(
                    "expected {}, found {}",
                    friendly_expected(expected),
                    friendly_found(found)
                ),
            };
        }
    }

    if message.starts_with("data did not match any variant of untagged enum IntOrString") {
        return FieldError {
            path: here,
            message: "expected an integer or a string".into(),
        };
    }

    FieldError {
        path: here,
        message: message.to_string(),
    }
}

fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list".into(),
        "a map" | "map" => "a mapping".into(),
        e if e.starts_with("struct ") => "a mapping".into(),
        e => e.to_string(),
    }
}

fn friendly_found(found: &str) -> String {
    match found {
        "unit value" | "null" => "nothing (null)".into(),
        "map" => "a mapping".into(),
        "sequence" => "a list".into(),
        f => f.to_string(),
    }
}

/// HTTPRoute header fields removed in Istio 1.x, and what replaced them.
fn removed_field(field: &str) -> Option<&'static str> {
    let camel = field.replace('_', "").to_ascii_lowercase();
    Some(match camel.as_str() {
        "appendheaders" | "appendrequestheaders" => "headers.request.add",
        "appendresponseheaders" => "headers.response.add",
        "removerequestheaders" => "headers.request.remove",
        "removeresponseheaders" => "headers.response.remove",
        _ => return None,
    })
}

/// The names between backticks in serde's "expected one of `a`, `b`" tail.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The closest known field name, if it is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(field: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let normalize = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let wanted = normalize(field);
    let mut best: Option<(&'a str, f64)> = None;
    for &c in candidates {
        let mut score = strsim::jaro_winkler(field, c);
        // `sni_host` vs `sniHosts`: compare spelling-insensitively too, but prefer a candidate
        // written in the same style as the input (snake_case input → snake_case suggestion).
        let loose = strsim::jaro_winkler(&wanted, &normalize(c));
        if loose > score {
            score = loose - 0.01;
        }
        if field.contains('_') == c.contains('_') {
            score += 0.005;
        }
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.filter(|(_, s)| *s >= 0.8).map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::VirtualService;
    use serde_json::json;

    #[test]
    fn unknown_field_suggests_same_style() {
        let v = json!({"tls": [{"match": [{"sni_host": ["a"]}]}]});
        let err = from_json::<VirtualService>(v, "spec").unwrap_err();
        assert_eq!(err.path, "spec.tls[0].match[0].sni_host");
        assert_eq!(
            err.message,
            "unknown field `sni_host`; did you mean `sni_hosts`?"
        );
    }

    #[test]
    fn removed_fields_say_what_replaced_them() {
        let v = json!({"http": [{"appendHeaders": {"x": "1"}}]});
        let err = from_json::<VirtualService>(v, "spec").unwrap_err();
        assert_eq!(err.path, "spec.http[0].appendHeaders");
        assert_eq!(
            err.message,
            "field `appendHeaders` was removed from Istio's API; use `headers.request.add`"
        );
    }

    #[test]
    fn numeric_strings_and_nulls() {
        let v = json!({"hosts": null, "http": [{"route": [{"destination": {"host": "a", "port": {"number": "80"}}, "weight": "100"}]}]});
        let vs = from_json::<VirtualService>(v, "spec").unwrap();
        assert!(vs.hosts.is_empty());
        let dest = &vs.http[0].route[0];
        assert_eq!(dest.destination.port.as_ref().unwrap().number, 80);
        assert_eq!(dest.weight, Some(100));
    }

    #[test]
    fn type_error_message() {
        let v = json!({"http": [{"timeout": 3}]});
        let err = from_json::<VirtualService>(v, "spec").unwrap_err();
        assert_eq!(err.path, "spec.http[0].timeout");
        assert_eq!(
            err.message,
            "expected a duration such as \"3s\", found integer `3`"
        );
    }
}
