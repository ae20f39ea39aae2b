//! JSON value → typed struct, with the field path and a message a user can act on when it fails.
//!
//! Istio's decoder is protobuf JSON, which is more lenient than serde in a few places that real
//! YAML relies on: numbers written as strings (`number: "80"`), `null` meaning "unset", YAML 1.1
//! booleans (`yes`). [`lenient`] reads those in the same pass as everything else; a null that
//! stands for an absent field costs one more pass (see there). Decoding used to start again
//! after each converted value, which made a resource of a few thousand such values take
//! thousands of passes over itself.

mod lenient;

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::{Path, Segment};

use super::yaml::join;
use lenient::{remove_recorded, Lenient, Nulls};

/// A typed-decoding failure: the full field path (`spec.http[0].timeout`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub message: String,
}

/// Passes after which decoding gives up. Two suffice (a null enum value, which no type here
/// has, costs one each); the bound only keeps a future type from making it unbounded.
const MAX_PASSES: usize = 16;

/// Decodes `value` into `T`; `base` is the path of `value` in the document (`spec`, `metadata`).
pub(crate) fn from_json<T: DeserializeOwned>(
    mut value: Value,
    base: &str,
) -> Result<T, FieldError> {
    for _ in 0..MAX_PASSES {
        crate::work::count(1);
        let nulls = Nulls::default();
        let result = serde_path_to_error::deserialize::<_, T>(Lenient::root(&value, &nulls));
        if nulls.is_empty() {
            return result.map_err(|err| translate(err.path(), &err.inner().to_string(), base));
        }
        remove_recorded(&mut value, nulls);
    }
    Err(FieldError {
        path: base.to_string(),
        message: "too many null values that could not be left out; write the fields without them"
            .into(),
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
