//! Helper processes killed mid-operation. The fork server's deaths are in `forkserver.rs`, a
//! worker's in tests/all/pool.rs; here the resource tracker, which a program never
//! sees until it is gone.

use crate::common::serial;
use crate::common::{procpy, run_with_deadline, shm_gone, temp_script, METHODS};
use std::process::Command;
use std::time::Duration;

/// Kill the tracker with a segment registered and a child already started (so the fork
/// server, under forkserver, holds the dead tracker's pipe), then keep working: create
/// segments in the parent and in children, and leave some behind on purpose.
const TRACKER_KILLED: &str = r#"
import multiprocessing as mp, os, signal, sys, time, warnings
from multiprocessing import resource_tracker, shared_memory

def leave_one(q):
    s = shared_memory.SharedMemory(create=True, size=4096)
    s.buf[:2] = b'ok'
    q.put(s.name)

def dead(pid):
    '''Gone, or a zombie nobody reaped yet (the tracker is our child).'''
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except FileNotFoundError:
        return True

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    q = mp.Queue()
    first = mp.Process(target=leave_one, args=(q,))
    first.start()
    lost = q.get(timeout=60)
    print('NAME', lost)
    first.join()
    a = shared_memory.SharedMemory(create=True, size=4096)
    old = resource_tracker._resource_tracker._pid
    os.kill(old, signal.SIGKILL)
    until = time.monotonic() + 30
    while not dead(old) and time.monotonic() < until:
        time.sleep(0.01)
    print('tracker killed:', dead(old))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        b = shared_memory.SharedMemory(create=True, size=4096)
    print('relaunch warned:', any('relaunching' in str(w.message) for w in caught))
    new = resource_tracker._resource_tracker._pid
    print('new tracker:', new is not None and new != old)
    # The dead one was reaped when it was replaced: no zombie stays for the program's life.
    print('old tracker reaped:', not os.path.exists('/proc/%d' % old))
    print('NAME', b.name)
    for _ in range(3):
        p = mp.Process(target=leave_one, args=(q,))
        p.start()
        print('NAME', q.get(timeout=60))
        p.join()
        print('child exit:', p.exitcode)
    # `a` and the first child's segment were registered with the dead tracker only: nobody
    # would clean them (in CPython neither), so we do.
    a.close()
    a.unlink()
    shared_memory.SharedMemory(lost).unlink()
    b.close()
    print('done')
"#;

#[test]
fn a_killed_resource_tracker_is_replaced_and_segments_are_still_unlinked() {
    let _serial = serial::shared();
    // A file, not `-c`: spawn's children import the main script to find `leave_one`.
    let dir = std::env::temp_dir().join(format!("procpy-kills-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("tracker_killed.py");
    std::fs::write(&script, TRACKER_KILLED).unwrap();
    for method in METHODS {
        let mut cmd = Command::new(procpy());
        cmd.arg(&script).arg(method);
        let out = run_with_deadline(cmd, Duration::from_secs(120));
        let names: Vec<&str> = out.stdout.lines().filter_map(|l| l.strip_prefix("NAME ")).collect();
        let left: Vec<&&str> =
            names.iter().filter(|n| !shm_gone(n, Duration::from_secs(30))).collect();
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        for line in [
            "tracker killed: True",
            "relaunch warned: True",
            "new tracker: True",
            "old tracker reaped: True",
            "done",
        ] {
            assert!(out.stdout.lines().any(|l| l == line), "{method}: no {line:?} in {out:?}");
        }
        assert_eq!(
            out.stdout.lines().filter(|l| *l == "child exit: 0").count(),
            3,
            "{method}: {out:?}"
        );
        assert_eq!(names.len(), 5, "{method}: {out:?}");
        assert!(left.is_empty(), "{method}: segments left in /dev/shm: {left:?}\n{out:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// procpy's own threads in a child (queue feeder, parent watch) block every signal, so a
/// process-directed SIGTERM or SIGINT always reaches a Python thread. Taken by a helper, it
/// only interrupted the helper's poll and `terminate()` of a child with a SIGTERM handler
/// blocked in `recv()` hung (tests/scripts/process_exitcode_signals.py, about once in 300
/// runs under load). The main thread's mask is printed too: the check can tell the two apart.
#[test]
fn helper_threads_leave_signals_to_python_threads() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp, os, sys

def blocked(tid):
    with open(f'/proc/self/task/{tid}/status') as f:
        mask = int(next(l for l in f if l.startswith('SigBlk:')).split()[1], 16)
    return all(mask >> (s - 1) & 1 for s in (2, 15))   # SIGINT, SIGTERM

def report():
    q = mp.Queue()
    q.put('x')              # starts the feeder thread
    q.get(timeout=30)
    seen = {}
    for tid in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{tid}/comm') as f:
            name = f.read().strip()
        if name.startswith('procpy-'):
            seen[name] = blocked(tid)
        elif int(tid) == os.getpid():
            seen['main'] = blocked(tid)
    print(sorted(seen.items()), flush=True)

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    p = mp.Process(target=report, daemon=True)   # daemonic: it watches its parent
    p.start()
    p.join()
"#;
    let script = temp_script("helper_threads_signals.py", code);
    for method in METHODS {
        let mut cmd = Command::new(procpy());
        cmd.arg(&script).arg(method);
        let out = run_with_deadline(cmd, Duration::from_secs(60));
        assert_eq!(
            out.stdout.trim(),
            "[('main', False), ('procpy-parent-w', True), ('procpy-queue-fe', True)]",
            "{method}: stderr {}",
            out.stderr
        );
    }
}
