//! Embedding: host functions (Rust closures importable as `from host import NAME`).

use crate::common;
use crate::common::serial;
use procpy::Error;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct User {
    name: String,
    age: u32,
}

const PLUGIN: &str = r#"
from host import lookup, user, fails, panics, sizes, HostError
import host

def total(keys):
    return sum(lookup(k) for k in keys)

def greet(uid):
    u = user(uid, 'hello')
    return '%s (%d)' % (u['name'], u['age'])

def caught():
    try:
        lookup('missing')
    except HostError as e:
        return 'HostError: %s | is RuntimeError: %s' % (e, isinstance(e, RuntimeError))

def uncaught():
    fails()

def wrong_args():
    return lookup(1, 2)

def crash():
    return panics()

def shared():
    # The same list twice: the second travels as a shared reference to the first.
    x = ['a', 'b']
    return sizes([x, x, ['c']])

def names():
    return sorted(n for n in dir(host) if not n.startswith('_'))
"#;

fn engine(calls: Arc<AtomicUsize>) -> procpy::Engine {
    let table: HashMap<String, i64> =
        [("a", 1), ("b", 20), ("c", 300)].into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    common::embed_builder(2)
        .host_fn("lookup", move |key: String| {
            calls.fetch_add(1, Ordering::SeqCst);
            table.get(&key).copied().ok_or_else(|| format!("no key {key:?}"))
        })
        .host_fn("user", |(id, _greeting): (u32, String)| {
            Ok::<_, String>(User { name: format!("user{id}"), age: 30 + id })
        })
        .host_fn("fails", |(): ()| Err::<(), _>("the host says no"))
        .host_fn("panics", |(): ()| -> Result<(), String> { panic!("host bug") })
        .host_fn("sizes", |lists: Vec<Vec<String>>| {
            Ok::<_, String>(lists.iter().map(Vec::len).collect::<Vec<_>>())
        })
        .source("plugin", PLUGIN)
        .build()
        .unwrap()
}

#[test]
fn python_calls_typed_host_functions() {
    let _serial = serial::shared();
    let calls = Arc::new(AtomicUsize::new(0));
    let e = engine(calls.clone());
    assert_eq!(e.call::<_, i64>("plugin:total", vec!["a", "b", "c", "a"]).unwrap(), 322);
    assert_eq!(calls.load(Ordering::SeqCst), 4, "each lookup ran in the host");
    assert_eq!(e.call::<_, String>("plugin:greet", 7).unwrap(), "user7 (37)");
    assert_eq!(
        e.call::<_, Vec<String>>("plugin:names", ()).unwrap(),
        ["HostError", "fails", "lookup", "panics", "sizes", "user"]
    );
}

#[test]
fn a_single_argument_keeps_its_shared_references() {
    let _serial = serial::shared();
    let e = engine(Arc::new(AtomicUsize::new(0)));
    assert_eq!(e.call::<_, Vec<usize>>("plugin:shared", ()).unwrap(), [2, 2, 1]);
}

#[test]
fn host_errors_are_python_exceptions() {
    let _serial = serial::shared();
    let e = engine(Arc::new(AtomicUsize::new(0)));
    assert_eq!(
        e.call::<_, String>("plugin:caught", ()).unwrap(),
        "HostError: no key \"missing\" | is RuntimeError: True"
    );
    let err = e.call::<_, ()>("plugin:uncaught", ()).unwrap_err();
    match &err {
        Error::Python { type_name, message, traceback } => {
            assert_eq!(type_name, "host.HostError");
            assert_eq!(message, "the host says no");
            assert!(traceback.contains("in uncaught"), "{traceback}");
        }
        other => panic!("{other:?}"),
    }
    let err = e.call::<_, ()>("plugin:wrong_args", ()).unwrap_err();
    assert_eq!(err.python_type(), Some("host.HostError"));
    assert!(
        err.to_string().contains(
            "bad arguments to host function lookup: expected str, found tuple of 2 items"
        ),
        "{err}"
    );
    // A panicking host function is an error in Python, not a dead host.
    let err = e.call::<_, ()>("plugin:crash", ()).unwrap_err();
    assert!(err.to_string().contains("host function panics panicked"), "{err}");
    assert_eq!(e.call::<_, i64>("plugin:total", vec!["b"]).unwrap(), 20);
}

#[test]
fn host_functions_serve_many_threads_and_pool_jobs() {
    let _serial = serial::shared();
    let calls = Arc::new(AtomicUsize::new(0));
    let e = engine(calls.clone());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..10 {
                    assert_eq!(e.call::<_, i64>("plugin:total", vec!["a", "c"]).unwrap(), 301);
                }
            });
        }
    });
    let keys: Vec<Vec<&str>> = (0..50).map(|_| vec!["b"]).collect();
    let out: Vec<i64> = e.map("plugin:total", keys).unwrap();
    assert_eq!(out, vec![20; 50]);
    assert_eq!(calls.load(Ordering::SeqCst), 8 * 10 * 2 + 50);
}
