//! Embedding: the pool API (map, imap, submit with blocking waits and futures).

use crate::common;
use crate::common::serial;
use procpy::{Builder, Engine, Error};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

fn engine(workers: usize) -> Builder {
    common::embed_builder(workers).source("plugin", PLUGIN)
}

const PLUGIN: &str = r#"
import os
def score(rec):
    return {'id': rec['id'], 'score': len(rec['name']) * rec['weight'], 'pid': os.getpid()}

def fail_on_7(x):
    if x == 7:
        raise ValueError('seven')
    return x

def wait_for(path):
    # Blocks until the host creates `path` (no timing guesses).
    import time
    while not os.path.exists(path):
        time.sleep(0.005)
    return 'released'

def rendezvous(d, n):
    # Returns once n different worker processes are inside this function.
    import time
    open(os.path.join(d, str(os.getpid())), 'w').close()
    while len(os.listdir(d)) < n:
        time.sleep(0.005)
    return os.getpid()
"#;

#[derive(Serialize)]
struct Rec {
    id: u32,
    name: String,
    weight: f64,
}

#[derive(Deserialize, Debug)]
struct Scored {
    id: u32,
    score: f64,
    pid: u32,
}

#[test]
fn map_keeps_order_and_uses_every_worker() {
    let _serial = serial::shared();
    let e = engine(3).build().unwrap();
    let recs: Vec<Rec> =
        (0..2000).map(|i| Rec { id: i, name: "x".repeat((i % 7) as usize), weight: 0.5 }).collect();
    let out: Vec<Scored> = e.map("plugin:score", &recs).unwrap();
    assert_eq!(out.len(), 2000);
    for (i, s) in out.iter().enumerate() {
        assert_eq!(s.id, i as u32);
        assert_eq!(s.score, (i % 7) as f64 * 0.5);
    }
    assert!(out.iter().all(|s| s.pid != std::process::id()));
    let empty: Vec<i64> = e.map("plugin:fail_on_7", Vec::<i64>::new()).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn imap_yields_in_order_and_reports_a_failed_chunk() {
    let _serial = serial::shared();
    let e = engine(2).chunksize(5).build().unwrap();
    let got: Vec<Result<i64, Error>> = e.imap("plugin:fail_on_7", 0..20i64).collect();
    // chunks [0..5) ok, [5..10) failed (one error in its place), [10..20) ok
    assert_eq!(got.len(), 5 + 1 + 10);
    assert_eq!(got[..5].iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    let err = got[5].as_ref().unwrap_err();
    assert_eq!(err.python_type(), Some("ValueError"));
    assert_eq!(
        got[6..].iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(),
        (10..20).collect::<Vec<_>>()
    );
    // map returns the first failure
    assert!(e.map::<_, i64>("plugin:fail_on_7", 0..20i64).unwrap_err().is_python());
}

#[test]
fn a_result_of_the_wrong_type_names_its_global_index() {
    let _serial = serial::shared();
    let e = engine(2).chunksize(3).build().unwrap();
    let items =
        vec![serde_value(1), serde_value(2), serde_value(3), serde_value(4), Val::S("five".into())];
    let err = e.map::<_, i64>("plugin:fail_on_7", &items).unwrap_err();
    assert_eq!(err.to_string(), "[4]: expected i64, found str 'five'");
}

#[derive(Serialize)]
#[serde(untagged)]
enum Val {
    I(i64),
    S(String),
}
fn serde_value(i: i64) -> Val {
    Val::I(i)
}

#[test]
fn submit_waits_blocking_and_with_a_timeout() {
    let _serial = serial::shared();
    let e = engine(2).build().unwrap();
    let flag = std::env::temp_dir().join(format!("procpy-embed-pool-flag-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let mut t = e.submit::<_, String>("plugin:wait_for", flag.to_str().unwrap());
    assert!(t.wait_timeout(Duration::from_millis(50)).is_none(), "still blocked on the flag");
    assert!(!t.is_finished());
    // Other work proceeds on the other worker meanwhile.
    assert_eq!(e.submit::<_, i64>("operator:add", (2, 2)).wait().unwrap(), 4);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(t.wait_timeout(Duration::from_secs(30)).unwrap().unwrap(), "released");
    let _ = std::fs::remove_file(&flag);
}

/// A minimal executor: the future must wake us, or this never returns (the harness would time out).
fn block_on<F: Future>(f: F) -> F::Output {
    struct Signal(Mutex<bool>, Condvar);
    impl Wake for Signal {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() = true;
            self.1.notify_one();
        }
    }
    let sig = Arc::new(Signal(Mutex::new(false), Condvar::new()));
    let waker = Waker::from(sig.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let mut woken = sig.0.lock().unwrap();
        while !*woken {
            woken = sig.1.wait(woken).unwrap();
        }
        *woken = false;
    }
}

#[test]
fn tasks_are_futures() {
    let _serial = serial::shared();
    let e = engine(2).build().unwrap();
    let a = e.submit::<_, i64>("operator:mul", (6, 7));
    let b = e.submit::<_, String>("builtins:repr", vec![1]);
    let (x, y) = block_on(async { (a.await, b.await) });
    assert_eq!(x.unwrap(), 42);
    assert_eq!(y.unwrap(), "[1]");
    let err = block_on(e.submit::<_, i64>("plugin:fail_on_7", 7)).unwrap_err();
    assert_eq!(err.python_type(), Some("ValueError"));
}

#[test]
fn many_threads_submitting_and_mapping_at_once() {
    let _serial = serial::shared();
    let e = Arc::new(engine(3).build().unwrap());
    let hs: Vec<_> = (0..8i64)
        .map(|t| {
            let e: Arc<Engine> = e.clone();
            std::thread::spawn(move || {
                let out: Vec<i64> =
                    e.map("plugin:fail_on_7", (100..150).map(|x| x + t * 1000)).unwrap();
                assert_eq!(out, (100..150).map(|x| x + t * 1000).collect::<Vec<_>>());
                e.submit::<_, i64>("operator:neg", t).wait().unwrap()
            })
        })
        .collect();
    let got: Vec<i64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, (0..8).map(|t: i64| -t).collect::<Vec<_>>());
}

#[test]
fn concurrent_calls_each_get_their_own_worker() {
    let _serial = serial::shared();
    // A rendezvous of three calls can only complete when three workers run them at once.
    let e = engine(3).default_timeout(Duration::from_secs(60)).build().unwrap();
    let dir = std::env::temp_dir().join(format!("procpy-embed-pool-rdv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tasks: Vec<_> = (0..3)
        .map(|_| e.submit::<_, u32>("plugin:rendezvous", (dir.to_str().unwrap(), 3)))
        .collect();
    let pids: std::collections::HashSet<u32> =
        tasks.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(pids.len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
