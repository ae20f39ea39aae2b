//! Scalar text → JSON value, the way Kubernetes reads YAML.
//!
//! kubectl, the API server and istioctl turn YAML into JSON with `sigs.k8s.io/yaml`, which (up
//! to v1.6 at least) parses with go-yaml **v2** (`go.yaml.in/yaml/v2`), decodes into Go
//! interfaces and encodes those with `encoding/json`. So a scalar means what go-yaml v2's
//! `resolve` makes of it, then what JSON makes of that:
//! - quoted and block (`|`, `>`) scalars are strings;
//! - `true`/`True`/`TRUE`, `false`/…; `~`, `null`/`Null`/`NULL` and nothing at all are null;
//! - integers as Go's `strconv.ParseInt(s, 0, 64)` reads them once every `_` is removed:
//!   `0x1F`, `0o17`, `0b11`, a leading `0` for octal (`0644` is 420), a sign before any of them;
//!   unsigned ones up to 2^64-1; then floats matching `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
//!   (so `08` and `1e3` are floats), and `.5`-style ones;
//! - a float that is a whole number below 10^21 is written by `encoding/json` as an integer
//!   (`8.0` → `8`), so it reads as one; `.inf` and `.nan` have no JSON form and make
//!   `sigs.k8s.io/yaml` fail, so they are an error here too;
//! - timestamps (`2001-12-14`) stay the text as written (go-yaml v2 keeps them as strings when
//!   decoding into an interface);
//! - `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!binary` (base64) and `!!timestamp`
//!   tags force their type (a value that is not of it is an error); other tags are ignored and
//!   the text is a string;
//! - map keys that are numbers, booleans or floats become their JSON text (`1: a` → `"1"`,
//!   `0x1F: a` → `"31"`, `1e3: a` → `"1000"`); a null key has no JSON form and is an error.
//!
//! One deliberate difference: go-yaml v2 also reads the YAML 1.1 words `y`, `yes`, `on`, `n`,
//! `no`, `off` (and their capitalised forms) as booleans, so Kubernetes would refuse
//! `name: off` in a string field and turn a key `y:` into `"true"`. Here they stay strings:
//! fields typed as booleans still read them as booleans (see `typed::lenient`), which is what
//! Kubernetes does for those, and a string field keeps the word as written instead of refusing
//! it, as YAML 1.2 readers (and the other readers of these files in this workspace) do.

use std::borrow::Cow;

use saphyr_parser::{ScalarStyle, Tag};
use serde_json::{Number, Value};

/// What a scalar node means, before it becomes JSON.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(Cow<'a, str>),
}

/// The core-schema type a tag names, or `None` for any other tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Timestamp,
    Binary,
}

const CORE_PREFIX: &str = "tag:yaml.org,2002:";

fn core_kind(tag: &Tag) -> Option<Kind> {
    let suffix = if tag.handle == CORE_PREFIX {
        tag.suffix.as_str()
    } else if tag.handle.is_empty() {
        tag.suffix.strip_prefix(CORE_PREFIX)?
    } else {
        return None;
    };
    Some(match suffix {
        "null" => Kind::Null,
        "bool" => Kind::Bool,
        "int" => Kind::Int,
        "float" => Kind::Float,
        "str" => Kind::Str,
        "timestamp" => Kind::Timestamp,
        "binary" => Kind::Binary,
        _ => return None,
    })
}

/// True for the merge key `<<` (plain, or tagged `!!merge`).
pub(super) fn is_merge_key(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> bool {
    text == "<<"
        && match tag {
            None => style == ScalarStyle::Plain,
            Some(t) => {
                (t.handle == CORE_PREFIX && t.suffix == "merge")
                    || (t.handle.is_empty() && t.suffix == "tag:yaml.org,2002:merge")
            }
        }
}

/// Resolves one scalar node. The error is a message for the user.
pub(super) fn resolve<'a>(
    text: Cow<'a, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
) -> Result<Resolved<'a>, String> {
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain {
            resolve_plain(text, false)
        } else {
            Resolved::Str(text)
        });
    };
    let Some(kind) = core_kind(tag) else {
        // go-yaml leaves the value of an unknown tag (`!foo 1`, `!!set`) as its text.
        return Ok(Resolved::Str(text));
    };
    match kind {
        Kind::Str | Kind::Timestamp => Ok(Resolved::Str(text)),
        Kind::Binary => decode_binary(&text).map(|s| Resolved::Str(Cow::Owned(s))),
        Kind::Null | Kind::Bool | Kind::Int | Kind::Float => {
            let resolved = resolve_plain(text.clone(), kind == Kind::Bool);
            match (&resolved, kind) {
                (Resolved::Null, Kind::Null)
                | (Resolved::Bool(_), Kind::Bool)
                | (Resolved::Int(_) | Resolved::Uint(_), Kind::Int)
                | (Resolved::Float(_), Kind::Float) => Ok(resolved),
                (Resolved::Int(i), Kind::Float) => Ok(Resolved::Float(*i as f64)),
                (Resolved::Uint(u), Kind::Float) => Ok(Resolved::Float(*u as f64)),
                _ => Err(format!(
                    "cannot decode {} `{text}` as a {}",
                    kind_name(&resolved),
                    match kind {
                        Kind::Null => "!!null",
                        Kind::Bool => "!!bool",
                        Kind::Int => "!!int",
                        _ => "!!float",
                    }
                )),
            }
        }
    }
}

fn kind_name(r: &Resolved<'_>) -> &'static str {
    match r {
        Resolved::Null => "!!null",
        Resolved::Bool(_) => "!!bool",
        Resolved::Int(_) | Resolved::Uint(_) => "!!int",
        Resolved::Float(_) => "!!float",
        Resolved::Str(_) => "!!str",
    }
}

/// `!!binary`: base64, line breaks ignored as Go's decoder ignores them; bytes that are not
/// UTF-8 become U+FFFD, as `encoding/json` writes them.
fn decode_binary(text: &str) -> Result<String, String> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.trim())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|_| "!!binary value contains invalid base64 data".to_string())
}

/// go-yaml v2's `resolve` for an untagged plain scalar (`yaml_1_1_bools`: also read the YAML
/// 1.1 words, for an explicit `!!bool`).
fn resolve_plain(text: Cow<'_, str>, yaml_1_1_bools: bool) -> Resolved<'_> {
    let s: &str = &text;
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        _ => {}
    }
    if yaml_1_1_bools {
        match s {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => return Resolved::Bool(true),
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => return Resolved::Bool(false),
            _ => {}
        }
    }
    let first = s.as_bytes()[0];
    if first == b'.' {
        // Go's `strconv.ParseFloat` on text starting with a dot.
        if let Some(f) = finite(s).filter(|_| is_float_syntax(s)) {
            return Resolved::Float(f);
        }
    } else if first.is_ascii_digit() || first == b'+' || first == b'-' {
        let plain: Cow<'_, str> = if s.contains('_') {
            Cow::Owned(s.replace('_', ""))
        } else {
            Cow::Borrowed(s)
        };
        if let Some(i) = go_parse_int(&plain) {
            return Resolved::Int(i);
        }
        if let Some(u) = go_parse_uint(&plain) {
            return Resolved::Uint(u);
        }
        if let Some(f) = finite(&plain).filter(|_| is_float_syntax(&plain)) {
            return Resolved::Float(f);
        }
    }
    Resolved::Str(text)
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, go-yaml's `yamlStyleFloat`.
fn is_float_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// The float, unless it overflows (Go's `ParseFloat` then fails and the text stays a string).
fn finite(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Go's `strconv.ParseUint(s, 0, 64)`: `0x`, `0o`, `0b` prefixes, a leading `0` for octal.
fn go_parse_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let (radix, digits) = match b {
        [] => return None,
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'x') => (16, &s[2..]),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'o') => (8, &s[2..]),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'b') => (2, &s[2..]),
        [b'0', ..] => (8, &s[1..]),
        _ => (10, s),
    };
    if digits.is_empty() {
        // "0" alone (and "00"): zero.
        return Some(0);
    }
    // `from_str_radix` would also take a sign; Go does not, here.
    if digits.starts_with(['+', '-']) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
fn go_parse_int(s: &str) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if rest.is_empty() {
        return None;
    }
    let magnitude = go_parse_uint(rest)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Why a null mapping key is refused.
pub(super) const NULL_KEY: &str = "a mapping key is null (`~`, `null` or nothing before the \
                                   `:`), which JSON cannot hold: Kubernetes refuses the document";

impl Resolved<'_> {
    /// The JSON value, or why there is none.
    pub(super) fn into_value(self) -> Result<Value, String> {
        Ok(match self {
            Resolved::Null => Value::Null,
            Resolved::Bool(b) => Value::Bool(b),
            Resolved::Int(i) => Value::Number(i.into()),
            Resolved::Uint(u) => Value::Number(u.into()),
            Resolved::Float(f) => {
                if !f.is_finite() {
                    return Err(format!(
                        "{} (`{}`) has no JSON form: Kubernetes refuses the document (quote the \
                         value if it is text)",
                        if f.is_nan() {
                            "not-a-number"
                        } else {
                            "infinity"
                        },
                        go_format_g(f)
                    ));
                }
                json_float(f)
            }
            Resolved::Str(s) => Value::String(s.into_owned()),
        })
    }

    /// The JSON object key, or why there is none.
    pub(super) fn into_key(self) -> Result<String, String> {
        Ok(match self {
            Resolved::Null => return Err(NULL_KEY.to_string()),
            Resolved::Bool(b) => b.to_string(),
            Resolved::Int(i) => i.to_string(),
            Resolved::Uint(u) => u.to_string(),
            Resolved::Float(f) => go_format_g(f),
            Resolved::Str(s) => s.into_owned(),
        })
    }
}

/// How `encoding/json` writes a float: whole numbers below 10^21 as integers.
fn json_float(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        // The range checks make the casts exact.
        if f >= i64::MIN as f64 && f < i64::MAX as f64 {
            return Value::Number((f as i64).into());
        }
        if f >= 0.0 && f < u64::MAX as f64 {
            return Value::Number((f as u64).into());
        }
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` as `sigs.k8s.io/yaml` writes float keys, with
/// its spelling of infinities and NaN.
fn go_format_g(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // `{:e}` gives the shortest digits that read back as `f`: "1.5e3", "-2e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        // Go's %g uses %f for exponents in [-4, 6) when printing the shortest form.
        return format!("{f}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(s: &str) -> Result<Value, String> {
        resolve(Cow::Borrowed(s), ScalarStyle::Plain, None).and_then(Resolved::into_value)
    }

    fn tagged(tag: &str, s: &str, style: ScalarStyle) -> Result<Value, String> {
        let tag = Tag {
            handle: CORE_PREFIX.into(),
            suffix: tag.into(),
        };
        resolve(Cow::Borrowed(s), style, Some(&tag)).and_then(Resolved::into_value)
    }

    #[test]
    fn plain_scalars_resolve_as_go_yaml_v2_then_json() {
        let cases = [
            ("80", json!(80)),
            ("+80", json!(80)),
            ("-0", json!(0)),
            ("0x1F", json!(31)),
            ("-0x1F", json!(-31)),
            ("0o17", json!(15)),
            ("0644", json!(420)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("08", json!(8)),
            ("1e3", json!(1000)),
            ("8.0", json!(8)),
            ("2.5", json!(2.5)),
            (".5", json!(0.5)),
            ("-.5", json!(-0.5)),
            ("18446744073709551615", json!(u64::MAX)),
            ("9223372036854775808", json!(9_223_372_036_854_775_808u64)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("true", json!(true)),
            ("FALSE", json!(false)),
            ("~", json!(null)),
            ("Null", json!(null)),
            ("", json!(null)),
            ("yes", json!("yes")),
            ("off", json!("off")),
            ("2001-12-14", json!("2001-12-14")),
            ("2001-12-14t21:59:43.10Z", json!("2001-12-14t21:59:43.10Z")),
            ("1:30", json!("1:30")),
            ("1.2.3.4", json!("1.2.3.4")),
            ("0x", json!("0x")),
            ("1e400", json!("1e400")),
            ("._5", json!("._5")),
            ("+", json!("+")),
            ("-", json!("-")),
            ("infinity", json!("infinity")),
        ];
        for (text, want) in cases {
            assert_eq!(plain(text), Ok(want), "{text:?}");
        }
        assert!(plain(".inf").unwrap_err().contains("infinity"));
        assert!(plain(".NaN").unwrap_err().contains("not-a-number"));
    }

    #[test]
    fn tags_and_styles() {
        assert_eq!(
            tagged("int", "12", ScalarStyle::DoubleQuoted),
            Ok(json!(12))
        );
        assert_eq!(tagged("float", "1", ScalarStyle::Plain), Ok(json!(1)));
        assert_eq!(tagged("str", "12", ScalarStyle::Plain), Ok(json!("12")));
        assert_eq!(tagged("bool", "yes", ScalarStyle::Plain), Ok(json!(true)));
        assert_eq!(
            tagged("binary", "aGk=\n", ScalarStyle::Literal),
            Ok(json!("hi"))
        );
        assert_eq!(
            tagged("int", "abc", ScalarStyle::Plain),
            Err("cannot decode !!str `abc` as a !!int".to_string())
        );
        let other = Tag {
            handle: "!".into(),
            suffix: "foo".into(),
        };
        assert_eq!(
            resolve(Cow::Borrowed("12"), ScalarStyle::Plain, Some(&other)),
            Ok(Resolved::Str(Cow::Borrowed("12")))
        );
        assert_eq!(
            resolve(Cow::Borrowed("12"), ScalarStyle::SingleQuoted, None),
            Ok(Resolved::Str(Cow::Borrowed("12")))
        );
    }

    #[test]
    fn keys_are_json_text() {
        let key = |s: &str| resolve(Cow::Borrowed(s), ScalarStyle::Plain, None)?.into_key();
        assert_eq!(key("1"), Ok("1".into()));
        assert_eq!(key("0x1F"), Ok("31".into()));
        assert_eq!(key("True"), Ok("true".into()));
        assert_eq!(key("1.5"), Ok("1.5".into()));
        assert_eq!(key("1e3"), Ok("1000".into()));
        assert_eq!(key("1e6"), Ok("1e+06".into()));
        assert_eq!(key("1e+36"), Ok("1e+36".into()));
        assert_eq!(key("0.00001"), Ok("1e-05".into()));
        assert_eq!(key("0.0001"), Ok("0.0001".into()));
        assert_eq!(key("123456.5"), Ok("123456.5".into()));
        assert_eq!(key(".inf"), Ok(".inf".into()));
        assert_eq!(key("y"), Ok("y".into()));
        assert!(key("~").is_err());
    }
}
