//! Behaviour where procpy deliberately differs from (improves on) CPython, with expected output
//! of its own rather than CPython's.

use crate::common::serial;
use crate::common::{self, procpy, run_with_deadline, temp_script};
use std::process::Command;
use std::time::Duration;

/// Run a script file with `method` as the default start method.
fn run_file(script: &std::path::Path, method: &str) -> common::Outcome {
    let mut cmd = Command::new(procpy());
    cmd.arg(script).env("PROCPY_START_METHOD", method);
    run_with_deadline(cmd, Duration::from_secs(60))
}

fn run_code(code: &str, method: &str) -> common::Outcome {
    let mut cmd = Command::new(procpy());
    cmd.arg("-c").arg(code).env("PROCPY_START_METHOD", method);
    run_with_deadline(cmd, Duration::from_secs(60))
}

/// CPython pickles in Queue's feeder thread, so `put()` of an unpicklable object "succeeds" and
/// the item is silently dropped. procpy encodes in `put()`: the error is raised in the sender,
/// names the type and where it sits inside the argument, and the queue stays usable.
#[test]
fn queue_put_of_unencodable_raises_in_sender_with_path() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp, threading
q = mp.Queue()
try:
    q.put({'jobs': [1, threading.Lock()]})
except TypeError as e:
    print('raised:', e)
q.put('still usable')
print(q.get(timeout=10), q.qsize())
"#;
    let out = run_code(code, "fork");
    assert_eq!(
        out.stdout,
        "raised: cannot pickle '_thread.lock' object (found at ['jobs'][1])\nstill usable 0\n",
        "stderr: {}",
        out.stderr
    );
}

/// Lambdas, closures and functions defined inside functions travel by value (code, the globals
/// they name, closure cells), as cloudpickle would send them; CPython's pickle raises
/// "Can't pickle local object". They work as a Process target with arguments (encoded for
/// spawn/forkserver, inherited under fork) and through a Pipe and a Queue in both directions,
/// including a lambda that calls a recursive lambda through its globals.
#[test]
fn local_functions_and_lambdas_travel_by_value() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp

def make_adder(n):
    def add(x):
        return x + n
    return add

def make_reporter(q, tag):
    def report(x, y):
        q.put((tag, x * y))
    return report

def serve(conn, qin, qout):
    f = conn.recv()
    conn.send(f(10))
    g = qin.get(timeout=30)
    qout.put(g(5))
    conn.send(make_adder(1000))

if __name__ == '__main__':
    q = mp.Queue()
    scale = 3
    p = mp.Process(target=lambda x, y: q.put(('lambda', x * scale + y)), args=(4, 1))
    p.start(); print(q.get(timeout=30)); p.join(); print(p.exitcode)
    p = mp.Process(target=make_reporter(q, 'closure'), args=(6, 7))
    p.start(); print(q.get(timeout=30)); p.join(); print(p.exitcode)

    a, b = mp.Pipe()
    qin, qout = mp.Queue(), mp.Queue()
    p = mp.Process(target=serve, args=(b, qin, qout)); p.start()
    fact = lambda n: 1 if n < 2 else n * fact(n - 1)
    a.send(lambda x: fact(x) // fact(x - 2))
    print('pipe:', a.recv())
    qin.put(make_adder(100))
    print('queue:', qout.get(timeout=30))
    back = a.recv()
    print('back:', back.__qualname__, back(1))
    p.join(); print(p.exitcode)
"#;
    // A script file, not -c: spawn and forkserver children import the main module by path.
    let script = temp_script("by_value", code);
    for m in ["fork", "spawn", "forkserver"] {
        let out = run_file(&script, m);
        assert_eq!(
            out.stdout,
            "('lambda', 13)\n0\n('closure', 42)\n0\npipe: 90\nqueue: 105\nback: make_adder.<locals>.add 1001\n0\n",
            "{m}: {}",
            out.stderr
        );
    }
}

/// What still cannot travel (a class defined inside a function) raises in the sender as CPython
/// does, with the path appended, and the pipe stays usable.
#[test]
fn pipe_send_of_local_class_names_the_problem() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp
def outer():
    class Inner: pass
    return Inner
a, b = mp.Pipe()
try:
    a.send((1, outer()))
except AttributeError as e:
    print(e)
a.send('ok'); print(b.recv())
"#;
    let out = run_code(code, "fork");
    assert_eq!(
        out.stdout, "Can't pickle local object 'outer.<locals>.Inner' (found at [1])\nok\n",
        "stderr: {}",
        out.stderr
    );
}

/// In one process, `put` then `get_nowait` finds the item: CPython may raise queue.Empty here
/// because its feeder thread has not written it yet.
#[test]
fn get_nowait_sees_items_this_process_just_put() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp
q = mp.Queue()
for i in range(200):
    q.put(i)
    assert q.get_nowait() == i
print('ok')
"#;
    assert_eq!(run_code(code, "fork").stdout, "ok\n");
}

/// Queue items larger than one socket record travel through a memory file, intact.
#[test]
fn large_queue_items_arrive_intact_across_processes() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp, sys
def echo(qi, qo):
    qo.put(qi.get())
if __name__ == '__main__':
    qi, qo = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo, args=(qi, qo)); p.start()
    blob = bytes(range(256)) * 40000
    qi.put(blob)
    print(qo.get(timeout=30) == blob); p.join(); print(p.exitcode)
"#;
    // A script file, not -c: spawn and forkserver children import the main module by path.
    let script = temp_script("large_items", code);
    for m in ["fork", "spawn", "forkserver"] {
        let out = run_file(&script, m);
        assert_eq!(out.stdout, "True\n0\n", "{m}: {}", out.stderr);
    }
}

/// The CLI follows python3: exit status of sys.exit, 1 with a traceback for an uncaught
/// exception, 2 for a missing script.
#[test]
fn cli_exit_statuses_follow_python3() {
    let _serial = serial::shared();
    assert_eq!(run_code("import sys; sys.exit(7)", "fork").status, Some(7));
    let out = run_code("raise ValueError('boom')", "fork");
    assert_eq!(out.status, Some(1));
    assert!(out.stderr.contains("ValueError: boom"), "{}", out.stderr);
    let out = run_with_deadline(
        {
            let mut c = Command::new(procpy());
            c.arg("/no/such/script.py");
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("can't open file"), "{}", out.stderr);
}

/// Unguarded `Process.start()` at module level under spawn: the child refuses with the
/// message that explains the `if __name__ == '__main__':` guard, instead of forking forever.
#[test]
fn missing_main_guard_is_explained() {
    let _serial = serial::shared();
    let script = temp_script(
        "unguarded",
        "import multiprocessing as mp\ndef f(): pass\nmp.set_start_method('spawn', force=True)\np = mp.Process(target=f); p.start(); p.join(); print('exit', p.exitcode)\n",
    );
    let out = common::run_script(&procpy(), &script, &[], Duration::from_secs(60));
    assert_eq!(out.stdout, "exit 1\n");
    assert!(out.stderr.contains("if __name__ == '__main__':"), "{}", out.stderr);
}

/// Connection ends travel inside Queue items and duplex-Pipe messages (descriptors ride along
/// with SCM_RIGHTS), under every start method. procpy duplicates the descriptor at `put()`, so
/// the sender may close its end at once; CPython pickles later in its feeder thread and fails
/// with "handle is closed" in that case.
#[test]
fn connections_travel_through_queues_and_pipes() {
    let _serial = serial::shared();
    let code = r#"
import multiprocessing as mp, sys
def worker(q):
    conn = q.get(timeout=10)
    conn.send(('via queue', mp.current_process().name))
    conn.close()
def worker2(ctl):
    c = ctl.recv()
    c.send('via pipe'); c.close()
if __name__ == '__main__':
    q = mp.Queue()
    p = mp.Process(target=worker, args=(q,)); p.start()
    a, b = mp.Pipe()
    q.put(b); b.close()
    print(a.recv()); p.join(); print(p.exitcode)
    ctl1, ctl2 = mp.Pipe()
    p = mp.Process(target=worker2, args=(ctl2,)); p.start()
    x, y = mp.Pipe()
    ctl1.send(y); y.close()
    print(x.recv()); p.join(); print(p.exitcode)
    try:
        q.put(mp.Queue())
    except RuntimeError as e:
        print('RuntimeError:', e)
    r, w = mp.Pipe(duplex=False)
    try:
        w.send(x)
    except RuntimeError as e:
        print('simplex pipe refuses descriptors')
"#;
    let script = temp_script("conn_travel", code);
    for m in ["fork", "spawn", "forkserver"] {
        let out = run_file(&script, m);
        assert_eq!(
            out.stdout,
            "('via queue', 'Process-1')\n0\nvia pipe\n0\nRuntimeError: Queue objects should only be shared between processes through inheritance\nsimplex pipe refuses descriptors\n",
            "{m}: {}",
            out.stderr
        );
    }
}

/// A `ThreadPool` cannot stop a thread that is running a task: after `terminate()`, `join()`
/// leaves such a thread to finish on its own (the pool's threads are daemons) instead of
/// waiting as long as the task runs. CPython's `join()` waits for it (its `terminate()` does
/// not join threads either), so a task blocked for good hangs the program there; CPython's own
/// `WithThreadsTestPool.test_terminate` passes only when no task has started yet. Here the task
/// is released only after `join()` returned: a `join()` that waited would never return.
#[test]
fn thread_pool_join_after_terminate_leaves_a_running_task() {
    let _serial = serial::shared();
    let code = r#"
import threading
from multiprocessing.pool import ThreadPool

started, release = threading.Event(), threading.Event()

def task():
    started.set()
    release.wait()
    return 'finished'

p = ThreadPool(1)
r = p.apply_async(task)
queued = p.apply_async(task)
started.wait()
p.terminate()
p.join()
print('joined while the task runs:', not release.is_set())
release.set()
print(r.get(timeout=30))
print('the queued task was dropped:', queued.ready(), queued.successful())
"#;
    let out = run_code(code, "fork");
    assert_eq!(
        out.stdout,
        "joined while the task runs: True\nfinished\nthe queued task was dropped: True False\n",
        "stderr: {}",
        out.stderr
    );
}
