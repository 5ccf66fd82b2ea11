//! Shared memory and the resource tracker beyond what a differential test can show: once every
//! process of a program tree is gone — exited or SIGKILLed, the parent included — the tracker
//! unlinks the segments still registered and warns on stderr, as CPython's does; segments stay
//! while any process of the tree lives. Every test runs under fork, spawn and forkserver, and
//! waits on conditions (with a deadline), never on a fixed sleep.

use crate::common::serial;
use crate::common::{self, procpy, run_with_deadline, temp_script, Outcome, METHODS};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn run(script: &Path, method: &str) -> Outcome {
    let mut cmd = Command::new(procpy());
    cmd.arg(script).arg(method);
    // A guard against hangs only: every script here finishes in a few seconds.
    run_with_deadline(cmd, Duration::from_secs(60))
}

/// The segment names a script printed as `NAME <name>` lines.
fn names(stdout: &str) -> Vec<String> {
    stdout.lines().filter_map(|l| l.strip_prefix("NAME ")).map(str::to_owned).collect()
}

/// Wait (up to a deadline) until /dev/shm/<name> is gone; whether it went.
fn gone(name: &str) -> bool {
    common::shm_gone(name, Duration::from_secs(20))
}

const CHILD_KILLED: &str = r#"
import multiprocessing, os, signal, sys
from multiprocessing import shared_memory

def create_and_die(q, ack):
    shm = shared_memory.SharedMemory(create=True, size=4096)
    shm.buf[:5] = b'alive'
    q.put(shm.name)
    ack.get(timeout=30)     # the name has arrived (a queue's feeder would die with us)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q, ack = multiprocessing.Queue(), multiprocessing.Queue()
    p = multiprocessing.Process(target=create_and_die, args=(q, ack))
    p.start()
    name = q.get(timeout=30)
    ack.put('die')
    p.join()
    print('NAME', name)
    print('child exit:', p.exitcode)
    # The tree is still alive (we are): the segment stays, and we can still attach to it.
    other = shared_memory.SharedMemory(name)
    print('still there:', os.path.exists('/dev/shm/' + name), bytes(other.buf[:5]))
    other.close()
"#;

#[test]
fn segment_of_a_sigkilled_child_is_unlinked_when_the_program_ends() {
    let _serial = serial::shared();
    let script = temp_script("child_killed", CHILD_KILLED);
    for method in METHODS {
        let out = run(&script, method);
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        let names = names(&out.stdout);
        assert_eq!(names.len(), 1, "{method}: {out:?}");
        assert!(
            out.stdout.contains("child exit: -9\nstill there: True b'alive'\n"),
            "{method}: {out:?}"
        );
        assert!(gone(&names[0]), "{method}: /dev/shm/{} left behind: {out:?}", names[0]);
        assert!(
            out.stderr.contains("resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown"),
            "{method}: {}",
            out.stderr
        );
    }
}

const PARENT_KILLED: &str = r#"
import multiprocessing, os, signal, sys
from multiprocessing import shared_memory
from multiprocessing.connection import wait

def outlive_parent(name, ready):
    shm = shared_memory.SharedMemory(name)
    ready.put('attached')
    # Until the parent is gone (it SIGKILLs itself).
    wait([multiprocessing.parent_process().sentinel], timeout=60)
    # The parent died without clean-up, but this process of the tree still lives: the
    # segment must still be there, and writable.
    shm.buf[0] = 42
    print('child: parent gone, segment still there:', os.path.exists('/dev/shm/' + name),
          shm.buf[0], flush=True)
    shm.close()

if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    shm = shared_memory.SharedMemory(create=True, size=100)
    print('NAME', shm.name, flush=True)
    ready = multiprocessing.Queue()
    children = [multiprocessing.Process(target=outlive_parent, args=(shm.name, ready)) for _ in range(2)]
    for p in children:
        p.start()
    for p in children:
        ready.get(timeout=30)
    os.kill(os.getpid(), signal.SIGKILL)
"#;

#[test]
fn parent_sigkilled_while_children_attach_unlinks_once_all_are_gone() {
    let _serial = serial::shared();
    let script = temp_script("parent_killed", PARENT_KILLED);
    for method in METHODS {
        // run_with_deadline returns once the (killed) parent is reaped and every process that
        // holds its stdout/stderr — the children and the tracker — has exited.
        let out = run(&script, method);
        assert_eq!(out.status, Some(-9), "{method}: {out:?}");
        let names = names(&out.stdout);
        assert_eq!(names.len(), 1, "{method}: {out:?}");
        assert_eq!(
            out.stdout.matches("child: parent gone, segment still there: True 42\n").count(),
            2,
            "{method}: {out:?}"
        );
        assert!(gone(&names[0]), "{method}: /dev/shm/{} left behind: {out:?}", names[0]);
        assert!(
            out.stderr.contains("There appear to be 1 leaked shared_memory objects"),
            "{method}: {}",
            out.stderr
        );
    }
}

const NORMAL_EXIT: &str = r#"
import multiprocessing, sys
from multiprocessing import shared_memory

def create_and_leave(q):
    shm = shared_memory.SharedMemory(create=True, size=10)
    q.put(shm.name)
    shm.close()

if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    leaked = shared_memory.SharedMemory(create=True, size=10)
    print('NAME', leaked.name)
    sl = shared_memory.ShareableList([1, 'two'])
    print('NAME', sl.shm.name)
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=create_and_leave, args=(q,))
    p.start()
    print('NAME', q.get(timeout=30))
    p.join()
    # Unlinked ones are forgotten by the tracker (no warning for them).
    tidy = shared_memory.SharedMemory(create=True, size=10)
    tidy.close()
    tidy.unlink()
    print('exit')
"#;

#[test]
fn leaked_segments_are_unlinked_with_a_warning_at_normal_exit() {
    let _serial = serial::shared();
    let script = temp_script("normal_exit", NORMAL_EXIT);
    for method in METHODS {
        let out = run(&script, method);
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        let names = names(&out.stdout);
        assert_eq!(names.len(), 3, "{method}: {out:?}");
        // (All polled before asserting: a failure still removes every one of them.)
        let left: Vec<&String> = names.iter().filter(|n| !gone(n)).collect();
        assert!(left.is_empty(), "{method}: left behind in /dev/shm: {left:?}: {out:?}");
        assert_eq!(
            out.stderr
                .matches("UserWarning: resource_tracker: There appear to be 3 leaked shared_memory objects to clean up at shutdown")
                .count(),
            1,
            "{method}: {}",
            out.stderr
        );
        // Nothing failed to unlink.
        assert!(!out.stderr.contains("Errno"), "{method}: {}", out.stderr);
    }
}

const NO_LEAK: &str = r#"
import multiprocessing, sys
from multiprocessing import shared_memory, resource_tracker

def work(name):
    shm = shared_memory.SharedMemory(name)
    shm.buf[0] += 1
    shm.close()

if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    shm = shared_memory.SharedMemory(create=True, size=10)
    ps = [multiprocessing.Process(target=work, args=(shm.name,)) for _ in range(3)]
    for p in ps:
        p.start()
        p.join()
    print('count:', shm.buf[0])
    # The resource_tracker API, as in CPython.
    resource_tracker.ensure_running()
    print('fd:', resource_tracker.getfd() >= 0)
    resource_tracker.register('procpy-not-a-segment', 'noop')
    resource_tracker.unregister('procpy-not-a-segment', 'noop')
    try:
        resource_tracker.register('x' * 600, 'shared_memory')
    except ValueError as e:
        print('long name:', e)
    shm.close()
    shm.unlink()
"#;

#[test]
fn a_tidy_program_gets_no_warning() {
    let _serial = serial::shared();
    let script = temp_script("no_leak", NO_LEAK);
    for method in METHODS {
        let out = run(&script, method);
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        assert_eq!(
            out.stdout, "count: 3\nfd: True\nlong name: msg too long\n",
            "{method}: {out:?}"
        );
        assert!(!out.stderr.contains("resource_tracker"), "{method}: {}", out.stderr);
    }
}

const GROUP_KILLED: &str = r#"
import multiprocessing, os, signal, sys
from multiprocessing import shared_memory

def create_and_wait(q, never):
    shm = shared_memory.SharedMemory(create=True, size=10)
    q.put(shm.name)
    never.get(timeout=60)

if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q, never = multiprocessing.Queue(), multiprocessing.Queue()
    p = multiprocessing.Process(target=create_and_wait, args=(q, never))
    p.start()
    print('NAME', q.get(timeout=30), flush=True)
    # SIGKILL to the whole process group: parent, child (and fork server) at once.
    os.kill(0, signal.SIGKILL)
"#;

#[test]
fn sigkill_to_the_whole_process_group_still_unlinks() {
    let _serial = serial::shared();
    // CPython's tracker shares the program's process group and dies with it (a leak); ours
    // runs in its own group.
    use std::os::unix::process::CommandExt;
    let script = temp_script("group_killed", GROUP_KILLED);
    for method in METHODS {
        let mut cmd = Command::new(procpy());
        cmd.arg(&script).arg(method).process_group(0);
        let out = run_with_deadline(cmd, Duration::from_secs(60));
        assert_eq!(out.status, Some(-9), "{method}: {out:?}");
        let names = names(&out.stdout);
        assert_eq!(names.len(), 1, "{method}: {out:?}");
        assert!(gone(&names[0]), "{method}: /dev/shm/{} left behind: {out:?}", names[0]);
        assert!(
            out.stderr.contains("There appear to be 1 leaked shared_memory objects"),
            "{method}: {}",
            out.stderr
        );
    }
}
