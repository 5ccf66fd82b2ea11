//! Python -> Rust: a serde `Deserializer` over the wire model that names the path of any
//! mismatch.

use super::ValueError;
use procpy_interpreter::wire::{self, Value};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

pub(super) fn memo_table(v: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Tuple(items) | Value::List(items) => {
                out.push(v);
                items.iter().for_each(|x| walk(x, out));
            }
            Value::Dict(items) => {
                out.push(v);
                for (k, x) in items {
                    walk(k, out);
                    walk(x, out);
                }
            }
            Value::Reduce(r) => {
                out.push(v);
                walk(&r.func, out);
                walk(&r.args, out);
                if let Some(s) = &r.state {
                    walk(s, out);
                }
                r.listitems.iter().for_each(|x| walk(x, out));
                for (k, x) in &r.dictitems {
                    walk(k, out);
                    walk(x, out);
                }
            }
            Value::Handle { .. } | Value::Function(_) | Value::MainGlobal(_) => out.push(v),
            _ => {}
        }
    }
    let mut out = Vec::new();
    // Only worth a walk when the value shares something.
    if contains_memo(v) {
        walk(v, &mut out);
    }
    out
}

fn contains_memo(v: &Value) -> bool {
    match v {
        Value::Memo(_) => true,
        Value::Tuple(items) | Value::List(items) => items.iter().any(contains_memo),
        Value::Dict(items) => items.iter().any(|(k, x)| contains_memo(k) || contains_memo(x)),
        Value::Reduce(_) => true,
        _ => false,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn big_to_i128(b: &[u8]) -> Option<i128> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut full = [fill; 16];
    full[..b.len()].copy_from_slice(b);
    Some(i128::from_le_bytes(full))
}

fn big_to_u128(b: &[u8]) -> Option<u128> {
    if b.is_empty() || b[b.len() - 1] & 0x80 != 0 {
        return None;
    }
    let trimmed = if b.len() == 17 && b[16] == 0 { &b[..16] } else { b };
    if trimmed.len() > 16 {
        return None;
    }
    let mut full = [0u8; 16];
    full[..trimmed.len()].copy_from_slice(trimmed);
    Some(u128::from_le_bytes(full))
}

/// How a value is named in an error: `str 'x'`, `int 5`, `list of 3 items`.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => {
            if *b {
                "True".into()
            } else {
                "False".into()
            }
        }
        Value::Int(i) => format!("int {i}"),
        Value::BigInt(b) => match big_to_i128(b) {
            Some(i) => format!("int {i}"),
            None => "int (more than 128 bits)".into(),
        },
        Value::Float(f) => format!("float {f:?}"),
        Value::Str(s) => {
            let s = lossy(s);
            if s.chars().count() > 40 {
                format!("str '{}...'", s.chars().take(40).collect::<String>())
            } else {
                format!("str '{s}'")
            }
        }
        Value::Bytes(b) => format!("bytes of length {}", b.len()),
        Value::Tuple(t) => format!("tuple of {} items", t.len()),
        Value::List(t) => format!("list of {} items", t.len()),
        Value::Dict(t) => format!("dict of {} items", t.len()),
        Value::Global { module, qualname } => format!("{module}.{qualname}"),
        Value::Reduce(r) => match &r.func {
            Value::Global { module, qualname } => format!("a {module}.{qualname} object"),
            _ => "an object".into(),
        },
        Value::Memo(_) => "a shared reference".into(),
        Value::Handle { .. } => "an OS handle".into(),
        Value::Function(_) => "a function".into(),
        Value::MainGlobal(m) => format!("__main__.{}", m.qualname),
        Value::Class(_) => "a class".into(),
    }
}

pub(super) fn describe_key(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("'{}'", lossy(s)),
        Value::Int(i) => i.to_string(),
        other => describe(other),
    }
}

#[derive(Clone, Copy)]
pub(super) struct De<'a> {
    pub(super) v: &'a Value,
    pub(super) memo: &'a [&'a Value],
    /// How many containers deep `v` sits, shared references followed.
    pub(super) depth: usize,
}

impl<'a> De<'a> {
    fn at(self, v: &'a Value) -> De<'a> {
        De { v, memo: self.memo, depth: self.depth + 1 }
    }
    /// The value itself, with shared references followed. Every descent asks for it, so this
    /// is where a value that contains itself (a shared reference to an enclosing container),
    /// read into a recursive type, stops: no deeper than the wire decoder lets a tree be,
    /// instead of recursing until the host's stack overflows.
    fn value(&self) -> Result<&'a Value, ValueError> {
        if self.depth > wire::MAX_DEPTH {
            return Err(ValueError::msg(format!(
                "nested deeper than {} levels (a value that contains itself?)",
                wire::MAX_DEPTH
            )));
        }
        let mut v = self.v;
        for _ in 0..4 {
            match v {
                Value::Memo(i) => {
                    v =
                        self.memo.get(*i as usize).copied().ok_or_else(|| {
                            ValueError::msg(format!("dangling shared reference {i}"))
                        })?
                }
                _ => return Ok(v),
            }
        }
        Ok(v)
    }
    fn mismatch(&self, expected: &str) -> ValueError {
        let found = self.value().map(describe).unwrap_or_else(|_| "a shared reference".into());
        ValueError::msg(format!("expected {expected}, found {found}"))
    }
    fn int(&self, expected: &str) -> Result<i128, ValueError> {
        match self.value()? {
            Value::Int(i) => Ok(*i as i128),
            Value::Bool(b) => Ok(*b as i128),
            Value::BigInt(b) => big_to_i128(b).ok_or_else(|| self.mismatch(expected)),
            _ => Err(self.mismatch(expected)),
        }
    }
    fn ranged<T: TryFrom<i128>>(&self, expected: &str) -> Result<T, ValueError> {
        let i = self.int(expected)?;
        T::try_from(i).map_err(|_| {
            ValueError::msg(format!("expected {expected}, found int {i} (out of range)"))
        })
    }
    fn float(&self) -> Result<f64, ValueError> {
        match self.value()? {
            Value::Float(f) => Ok(*f),
            // Python code often returns an int where a float is meant (`return 0`).
            Value::Int(i) => Ok(*i as f64),
            _ => Err(self.mismatch("float")),
        }
    }
    fn string(&self, expected: &str) -> Result<String, ValueError> {
        match self.value()? {
            Value::Str(s) => String::from_utf8(s.clone()).map_err(|_| {
                ValueError::msg(format!("expected {expected}, found a str with lone surrogates"))
            }),
            _ => Err(self.mismatch(expected)),
        }
    }
    /// Items of anything sequence-like: list, tuple, and set/frozenset (which travel reduced).
    fn seq_items(&self) -> Result<Option<&'a [Value]>, ValueError> {
        Ok(match self.value()? {
            Value::List(v) | Value::Tuple(v) => Some(v),
            Value::Reduce(r) => match (&r.func, &r.args) {
                (Value::Global { module, qualname }, Value::Tuple(args))
                    if module == "builtins" && (qualname == "set" || qualname == "frozenset") =>
                {
                    match args.first().map(|a| self.at(a).value()).transpose()? {
                        Some(Value::List(items)) => Some(items),
                        None => Some(&[]),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        })
    }
}

macro_rules! de_int {
    ($($m:ident $t:ty, $name:literal, $visit:ident;)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
            v.$visit(self.ranged::<$t>($name)?)
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for De<'a> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::None => v.visit_none(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::BigInt(b) => match (big_to_i128(b), big_to_u128(b)) {
                (Some(i), _) => v.visit_i128(i),
                (None, Some(u)) => v.visit_u128(u),
                _ => Err(ValueError::msg("int does not fit in 128 bits")),
            },
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(_) => v.visit_string(self.string("str")?),
            Value::Bytes(b) => v.visit_bytes(b),
            Value::Dict(items) => v.visit_map(MapAcc { de: self, items, i: 0 }),
            _ => match self.seq_items()? {
                Some(items) => v.visit_seq(SeqAcc { de: self, items, i: 0 }),
                None => Err(self.mismatch("a value serde can read")),
            },
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Bool(b) => v.visit_bool(*b),
            _ => Err(self.mismatch("bool")),
        }
    }

    de_int! {
        deserialize_i8 i8, "i8", visit_i8;
        deserialize_i16 i16, "i16", visit_i16;
        deserialize_i32 i32, "i32", visit_i32;
        deserialize_i64 i64, "i64", visit_i64;
        deserialize_i128 i128, "i128", visit_i128;
        deserialize_u8 u8, "u8", visit_u8;
        deserialize_u16 u16, "u16", visit_u16;
        deserialize_u32 u32, "u32", visit_u32;
        deserialize_u64 u64, "u64", visit_u64;
    }

    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::BigInt(b) => v.visit_u128(big_to_u128(b).ok_or_else(|| self.mismatch("u128"))?),
            _ => v.visit_u128(self.ranged::<u128>("u128")?),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        v.visit_f32(self.float()? as f32)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        v.visit_f64(self.float()?)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        let s = self.string("a one-character str")?;
        let mut c = s.chars();
        match (c.next(), c.next()) {
            (Some(ch), None) => v.visit_char(ch),
            _ => Err(self.mismatch("a one-character str")),
        }
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        v.visit_string(self.string("str")?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        v.visit_string(self.string("str")?)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Bytes(b) => v.visit_bytes(b),
            _ => Err(self.mismatch("bytes")),
        }
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Bytes(b) => v.visit_byte_buf(b.clone()),
            _ => Err(self.mismatch("bytes")),
        }
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::None => v.visit_none(),
            _ => v.visit_some(self),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::None => v.visit_unit(),
            Value::Tuple(t) if t.is_empty() => v.visit_unit(),
            _ => Err(self.mismatch("None or ()")),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_unit(v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ValueError> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.seq_items()? {
            Some(items) => v.visit_seq(SeqAcc { de: self, items, i: 0 }),
            None => Err(self.mismatch("a list")),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, ValueError> {
        match self.seq_items()? {
            Some(items) if items.len() == len => v.visit_seq(SeqAcc { de: self, items, i: 0 }),
            _ => Err(self.mismatch(&format!("a tuple of {len} items"))),
        }
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_tuple(len, v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Dict(items) => v.visit_map(MapAcc { de: self, items, i: 0 }),
            _ => Err(self.mismatch("a dict")),
        }
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Dict(items) => v.visit_map(MapAcc { de: self, items, i: 0 }),
            _ => Err(self.mismatch(&format!("a dict (for struct {name})"))),
        }
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Str(_) => v.visit_enum(self.string("str")?.into_deserializer()),
            Value::Dict(items) if items.len() == 1 => {
                v.visit_enum(EnumAcc { de: self, key: &items[0].0, value: &items[0].1 })
            }
            _ => {
                Err(self.mismatch(&format!("a variant name or a one-entry dict (for enum {name})")))
            }
        }
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        match self.value()? {
            Value::Str(_) => v.visit_string(self.string("str")?),
            Value::Int(i) if *i >= 0 => v.visit_u64(*i as u64),
            _ => Err(self.mismatch("a field name")),
        }
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ValueError> {
        v.visit_unit()
    }
}

struct SeqAcc<'a> {
    de: De<'a>,
    items: &'a [Value],
    i: usize,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqAcc<'a> {
    type Error = ValueError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        let Some(item) = self.items.get(self.i) else { return Ok(None) };
        let i = self.i;
        self.i += 1;
        seed.deserialize(self.de.at(item)).map(Some).map_err(|e| e.at(|| format!("[{i}]")))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.i)
    }
}

struct MapAcc<'a> {
    de: De<'a>,
    items: &'a [(Value, Value)],
    i: usize,
}

impl<'de, 'a> de::MapAccess<'de> for MapAcc<'a> {
    type Error = ValueError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        let Some((k, _)) = self.items.get(self.i) else { return Ok(None) };
        seed.deserialize(self.de.at(k))
            .map(Some)
            .map_err(|e| e.at(|| format!("[{}] (a key)", describe_key(k))))
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        let Some((k, v)) = self.items.get(self.i) else {
            return Err(ValueError::msg("a dict value was asked for past its last key"));
        };
        self.i += 1;
        seed.deserialize(self.de.at(v)).map_err(|e| {
            e.at(|| match k {
                Value::Str(s) => format!(".{}", lossy(s)),
                other => format!("[{}]", describe_key(other)),
            })
        })
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.i)
    }
}

struct EnumAcc<'a> {
    de: De<'a>,
    key: &'a Value,
    value: &'a Value,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAcc<'a> {
    type Error = ValueError;
    type Variant = VariantAcc<'a>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantAcc<'a>), ValueError> {
        let name = self.de.at(self.key).string("a variant name")?;
        let variant = seed.deserialize(self.de.at(self.key))?;
        Ok((variant, VariantAcc { de: self.de.at(self.value), name }))
    }
}

struct VariantAcc<'a> {
    de: De<'a>,
    name: String,
}

impl<'de, 'a> de::VariantAccess<'de> for VariantAcc<'a> {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        let name = self.name;
        seed.deserialize(self.de).map_err(|e| e.at(|| format!(".{name}")))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, ValueError> {
        let name = self.name;
        de::Deserializer::deserialize_tuple(self.de, len, v)
            .map_err(|e| e.at(|| format!(".{name}")))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ValueError> {
        let name = self.name;
        de::Deserializer::deserialize_struct(self.de, "variant", fields, v)
            .map_err(|e| e.at(|| format!(".{name}")))
    }
}
