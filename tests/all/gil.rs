//! The emulated GIL (`procpy --emulate-gil`, `procpy_gil`): threads take turns on one lock and
//! processes are unaffected. Checked by the order of events (who held the lock when), never by
//! wall-clock thresholds; and `procpy --demo gil` runs end to end.

use crate::common::serial;
use crate::common::{procpy, run_with_deadline, Outcome};
use std::process::Command;
use std::time::Duration;

fn run_code(args: &[&str], code: &str) -> Outcome {
    let mut cmd = Command::new(procpy());
    cmd.args(args).arg("-c").arg(code);
    // A guard against hangs only.
    run_with_deadline(cmd, Duration::from_secs(120))
}

const TWO_SPINNERS: &str = r#"
import sys, threading, procpy_gil
def spin(n):
    t = 0
    for i in range(n):
        t += i % 7
keys = {}
def worker(i):
    keys[procpy_gil.thread_key()] = i
    spin(200000)
sys.setswitchinterval(0.001)
procpy_gil.record(True)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
for t in ts: t.start()
for t in ts: t.join()
procpy_gil.record(False)
log = sorted((a, b, keys[k]) for k, a, b in procpy_gil.take_log() if k in keys)
print('enabled', procpy_gil.is_enabled())
print('both threads ran', sorted(set(w for _, _, w in log)) == [0, 1])
print('turns never overlap', all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(log, log[1:])))
owners = [w for _, _, w in log]
hand_overs = sum(1 for x, y in zip(owners, owners[1:]) if x != y)
print('hand-overs >= 4', hand_overs >= 4)
"#;

#[test]
fn threads_take_turns_under_the_emulated_gil() {
    let _serial = serial::shared();
    let out = run_code(&["--emulate-gil"], TWO_SPINNERS);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "enabled True\nboth threads ran True\nturns never overlap True\nhand-overs >= 4 True\n",
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn without_the_switch_there_is_no_gil_and_no_log() {
    let _serial = serial::shared();
    let out = run_code(&[], TWO_SPINNERS);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("enabled False\nboth threads ran False\n"), "{}", out.stdout);
}

#[test]
fn sleeping_and_waiting_threads_do_not_stall_the_others() {
    let _serial = serial::shared();
    // A thread blocked outside Python code (sleep, Event.wait, join) must not keep the lock:
    // the waiter takes it over after one interval. A deadlock here would hit the deadline.
    let code = r#"
import threading, time, procpy_gil
ev, done = threading.Event(), []
def sleeper():
    for _ in range(5):
        time.sleep(0.01)
    done.append('sleeper')
def spinner():
    t = 0
    for i in range(100000):
        t += i
    done.append('spinner')
    ev.set()
ts = [threading.Thread(target=f) for f in (sleeper, spinner)]
for t in ts: t.start()
print('event set', ev.wait(60))
for t in ts: t.join()
print(sorted(done), procpy_gil.switches() > 0)
"#;
    let out = run_code(&["--emulate-gil"], code);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "event set True\n['sleeper', 'spinner'] True\n");
}

#[test]
fn every_child_process_emulates_its_own_gil() {
    let _serial = serial::shared();
    for method in ["fork", "spawn", "forkserver"] {
        let code = format!(
            r#"
import multiprocessing as mp, procpy_gil
def child(q):
    q.put(procpy_gil.is_enabled())
if __name__ == '__main__':
    ctx = mp.get_context('{method}')
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    print('{method}', procpy_gil.is_enabled(), q.get(timeout=60))
    p.join()
"#
        );
        // -c scripts cannot be re-imported by spawn children: write a file.
        let dir = std::env::temp_dir().join(format!("procpy-gil-{}-{method}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("child_gil.py");
        std::fs::write(&script, code).unwrap();
        let mut cmd = Command::new(procpy());
        cmd.arg("--emulate-gil").arg(&script);
        let out = run_with_deadline(cmd, Duration::from_secs(120));
        assert_eq!(out.status, Some(0), "{method}: {}", out.stderr);
        assert_eq!(out.stdout, format!("{method} True True\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn demo_gil_prints_its_table_and_draws_the_timeline() {
    let _serial = serial::shared();
    let dir = std::env::temp_dir().join(format!("procpy-gil-demo-{}", std::process::id()));
    let mut cmd = Command::new(procpy());
    cmd.args(["--demo", "gil", "--workers", "2", "--size", "20000", "--out"]).arg(&dir);
    let out = run_with_deadline(cmd, Duration::from_secs(120));
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    for row in [
        "serial, emulated GIL",
        "2 threads, emulated GIL",
        "serial, no GIL",
        "2 threads, no GIL",
        "2 processes",
    ] {
        assert!(out.stdout.contains(row), "no '{row}' in:\n{}", out.stdout);
    }
    let svg = std::fs::read_to_string(dir.join("gil-demo.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // Five panels; the threads-with-GIL panel has many turns, each a bar.
    assert!(svg.matches("<rect").count() > 20, "{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}
