//! Embedding on a cluster: an engine built with `Builder::cluster` runs its calls, submits and
//! maps on `procpy worker` processes that read a Redis server this test starts, with the same
//! values and errors as local calls. The worker runs in an empty directory of its own: the
//! engine's modules reach it only with the job.

use crate::common;
use crate::common::redis::{RedisServer, Worker, KEY};
use crate::common::serial;
use procpy::{Builder, Error};
use std::path::PathBuf;
use std::time::Duration;

fn cluster_engine(redis: &RedisServer, workers: usize) -> Builder {
    common::embed_builder(workers).cluster(&redis.url()).cluster_key(KEY)
}

const REMOTE: &str = r#"
import os
def where(x):
    return [x * 2, os.getpid(), os.getcwd()]

def twice(x):
    return 2 * x

def boom(x):
    raise ValueError('bad input %d' % x)

def uses_host():
    from host import lookup
    return lookup('k')
"#;

#[test]
fn calls_submits_and_maps_run_on_the_workers() {
    let _g = serial::shared();
    let redis = RedisServer::start();
    let worker = Worker::start(&redis.url(), 2, "embed-a");
    let engine = cluster_engine(&redis, 2).source("remote_mod", REMOTE).build().unwrap();
    let local = engine.worker_pids();
    let (v, pid, cwd): (i64, u32, String) = engine.call("remote_mod:where", 21).unwrap();
    assert_eq!(v, 42);
    assert!(!local.contains(&pid), "the call ran in the engine's own worker {pid}");
    assert_eq!(PathBuf::from(cwd), worker.dir, "the call did not run in the cluster's worker");
    // submit + wait, two at once
    let a = engine.submit::<_, i64>("remote_mod:twice", 5);
    let b = engine.submit::<_, i64>("operator:add", (3, 4));
    assert_eq!((a.wait().unwrap(), b.wait().unwrap()), (10, 7));
    // map: results in order, over several chunks
    let got: Vec<i64> = engine.map("remote_mod:twice", 0..40i64).unwrap();
    assert_eq!(got, (0..40).map(|x| 2 * x).collect::<Vec<_>>());
}

#[test]
fn a_python_exception_keeps_its_type_message_and_remote_location() {
    let _g = serial::shared();
    let redis = RedisServer::start();
    let _worker = Worker::start(&redis.url(), 2, "embed-b");
    // A module file the worker never sees: it is removed once the engine is built.
    let file = common::temp_script("embed_remote_errors", REMOTE);
    let engine = cluster_engine(&redis, 1).source_file("errs", &file).build().unwrap();
    std::fs::remove_file(&file).unwrap();
    match engine.call::<_, i64>("errs:boom", 3).unwrap_err() {
        Error::Python { type_name, message, traceback } => {
            assert_eq!(type_name, "ValueError");
            assert_eq!(message, "bad input 3");
            let at = format!("File \"{}\", line 10, in boom", file.display());
            assert!(traceback.contains(&at), "no {at:?} in {traceback}");
            // The line itself, from the shipped source.
            assert!(traceback.contains("raise ValueError('bad input %d' % x)"), "{traceback}");
            assert!(traceback.ends_with("ValueError: bad input 3\n"), "{traceback}");
            assert!(!traceback.contains("_remote_call"), "{traceback}");
        }
        other => panic!("not a Python error: {other:?}"),
    }
    // The engine still serves.
    assert_eq!(engine.call::<_, i64>("errs:twice", 4).unwrap(), 8);
}

#[test]
fn module_path_modules_travel_and_host_functions_say_why_not() {
    let _g = serial::shared();
    let redis = RedisServer::start();
    let _worker = Worker::start(&redis.url(), 2, "embed-c");
    let dir = common::temp_script("embed_pkg_init", "").parent().unwrap().join("mods");
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    std::fs::write(dir.join("pkg/__init__.py"), "BASE = 100\n").unwrap();
    std::fs::write(
        dir.join("pkg/calc.py"),
        "from . import BASE\ndef add(x):\n    return BASE + x\n",
    )
    .unwrap();
    let engine = cluster_engine(&redis, 1)
        .module_path(&dir)
        .source("remote_mod", REMOTE)
        .host_fn("lookup", |k: String| Ok::<_, String>(k))
        .build()
        .unwrap();
    // Shipped at build: the directory can go.
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(engine.call::<_, i64>("pkg.calc:add", 5).unwrap(), 105);
    let err = engine.call::<_, String>("remote_mod:uses_host", ()).unwrap_err();
    assert_eq!(err.python_type(), Some("host.HostError"), "{err:?}");
    assert!(err.to_string().contains("cannot be called on a cluster worker"), "{err}");
}

#[test]
fn a_timed_out_call_is_abandoned_and_the_engine_serves_on() {
    let _g = serial::shared();
    let redis = RedisServer::start();
    let _worker = Worker::start(&redis.url(), 2, "embed-d");
    let engine = cluster_engine(&redis, 1).build().unwrap();
    // Long enough to be running remotely when the timeout kills the engine's worker here.
    let err =
        engine.call_timeout::<_, ()>("time:sleep", 600, Duration::from_millis(1500)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(engine.call::<_, i64>("builtins:abs", -9).unwrap(), 9);
}

#[test]
fn a_call_that_kills_its_workers_fails_as_worker_lost_error() {
    let _g = serial::shared();
    let redis = RedisServer::start();
    let _worker = Worker::start(&redis.url(), 2, "embed-e");
    let engine = cluster_engine(&redis, 1).build().unwrap();
    // Every worker process that takes it dies: after 3 deaths the cluster gives up on it.
    let err = engine.call::<_, ()>("os:_exit", 3).unwrap_err();
    match &err {
        Error::Python { type_name, message, traceback } => {
            assert_eq!(type_name, "multiprocessing.cluster.WorkerLostError", "{err:?}");
            // It names how each worker process ended.
            assert!(message.contains("exited with code 3"), "{message}");
            assert!(traceback.ends_with(&format!("{message}\n")), "{traceback}");
        }
        other => panic!("not a Python error: {other:?}"),
    }
    assert_eq!(engine.call::<_, i64>("builtins:abs", -2).unwrap(), 2);
}

#[test]
fn a_cluster_engine_needs_a_key_and_a_reachable_server() {
    let _g = serial::shared();
    // Nothing listens on port 1.
    let url = "redis://127.0.0.1:1/0";
    let in_env = ["PROCPY_CLUSTER_KEY", "PROCPY_CLUSTER_KEY_FILE"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if !in_env {
        let err = common::embed_builder(1).cluster(url).build().unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("Builder::cluster_key"), "{err}");
    }
    let missing = std::env::temp_dir().join("procpy-embed-no-such-key-file");
    let err = common::embed_builder(1).cluster(url).cluster_key_file(&missing).build().unwrap_err();
    assert!(err.to_string().contains("procpy-embed-no-such-key-file"), "{err}");
    // A server that is not there: build fails with the connection error, naming the url.
    let err = common::embed_builder(1).cluster(url).cluster_key(KEY).build().unwrap_err();
    assert_eq!(err.python_type(), Some("ConnectionError"), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
