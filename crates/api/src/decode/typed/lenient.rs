//! A `serde` deserializer over a [`serde_json::Value`] that reads what protobuf JSON accepts and
//! serde does not, in the same pass that decodes everything else.
//!
//! It converts a scalar when the type being decoded asks for another kind: `"80"` for an
//! integer, `8.0` for an integer, `"0.5"` for a float, `yes`/`no` for a boolean, and `null` for a
//! struct (`{}`: for a header match, presence only). Anything else is handed to `serde_json`'s
//! own deserializer, so every error reads exactly as `serde_json` words it.
//!
//! A `null` field whose type is none of those (a list, a string, a number) means "unset", which
//! is "absent" for serde: the field's default, or "missing field" if it has none. Which fields
//! have defaults is known only to the struct being decoded, after its key has been read, so this
//! deserializer cannot skip the key itself. Instead it hands the type an empty value (so the pass
//! goes on) and records the null in [`Nulls`]; the caller removes the recorded nulls and decodes
//! once more. Whatever the number of nulls, that is two passes.

use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Number, Value};

type Error = serde_json::Error;

/// The addresses of the `null` map values that stand for absent fields in the pass that
/// recorded them. Only compared, never dereferenced: they identify values of a tree that is not
/// modified between recording and [`remove_recorded`].
#[derive(Default)]
pub(super) struct Nulls {
    found: std::cell::RefCell<HashSet<usize>>,
}

impl Nulls {
    fn record(&self, value: &Value) {
        self.found
            .borrow_mut()
            .insert(value as *const Value as usize);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.found.borrow().is_empty()
    }
}

/// Removes every map entry whose value `nulls` recorded. Iterative: documents are up to
/// `MAX_DEPTH` levels deep and this may run on a small stack.
pub(super) fn remove_recorded(root: &mut Value, nulls: Nulls) {
    let found = nulls.found.into_inner();
    let mut stack = vec![root];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                map.retain(|_, v| !found.contains(&(v as *const Value as usize)));
                stack.extend(map.values_mut());
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
}

/// Where a value sits: a null is "absent" only as the value of a mapping key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    MapValue,
    Other,
}

/// The lenient deserializer for one value.
pub(super) struct Lenient<'de, 'n> {
    value: &'de Value,
    place: Place,
    nulls: &'n Nulls,
}

impl<'de, 'n> Lenient<'de, 'n> {
    pub(super) fn root(value: &'de Value, nulls: &'n Nulls) -> Self {
        Lenient {
            value,
            place: Place::Other,
            nulls,
        }
    }

    fn child(&self, value: &'de Value, place: Place) -> Self {
        Lenient {
            value,
            place,
            nulls: self.nulls,
        }
    }

    /// True when the value is a null standing for an absent field: recorded, and the caller
    /// substitutes an empty value of the requested type.
    fn absent(&self) -> bool {
        let absent = self.value.is_null() && self.place == Place::MapValue;
        if absent {
            self.nulls.record(self.value);
        }
        absent
    }

    /// An integer written as a string (`"80"`) or as an integral float (`8.0`).
    fn integer(&self) -> Option<Number> {
        match self.value {
            Value::String(s) => {
                let t = s.trim();
                t.parse::<i64>()
                    .map(Number::from)
                    .or_else(|_| t.parse::<u64>().map(Number::from))
                    .ok()
            }
            Value::Number(n) if n.is_f64() => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| Number::from(f as i64)),
            _ => None,
        }
    }

    fn integer_or<V: Visitor<'de>>(
        self,
        visitor: V,
        strict: impl FnOnce(&'de Value, V) -> Result<V::Value, Error>,
    ) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_u64(0);
        }
        match self.integer() {
            Some(n) => n.deserialize_any(visitor),
            None => strict(self.value, visitor),
        }
    }

    fn float_or<V: Visitor<'de>>(
        self,
        visitor: V,
        strict: impl FnOnce(&'de Value, V) -> Result<V::Value, Error>,
    ) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_f64(0.0);
        }
        let parsed = match self.value {
            Value::String(s) => s.trim().parse::<f64>().ok().and_then(Number::from_f64),
            _ => None,
        };
        match parsed {
            Some(n) => n.deserialize_any(visitor),
            None => strict(self.value, visitor),
        }
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.integer_or(visitor, |v, visitor| v.$method(visitor))
        }
    )*};
}

impl<'de> Deserializer<'de> for Lenient<'de, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Array(items) => visit_seq(&self, items, visitor),
            Value::Object(map) => visit_map(&self, map, visitor),
            scalar => scalar.deserialize_any(visitor),
        }
    }

    integers!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.float_or(visitor, |v, visitor| v.deserialize_f32(visitor))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.float_or(visitor, |v, visitor| v.deserialize_f64(visitor))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_bool(false);
        }
        if let Value::String(s) = self.value {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" => return visitor.visit_bool(true),
                "false" | "no" | "off" | "n" => return visitor.visit_bool(false),
                _ => {}
            }
        }
        self.value.deserialize_bool(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_char('\0');
        }
        self.value.deserialize_char(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_borrowed_str("");
        }
        self.value.deserialize_str(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_borrowed_bytes(&[]);
        }
        match self.value {
            Value::Array(items) => visit_seq(&self, items, visitor),
            other => other.deserialize_bytes(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.value.deserialize_unit(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.absent() {
            return visit_seq(&self, &[], visitor);
        }
        match self.value {
            Value::Array(items) => visit_seq(&self, items, visitor),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.absent() {
            return visitor.visit_map(Empty);
        }
        match self.value {
            Value::Object(map) => visit_map(&self, map, visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            // A struct cannot be unset: `key:` with nothing after it is an empty one.
            Value::Null => visitor.visit_map(Empty),
            Value::Object(map) => visit_map(&self, map, visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if self.absent() {
            // No empty value of an enum exists: fail this pass, the next one has no such key.
            return Err(de::Error::custom(
                "a null enum value is decoded again without it",
            ));
        }
        match self.value {
            Value::Object(map) if map.len() == 1 => {
                let Some((variant, value)) = map.iter().next() else {
                    return self.value.deserialize_enum(name, variants, visitor);
                };
                visitor.visit_enum(Enum {
                    variant,
                    value: self.child(value, Place::Other),
                })
            }
            other => other.deserialize_enum(name, variants, visitor),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

fn visit_seq<'de, V: Visitor<'de>>(
    parent: &Lenient<'de, '_>,
    items: &'de [Value],
    visitor: V,
) -> Result<V::Value, Error> {
    let len = items.len();
    let mut seq = Seq {
        items: items.iter(),
        nulls: parent.nulls,
    };
    let out = visitor.visit_seq(&mut seq)?;
    if seq.items.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in array"))
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    parent: &Lenient<'de, '_>,
    map: &'de Map<String, Value>,
    visitor: V,
) -> Result<V::Value, Error> {
    let len = map.len();
    let mut access = Entries {
        entries: map.iter(),
        value: None,
        nulls: parent.nulls,
    };
    let out = visitor.visit_map(&mut access)?;
    if access.entries.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

struct Seq<'de, 'n> {
    items: std::slice::Iter<'de, Value>,
    nulls: &'n Nulls,
}

impl<'de> de::SeqAccess<'de> for Seq<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(value) => seed
                .deserialize(Lenient {
                    value,
                    place: Place::Other,
                    nulls: self.nulls,
                })
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'de, 'n> {
    entries: serde_json::map::Iter<'de>,
    value: Option<&'de Value>,
    nulls: &'n Nulls,
}

impl<'de> de::MapAccess<'de> for Entries<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(Key(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(Lenient {
                value,
                place: Place::MapValue,
                nulls: self.nulls,
            }),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// The mapping a null struct field is read as.
struct Empty;

impl<'de> de::MapAccess<'de> for Empty {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _: K) -> Result<Option<K::Value>, Error> {
        Ok(None)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, _: T) -> Result<T::Value, Error> {
        Err(de::Error::custom("value is missing"))
    }
}

/// A mapping key: a string, or a number or boolean written as one, as `serde_json` reads keys.
struct Key<'de>(&'de str);

macro_rules! numeric_keys {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            if !self.0.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                return Err(de::Error::invalid_type(de::Unexpected::Str(self.0), &visitor));
            }
            let mut keys = serde_json::Deserializer::from_str(self.0);
            let out = (&mut keys).$method(visitor)?;
            keys.end()?;
            Ok(out)
        }
    )*};
}

impl<'de> Deserializer<'de> for Key<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.0)
    }

    numeric_keys!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    );

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(de::Error::invalid_type(
                de::Unexpected::Str(other),
                &visitor,
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// An externally tagged enum value `{variant: value}`.
struct Enum<'de, 'n> {
    variant: &'de String,
    value: Lenient<'de, 'n>,
}

impl<'de, 'n> de::EnumAccess<'de> for Enum<'de, 'n> {
    type Error = Error;
    type Variant = Lenient<'de, 'n>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let variant = seed.deserialize(Key(self.variant))?;
        Ok((variant, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for Lenient<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_struct("", fields, visitor)
    }
}
