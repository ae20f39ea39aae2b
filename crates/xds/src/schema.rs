//! The compiled schema at run time: every message's fields by JSON name and by number, read from
//! the descriptor set `build.rs` produced. Three walks use it, each where pbjson alone would
//! get the mapping wrong for sluice:
//!
//! - [`prepare`], before JSON → message: drops `null`s (proto3 JSON's "default value", which
//!   pbjson refuses for scalars and lists), refuses unknown fields with their path (or drops
//!   them, for lenient collections).
//! - [`finish`], after message → JSON: 64-bit integers back from strings to numbers (sluice's
//!   decoder reads `minimumRingSize: 1024`, not `"1024"`), and enums written out even at their
//!   zero value, which proto3 leaves off the wire: `outboundTrafficPolicy: {}` must come back as
//!   `{mode: REGISTRY_ONLY}`, not as an absent mode that a reader could default otherwise.
//! - [`scan`], before bytes → message: prost skips fields it has no number for, so a field that
//!   a newer Istio added would vanish silently; the scan refuses it, with its path, for strict
//!   collections. It also refuses enum numbers the schema does not define.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// A problem at a field path (`spec.http[0].timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub message: String,
}

#[derive(Debug)]
pub(crate) struct Schema {
    messages: HashMap<String, MessageInfo>,
    /// Enum full name → its values (number, name).
    enums: HashMap<String, Vec<(i32, String)>>,
}

#[derive(Debug)]
struct MessageInfo {
    full_name: String,
    fields: Vec<FieldInfo>,
}

#[derive(Debug)]
struct FieldInfo {
    name: String,
    json_name: String,
    number: u32,
    repeated: bool,
    /// In a `oneof` (or a proto3 `optional`): has presence, so its zero value is not implied.
    in_oneof: bool,
    /// The real `oneof` it is a member of (not a proto3 `optional`'s synthetic one).
    oneof: Option<i32>,
    kind: FieldKind,
}

#[derive(Debug, PartialEq)]
enum FieldKind {
    Int(IntType),
    Enum(String),
    /// A message, by full name (with the leading dot).
    Message(String),
    /// base64 in JSON.
    Bytes,
    OtherScalar,
}

/// The integer types, by their range (the 64-bit ones are strings in proto3 JSON).
#[derive(Debug, Clone, Copy, PartialEq)]
enum IntType {
    I32,
    U32,
    I64,
    U64,
}

impl IntType {
    fn range(self) -> (i128, i128, &'static str) {
        match self {
            IntType::I32 => (i32::MIN.into(), i32::MAX.into(), "int32"),
            IntType::U32 => (0, u32::MAX.into(), "uint32"),
            IntType::I64 => (i64::MIN.into(), i64::MAX.into(), "int64"),
            IntType::U64 => (0, u64::MAX.into(), "uint64"),
        }
    }

    fn is_64(self) -> bool {
        matches!(self, IntType::I64 | IntType::U64)
    }
}

const WKT_PREFIX: &str = ".google.protobuf.";

impl FieldInfo {
    /// Whether the field is the well-known type `google.protobuf.<name>`.
    fn is_wkt(&self, name: &str) -> bool {
        matches!(&self.kind, FieldKind::Message(m)
            if m.strip_prefix(WKT_PREFIX) == Some(name))
    }

    /// A non-WKT message field: walked into.
    fn message(&self) -> Option<&str> {
        match &self.kind {
            FieldKind::Message(name) if !name.starts_with(WKT_PREFIX) => Some(name),
            _ => None,
        }
    }
}

/// The schema, parsed once.
pub(crate) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // Built by build.rs from this crate's own .proto files: failing here is a build bug.
        let set = FileDescriptorSet::decode(DESCRIPTORS).expect("descriptor set from build.rs");
        let mut schema = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        for file in &set.file {
            let scope = format!(".{}", file.package());
            for message in &file.message_type {
                schema.add_message(&scope, message);
            }
            for e in &file.enum_type {
                schema.add_enum(&scope, e);
            }
        }
        schema
    })
}

impl Schema {
    fn add_message(&mut self, scope: &str, message: &DescriptorProto) {
        let full_name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&full_name, nested);
        }
        for e in &message.enum_type {
            self.add_enum(&full_name, e);
        }
        let fields = message
            .field
            .iter()
            .map(|f| {
                let kind = match f.r#type() {
                    Type::Int32 | Type::Sint32 | Type::Sfixed32 => FieldKind::Int(IntType::I32),
                    Type::Uint32 | Type::Fixed32 => FieldKind::Int(IntType::U32),
                    Type::Int64 | Type::Sint64 | Type::Sfixed64 => FieldKind::Int(IntType::I64),
                    Type::Uint64 | Type::Fixed64 => FieldKind::Int(IntType::U64),
                    Type::Enum => FieldKind::Enum(f.type_name().to_string()),
                    Type::Message | Type::Group => FieldKind::Message(f.type_name().to_string()),
                    Type::Bytes => FieldKind::Bytes,
                    _ => FieldKind::OtherScalar,
                };
                FieldInfo {
                    name: f.name().to_string(),
                    json_name: f.json_name.clone().unwrap_or_else(|| lower_camel(f.name())),
                    number: u32::try_from(f.number()).unwrap_or(0),
                    repeated: f.label() == Label::Repeated,
                    in_oneof: f.oneof_index.is_some(),
                    oneof: f.oneof_index.filter(|_| !f.proto3_optional()),
                    kind,
                }
            })
            .collect();
        self.messages
            .insert(full_name.clone(), MessageInfo { full_name, fields });
    }

    fn add_enum(&mut self, scope: &str, e: &EnumDescriptorProto) {
        let values = e
            .value
            .iter()
            .map(|v| (v.number(), v.name().to_string()))
            .collect();
        self.enums.insert(format!("{scope}.{}", e.name()), values);
    }

    fn message(&self, full_name: &str) -> Option<&MessageInfo> {
        self.messages.get(full_name)
    }

    /// A map field's entry message, when `field` is one.
    fn map_entry(&self, field: &FieldInfo) -> Option<&MessageInfo> {
        let name = field.message()?;
        // Entries are the nested `XxxEntry` messages protoc synthesises; they have exactly
        // the fields `key` = 1 and `value` = 2.
        let entry = self.message(name)?;
        let is_entry = field.repeated
            && name.ends_with("Entry")
            && entry.fields.len() == 2
            && entry.fields[0].name == "key"
            && entry.fields[1].name == "value";
        is_entry.then_some(entry)
    }

    fn zero_name(&self, enum_name: &str) -> Option<&str> {
        self.enums
            .get(enum_name)?
            .iter()
            .find(|(n, _)| *n == 0)
            .map(|(_, name)| name.as_str())
    }
}

impl MessageInfo {
    fn by_json(&self, key: &str) -> Option<&FieldInfo> {
        self.fields
            .iter()
            .find(|f| f.json_name == key || f.name == key)
    }

    fn by_number(&self, number: u32) -> Option<&FieldInfo> {
        self.fields.iter().find(|f| f.number == number)
    }

    fn short_name(&self) -> &str {
        self.full_name.trim_start_matches('.')
    }
}

/// protoc's JSON name: `foo_bar_baz` → `fooBarBaz`.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn child(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

// ---------------------------------------------------------------- JSON → message (before pbjson)

/// Makes `value` fit for pbjson as the message `full_name` (see the module docs). `lenient`
/// drops fields the schema does not know instead of refusing them.
pub(crate) fn prepare(
    full_name: &str,
    value: Value,
    lenient: bool,
    path: &str,
) -> Result<Value, FieldError> {
    let schema = schema();
    match schema
        .message(full_name)
        .filter(|_| !full_name.starts_with(WKT_PREFIX))
    {
        Some(message) => prepare_message(schema, message, value, lenient, path),
        None => Ok(value),
    }
}

fn prepare_message(
    schema: &Schema,
    message: &MessageInfo,
    value: Value,
    lenient: bool,
    path: &str,
) -> Result<Value, FieldError> {
    let Value::Object(object) = value else {
        return Err(FieldError {
            path: path.to_string(),
            message: format!(
                "expected an object ({}), got {}",
                message.short_name(),
                kind_of(&value)
            ),
        });
    };
    let mut out = Map::with_capacity(object.len());
    // The member set so far of each oneof (pbjson would only say "duplicate field").
    let mut oneofs: Vec<(i32, String)> = Vec::new();
    for (key, v) in object {
        let Some(field) = message.by_json(&key) else {
            if lenient {
                continue;
            }
            return Err(FieldError {
                path: child(path, &key),
                message: format!(
                    "unknown field `{key}`: {} has no such field",
                    message.short_name()
                ),
            });
        };
        // In proto3 JSON `null` is the field's default; only a `google.protobuf.Value` field
        // holds a null of its own.
        if v.is_null() && !field.is_wkt("Value") {
            continue;
        }
        let here = child(path, &key);
        if let Some(group) = field.oneof {
            if let Some((_, other)) = oneofs.iter().find(|(g, _)| *g == group) {
                let members: Vec<&str> = message
                    .fields
                    .iter()
                    .filter(|f| f.oneof == Some(group))
                    .map(|f| f.json_name.as_str())
                    .collect();
                return Err(FieldError {
                    path: path.to_string(),
                    message: format!(
                        "`{other}` and `{key}` are both set, but only one of {} may be",
                        members.join(", ")
                    ),
                });
            }
            oneofs.push((group, key.clone()));
        }
        let v = if field.is_wkt("Duration") {
            match v {
                Value::String(s) => Value::String(duration(s, &here)?),
                v => v,
            }
        } else if let Some(entry) = schema.map_entry(field) {
            match (v, entry.fields[1].message().and_then(|m| schema.message(m))) {
                (Value::Object(map), Some(value_type)) => {
                    let mut prepared = Map::with_capacity(map.len());
                    for (k, item) in map {
                        let at = child(&here, &k);
                        prepared
                            .insert(k, prepare_message(schema, value_type, item, lenient, &at)?);
                    }
                    Value::Object(prepared)
                }
                (Value::Object(map), None) => {
                    for (k, item) in &map {
                        check_scalar(&entry.fields[1], item, &child(&here, k))?;
                    }
                    Value::Object(map)
                }
                (v, _) => v,
            }
        } else if let Some(nested) = field.message().and_then(|m| schema.message(m)) {
            match v {
                Value::Array(items) if field.repeated => Value::Array(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let at = format!("{here}[{i}]");
                            prepare_message(schema, nested, item, lenient, &at)
                        })
                        .collect::<Result<_, _>>()?,
                ),
                // A wrong shape is left for pbjson to name.
                v if field.repeated => v,
                v => prepare_message(schema, nested, v, lenient, &here)?,
            }
        } else {
            match &v {
                Value::Array(items) if field.repeated => {
                    for (i, item) in items.iter().enumerate() {
                        check_scalar(field, item, &format!("{here}[{i}]"))?;
                    }
                }
                v => check_scalar(field, v, &here)?,
            }
            v
        };
        out.insert(key, v);
    }
    Ok(Value::Object(out))
}

/// A scalar checked where pbjson's own message would not say what is wrong: integers out of
/// their type's range or with a fraction, and base64 with characters outside its alphabets.
/// Anything else of the wrong type is left for pbjson to name.
fn check_scalar(field: &FieldInfo, value: &Value, path: &str) -> Result<(), FieldError> {
    let error = |message: String| {
        Err(FieldError {
            path: path.to_string(),
            message,
        })
    };
    match (&field.kind, value) {
        (FieldKind::Int(t), Value::Number(_) | Value::String(_)) => {
            let (min, max, name) = t.range();
            let integer = match value {
                Value::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or(n.as_u64().map(i128::from))
                    .or(n
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e38)
                        .map(|f| f as i128)),
                Value::String(s) => s.parse::<i128>().ok(),
                _ => None,
            };
            match integer {
                Some(i) if (min..=max).contains(&i) => Ok(()),
                Some(i) => error(format!("{i} is out of range for {name} ({min} to {max})")),
                None => error(format!("{value} is not an integer ({name} expected)")),
            }
        }
        (FieldKind::Bytes, Value::String(s)) => {
            let base64 = |c: char| c.is_ascii_alphanumeric() || "+/-_=".contains(c);
            match s.chars().find(|c| !base64(*c)) {
                Some(c) => error(format!(
                    "invalid base64: {c:?} is not in its alphabet (bytes are base64 in JSON)"
                )),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// A duration string in proto3 JSON's form, converted from Go's form if need be.
fn duration(text: String, path: &str) -> Result<String, FieldError> {
    if let Some(converted) = proto_duration(&text) {
        return Ok(converted);
    }
    let proto_form = text.strip_suffix('s').is_some_and(|n| {
        let n = n.strip_prefix('-').unwrap_or(n);
        let (whole, fraction) = n.split_once('.').unwrap_or((n, "0"));
        !whole.is_empty()
            && whole.chars().all(|c| c.is_ascii_digit())
            && !fraction.is_empty()
            && fraction.len() <= 9
            && fraction.chars().all(|c| c.is_ascii_digit())
    });
    if proto_form {
        return Ok(text);
    }
    Err(FieldError {
        path: path.to_string(),
        message: format!(
            "invalid duration {text:?}: expected seconds such as \"5s\" or \"0.25s\" (or \"1m30s\", \"250ms\")"
        ),
    })
}

/// A Go-style duration (`24h`, `1m30s`, `250ms`), which Istio's decoder accepts and sluice's
/// keeps as written inside the parts of a spec it does not model (`corsPolicy.maxAge`), in the
/// only form proto3 JSON has: seconds (`86400s`). `None` when `text` is already in that form, or
/// is not a duration at all (pbjson then says why).
fn proto_duration(text: &str) -> Option<String> {
    let proto_form = text.strip_suffix('s').is_some_and(|n| {
        let n = n.strip_prefix('-').unwrap_or(n);
        !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.')
    });
    if proto_form {
        return None;
    }
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        nanos = nanos.checked_add(whole.checked_mul(per_unit)?)?;
        // The fraction, to the nanosecond: digits past what the unit can hold are dropped.
        let mut scale = per_unit;
        for digit in fraction.chars() {
            scale /= 10;
            nanos = nanos.checked_add(u128::from(digit.to_digit(10)?) * scale)?;
        }
        rest = tail;
    }
    let (seconds, nanos) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    let sign = if negative && (seconds, nanos) != (0, 0) {
        "-"
    } else {
        ""
    };
    Some(if nanos == 0 {
        format!("{sign}{seconds}s")
    } else {
        let fraction = format!("{nanos:09}");
        format!("{sign}{seconds}.{}s", fraction.trim_end_matches('0'))
    })
}

// ---------------------------------------------------------------- message → JSON (after pbjson)

/// Fixes pbjson's proto3 JSON of the message `full_name` for sluice (see the module docs).
pub(crate) fn finish(full_name: &str, value: &mut Value) {
    let schema = schema();
    if let Some(message) = schema
        .message(full_name)
        .filter(|_| !full_name.starts_with(WKT_PREFIX))
    {
        finish_message(schema, message, value);
    }
}

fn finish_message(schema: &Schema, message: &MessageInfo, value: &mut Value) {
    let Value::Object(object) = value else {
        return;
    };
    for field in &message.fields {
        let Some(v) = object.get_mut(&field.json_name) else {
            let zero = match &field.kind {
                FieldKind::Enum(e) if !field.repeated && !field.in_oneof => schema.zero_name(e),
                _ => None,
            };
            if let Some(name) = zero {
                object.insert(field.json_name.clone(), Value::String(name.to_string()));
            }
            continue;
        };
        if let Some(entry) = schema.map_entry(field) {
            if let Value::Object(map) = v {
                for item in map.values_mut() {
                    finish_value(schema, &entry.fields[1], item);
                }
            }
        } else if field.repeated {
            if let Value::Array(items) = v {
                for item in items {
                    finish_value(schema, field, item);
                }
            }
        } else {
            finish_value(schema, field, v);
        }
    }
}

/// One value (a singular field, a list item or a map value) of `field`'s type.
fn finish_value(schema: &Schema, field: &FieldInfo, value: &mut Value) {
    match &field.kind {
        FieldKind::Int(t) if t.is_64() => number_from_string(value),
        FieldKind::Message(name)
            if name == ".google.protobuf.Int64Value" || name == ".google.protobuf.UInt64Value" =>
        {
            number_from_string(value)
        }
        FieldKind::Message(name) => {
            if let Some(nested) = schema.message(name).filter(|_| field.message().is_some()) {
                finish_message(schema, nested, value);
            }
        }
        _ => {}
    }
}

/// `"1024"` → `1024`, when the string is an integer JSON can hold exactly.
fn number_from_string(value: &mut Value) {
    let Value::String(s) = value else {
        return;
    };
    let number = if let Ok(n) = s.parse::<u64>() {
        Value::from(n)
    } else if let Ok(n) = s.parse::<i64>() {
        Value::from(n)
    } else {
        return;
    };
    *value = number;
}

/// `google.protobuf.Struct` holds every number as a double; integral ones are written as
/// integers, as Go's protojson prints them (`80`, not `80.0`), so that integer fields of the
/// carried object decode.
pub(crate) fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Beyond 2^53 a double no longer holds every integer: leave those as they are.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if f.fract() == 0.0 && f.abs() <= EXACT {
                    // In range and integral: the cast is exact.
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

// ---------------------------------------------------------------- bytes (before prost)

/// Checks the encoded message `full_name` for fields the schema does not know (unless
/// `lenient`) and enum numbers it does not define. Malformed bytes end the scan quietly:
/// prost's decode, which comes next, reports them.
pub(crate) fn scan(
    full_name: &str,
    bytes: &[u8],
    lenient: bool,
    path: &str,
) -> Result<(), FieldError> {
    let schema = schema();
    match schema
        .message(full_name)
        .filter(|_| !full_name.starts_with(WKT_PREFIX))
    {
        Some(message) => scan_message(schema, message, bytes, lenient, path, 0),
        None => Ok(()),
    }
}

/// Deeper than any message of this schema nests; prost has its own limit for the decode.
const MAX_SCAN_DEPTH: usize = 64;

fn scan_message(
    schema: &Schema,
    message: &MessageInfo,
    mut bytes: &[u8],
    lenient: bool,
    path: &str,
    depth: usize,
) -> Result<(), FieldError> {
    if depth > MAX_SCAN_DEPTH {
        return Ok(());
    }
    let mut seen: HashMap<u32, usize> = HashMap::new();
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes) else {
            return Ok(());
        };
        let Ok(number) = u32::try_from(key >> 3) else {
            return Ok(());
        };
        let wire_type = key & 7;
        let field = message.by_number(number);
        let payload = match wire_type {
            0 => match varint(&mut bytes) {
                Some(v) => Payload::Varint(v),
                None => return Ok(()),
            },
            1 | 5 => {
                let len = if wire_type == 1 { 8 } else { 4 };
                if bytes.len() < len {
                    return Ok(());
                }
                bytes = &bytes[len..];
                Payload::Fixed
            }
            2 => {
                let Some(len) = varint(&mut bytes).and_then(|l| usize::try_from(l).ok()) else {
                    return Ok(());
                };
                if bytes.len() < len {
                    return Ok(());
                }
                let (data, rest) = bytes.split_at(len);
                bytes = rest;
                Payload::Bytes(data)
            }
            // Groups (3, 4) are not proto3, and 6, 7 are not wire types at all.
            _ => return Ok(()),
        };
        let Some(field) = field else {
            if lenient {
                continue;
            }
            return Err(FieldError {
                path: path.to_string(),
                message: format!(
                    "field number {number} of {} is not in sluice's schema (sent by a newer \
                     Istio API than sluice knows?); refusing the resource rather than \
                     dropping what it says",
                    message.short_name()
                ),
            });
        };
        let index = seen.entry(number).or_insert(0);
        let here = if field.repeated && schema.map_entry(field).is_none() {
            format!("{path}.{}[{index}]", field.json_name)
        } else {
            child(path, &field.json_name)
        };
        *index += 1;
        match (&field.kind, payload) {
            (FieldKind::Enum(e), Payload::Varint(v)) => check_enum(schema, e, v, &here)?,
            (FieldKind::Enum(e), Payload::Bytes(mut packed)) => {
                while let Some(v) = varint(&mut packed) {
                    check_enum(schema, e, v, &here)?;
                }
            }
            (FieldKind::Message(_), Payload::Bytes(data)) => {
                if let Some(entry) = schema.map_entry(field) {
                    let at = match map_key(data) {
                        Some(key) => child(&here, &key),
                        None => here,
                    };
                    if let Some(value_type) =
                        entry.fields[1].message().and_then(|m| schema.message(m))
                    {
                        for value in map_values(data) {
                            scan_message(schema, value_type, value, lenient, &at, depth + 1)?;
                        }
                    } else if let FieldKind::Enum(e) = &entry.fields[1].kind {
                        for v in map_enum_values(data) {
                            check_enum(schema, e, v, &at)?;
                        }
                    }
                } else if let Some(nested) = field.message().and_then(|m| schema.message(m)) {
                    scan_message(schema, nested, data, lenient, &here, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

enum Payload<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

fn check_enum(schema: &Schema, enum_name: &str, value: u64, path: &str) -> Result<(), FieldError> {
    // Enums are int32 on the wire, sign-extended to 64 bits when negative.
    let number = value as i32;
    let known = schema
        .enums
        .get(enum_name)
        .is_some_and(|values| values.iter().any(|(n, _)| *n == number));
    if known {
        return Ok(());
    }
    Err(FieldError {
        path: path.to_string(),
        message: format!(
            "enum value {number} is not one of {}'s values in sluice's schema (sent by a \
             newer Istio API than sluice knows?)",
            enum_name.trim_start_matches('.')
        ),
    })
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

/// The fields of one map entry: (number, payload) pairs, stopping at anything malformed.
fn entry_fields(mut data: &[u8]) -> Vec<(u64, Payload<'_>)> {
    let mut out = Vec::new();
    while let Some(key) = varint(&mut data) {
        let payload = match key & 7 {
            0 => match varint(&mut data) {
                Some(v) => Payload::Varint(v),
                None => break,
            },
            2 => {
                let Some(len) = varint(&mut data).and_then(|l| usize::try_from(l).ok()) else {
                    break;
                };
                if data.len() < len {
                    break;
                }
                let (payload, rest) = data.split_at(len);
                data = rest;
                Payload::Bytes(payload)
            }
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                if data.len() < len {
                    break;
                }
                data = &data[len..];
                Payload::Fixed
            }
            _ => break,
        };
        out.push((key >> 3, payload));
    }
    out
}

/// A map entry's key, as a path segment: the string, or the number.
fn map_key(data: &[u8]) -> Option<String> {
    entry_fields(data)
        .into_iter()
        .find(|(n, _)| *n == 1)
        .and_then(|(_, p)| match p {
            Payload::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Payload::Varint(v) => Some(v.to_string()),
            Payload::Fixed => None,
        })
}

fn map_values(data: &[u8]) -> Vec<&[u8]> {
    entry_fields(data)
        .into_iter()
        .filter_map(|(n, p)| match p {
            Payload::Bytes(b) if n == 2 => Some(b),
            _ => None,
        })
        .collect()
}

fn map_enum_values(data: &[u8]) -> Vec<u64> {
    entry_fields(data)
        .into_iter()
        .filter_map(|(n, p)| match p {
            Payload::Varint(v) if n == 2 => Some(v),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_knows_json_names_and_entries() {
        let s = schema();
        let od = s
            .message(".istio.networking.v1alpha3.OutlierDetection")
            .unwrap();
        assert_eq!(od.by_number(7).unwrap().json_name, "consecutive5xxErrors");
        assert!(od.by_json("consecutive_5xx_errors").is_some());
        let ap = s
            .message(".istio.security.v1beta1.AuthorizationPolicy")
            .unwrap();
        assert_eq!(ap.by_number(5).unwrap().json_name, "targetRef");
        let pa = s
            .message(".istio.security.v1beta1.PeerAuthentication")
            .unwrap();
        assert!(s.map_entry(pa.by_number(3).unwrap()).is_some());
        assert!(s.map_entry(pa.by_number(2).unwrap()).is_none());
        assert_eq!(
            s.zero_name(".istio.networking.v1alpha3.OutboundTrafficPolicy.Mode"),
            Some("REGISTRY_ONLY")
        );
        assert_eq!(
            lower_camel("http1_max_pending_requests"),
            "http1MaxPendingRequests"
        );
    }

    #[test]
    fn go_durations_become_seconds() {
        assert_eq!(proto_duration("24h").as_deref(), Some("86400s"));
        assert_eq!(proto_duration("1m30s").as_deref(), Some("90s"));
        assert_eq!(proto_duration("250ms").as_deref(), Some("0.25s"));
        assert_eq!(proto_duration("1.5h").as_deref(), Some("5400s"));
        assert_eq!(proto_duration("-2m").as_deref(), Some("-120s"));
        assert_eq!(proto_duration("1us").as_deref(), Some("0.000001s"));
        // Already proto3 JSON, or not a duration: left for pbjson.
        assert_eq!(proto_duration("0.5s"), None);
        assert_eq!(proto_duration("-3s"), None);
        assert_eq!(proto_duration("5"), None);
        assert_eq!(proto_duration("h"), None);
        assert_eq!(proto_duration("1d"), None);
        assert_eq!(proto_duration(""), None);
        assert_eq!(proto_duration(&"9".repeat(60)), None);
    }

    #[test]
    fn integral_numbers_and_int64_strings() {
        let mut v = serde_json::json!({"a": 80.0, "b": [1.5, 2.0], "c": 1e300});
        integral_numbers(&mut v);
        assert_eq!(v, serde_json::json!({"a": 80, "b": [1.5, 2], "c": 1e300}));
        let mut n = Value::String("18446744073709551615".into());
        number_from_string(&mut n);
        assert_eq!(n, Value::from(u64::MAX));
        let mut n = Value::String("-5".into());
        number_from_string(&mut n);
        assert_eq!(n, Value::from(-5));
    }
}
