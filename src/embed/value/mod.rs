//! Rust values <-> Python values: a serde `Serializer` that produces the codec's
//! [`Value`] and a `Deserializer` that reads one, naming the path of any mismatch.
//!
//! | Rust | Python |
//! |---|---|
//! | `bool`, integers of any width (`i128`/`u128` too), `f32`/`f64` | `bool`, `int`, `float` |
//! | `String`, `&str`, `char` | `str` |
//! | [`Bytes`] (or `#[serde(with = ...)]` bytes) | `bytes` |
//! | `Option<T>` | `None` or the value |
//! | `()` | `()` (so `call(target, ())` passes no arguments) |
//! | `Vec<T>`, slices, sets | `list` (a Python `set`/`frozenset`/`tuple` also reads back as a sequence) |
//! | tuples, tuple structs | `tuple` |
//! | structs, maps | `dict` (struct fields by name) |
//! | unit enum variant | its name as a `str` |
//! | other enum variants | `{"Variant": value}` (externally tagged, as serde_json does) |

mod de;
mod ser;

pub(crate) use de::describe;
use de::{memo_table, De};
use procpy_interpreter::wire::Value;
use ser::Ser;
use serde::de::Visitor;
use serde::ser::Serialize;
use serde::{de as serde_de, ser as serde_ser};
use std::fmt;

/// Owned bytes that travel as a Python `bytes` object (a plain `Vec<u8>` becomes a list of ints,
/// as serde defines it).
///
/// ```
/// # procpy::init();
/// let v = procpy::to_value(&procpy::Bytes(b"hi".to_vec())).unwrap();
/// let back: procpy::Bytes = procpy::from_value(&v).unwrap();
/// assert_eq!(back.0, b"hi");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde_ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde_de::Deserialize<'de> for Bytes {
    fn deserialize<D: serde_de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde_de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde_de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A conversion error: where in the value (`[3].name`, empty at the top) and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    /// Path segments from the outside in (`[3]`, `.name`).
    pub(crate) path: Vec<String>,
    pub(crate) message: String,
}

impl ValueError {
    fn msg(m: impl Into<String>) -> Self {
        ValueError { path: Vec::new(), message: m.into() }
    }
    fn at(mut self, seg: impl FnOnce() -> String) -> Self {
        self.path.push(seg());
        self
    }
    /// The path, outermost first: `[3].name`.
    pub fn path(&self) -> String {
        self.path.iter().rev().cloned().collect()
    }
    /// What went wrong there.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let p = self.path();
        if p.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{p}: {}", self.message)
        }
    }
}

impl std::error::Error for ValueError {}

impl serde_ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::msg(msg.to_string())
    }
}

impl serde_de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::msg(msg.to_string())
    }
    fn invalid_type(unexp: serde_de::Unexpected, exp: &dyn serde_de::Expected) -> Self {
        ValueError::msg(format!("expected {exp}, found {unexp}"))
    }
    fn invalid_value(unexp: serde_de::Unexpected, exp: &dyn serde_de::Expected) -> Self {
        ValueError::msg(format!("expected {exp}, found {unexp}"))
    }
}

/// Turn any `Serialize` value into the wire model (what a Python object encodes to).
///
/// ```
/// # procpy::init();
/// use procpy::Value;
/// assert_eq!(procpy::to_value(&(1, "a")).unwrap(), Value::Tuple(vec![Value::Int(1), Value::Str(b"a".to_vec())]));
/// ```
pub fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, ValueError> {
    v.serialize(Ser)
}

/// Read a `Deserialize` value out of the wire model; a mismatch names its path.
///
/// ```
/// # procpy::init();
/// use procpy::Value;
/// let v = Value::List(vec![Value::Int(1), Value::Str(b"x".to_vec())]);
/// let e = procpy::from_value::<Vec<i64>>(&v).unwrap_err();
/// assert_eq!(e.to_string(), "[1]: expected i64, found str 'x'");
/// ```
pub fn from_value<T: serde_de::DeserializeOwned>(v: &Value) -> Result<T, ValueError> {
    let memo = memo_table(v);
    T::deserialize(De { v, memo: &memo, depth: 0 })
}

/// [`from_value`] of `v`, a value inside `root`: shared references are numbered across the
/// whole of `root`.
pub(crate) fn from_value_within<T: serde_de::DeserializeOwned>(
    root: &Value,
    v: &Value,
) -> Result<T, ValueError> {
    let memo = memo_table(root);
    T::deserialize(De { v, memo: &memo, depth: 1 })
}
