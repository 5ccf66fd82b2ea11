//! Embedding: calls of Python functions from Rust, Python exceptions, scripts, 8 threads at once.

use crate::common;
use crate::common::serial;
use procpy::{Builder, Engine, Error, ExitStatus, Script};
use serde::{Deserialize, Serialize};

fn engine(workers: usize) -> Builder {
    common::embed_builder(workers)
}

const PLUGIN: &str = r#"
import os
class Bad(Exception):
    pass

def echo(*args, **kw):
    return args

def point(p):
    return {'x': p['x'] * 2, 'y': p['y'] * 2, 'label': p['label'].upper()}

def inner():
    raise Bad('the plugin failed: ' + str(41 + 1))

def outer():
    inner()

def pid():
    return os.getpid()

def slow_square(x):
    import time
    time.sleep(0.01)
    return x * x
"#;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Point {
    x: i64,
    y: i64,
    label: String,
}

#[test]
fn a_call_returns_a_typed_value() {
    let _serial = serial::shared();
    let e = engine(1).source("plugin", PLUGIN).build().unwrap();
    let p: Point = e.call("plugin:point", Point { x: 1, y: -2, label: "a".into() }).unwrap();
    assert_eq!(p, Point { x: 2, y: -4, label: "A".into() });
    let t: (i64, String, Option<bool>) = e.call("plugin:echo", (5, "s", None::<bool>)).unwrap();
    assert_eq!(t, (5, "s".to_owned(), None));
    let none: Vec<i64> = e.call("plugin:echo", ()).unwrap();
    assert!(none.is_empty());
    // stdlib functions are targets too
    let s: String = e.call("json:dumps", vec![1, 2]).unwrap();
    assert_eq!(s, "[1, 2]");
}

#[test]
fn a_python_exception_carries_type_message_and_traceback() {
    let _serial = serial::shared();
    let e = engine(1).source("plugin", PLUGIN).build().unwrap();
    let err = e.call::<_, ()>("plugin:outer", ()).unwrap_err();
    match &err {
        Error::Python { type_name, message, traceback } => {
            assert_eq!(type_name, "plugin.Bad");
            assert_eq!(message, "the plugin failed: 42");
            assert!(traceback.starts_with("Traceback (most recent call last):"), "{traceback}");
            assert!(
                traceback.contains("in outer") && traceback.contains("in inner"),
                "{traceback}"
            );
            assert!(
                traceback.trim_end().ends_with("plugin.Bad: the plugin failed: 42"),
                "{traceback}"
            );
            assert!(!traceback.contains("_procpy_embed"), "our glue frame is hidden: {traceback}");
        }
        other => panic!("expected a Python error, got {other:?}"),
    }
    assert_eq!(err.to_string(), "plugin.Bad: the plugin failed: 42");
    // The worker survives an exception.
    assert_eq!(e.call::<_, i64>("builtins:abs", -1).unwrap(), 1);
}

#[test]
fn bad_targets_are_clear_errors() {
    let _serial = serial::shared();
    let e = engine(1).build().unwrap();
    let err = e.call::<_, ()>("no_colon", ()).unwrap_err();
    assert!(matches!(&err, Error::Invalid(m) if m.contains("package.module:function")), "{err}");
    let err = e.call::<_, ()>("no_such_module_xyz:f", ()).unwrap_err();
    assert_eq!(err.python_type(), Some("ModuleNotFoundError"), "{err}");
    let err = e.call::<_, ()>("os:no_such_function", ()).unwrap_err();
    assert_eq!(err.python_type(), Some("AttributeError"), "{err}");
}

#[test]
fn eight_threads_share_the_workers() {
    let _serial = serial::shared();
    let e = engine(3).source("plugin", PLUGIN).build().unwrap();
    let pids = std::sync::Mutex::new(std::collections::HashSet::new());
    std::thread::scope(|s| {
        for t in 0..8i64 {
            let (e, pids) = (&e, &pids);
            s.spawn(move || {
                for i in 0..20 {
                    let x = t * 100 + i;
                    assert_eq!(e.call::<_, i64>("plugin:slow_square", x).unwrap(), x * x);
                    pids.lock().unwrap().insert(e.call::<_, u32>("plugin:pid", ()).unwrap());
                }
            });
        }
    });
    let pids = pids.into_inner().unwrap();
    assert!(!pids.is_empty() && pids.len() <= 3, "at most the 3 workers served: {pids:?}");
    assert!(!pids.contains(&std::process::id()));
}

fn _engine_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
}

#[test]
fn a_script_runs_as_main_with_argv_and_exit_status() {
    let _serial = serial::shared();
    let e = engine(1).source("helper", "def f():\n    return 'from helper'\n").build().unwrap();
    let code = "import sys, helper\nprint(__name__, sys.argv[1:], helper.f())\nsys.exit(4)\n";
    let out = e.run_script(Script::source(code).arg("a").arg("b").capture_output()).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "__main__ ['a', 'b'] from helper\n");
    assert_eq!(out.status, ExitStatus::Code(4));
    let out = e.run_script(Script::source("raise KeyError('k')").capture_output()).unwrap();
    assert_eq!(out.status, ExitStatus::Code(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KeyError: 'k'"));
}

#[test]
fn the_worker_program_must_call_init() {
    let _serial = serial::shared();
    // /bin/true never answers Setup: a spawn error that says what to do.
    let err = Builder::new().worker_program("/bin/true").workers(1).build().err().unwrap();
    assert!(matches!(&err, Error::Spawn(_)), "{err}");
    assert!(err.to_string().contains("procpy::init()"), "{err}");
    let err = Builder::new().worker_program("/no/such/program").workers(1).build().err().unwrap();
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}
