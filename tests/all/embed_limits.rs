//! Embedding: limits. A timeout kills and replaces the worker; a worker that dies fails only its
//! call; rlimits for memory and CPU; no orphans when the engine drops or the host dies.

use crate::common;
use crate::common::serial;
use procpy::{Builder, Engine, Error, ExitStatus, Limit};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn builder(workers: usize) -> Builder {
    common::embed_builder(workers).source("plugin", PLUGIN)
}

const PLUGIN: &str = r#"
import os, signal, time
def pid():
    return os.getpid()
def exit_with(code):
    os._exit(code)
def kill_self(sig):
    os.kill(os.getpid(), sig)
def sleep(s):
    time.sleep(s)
def spin():
    while True:
        pass
def vm_size():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024
def allocate(n):
    return len(bytearray(n))
"#;

/// Whether `pid` still runs (a zombie is dead too).
fn alive(pid: u32) -> bool {
    !common::is_gone(pid as i32)
}

#[test]
fn a_timeout_kills_the_worker_and_a_replacement_serves() {
    let _serial = serial::shared();
    let e = builder(1).build().unwrap();
    let first: u32 = e.call("plugin:pid", ()).unwrap();
    let t0 = Instant::now();
    let err = e.call_timeout::<_, ()>("plugin:sleep", 30, Duration::from_millis(300)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the call returned at its timeout, not at the end of the sleep"
    );
    assert!(!alive(first), "the timed-out worker was killed and reaped");
    let second: u32 = e.call("plugin:pid", ()).unwrap();
    assert_ne!(first, second);
    // the default timeout applies too
    let e = builder(1).default_timeout(Duration::from_millis(300)).build().unwrap();
    assert!(e.call::<_, ()>("plugin:spin", ()).unwrap_err().is_timeout());
    assert!(e.submit::<_, ()>("plugin:spin", ()).wait().unwrap_err().is_timeout());
}

#[test]
fn a_dying_worker_fails_only_its_call() {
    let _serial = serial::shared();
    let e = builder(2).build().unwrap();
    let cases = [
        ("plugin:exit_with", 3, ExitStatus::Code(3)),
        ("plugin:kill_self", libc::SIGKILL, ExitStatus::Signal(libc::SIGKILL)),
        ("plugin:kill_self", libc::SIGSEGV, ExitStatus::Signal(libc::SIGSEGV)),
    ];
    for (target, arg, want) in cases {
        match e.call::<_, ()>(target, arg).unwrap_err() {
            Error::WorkerLost { pid, status } => {
                assert_eq!(status, want, "{target}({arg})");
                assert!(!alive(pid));
            }
            other => panic!("{target}({arg}): {other:?}"),
        }
        assert_eq!(e.call::<_, i64>("builtins:abs", -5).unwrap(), 5, "the engine still serves");
    }
    // a pool job whose worker dies
    let err = e.map::<_, ()>("plugin:exit_with", [9]).unwrap_err();
    assert!(matches!(err, Error::WorkerLost { status: ExitStatus::Code(9), .. }), "{err:?}");
}

#[test]
fn a_memory_limit_stops_a_large_allocation() {
    let _serial = serial::shared();
    let probe = builder(1).build().unwrap();
    let base: u64 = probe.call("plugin:vm_size", ()).unwrap();
    drop(probe);
    let e = builder(1).memory_limit(base + (256 << 20)).build().unwrap();
    assert_eq!(
        e.call::<_, u64>("plugin:allocate", 1 << 20).unwrap(),
        1 << 20,
        "small allocations still work"
    );
    let err = e.call::<_, u64>("plugin:allocate", 2u64 << 30).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { limit: Limit::Memory, .. }), "{err:?}");
    assert!(err.is_limit_exceeded());
    assert_eq!(e.call::<_, u64>("plugin:allocate", 1000).unwrap(), 1000, "the engine still serves");
}

#[test]
fn a_cpu_limit_ends_a_spinning_worker() {
    let _serial = serial::shared();
    let e = builder(1).cpu_limit(1).build().unwrap();
    let err = e.call::<_, ()>("plugin:spin", ()).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { limit: Limit::Cpu, .. }), "{err:?}");
    assert_eq!(e.call::<_, i64>("builtins:abs", -2).unwrap(), 2);
}

#[test]
fn dropping_the_engine_kills_and_reaps_every_worker() {
    let _serial = serial::shared();
    let e: Engine = builder(3).build().unwrap();
    // one of them busy in a long call from a pool thread
    let _busy = e.submit::<_, ()>("plugin:sleep", 60);
    let pids = e.worker_pids();
    assert_eq!(pids.len(), 3);
    let t0 = Instant::now();
    drop(e);
    assert!(t0.elapsed() < Duration::from_secs(20), "drop did not wait for the busy call");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived its engine");
    }
}

/// Not a test by itself: the host process of `workers_die_with_their_host` (run in a child).
#[test]
#[ignore]
fn host_process_for_the_death_test() {
    if std::env::var_os("PROCPY_EMBED_TEST_HOST").is_none() {
        return;
    }
    let e = builder(2).build().unwrap();
    let _busy = e.submit::<_, ()>("plugin:spin", ());
    println!(
        "pids {}",
        e.worker_pids().iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    );
    // The parent kills us long before this ends.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn workers_die_with_their_host() {
    let _serial = serial::shared();
    let mut host = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &common::test_name(module_path!(), "host_process_for_the_death_test"),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCPY_EMBED_TEST_HOST", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(host.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints its "test NAME ... " on the same line.
        if let Some(rest) = line.split_once("pids ").map(|(_, r)| r) {
            pids = rest.split(' ').map(|p| p.parse::<u32>().unwrap()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    host.kill().unwrap();
    host.wait().unwrap();
    for pid in pids {
        assert!(
            common::wait_gone(&[pid as i32], Duration::from_secs(30)).is_empty(),
            "worker {pid} became an orphan"
        );
    }
}
