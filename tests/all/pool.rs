//! `multiprocessing.Pool` behaviour where procpy deliberately goes beyond CPython 3.11, with
//! expected output of procpy's own: a worker that dies mid-task fails that task with
//! WorkerLostError and is replaced (CPython hangs, bpo-22393); a parent killed with SIGKILL
//! leaves no daemon behind (CPython orphans them, gh-111873); lambdas and closures travel by
//! value; Ctrl-C stops the pool and its workers; terminate() fails pending results with
//! PoolTerminatedError (CPython's get() hangs); a raising result callback does not stop the
//! pool. Every test runs under fork, spawn and forkserver (`PROCPY_START_METHOD`).
//!
//! Tests that kill processes wait for conditions (lines read, pids gone) with deadlines; none
//! sleeps and hopes.

use crate::common::serial;
use crate::common::{self, is_gone, temp_script_flushed, wait_gone, Running, METHODS};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

const SIGINT: i32 = Signal::SIGINT as i32;
const SIGKILL: i32 = Signal::SIGKILL as i32;

/// Run a script file with `method` as the default start method; unlike
/// `common::run_with_deadline`, a script killed at the deadline keeps the output it printed.
fn run_file(script: &Path, method: &str, args: &[&str]) -> common::Outcome {
    let mut run = Running::start(script, method, args, false);
    // Every script finishes in a few seconds; 40 s only guards against hangs.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut timed_out = false;
    loop {
        match run.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => run.seen.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = run.child.kill();
                break;
            }
        }
    }
    let status = run.wait_exit(Duration::from_secs(10));
    let mut stdout: String = run.seen.iter().map(|l| format!("{l}\n")).collect();
    if timed_out {
        stdout.push_str("<killed after deadline>\n");
    }
    common::Outcome {
        status: status.map(|st| st.code().or(st.signal().map(|s| -s)).unwrap()),
        stdout,
        stderr: run.stderr(Duration::from_secs(5)),
        timed_out,
    }
}

/// The class-name prefix of a pool worker's name under `method` (`ForkPoolWorker-3`).
fn worker_prefix(method: &str) -> &'static str {
    match method {
        "fork" => "ForkPoolWorker",
        "spawn" => "SpawnPoolWorker",
        "forkserver" => "ForkServerPoolWorker",
        _ => unreachable!(),
    }
}

// ------------------------------------------------------------------------------------------
// 1. A worker that dies mid-task

const WORKER_DEATH: &str = r#"
import multiprocessing as mp, multiprocessing.pool as mpp, os, signal, sys, time

def suicide(how):
    if how == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == 'exit':
        os._exit(3)
    elif how == 'segv':
        os.kill(os.getpid(), signal.SIGSEGV)
    return 'the worker survived'

def sq(x):
    return x * x

def die_at_5(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x

def norm(e):
    return str(e).replace(str(e.pid), 'PID').replace(e.name, 'NAME')

if __name__ == '__main__':
    with mp.Pool(2) as pool:
        for how in sys.argv[1:]:
            before = [(p.pid, p.name) for p in pool._pool]
            t = time.monotonic()
            try:
                print(how, 'no error:', pool.apply_async(suicide, (how,)).get(timeout=30))
                continue
            except mpp.WorkerLostError as e:
                dt = time.monotonic() - t
                lost = e
            print(how, type(lost).__name__, isinstance(lost, mp.ProcessError), lost.exitcode)
            print(norm(lost))
            print('prompt' if dt < 5 else 'slow: %.1f s' % dt)
            print('was a worker:', (lost.pid, lost.name) in before, lost.name.rsplit('-', 1)[0])
            # The same pool serves later tasks, with a fresh worker in place of the dead one.
            print(pool.map(sq, range(20)) == [x * x for x in range(20)])
            after = [p.pid for p in pool._pool]
            print('workers:', len(after), lost.pid not in after,
                  len(set(after) - {pid for pid, _ in before}))
        if sys.argv[1] != 'segv':
            t = time.monotonic()
            try:
                print(pool.map(die_at_5, range(8)))
            except mpp.WorkerLostError as e:
                print('map:', e.exitcode, norm(e))
            print('prompt' if time.monotonic() - t < 5 else 'slow')
            print(pool.map(sq, range(20)) == [x * x for x in range(20)], len(pool._pool))
    print('done')
"#;

fn death_expected(how: &str) -> String {
    let (code, msg) = match how {
        "kill" => (-9, "was killed by signal 9 (SIGKILL)"),
        "exit" => (3, "exited with code 3"),
        "segv" => (-11, "was killed by signal 11 (SIGSEGV)"),
        _ => unreachable!(),
    };
    format!(
        "{how} WorkerLostError True {code}\n\
         pool worker NAME (pid PID) {msg} while running this task; the pool has replaced it\n\
         prompt\nwas a worker: True {{prefix}}\nTrue\nworkers: 2 True 1\n"
    )
}

/// A task that kills its own worker (SIGKILL, os._exit) fails promptly with WorkerLostError
/// naming the worker, its pid and how it died; the pool replaces the worker (same size, new
/// pid) and serves later tasks. A map with one item that kills its worker raises the same way
/// and the pool keeps working. CPython's get() waits for the timeout (bpo-22393).
#[test]
fn worker_death_mid_task_raises_worker_lost_and_pool_recovers() {
    let _serial = serial::shared();
    let script = temp_script_flushed("worker_death", WORKER_DEATH);
    for m in METHODS {
        let out = run_file(&script, m, &["kill", "exit"]);
        let expected = format!(
            "{}{}map: -9 pool worker NAME (pid PID) was killed by signal 9 (SIGKILL) while running this task; the pool has replaced it\nprompt\nTrue 2\ndone\n",
            death_expected("kill"),
            death_expected("exit")
        )
        .replace("{prefix}", worker_prefix(m));
        assert_eq!(out.stdout, expected, "{m}: stderr: {}", out.stderr);
        assert_eq!(out.status, Some(0), "{m}: stderr: {}", out.stderr);
    }
}

/// A worker killed by SIGSEGV is reported the same way (exit code -11, as in CPython). Rust's
/// runtime catches SIGSEGV to report stack overflows and, for a kill()-sent signal, would let
/// the worker carry on: procpy restores the default disposition.
#[test]
fn worker_killed_by_sigsegv_raises_worker_lost() {
    let _serial = serial::shared();
    let script = temp_script_flushed("worker_segv", WORKER_DEATH);
    for m in METHODS {
        let out = run_file(&script, m, &["segv"]);
        let expected =
            format!("{}done\n", death_expected("segv")).replace("{prefix}", worker_prefix(m));
        assert_eq!(out.stdout, expected, "{m}: stderr: {}", out.stderr);
    }
}

// ------------------------------------------------------------------------------------------
// 2. The parent killed with SIGKILL

/// Pool and ProcessPoolExecutor workers and daemonic processes end when their parent is killed
/// with SIGKILL (they watch its pidfd); CPython leaves them running (gh-111873). A non-daemonic process keeps
/// running, as in CPython. Under forkserver the server goes too.
#[test]
fn parent_sigkill_leaves_no_daemon_or_worker_behind() {
    let _serial = serial::shared();
    let script = temp_script_flushed(
        "parent_killed",
        r#"
import multiprocessing as mp, sys, time
def nap():
    time.sleep(60)
if __name__ == '__main__':
    d = mp.Process(target=nap, daemon=True); d.start()
    nd = mp.Process(target=nap); nd.start()
    pool = mp.Pool(2)
    assert pool.apply(sum, ([1, 2],)) == 3
    for p in pool._pool:
        print('worker', p.pid)
    # ProcessPoolExecutor workers are not daemonic (as in CPython) but go with the pool too.
    from concurrent.futures import ProcessPoolExecutor
    ex = ProcessPoolExecutor(1)
    assert ex.submit(sum, [1, 2]).result() == 3
    for pid in ex._processes:
        print('worker', pid)
    print('daemon', d.pid)
    print('nondaemon', nd.pid)
    if mp.get_start_method() == 'forkserver':
        from multiprocessing import forkserver
        print('server', forkserver._server[3])
    print('ready', flush=True)
    time.sleep(600)
"#,
    );
    for m in METHODS {
        let mut run = Running::start(&script, m, &[], false);
        run.read_until(Duration::from_secs(30), |l| l.iter().any(|x| x == "ready"));
        let mut doomed = run.pids("worker");
        doomed.extend(run.pids("daemon"));
        doomed.extend(run.pids("server"));
        let survivor = run.pids("nondaemon");
        run.reported = doomed.iter().chain(&survivor).copied().collect();
        assert_eq!(doomed.len(), if m == "forkserver" { 5 } else { 4 }, "{m}: {:?}", run.seen);
        assert_eq!(survivor.len(), 1);
        assert!(doomed.iter().chain(&survivor).all(|&p| !is_gone(p)), "{m}: a child ended early");

        run.child.kill().unwrap();
        let st = run.child.wait().unwrap();
        assert_eq!(st.signal(), Some(SIGKILL));

        let left = wait_gone(&doomed, Duration::from_secs(10));
        assert!(
            left.is_empty(),
            "{m}: still running 10 s after the parent's SIGKILL: {left:?} of {doomed:?}"
        );
        assert!(!is_gone(survivor[0]), "{m}: the non-daemonic process was killed too");
        let _ = kill(Pid::from_raw(survivor[0]), Signal::SIGKILL);
        assert!(wait_gone(&survivor, Duration::from_secs(10)).is_empty());
    }
}

// ------------------------------------------------------------------------------------------
// 3. Lambdas, closures and nested functions

/// Lambdas, closures and nested functions go through every pool entry point and as a Process
/// target (they travel by value; CPython's pickle raises "Can't pickle local object").
#[test]
fn lambdas_and_closures_through_the_pool() {
    let _serial = serial::shared();
    let script = temp_script_flushed(
        "pool_lambdas",
        r#"
import multiprocessing as mp

def outer(pool, base):
    def nested(a, b=1):
        return (a + base) * b
    return pool.apply_async(nested, (4,), {'b': 10}).get(timeout=30)

def make_closure(offset):
    return lambda x: x + offset

if __name__ == '__main__':
    k = 7
    with mp.Pool(2) as pool:
        print(pool.map(lambda x: x * k, range(5)))
        print(outer(pool, 2))
        bump = make_closure(100)
        print(list(pool.imap(bump, range(4))))
        print(sorted(pool.imap_unordered(make_closure(k), [1, 2])))
        print(pool.starmap(lambda a, b: a ** b + k, [(2, 3), (3, 2)]))
        print(pool.map_async(make_closure(-1), range(3)).get(timeout=30))
        print(pool.apply(lambda: (lambda y: y * k)(6)))
    q = mp.SimpleQueue()
    p = mp.Process(target=lambda: q.put(('lambda target', k * 6))); p.start()
    print(q.get()); p.join(); print(p.exitcode)
"#,
    );
    for m in METHODS {
        let out = run_file(&script, m, &[]);
        assert_eq!(
            out.stdout,
            "[0, 7, 14, 21, 28]\n60\n[100, 101, 102, 103]\n[8, 9]\n[15, 16]\n[-1, 0, 1]\n42\n('lambda target', 42)\n0\n",
            "{m}: stderr: {}",
            out.stderr
        );
    }
}

/// Starting a Process, and a second Pool, while a pool is alive. Under fork, os.fork() in the
/// main thread stops RustPython's world and waits for every other thread: the pool's manager
/// thread, blocked in a poll, must be detached from the VM while it waits or the fork hangs.
#[test]
fn process_start_under_fork_while_a_pool_is_alive() {
    let _serial = serial::shared();
    let script = temp_script_flushed(
        "fork_with_pool",
        r#"
import multiprocessing as mp
if __name__ == '__main__':
    k = 7
    with mp.Pool(2) as pool:
        print(pool.map(abs, [-1, -2]))
        q = mp.SimpleQueue()
        p = mp.Process(target=lambda: q.put(k * 6)); p.start()
        print(q.get()); p.join(); print(p.exitcode)
        with mp.Pool(1) as second:
            print(second.apply(abs, (-3,)), pool.apply(abs, (-4,)))
"#,
    );
    for m in METHODS {
        let out = run_file(&script, m, &[]);
        assert_eq!(out.stdout, "[1, 2]\n42\n0\n3 4\n", "{m}: stderr: {}", out.stderr);
    }
}

// ------------------------------------------------------------------------------------------
// 4. Ctrl-C

const CTRL_C: &str = r#"
import multiprocessing as mp, os, sys, time
def init():
    print('worker', os.getpid(), flush=True)
def slow(x):
    if x == 0:
        print('started', flush=True)
    time.sleep(0.2)
    return x
if __name__ == '__main__':
    if mp.get_start_method() == 'forkserver':
        from multiprocessing import forkserver
        forkserver.ensure_running()
        print('server', forkserver._server[3], flush=True)
    if sys.argv[1] == 'with':
        with mp.Pool(2, initializer=init) as p:
            p.map(slow, range(100))
    else:
        p = mp.Pool(2, initializer=init)
        p.map(slow, range(100))
    print('finished without interruption')
"#;

/// SIGINT to the whole process group (Ctrl-C in a terminal) during a long `map`: the parent
/// ends with KeyboardInterrupt (dying by SIGINT, as python3 does), promptly, and every worker
/// is gone afterwards. With and without `with Pool(...)`.
#[test]
fn ctrl_c_stops_the_parent_and_every_worker() {
    let _serial = serial::shared();
    let script = temp_script_flushed("ctrl_c", CTRL_C);
    for m in METHODS {
        for variant in ["with", "plain"] {
            let mut run = Running::start(&script, m, &[variant], true);
            run.read_until(Duration::from_secs(30), |l| {
                l.iter().filter(|x| x.starts_with("worker ")).count() == 2
                    && l.iter().any(|x| x == "started")
            });
            let mut workers = run.pids("worker");
            workers.extend(run.pids("server"));
            run.reported = workers.clone();
            let pgid = run.child.id() as i32;
            assert_eq!(killpg(Pid::from_raw(pgid), Signal::SIGINT), Ok(()));
            let st = run.wait_exit(Duration::from_secs(10));
            let left = wait_gone(&workers, Duration::from_secs(10));
            let stderr = run.stderr(Duration::from_secs(5));
            let st = st.unwrap_or_else(|| {
                panic!("{m} {variant}: still running 10 s after SIGINT; stderr: {stderr}")
            });
            assert_eq!(
                (st.code(), st.signal()),
                (None, Some(SIGINT)),
                "{m} {variant}: python3 dies by SIGINT after an uncaught KeyboardInterrupt; stderr: {stderr}"
            );
            assert!(stderr.contains("\nKeyboardInterrupt\n"), "{m} {variant}: {stderr}");
            assert!(
                left.is_empty(),
                "{m} {variant}: still running after Ctrl-C: {left:?} of {workers:?}"
            );
            while let Ok(line) = run.lines.try_recv() {
                run.seen.push(line);
            }
            assert!(!run.seen.iter().any(|l| l.starts_with("finished")), "{m} {variant}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// 5. terminate() with tasks pending

/// terminate() while tasks run or wait for a worker fails their results with
/// PoolTerminatedError at once; CPython's get() hangs (or waits for its timeout).
#[test]
fn terminate_fails_pending_results() {
    let _serial = serial::shared();
    let script = temp_script_flushed(
        "terminate_pending",
        r#"
import multiprocessing as mp, multiprocessing.pool as mpp, time
if __name__ == '__main__':
    pool = mp.Pool(2)
    print(pool.apply(abs, (-3,)))
    r = pool.apply_async(time.sleep, (30,))
    r2 = pool.map_async(time.sleep, [30] * 4, chunksize=1)   # some run, some wait
    r3 = pool.apply_async(time.sleep, (30,))                 # waits for a worker
    t = time.monotonic()
    pool.terminate()
    for x in (r, r2, r3):
        try:
            x.get(timeout=10)
            print('no error')
        except mpp.PoolTerminatedError as e:
            print(type(e).__name__, isinstance(e, mp.ProcessError), e)
    print('prompt' if time.monotonic() - t < 5 else 'slow: %.1f s' % (time.monotonic() - t))
    print(r.ready(), r.successful())
    pool.join()
    print([p.exitcode is not None for p in pool._pool])
"#,
    );
    let err = "PoolTerminatedError True the pool was terminated before this task finished\n";
    for m in METHODS {
        let out = run_file(&script, m, &[]);
        assert_eq!(
            out.stdout,
            format!("3\n{err}{err}{err}prompt\nTrue False\n[True, True]\n"),
            "{m}: stderr: {}",
            out.stderr
        );
    }
}

// ------------------------------------------------------------------------------------------
// 6. A result callback that raises

const RAISING_CALLBACK: &str = r#"
import multiprocessing as mp, sys
seen = []
def sq(x):
    return x * x
def bad_cb(v):
    seen.append(v)
    raise RuntimeError('callback failed for %r' % (v,))
if __name__ == '__main__':
    pool = mp.Pool(1)     # one worker: results are delivered in submission order
    r1 = pool.apply_async(sq, (3,), callback=bad_cb)
    r2 = pool.map_async(sq, range(4), callback=bad_cb)
    r3 = pool.apply_async(sq, ('x',), error_callback=bad_cb)
    print(pool.apply_async(sq, (12,)).get(timeout=30))
    print(seen[:2], type(seen[2]).__name__)
    print(pool.map(sq, range(10)))
    print(list(pool.imap(sq, range(3))))
    if sys.argv[1] == 'close':
        pool.close(); pool.join()
    else:
        pool.terminate()
    print('callbacks:', len(seen))
"#;

/// A callback that raises is reported on stderr with its traceback; the pool keeps serving
/// later tasks (CPython's result-handler thread dies and the pool hangs).
#[test]
fn raising_result_callback_does_not_stop_the_pool() {
    let _serial = serial::shared();
    let script = temp_script_flushed("raising_callback", RAISING_CALLBACK);
    for m in METHODS {
        let out = run_file(&script, m, &["close"]);
        assert_eq!(
            out.stdout,
            "144\n[9, [0, 1, 4, 9]] TypeError\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n[0, 1, 4]\ncallbacks: 3\n",
            "{m}: stderr: {}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{m}: stderr: {}", out.stderr);
        assert_eq!(
            out.stderr
                .matches("Exception in a multiprocessing.pool result callback:\nTraceback")
                .count(),
            3,
            "{m}: {}",
            out.stderr
        );
        for v in
            ["9", "[0, 1, 4, 9]", "TypeError(\"'str' object cannot be interpreted as an integer\")"]
        {
            assert!(
                out.stderr.contains(&format!("RuntimeError: callback failed for {v}\n")),
                "{m}: {}",
                out.stderr
            );
        }
    }
}

/// A result whose callback raised is still complete: terminate() (and so the exit of
/// `with Pool(...)`) does not abort it again, run its callback a second time or raise.
#[test]
fn terminate_after_a_raising_callback_is_clean() {
    let _serial = serial::shared();
    let script = temp_script_flushed("raising_callback_terminate", RAISING_CALLBACK);
    for m in METHODS {
        let out = run_file(&script, m, &["terminate"]);
        assert_eq!(
            out.stdout,
            "144\n[9, [0, 1, 4, 9]] TypeError\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n[0, 1, 4]\ncallbacks: 3\n",
            "{m}: stderr: {}",
            out.stderr
        );
        assert_eq!(out.status, Some(0), "{m}: stderr: {}", out.stderr);
    }
}

// ------------------------------------------------------------------------------------------
// The direct get()

/// A lone `apply_async(...).get()` reads its worker's answer itself instead of waiting for the
/// manager thread. Two threads doing that at once, a thousand times each, must never lose an
/// answer or leave the manager blocked on a connection whose answer was already taken (the
/// pool would then hang). A race of this kind shows up only under load, so a pass proves
/// little; a failure is real.
#[test]
fn direct_gets_from_two_threads_never_hang() {
    let _serial = serial::shared();
    let script = temp_script_flushed(
        "direct_get",
        r#"
import multiprocessing as mp, threading
def hammer(pool, n, bad):
    for i in range(n):
        if pool.apply_async(abs, (-i,)).get(timeout=20) != i:
            bad.append(i)
if __name__ == '__main__':
    bad = []
    with mp.Pool(2) as pool:
        t = threading.Thread(target=hammer, args=(pool, 1000, bad)); t.start()
        hammer(pool, 1000, bad)
        t.join()
        print(pool.map(abs, range(-3, 0)), bad)
    print('done')
"#,
    );
    for m in METHODS {
        let out = run_file(&script, m, &[]);
        assert_eq!(out.stdout, "[3, 2, 1] []\ndone\n", "{m}: stderr: {}", out.stderr);
    }
}
