//! Helper processes killed mid-operation. The fork server's deaths are in `forkserver.rs`, a
//! worker's in tests/pool_beyond_cpython.rs; here the resource tracker, which a program never
//! sees until it is gone.

use crate::common::{procpy, run_with_deadline};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

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

def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    q = mp.Queue()
    first = mp.Process(target=leave_one, args=(q,))
    first.start()
    print('NAME', q.get(timeout=60))
    first.join()
    a = shared_memory.SharedMemory(create=True, size=4096)
    old = resource_tracker._resource_tracker._pid
    os.kill(old, signal.SIGKILL)
    until = time.monotonic() + 30
    while not gone(old) and time.monotonic() < until:
        time.sleep(0.01)
    print('tracker killed:', gone(old))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        b = shared_memory.SharedMemory(create=True, size=4096)
    print('relaunch warned:', any('relaunching' in str(w.message) for w in caught))
    new = resource_tracker._resource_tracker._pid
    print('new tracker:', new is not None and new != old)
    print('NAME', b.name)
    for _ in range(3):
        p = mp.Process(target=leave_one, args=(q,))
        p.start()
        print('NAME', q.get(timeout=60))
        p.join()
        print('child exit:', p.exitcode)
    # `a` was registered with the dead tracker only: nobody would clean it, so we do.
    a.close()
    a.unlink()
    b.close()
    print('done')
"#;

/// Wait (up to a deadline) until /dev/shm/<name> is gone; whether it went. Removes it on
/// failure so the next test starts clean.
fn gone(name: &str) -> bool {
    let path = Path::new("/dev/shm").join(name);
    let until = Instant::now() + Duration::from_secs(30);
    while path.exists() {
        if Instant::now() > until {
            let _ = std::fs::remove_file(&path);
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn a_killed_resource_tracker_is_replaced_and_segments_are_still_unlinked() {
    for method in METHODS {
        let mut cmd = Command::new(procpy());
        cmd.arg("-c").arg(TRACKER_KILLED).arg(method);
        let out = run_with_deadline(cmd, Duration::from_secs(120));
        let names: Vec<&str> = out.stdout.lines().filter_map(|l| l.strip_prefix("NAME ")).collect();
        let left: Vec<&&str> = names.iter().filter(|n| !gone(n)).collect();
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        for line in ["tracker killed: True", "relaunch warned: True", "new tracker: True", "done"] {
            assert!(out.stdout.lines().any(|l| l == line), "{method}: no {line:?} in {out:?}");
        }
        assert_eq!(out.stdout.lines().filter(|l| *l == "child exit: 0").count(), 3, "{method}: {out:?}");
        assert_eq!(names.len(), 5, "{method}: {out:?}");
        assert!(left.is_empty(), "{method}: segments left in /dev/shm: {left:?}\n{out:?}");
    }
}
