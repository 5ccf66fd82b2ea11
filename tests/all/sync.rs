//! Locks where procpy goes beyond CPython 3.11: a lock whose holder died is taken over by the
//! next acquirer, with a RuntimeWarning, instead of blocking it forever (CPython's sem_wait
//! cannot know who holds a semaphore). Plus the guarantees a blocked acquire must keep: Ctrl-C
//! interrupts it. Every test runs under fork, spawn and forkserver.

use crate::common::serial;
use crate::common::{procpy, run_with_deadline, temp_script, Outcome, METHODS};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn run(script: &PathBuf, method: &str) -> Outcome {
    let mut cmd = Command::new(procpy());
    cmd.arg(script).env("PROCPY_START_METHOD", method);
    // A guard against hangs only: every script here finishes in well under a second.
    run_with_deadline(cmd, Duration::from_secs(60))
}

const DEAD_HOLDER: &str = r#"
import multiprocessing, os, signal, sys

def is_zombie(pid):
    # (under forkserver the fork server reaps it: then it is simply gone)
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
        return True

def hold_and_die(lock, how):
    lock.acquire()
    if how == 'exit':
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == '__main__':
    for kind in ('Lock', 'RLock'):
        for how in ('exit', 'kill'):
            for reap in (True, False):
                lock = getattr(multiprocessing, kind)()
                p = multiprocessing.Process(target=hold_and_die, args=(lock, how))
                p.start()
                if reap:
                    p.join()
                else:
                    # Dead but not yet reaped (a zombie) must count as dead too.
                    while not is_zombie(p.pid):
                        pass
                got = lock.acquire(timeout=30)
                print(kind, how, 'reaped' if reap else 'zombie', 'acquired:', got, 'mine:', lock._is_mine())
                lock.release()
                print('free again:', lock.acquire(False))
                lock.release()
                p.join()
                print('child exit:', p.exitcode)
"#;

#[test]
fn lock_held_by_a_dead_process_is_taken_over() {
    let _serial = serial::shared();
    let script = temp_script("dead_holder", DEAD_HOLDER);
    for method in METHODS {
        let out = run(&script, method);
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        let mut want = String::new();
        for kind in ["Lock", "RLock"] {
            for (how, code) in [("exit", 3), ("kill", -9)] {
                for reap in ["reaped", "zombie"] {
                    want.push_str(&format!("{kind} {how} {reap} acquired: True mine: True\nfree again: True\nchild exit: {code}\n"));
                }
            }
        }
        assert_eq!(out.stdout, want, "{method}: stderr {}", out.stderr);
        assert_eq!(
            out.stderr.matches("died without releasing it").count(),
            8,
            "{method}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("RuntimeWarning"), "{method}: {}", out.stderr);
    }
}

const INTERRUPT: &str = r#"
import multiprocessing, os, signal, time

def interrupt(pid, blocking):
    # One SIGINT once the parent is about to block (a little later, so it usually is blocked;
    # either way it must end up as KeyboardInterrupt in the parent's try block).
    blocking.wait()
    time.sleep(0.2)
    os.kill(pid, signal.SIGINT)

if __name__ == '__main__':
    lock = multiprocessing.Lock()
    lock.acquire()
    blocking = multiprocessing.Event()
    p = multiprocessing.Process(target=interrupt, args=(os.getpid(), blocking))
    p.start()
    try:
        blocking.set()
        lock.acquire()
        print('acquired?!')
    except KeyboardInterrupt:
        print('KeyboardInterrupt')
    p.join()
    print('semaphore too:', end=' ')
    sem = multiprocessing.Semaphore(0)
    blocking = multiprocessing.Event()
    p = multiprocessing.Process(target=interrupt, args=(os.getpid(), blocking))
    p.start()
    try:
        blocking.set()
        sem.acquire(timeout=300)
        print('acquired?!')
    except KeyboardInterrupt:
        print('KeyboardInterrupt')
    p.join()
"#;

#[test]
fn ctrl_c_interrupts_a_blocked_acquire() {
    let _serial = serial::shared();
    let script = temp_script("interrupt", INTERRUPT);
    for method in METHODS {
        let out = run(&script, method);
        assert!(!out.timed_out, "{method}: hung: {out:?}");
        assert_eq!(
            out.stdout, "KeyboardInterrupt\nsemaphore too: KeyboardInterrupt\n",
            "{method}: {}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{method}: {}", out.stderr);
    }
}
