//! The pool on a Redis cluster (issue 14): `procpy --cluster URL script.py` runs the script's
//! `Pool` and `ProcessPoolExecutor` tasks on `procpy worker URL` processes. Every test starts
//! its own redis-server on 127.0.0.1 and a free port (`common::redis`), its own workers, and
//! stops them by pid. A missing redis-server fails the tests (`apt-get install -y
//! redis-server`; .ci/run installs it).
//!
//! - differential: scripts in tests/scripts/cluster/ print the same stdout under python3,
//!   procpy's local pool and the cluster;
//! - code travels: a worker in a mount namespace of its own where the script's directory is
//!   an empty tmpfs still runs everything; two clients with different `helper` modules share
//!   the same workers at once;
//! - faults: a worker process SIGKILLed mid-map, a worker added mid-map, a poison task, a
//!   client SIGKILLed, redis-server restarted mid-job (with and without persistence), a forged
//!   task, no worker alive, a password in the URL.
//!
//! Tasks that must be caught mid-way append lines to a side-channel file (`start I PID`,
//! `done I`) and wait for a `go` file the test creates when it has done what it wanted to do
//! meanwhile: every wait is on an event (a line, a file, a key) with a deadline; nothing sleeps
//! and hopes.

use crate::common::redis::{fresh_dir, RedisOptions, RedisServer, Watched, Worker, KEY};
use crate::common::{procpy, root, serial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A hang guard for one script on the cluster (debug build, a loaded 2-core machine).
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);
/// A hang guard for one event (a line, a file).
const EVENT_LIMIT: Duration = Duration::from_secs(60);

/// The cluster tests run one at a time: each starts a redis-server, two or three supervisors
/// and their worker processes, and several of them at once on two cores would only test the
/// hang guards.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `procpy --cluster URL script args...` in the script's directory with the test key.
fn client(script: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Watched {
    let mut cmd = Command::new(procpy());
    cmd.args(["--cluster", url])
        .arg(script)
        .args(args)
        .env("PROCPY_CLUSTER_KEY", KEY)
        .env_remove("PROCPY_CLUSTER")
        .current_dir(script.parent().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Watched::spawn(cmd, &format!("client {}", script.display()))
}

/// Run a client to its end; panics (with both outputs) unless it exits 0. Its stdout.
fn run_client(script: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = client(script, url, args, env);
    let (status, out, err) = c.finish(SCRIPT_LIMIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}: status {status:?} (None: killed at the hang guard)\nstdout:\n{out}\nstderr:\n{err}",
        c.label
    );
    out
}

/// Run `interpreter script` (no cluster) in the script's directory; its stdout, which must
/// come with status 0.
fn run_local(interpreter: &Path, script: &Path) -> String {
    let out = crate::common::run_script(interpreter, script, &[], SCRIPT_LIMIT);
    assert!(
        out.status == Some(0) && !out.timed_out,
        "{} {}: status {:?}\nstdout:\n{}\nstderr:\n{}",
        interpreter.display(),
        script.display(),
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn cluster_script(name: &str) -> PathBuf {
    root().join("tests/scripts/cluster").join(name)
}

/// Redis plus `n` workers of one process each (named w1, w2, ...).
fn cluster(n: usize) -> (RedisServer, Vec<Worker>) {
    let redis = RedisServer::start();
    let workers = (1..=n).map(|i| Worker::start(&redis.url(), 1, &format!("w{i}"))).collect();
    (redis, workers)
}

/// A worker's line saying it joined a job.
fn joined(line: &str) -> bool {
    line.contains("joined job ")
}

/// A worker's line saying it left a job.
fn left(line: &str) -> bool {
    line.contains("left job ")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// The harness itself

#[test]
fn harness_redis_restarts_on_its_port_with_its_data() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let mut redis =
        RedisServer::start_with(RedisOptions { appendonly: true, ..Default::default() });
    let port = redis.port;
    assert_eq!(redis.cli(&["SET", "procpy:test", "kept"]), "OK");
    let old = redis.pid().unwrap();
    redis.restart();
    assert_eq!(redis.port, port);
    assert_ne!(redis.pid().unwrap(), old);
    assert_eq!(redis.cli(&["GET", "procpy:test"]), "kept");
    let pid = redis.pid().unwrap();
    drop(redis);
    assert!(crate::common::is_gone(pid), "redis-server {pid} still runs after drop");

    let plain = RedisServer::start();
    assert_eq!(plain.cli(&["SET", "procpy:test", "x"]), "OK");
    assert_eq!(plain.keys("procpy:*"), ["procpy:test"]);
}

// ---------------------------------------------------------------------------------------------
// Differential: the same stdout locally and on the cluster

/// python3, procpy's local pool and the cluster (2 workers) print the same.
fn differential(name: &str, with_python: bool) {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let script = cluster_script(name);
    let local = run_local(&procpy(), &script);
    if with_python {
        let want = run_local(Path::new("python3"), &script);
        assert_eq!(local, want, "procpy's local pool differs from python3 on {name}");
    }
    let (redis, _workers) = cluster(2);
    let got = run_client(&script, &redis.url(), &[], &[]);
    assert_eq!(got, local, "{name}: the cluster's stdout differs from the local pool's");
}

#[test]
fn differential_pool_api() {
    differential("pool_api.py", true);
}

#[test]
fn differential_process_pool_executor() {
    differential("futures_api.py", true);
}

#[test]
fn differential_lambdas_closures_and_main_guard_classes() {
    // CPython's pickle refuses these; procpy's local pool is the reference.
    differential("by_value.py", false);
}

// ---------------------------------------------------------------------------------------------
// Code travels with the job

/// A worker whose filesystem view has no copy of the script: in a mount namespace of its own
/// (`unshare --mount`, root in CI) with an empty tmpfs over the script's directory, and its
/// working directory and TMPDIR an empty directory. Without `unshare` (not root) the worker
/// still only has separate empty directories: the test says so and goes on.
#[test]
fn code_travels_to_a_worker_that_cannot_see_the_script() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let redis = RedisServer::start();
    let src = fresh_dir("procpy-cluster-src");
    let script = src.join("travel.py");
    std::fs::write(src.join("travel_helper.py"), "def describe(x):\n    return 'helper %d' % x\n")
        .unwrap();
    std::fs::write(
        &script,
        r#"import multiprocessing, os, sys
import travel_helper

SCRIPT = os.path.abspath(__file__)

def probe(x):
    # Where the task runs: whether the script file is visible there at all.
    return (travel_helper.describe(x), os.path.exists(SCRIPT), __name__)

if __name__ == '__main__':
    with multiprocessing.Pool(2) as pool:
        for row in pool.map(probe, range(3)):
            print(*row)
"#,
    )
    .unwrap();
    let dir = fresh_dir("procpy-worker-hidden");
    let isolated = nix::unistd::geteuid().is_root()
        && Command::new("unshare").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut cmd;
    if isolated {
        cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs procpy-hidden "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(&src)
            .arg(procpy())
            .args(["worker", &redis.url(), "--processes", "2", "--name", "hidden"]);
    } else {
        eprintln!("no unshare as root here: the worker only has separate empty directories");
        cmd = Command::new(procpy());
        cmd.args(["worker", &redis.url(), "--processes", "2", "--name", "hidden"]);
    }
    Worker::env(&mut cmd, &dir);
    let _worker = Worker::spawn(cmd, "hidden", dir);
    let out = run_client(&script, &redis.url(), &[], &[]);
    let visible = if isolated { "False" } else { "True" };
    let want: String = (0..3).map(|i| format!("helper {i} {visible} __mp_main__\n")).collect();
    assert_eq!(out, want);
    let _ = std::fs::remove_dir_all(&src);
}

/// Two clients whose scripts import different modules named `helper` run at the same time on
/// the same two workers; each sees only its own module and its own main.
#[test]
fn two_clients_share_workers_and_see_only_their_own_modules() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (redis, _workers) = cluster(2);
    let sync = fresh_dir("procpy-cluster-sync");
    let mut clients = Vec::new();
    for who in ["A", "B"] {
        let dir = fresh_dir(&format!("procpy-cluster-client{who}"));
        std::fs::write(dir.join("helper.py"), format!("WHO = {who:?}\n")).unwrap();
        let script = dir.join("main.py");
        std::fs::write(
            &script,
            format!(
                r#"import multiprocessing, os, sys, time
import helper
MARK = {who:?}
SYNC = {sync:?}

def who(x):
    import helper as h
    return (h.WHO, sys.modules['__mp_main__'].MARK, x)

if __name__ == '__main__':
    with multiprocessing.Pool(2) as pool:
        print('first', pool.map(who, [0]), flush=True)
        # Both clients' jobs are live from here on: wait for the other one (a file the test
        # creates when both printed 'first'), then run the rest side by side.
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(SYNC, 'go')):
            assert time.monotonic() < deadline, 'no go file'
            time.sleep(0.01)
        rows = pool.map(who, range(1, 41), chunksize=1)
        print('rest', sorted(set((w, m) for w, m, _ in rows)), [x for _, _, x in rows] == list(range(1, 41)))
"#,
                sync = sync.display().to_string()
            ),
        )
        .unwrap();
        clients.push((who, client(&script, &redis.url(), &[], &[]), dir));
    }
    for (who, c, _) in clients.iter_mut() {
        let line = c.wait_out(SCRIPT_LIMIT, |l| l.starts_with("first"));
        assert_eq!(line, format!("first [('{who}', '{who}', 0)]"));
    }
    std::fs::write(sync.join("go"), "").unwrap();
    for (who, mut c, dir) in clients {
        let (status, out, err) = c.finish(SCRIPT_LIMIT);
        assert!(status.is_some_and(|s| s.success()), "client {who}: {status:?}\n{out}\n{err}");
        assert!(out.contains(&format!("rest [('{who}', '{who}')] True")), "client {who}: {out}");
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_dir_all(sync);
}

// ---------------------------------------------------------------------------------------------
// Faults

/// The side channel of the fault scripts: a directory with `log` (one line per task start and
/// end) and the `go` file the tasks wait for.
struct Side {
    dir: PathBuf,
}

impl Side {
    fn new() -> Side {
        Side { dir: fresh_dir("procpy-cluster-side") }
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Wait until `cond(log lines)` holds; panics with the log at the deadline.
    fn wait(&self, what: &str, cond: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + EVENT_LIMIT;
        loop {
            let log = self.log();
            if cond(&log) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {EVENT_LIMIT:?}; log: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn go(&self) {
        std::fs::write(self.dir.join("go"), "").unwrap();
    }

    /// `start I PID` lines: (task, pid).
    fn starts(log: &[String]) -> Vec<(u32, i32)> {
        log.iter()
            .filter_map(|l| {
                let mut it = l.strip_prefix("start ")?.split(' ');
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect()
    }

    /// How many `done I` lines each task has.
    fn done_counts(log: &[String]) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for l in log {
            if let Some(i) = l.strip_prefix("done ").and_then(|i| i.parse().ok()) {
                *m.entry(i).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The task every fault script maps: logs its start with its pid, waits for the go file, logs
/// its end. Appends of one short line with O_APPEND do not interleave.
const TASK: &str = r#"import multiprocessing, os, sys, time
SIDE = sys.argv[1]

def note(line):
    with open(os.path.join(SIDE, 'log'), 'a') as f:
        f.write(line + '\n')

def task(i):
    note('start %d %d' % (i, os.getpid()))
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(SIDE, 'go')):
        if time.monotonic() > deadline:
            raise RuntimeError('no go file')
        time.sleep(0.01)
    note('done %d' % i)
    return i * 10
"#;

fn fault_script(name: &str, main: &str) -> PathBuf {
    let dir = fresh_dir(&format!("procpy-cluster-{name}"));
    let script = dir.join(format!("{name}.py"));
    std::fs::write(&script, format!("{TASK}\nif __name__ == '__main__':\n{main}")).unwrap();
    script
}

/// The map every fault script checks: 20 tasks, one per chunk.
const MAP20: &str = r#"    with multiprocessing.Pool(2) as pool:
        res = pool.map(task, range(20), chunksize=1)
        print('results', res == [i * 10 for i in range(20)], len(res), flush=True)
"#;

/// A worker process SIGKILLed while it runs a task: its task is reclaimed by another worker,
/// every result arrives once, and every task completed exactly once (the killed one never got
/// to its `done` line).
#[test]
fn sigkill_a_worker_process_mid_map() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (redis, workers) = cluster(2);
    let side = Side::new();
    let script = fault_script("killmid", MAP20);
    let mut c = client(&script, &redis.url(), &[side.dir.to_str().unwrap()], &[]);
    // Two tasks running (one per worker process): kill the one running the first.
    let log = side.wait("two tasks started", |l| Side::starts(l).len() >= 2);
    let (victim_task, victim) = Side::starts(&log)[0];
    let ours: Vec<i32> = workers.iter().flat_map(|w| w.descendants()).collect();
    assert!(ours.contains(&victim), "task pid {victim} is not one of our workers' {ours:?}");
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    assert!(crate::common::wait_gone(&[victim], EVENT_LIMIT).is_empty());
    // The killed task starts again elsewhere (reclaimed once its heartbeat expired).
    side.wait("the killed task restarted", |l| {
        Side::starts(l).iter().filter(|(t, _)| *t == victim_task).count() >= 2
    });
    side.go();
    let (status, out, err) = c.finish(SCRIPT_LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}\n{err}");
    assert_eq!(out, "results True 20\n", "stderr: {err}");
    let counts = Side::done_counts(&side.log());
    assert_eq!(counts, (0..20).map(|i| (i, 1)).collect::<BTreeMap<_, _>>(), "executions per task");
}

/// A worker started while a map runs joins the job and takes tasks.
#[test]
fn a_worker_added_mid_map_takes_work() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (redis, _first) = cluster(1);
    let side = Side::new();
    let script = fault_script("addmid", MAP20);
    let mut c = client(&script, &redis.url(), &[side.dir.to_str().unwrap()], &[]);
    // The only worker process is held by its first task until `go`.
    side.wait("the first task started", |l| !Side::starts(l).is_empty());
    let mut late = Worker::start(&redis.url(), 1, "late");
    late.wait_count(EVENT_LIMIT, 1, joined);
    let log = side.wait("the late worker took a task", |l| {
        let late_pids = late.descendants();
        Side::starts(l).iter().any(|(_, p)| late_pids.contains(p))
    });
    side.go();
    let (status, out, err) = c.finish(SCRIPT_LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}\n{err}\nlog: {log:?}");
    assert_eq!(out, "results True 20\n");
    let counts = Side::done_counts(&side.log());
    assert_eq!(counts, (0..20).map(|i| (i, 1)).collect::<BTreeMap<_, _>>());
}

/// A task that kills its worker every time fails with WorkerLostError after 3 deaths, naming
/// the workers it killed; the other tasks of the job still run.
#[test]
fn a_poison_task_fails_with_worker_lost_error() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (redis, _workers) = cluster(2);
    let dir = fresh_dir("procpy-cluster-poison");
    let script = dir.join("poison.py");
    std::fs::write(
        &script,
        r#"import multiprocessing, multiprocessing.pool, os, signal

def poison(_):
    os.kill(os.getpid(), signal.SIGKILL)

def square(x):
    return x * x

if __name__ == '__main__':
    with multiprocessing.Pool(2) as pool:
        bad = pool.apply_async(poison, (0,))
        try:
            bad.get(timeout=150)
        except multiprocessing.pool.WorkerLostError as e:
            print('lost', type(e).__name__)
            print('message', e)
        print('rest', pool.map(square, range(10)))
"#,
    )
    .unwrap();
    let out = run_client(&script, &redis.url(), &[], &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lost WorkerLostError", "{out}");
    let message = lines[1];
    // Three deaths, each named by consumer `HOST:PID`, each by SIGKILL.
    let host = hostname();
    assert!(message.matches(&format!("{host}:")).count() >= 3, "{message}");
    assert!(message.contains("SIGKILL"), "{message}");
    assert_eq!(lines[2], "rest [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]");
    let _ = std::fs::remove_dir_all(dir);
}

/// A client SIGKILLed mid-job: it can no longer refresh its keys, so they expire (TTL 2 s
/// here), the workers leave the job and take the next one.
#[test]
fn a_killed_clients_job_expires_and_workers_leave_it() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (redis, mut workers) = cluster(2);
    let side = Side::new();
    let script = fault_script("killclient", MAP20);
    let mut c = client(
        &script,
        &redis.url(),
        &[side.dir.to_str().unwrap()],
        &[("PROCPY_CLUSTER_TTL", "2")],
    );
    let before =
        Side::starts(&side.wait("two tasks started", |l| Side::starts(l).len() >= 2)).len();
    // The job's own keys (not the workers' heartbeats, which live while a task runs).
    let job_keys = |r: &RedisServer| -> Vec<String> {
        r.keys("procpy:job:*")
            .into_iter()
            .filter(|k| !k.contains(":hb:") && !k.contains(":lost:"))
            .collect()
    };
    assert!(!job_keys(&redis).is_empty());
    kill(Pid::from_raw(c.pid()), Signal::SIGKILL).unwrap();
    let _ = c.finish(EVENT_LIMIT);
    assert!(
        redis.wait_for(EVENT_LIMIT, |r| job_keys(r).is_empty()),
        "job keys left: {:?}",
        job_keys(&redis)
    );
    // The running tasks end; the workers find the job gone, leave it and start nothing more.
    side.go();
    for w in workers.iter_mut() {
        w.wait_count(EVENT_LIMIT, 1, left);
    }
    assert!(
        redis.wait_for(EVENT_LIMIT, |r| r.keys("procpy:job:*").is_empty()),
        "keys left: {:?}",
        redis.keys("procpy:job:*")
    );
    assert_eq!(Side::starts(&side.log()).len(), before, "tasks started for a dead client");
    // The workers are free for the next job.
    let next = fault_script("afterkill", MAP20);
    let out = run_client(&next, &redis.url(), &[side.dir.to_str().unwrap()], &[]);
    assert_eq!(out, "results True 20\n");
}

/// redis-server restarted mid-job with its data on disk (appendonly): clients and workers
/// reconnect and the job completes.
#[test]
fn redis_restart_mid_job_with_persistence_completes() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let mut redis =
        RedisServer::start_with(RedisOptions { appendonly: true, ..Default::default() });
    let _workers: Vec<Worker> =
        (1..=2).map(|i| Worker::start(&redis.url(), 1, &format!("w{i}"))).collect();
    let side = Side::new();
    let script = fault_script("restartaof", MAP20);
    let mut c = client(&script, &redis.url(), &[side.dir.to_str().unwrap()], &[]);
    side.wait("two tasks started", |l| Side::starts(l).len() >= 2);
    redis.restart();
    side.go();
    let (status, out, err) = c.finish(SCRIPT_LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}\n{err}");
    assert_eq!(out, "results True 20\n", "stderr: {err}");
}

/// redis-server restarted mid-job without persistence: the job's keys are gone, and the
/// client fails the pending results with the clear error instead of hanging.
#[test]
fn redis_restart_mid_job_without_persistence_fails_clearly() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (mut redis, _workers) = cluster(2);
    let side = Side::new();
    let script = fault_script(
        "restartlost",
        r#"    with multiprocessing.Pool(2) as pool:
        try:
            res = pool.map(task, range(20), chunksize=1)
            print('results', res == [i * 10 for i in range(20)], len(res), flush=True)
        except RuntimeError as e:
            print('error', e, flush=True)
"#,
    );
    let mut c = client(
        &script,
        &redis.url(),
        &[side.dir.to_str().unwrap()],
        &[("PROCPY_CLUSTER_TTL", "3")],
    );
    side.wait("two tasks started", |l| Side::starts(l).len() >= 2);
    redis.restart();
    side.go();
    let (status, out, err) = c.finish(SCRIPT_LIMIT);
    assert!(status.is_some(), "the client hung after the restart\n{out}\n{err}");
    assert!(
        out.starts_with("error the cluster lost job ") && out.contains("did redis-server restart?"),
        "{out}\nstderr: {err}"
    );
}

/// A task XADDed to a job's stream by someone without the key: the worker logs it and never
/// decodes it (decoding it would create a marker file), and the job completes.
#[test]
fn a_forged_task_is_dropped_and_never_decoded() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let (redis, mut workers) = cluster(2);
    let side = Side::new();
    let script = fault_script("forged", MAP20);
    let mut c = client(&script, &redis.url(), &[side.dir.to_str().unwrap()], &[]);
    side.wait("two tasks started", |l| Side::starts(l).len() >= 2);
    let marker = side.dir.join("DECODED");
    let control = side.dir.join("control");
    let forger = side.dir.join("forge.py");
    std::fs::write(
        &forger,
        r#"import os, sys, _procpy, _procpy_cluster

class Evil:
    # Decoding this runs os.system: the marker file says someone decoded it.
    def __init__(self, path):
        self.path = path
    def __reduce__(self):
        return (os.system, ('touch ' + self.path,))

url, marker, control = sys.argv[1:4]
r = _procpy_cluster.Redis(url)
streams = [k for k in r.call('KEYS', 'procpy:job:*:tasks')]
assert len(streams) == 1, streams
stream = streams[0]
job = stream.split(b':')[2]
payload = _procpy.dumps((Evil(marker), (), {}))
# The payload is live: decoded here (with another path) it does run.
_procpy.loads(_procpy.dumps(Evil(control)))
wrong = _procpy_cluster.sign(b'not the right key at all', b'task', job, b'999999', payload)
r.call('XADD', stream, '*', 't', '999999', 'p', payload, 'm', wrong)
r.call('XADD', stream, '*', 't', '999998', 'p', payload)
print('forged', job.decode())
"#,
    )
    .unwrap();
    let out = crate::common::run_with_deadline(
        {
            let mut cmd = Command::new(procpy());
            cmd.arg(&forger).arg(redis.url()).arg(&marker).arg(&control);
            cmd
        },
        EVENT_LIMIT,
    );
    assert_eq!(out.status, Some(0), "forger: {}\n{}", out.stdout, out.stderr);
    assert!(control.exists(), "the forged payload would not even run when decoded");
    side.go();
    let (status, res, err) = c.finish(SCRIPT_LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{res}\n{err}");
    assert_eq!(res, "results True 20\n");
    let logs: String = workers.iter_mut().map(|w| w.stop(Duration::from_secs(10))).collect();
    assert!(!marker.exists(), "a worker decoded the forged task");
    assert!(
        logs.lines().filter(|l| l.contains("MAC") || l.to_lowercase().contains("mac")).count() >= 2,
        "no worker logged the two forged entries; worker stderr:\n{logs}"
    );
}

/// No worker alive: the client warns on stderr after the grace period (1 s here) instead of
/// waiting silently, and a worker started later runs the task.
#[test]
fn no_worker_alive_warns_then_a_late_worker_serves() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let redis = RedisServer::start();
    let dir = fresh_dir("procpy-cluster-noworker");
    let script = dir.join("lonely.py");
    std::fs::write(
        &script,
        "import multiprocessing\n\ndef f(x):\n    return x + 1\n\nif __name__ == '__main__':\n    \
         with multiprocessing.Pool(2) as pool:\n        print('got', pool.apply(f, (41,)))\n",
    )
    .unwrap();
    let mut c = client(&script, &redis.url(), &[], &[("PROCPY_CLUSTER_GRACE", "1")]);
    let warning = c.wait_err(EVENT_LIMIT, |l| l.contains("no cluster worker is alive"));
    assert!(warning.contains(&redis.url()) && warning.contains("procpy worker"), "{warning}");
    let _w = Worker::start(&redis.url(), 1, "late");
    let (status, out, err) = c.finish(SCRIPT_LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}\n{err}");
    assert_eq!(out, "got 42\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// A script whose pool maps `-x` over 0..4 (prints `[0, -1, -2, -3]`), written to `dir/name`.
fn negate_script(dir: &Path, name: &str) -> PathBuf {
    let script = dir.join(name);
    std::fs::write(
        &script,
        "import multiprocessing\n\ndef f(x):\n    return -x\n\nif __name__ == '__main__':\n    \
         with multiprocessing.Pool(2) as pool:\n        print(pool.map(f, range(4)))\n",
    )
    .unwrap();
    script
}

/// Redis AUTH: a password in the URL (`redis://:PASSWORD@host:port/0`) reaches the server from
/// the client and the workers.
#[test]
fn a_password_in_the_url_authenticates() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cret".into()),
        ..Default::default()
    });
    let _w = Worker::start(&redis.url(), 1, "auth");
    let dir = fresh_dir("procpy-cluster-auth");
    let script = negate_script(&dir, "auth.py");
    assert_eq!(run_client(&script, &redis.url(), &[], &[]), "[0, -1, -2, -3]\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// Announcements are not signed: forged ones (a job key of the wrong type, ids that are not
/// job ids) must not stop a running worker or keep a new one from starting. Both read them
/// before the client's own announcement (a stream is read in order), so a worker that serves
/// the client's job has survived them.
#[test]
fn forged_announcements_stop_no_worker() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let redis = RedisServer::start();
    let mut w = Worker::start(&redis.url(), 1, "forged");
    assert_eq!(redis.cli(&["SET", "procpy:job:0123456789abcdef0123456789abcdef", "x"]), "OK");
    for id in ["0123456789abcdef0123456789abcdef", "../evil", "*"] {
        redis.cli(&["XADD", "procpy:jobs", "*", "job", id, "ev", "start"]);
    }
    // A worker started now reads those announcements at start (they are the newest).
    let mut late = Worker::start(&redis.url(), 1, "forged-late");
    let dir = fresh_dir("procpy-cluster-forged-ann");
    let script = negate_script(&dir, "ann.py");
    assert_eq!(run_client(&script, &redis.url(), &[], &[]), "[0, -1, -2, -3]\n");
    assert!(!w.proc.exited(), "a forged announcement stopped a running worker");
    assert!(!late.proc.exited(), "a forged announcement kept a worker from starting");
    drop((w, late));
    let _ = std::fs::remove_dir_all(dir);
}

/// The cluster benchmark (tests/bench/cluster.py) runs end to end on a tiny size: it starts its
/// own redis-server and worker, and every workload yields a number for both pools (timings are
/// printed, never asserted).
#[test]
fn the_cluster_benchmark_runs_on_a_tiny_size() {
    let _g = serial::shared();
    let _one = one_at_a_time();
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/bench/cluster.py"))
        .arg(procpy())
        .args(["--runs", "1", "--scale", "0.01"]);
    let out = crate::common::run_with_deadline(cmd, Duration::from_secs(600));
    assert_eq!(out.status, Some(0), "benchmark failed:\n{}\n{}", out.stdout, out.stderr);
    for label in
        ["Pool.map trivial fn", "1,000 apply_async", "round trip", "broker overhead", "speedup"]
    {
        let row = out.stdout.lines().find(|l| l.contains(label));
        let row = row.unwrap_or_else(|| panic!("no '{label}' row in:\n{}", out.stdout));
        assert!(!row.contains(" - "), "a missing number in {row:?}");
    }
}
