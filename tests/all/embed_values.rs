//! Embedding: Rust values in, natural Python values out, and back; mismatches name their path.

use crate::common;
use crate::common::serial;
use procpy::{from_value, to_value, Bytes, Engine, Error};
use procpy_interpreter::wire::Value;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

fn engine() -> Engine {
    common::embed_builder(1).source("probe", PROBE).build().unwrap()
}

/// `kind(x)` describes the Python value that arrived; `same(x)` sends it back.
const PROBE: &str = r#"
def kind(x):
    def k(v):
        if isinstance(v, dict):
            return {'dict': [[k(a), k(b)] for a, b in v.items()]}
        if isinstance(v, (list, tuple)):
            return {type(v).__name__: [k(a) for a in v]}
        return '%s:%r' % (type(v).__name__, v)
    return k(x)

def same(x):
    return x

def shared():
    a = [1, 2]
    return [a, a, {'k': a}]

def a_set():
    return {3, 1, 2}

def records(n):
    return [{'id': i, 'name': 'r%d' % i} for i in range(n)] + [{'id': 'seven', 'name': 'bad'}]
"#;

#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
enum Shape {
    Dot,
    Circle(f64),
    Rect { w: u32, h: u32 },
    Pair(i8, i8),
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: Option<f64>,
    raw: Bytes,
    shape: Shape,
    pos: (i32, i32),
}

fn kind(e: &Engine, v: impl Serialize) -> String {
    let k: serde_json_like::Kind = e.call("probe:kind", (v,)).unwrap();
    k.0
}

/// A tiny reader for `kind`'s answer, so the test needs no JSON crate.
mod serde_json_like {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    pub struct Kind(pub String);
    impl<'de> Deserialize<'de> for Kind {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Kind;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a kind")
                }
                fn visit_string<E>(self, s: String) -> Result<Kind, E> {
                    Ok(Kind(s))
                }
                fn visit_str<E>(self, s: &str) -> Result<Kind, E> {
                    Ok(Kind(s.to_owned()))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                    let mut parts = Vec::new();
                    while let Some(Kind(k)) = a.next_element()? {
                        parts.push(k);
                    }
                    Ok(Kind(parts.join(", ")))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                    let (name, Kind(inner)): (String, Kind) = a.next_entry()?.unwrap();
                    Ok(Kind(match name.as_str() {
                        "dict" => format!("{{{inner}}}"),
                        "list" => format!("[{inner}]"),
                        _ => format!("({inner})"),
                    }))
                }
            }
            d.deserialize_any(V)
        }
    }
}

#[test]
fn rust_values_arrive_as_natural_python_values() {
    let _serial = serial::shared();
    let e = engine();
    assert_eq!(kind(&e, 5u8), "int:5");
    assert_eq!(kind(&e, -3i64), "int:-3");
    assert_eq!(kind(&e, u64::MAX), "int:18446744073709551615");
    assert_eq!(kind(&e, i128::MIN), "int:-170141183460469231731687303715884105728");
    assert_eq!(kind(&e, u128::MAX), "int:340282366920938463463374607431768211455");
    assert_eq!(kind(&e, 1.5f64), "float:1.5");
    assert_eq!(kind(&e, true), "bool:True");
    assert_eq!(kind(&e, "é"), "str:'é'");
    assert_eq!(kind(&e, 'c'), "str:'c'");
    assert_eq!(kind(&e, Bytes(b"\x00b".to_vec())), "bytes:b'\\x00b'");
    assert_eq!(kind(&e, None::<i32>), "NoneType:None");
    assert_eq!(kind(&e, vec![1, 2]), "[int:1, int:2]");
    assert_eq!(kind(&e, (1, "a")), "(int:1, str:'a')");
    assert_eq!(kind(&e, ()), "()");
    assert_eq!(kind(&e, BTreeMap::from([(1, "one")])), "{int:1, str:'one'}");
    assert_eq!(kind(&e, Shape::Dot), "str:'Dot'");
    assert_eq!(kind(&e, Shape::Circle(2.0)), "{str:'Circle', float:2.0}");
    assert_eq!(
        kind(&e, Shape::Rect { w: 1, h: 2 }),
        "{str:'Rect', {str:'w', int:1, str:'h', int:2}}"
    );
}

#[test]
fn values_round_trip_through_python() {
    let _serial = serial::shared();
    let e = engine();
    let r = Record {
        id: u64::MAX,
        name: "naïve".into(),
        tags: vec!["a".into(), "".into()],
        score: Some(f64::INFINITY),
        raw: Bytes((0..=255).collect()),
        shape: Shape::Pair(-1, 127),
        pos: (i32::MIN, i32::MAX),
    };
    let back: Record = e.call("probe:same", (r.clone(),)).unwrap();
    assert_eq!(back, r);
    for s in [Shape::Dot, Shape::Circle(0.5), Shape::Rect { w: 3, h: 4 }] {
        assert_eq!(e.call::<_, Shape>("probe:same", (s.clone(),)).unwrap(), s);
    }
    let big: (i128, u128) = e.call("probe:same", ((i128::MIN, u128::MAX),)).unwrap();
    assert_eq!(big, (i128::MIN, u128::MAX));
}

#[test]
fn shared_references_and_sets_read_back() {
    let _serial = serial::shared();
    let e = engine();
    let (a, b, m): (Vec<i64>, Vec<i64>, BTreeMap<String, Vec<i64>>) =
        e.call("probe:shared", ()).unwrap();
    assert_eq!((a, b, m["k"].clone()), (vec![1, 2], vec![1, 2], vec![1, 2]));
    let s: HashSet<i64> = e.call("probe:a_set", ()).unwrap();
    assert_eq!(s, HashSet::from([1, 2, 3]));
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Row {
    id: i64,
    name: String,
}

#[test]
fn a_mismatch_names_the_field_and_what_was_found() {
    let _serial = serial::shared();
    let e = engine();
    let err = e.call::<_, Vec<Row>>("probe:records", 3).unwrap_err();
    match &err {
        Error::Codec { path, message } => {
            assert_eq!(path, "[3].id");
            assert_eq!(message, "expected i64, found str 'seven'");
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert_eq!(err.to_string(), "[3].id: expected i64, found str 'seven'");
    let err = e.call::<_, u8>("probe:same", 300).unwrap_err();
    assert_eq!(err.to_string(), "expected u8, found int 300 (out of range)");
    let err = e.call::<_, Row>("probe:same", BTreeMap::from([("id", 1)])).unwrap_err();
    assert_eq!(err.to_string(), "missing field `name`");
    let err = e.call::<_, (i64, i64)>("probe:same", vec![1, 2, 3]).unwrap_err();
    assert_eq!(err.to_string(), "expected a tuple of 2 items, found list of 3 items");
}

#[test]
fn conversions_without_a_worker() {
    let _serial = serial::shared();
    let v = to_value(&vec![Some(1u8), None]).unwrap();
    assert_eq!(v, Value::List(vec![Value::Int(1), Value::None]));
    assert_eq!(
        to_value(&u64::MAX).unwrap(),
        Value::BigInt(vec![0xff; 8].into_iter().chain([0]).collect())
    );
    // Minimal two's complement: -2**63 - 1 needs nine bytes.
    assert_eq!(
        to_value(&(i64::MIN as i128 - 1)).unwrap(),
        Value::BigInt((i64::MIN as i128 - 1).to_le_bytes()[..9].to_vec())
    );
    let err = from_value::<BTreeMap<String, Vec<u32>>>(&Value::Dict(vec![(
        Value::Str(b"k".to_vec()),
        Value::List(vec![Value::Int(1), Value::Float(2.5)]),
    )]))
    .unwrap_err();
    assert_eq!(err.to_string(), ".k[1]: expected u32, found float 2.5");
    let err = from_value::<i64>(&Value::Str(vec![0xed, 0xa0, 0x80])).unwrap_err();
    assert!(err.to_string().starts_with("expected i64, found str"), "{err}");
    let err = from_value::<String>(&Value::Str(vec![0xed, 0xa0, 0x80])).unwrap_err();
    assert!(err.to_string().contains("lone surrogates"), "{err}");
}
