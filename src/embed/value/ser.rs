//! Rust -> Python: a serde `Serializer` that builds the wire model.

use super::de::describe_key;
use super::ValueError;
use procpy_interpreter::wire::Value;
use serde::ser::{self, Serialize};

fn str_value(s: &str) -> Value {
    Value::Str(s.as_bytes().to_vec())
}

fn int_value(v: i128) -> Value {
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(minimal_le(&v.to_le_bytes(), v < 0)),
    }
}

/// Two's-complement little-endian bytes without redundant sign bytes.
fn minimal_le(b: &[u8], neg: bool) -> Vec<u8> {
    let mut out = b.to_vec();
    let fill = if neg { 0xff } else { 0 };
    while out.len() > 1 && out[out.len() - 1] == fill && (out[out.len() - 2] & 0x80 != 0) == neg {
        out.pop();
    }
    out
}

pub(super) struct Ser;

/// Collects the items of a sequence, tuple or struct under construction.
pub(super) struct SeqSer {
    items: Vec<Value>,
    tuple: bool,
    variant: Option<&'static str>,
}

/// Collects the entries of a map or struct under construction.
pub(super) struct MapSer {
    items: Vec<(Value, Value)>,
    key: Option<Value>,
    variant: Option<&'static str>,
}

fn tagged(variant: Option<&'static str>, v: Value) -> Value {
    match variant {
        Some(name) => Value::Dict(vec![(str_value(name), v)]),
        None => v,
    }
}

impl ser::Serializer for Ser {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SeqSer;
    type SerializeTuple = SeqSer;
    type SerializeTupleStruct = SeqSer;
    type SerializeTupleVariant = SeqSer;
    type SerializeMap = MapSer;
    type SerializeStruct = MapSer;
    type SerializeStructVariant = MapSer;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        Ok(int_value(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        Ok(int_value(v.into()))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        match i128::try_from(v) {
            Ok(i) => Ok(int_value(i)),
            // Beyond i128: 17 bytes, the top one a zero sign byte.
            Err(_) => {
                let mut b = v.to_le_bytes().to_vec();
                b.push(0);
                Ok(Value::BigInt(b))
            }
        }
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(str_value(v.encode_utf8(&mut [0; 4])))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(str_value(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, ValueError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Tuple(Vec::new()))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, ValueError> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(str_value(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Value, ValueError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, ValueError> {
        Ok(tagged(Some(variant), v.serialize(Ser)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer, ValueError> {
        Ok(SeqSer { items: Vec::with_capacity(len.unwrap_or(0)), tuple: false, variant: None })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSer, ValueError> {
        Ok(SeqSer { items: Vec::with_capacity(len), tuple: true, variant: None })
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<SeqSer, ValueError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSer, ValueError> {
        Ok(SeqSer { items: Vec::with_capacity(len), tuple: false, variant: Some(variant) })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapSer, ValueError> {
        Ok(MapSer { items: Vec::with_capacity(len.unwrap_or(0)), key: None, variant: None })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<MapSer, ValueError> {
        Ok(MapSer { items: Vec::with_capacity(len), key: None, variant: None })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapSer, ValueError> {
        Ok(MapSer { items: Vec::with_capacity(len), key: None, variant: Some(variant) })
    }
}

impl SeqSer {
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        let i = self.items.len();
        self.items.push(v.serialize(Ser).map_err(|e| e.at(|| format!("[{i}]")))?);
        Ok(())
    }
    fn done(self) -> Value {
        let v = if self.tuple { Value::Tuple(self.items) } else { Value::List(self.items) };
        tagged(self.variant, v)
    }
}

impl ser::SerializeSeq for SeqSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.done())
    }
}
impl ser::SerializeTuple for SeqSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.done())
    }
}
impl ser::SerializeTupleStruct for SeqSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.done())
    }
}
impl ser::SerializeTupleVariant for SeqSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.push(v)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.done())
    }
}

impl MapSer {
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), ValueError> {
        let v = v.serialize(Ser).map_err(|e| e.at(|| format!(".{key}")))?;
        self.items.push((str_value(key), v));
        Ok(())
    }
}

impl ser::SerializeMap for MapSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ValueError> {
        self.key = Some(k.serialize(Ser).map_err(|e| e.at(|| " (a key)".into()))?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        let k = self.key.take().ok_or_else(|| ValueError::msg("map value without a key"))?;
        let v = v.serialize(Ser).map_err(|e| e.at(|| format!("[{}]", describe_key(&k))))?;
        self.items.push((k, v));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(tagged(self.variant, Value::Dict(self.items)))
    }
}
impl ser::SerializeStruct for MapSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ValueError> {
        self.field(key, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(tagged(self.variant, Value::Dict(self.items)))
    }
}
impl ser::SerializeStructVariant for MapSer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ValueError> {
        self.field(key, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(tagged(self.variant, Value::Dict(self.items)))
    }
}
