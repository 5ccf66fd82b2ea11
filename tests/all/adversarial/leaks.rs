//! Descriptors, threads, zombies and /dev/shm stay flat over long runs; nothing is lost under
//! descriptor pressure.

use crate::common::serial;
use crate::common::{procpy, root, run_with_deadline, Outcome};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A hang guard, never a speed assertion: a dev build on a loaded 2-core machine is slow.
const LIMIT: Duration = Duration::from_secs(600);

/// The uid and gid the tests that need an unprivileged process use when they run as root
/// (root ignores RLIMIT_NPROC and the limit on descriptors in flight): `nobody`.
const NOBODY: u32 = 65534;

#[derive(Clone, Copy, Default)]
struct Limits {
    /// RLIMIT_NOFILE, soft and hard.
    nofile: Option<u64>,
    /// RLIMIT_NPROC, soft only (the script may raise it back to the hard limit).
    nproc: Option<u64>,
    /// Drop to uid/gid 65534 if we are root.
    unprivileged: bool,
}

/// Make `cmd` start under `limits`. Between fork and exec only async-signal-safe calls are
/// made (setgroups/setgid/setuid/setrlimit).
fn with_limits(cmd: &mut Command, limits: Limits) {
    let drop_root = limits.unprivileged && is_root();
    // SAFETY: the closure only makes raw system calls, which are async-signal-safe, and
    // touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            let check =
                |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            if drop_root {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(NOBODY))?;
                // Before lowering RLIMIT_NPROC: setuid() over the limit would make exec fail.
                check(libc::setuid(NOBODY))?;
            }
            if let Some(n) = limits.nofile {
                let rl = libc::rlimit { rlim_cur: n, rlim_max: n };
                check(libc::setrlimit(libc::RLIMIT_NOFILE, &rl))?;
            }
            if let Some(n) = limits.nproc {
                let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                check(libc::getrlimit(libc::RLIMIT_NPROC, &mut rl))?;
                rl.rlim_cur = n.min(rl.rlim_max);
                check(libc::setrlimit(libc::RLIMIT_NPROC, &rl))?;
            }
            Ok(())
        });
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A directory every user can read, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("procpy-leaks-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The procpy binary at a path uid 65534 can execute: the build's own if every directory
/// above it lets others through, else a hard link (or copy) in `dir`. `None` (the test then
/// skips, saying why) if neither works.
fn procpy_for_nobody(dir: &TempDir) -> Option<PathBuf> {
    let exe = procpy();
    if !is_root() || others_can_run(&exe) {
        return Some(exe);
    }
    let copy = dir.0.join("procpy");
    if std::fs::hard_link(&exe, &copy).is_err() {
        std::fs::copy(&exe, &copy).ok()?;
    }
    others_can_run(&copy).then_some(copy)
}

fn others_can_run(exe: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    exe.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()).all(|d| mode(d) & 0o001 != 0)
        && mode(exe) & 0o005 == 0o005
}

/// Run `procpy -c script` under `limits` (from /, which every user may enter).
fn run_code(script: &str, limits: Limits) -> Option<Outcome> {
    let dir = TempDir::new("bin");
    let exe = if limits.unprivileged { procpy_for_nobody(&dir)? } else { procpy() };
    let mut cmd = Command::new(exe);
    cmd.arg("-c").arg(script).current_dir("/");
    with_limits(&mut cmd, limits);
    Some(run_with_deadline(cmd, LIMIT))
}

/// Run `code` as the script file `name` (spawn's children import it) under `limits`, from /.
/// `None` (the test then skips, saying why) if uid 65534 cannot run procpy.
fn run_script_file(name: &str, code: &str, limits: Limits) -> Option<Outcome> {
    let dir = TempDir::new("script");
    let script = dir.0.join(name);
    std::fs::write(&script, code).expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))
        .expect("chmod script");
    let exe = if limits.unprivileged { procpy_for_nobody(&dir)? } else { procpy() };
    let mut cmd = Command::new(exe);
    cmd.arg(&script).current_dir("/");
    with_limits(&mut cmd, limits);
    Some(run_with_deadline(cmd, LIMIT))
}

// ------------------------------------------------------------------------ the leak soak

/// `[start, end]` of `"key": [a, b]` in one JSON line of tests/soak.py.
fn pair(line: &str, key: &str) -> (i64, i64) {
    let tag = format!("\"{key}\": [");
    let at = line.find(&tag).unwrap_or_else(|| panic!("no {key} in {line}")) + tag.len();
    let rest = &line[at..];
    let body = &rest[..rest.find(']').expect("closing bracket")];
    let nums: Vec<i64> = body.split(',').map(|s| s.trim().parse().expect("a number")).collect();
    (nums[0], nums[1])
}

/// tests/soak.py under `method` for `cycles` cycles per kind, with at most `nofile`
/// descriptors: what leaks one descriptor per child runs out long before the end. Every kind
/// must end where it started, within a small constant (a thread still exiting, say).
fn soak(method: &str, cycles: u32, nofile: u64) {
    let mut cmd = Command::new(procpy());
    cmd.arg(root().join("tests/soak.py"))
        .args(["--methods", method, "--cycles", &cycles.to_string()])
        .current_dir(root());
    with_limits(&mut cmd, Limits { nofile: Some(nofile), ..Limits::default() });
    let out = run_with_deadline(cmd, LIMIT);
    assert!(
        !out.timed_out && out.status == Some(0),
        "soak under {method} failed (status {:?}, timed out {}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.timed_out,
        out.stdout,
        out.stderr
    );
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(rows.len(), 9, "one line per kind expected:\n{}", out.stdout);
    let mut bad = Vec::new();
    for row in &rows {
        let check = |key: &str, slack: i64| {
            let (start, end) = pair(row, key);
            (end - start > slack).then(|| format!("{key} {start} -> {end}"))
        };
        let (_, zombies) = pair(row, "zombies");
        let (_, shm_left) = pair(row, "shm_left");
        let problems: Vec<String> = [check("fds", 2), check("threads", 2), check("child_fds", 2)]
            .into_iter()
            .flatten()
            .chain((zombies != 0).then(|| format!("{zombies} zombies")))
            .chain((shm_left != 0).then(|| format!("{shm_left} /dev/shm segments left")))
            .collect();
        if !problems.is_empty() {
            bad.push(format!("{}\n  {}", row, problems.join(", ")));
        }
    }
    assert!(bad.is_empty(), "leaks under {method}:\n{}", bad.join("\n"));
}

// One per method, so they run side by side. Each runs far past what a leak of one descriptor
// per child survives (128), and stays well under a minute on a dev build.
#[test]
fn leak_soak_fork() {
    let _serial = serial::shared();
    soak("fork", 400, 128);
}

#[test]
fn leak_soak_forkserver() {
    let _serial = serial::shared();
    soak("forkserver", 250, 128);
}

#[test]
fn leak_soak_spawn() {
    let _serial = serial::shared();
    soak("spawn", 80, 128);
}

// ------------------------------------------------------------------------ starting children

const START_WITHOUT_DESCRIPTORS: &str = r#"
import errno, multiprocessing as mp, os, sys

def noop():
    pass

def children():
    me, out = os.getpid(), set()
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                with open('/proc/%s/stat' % d) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(')') + 2:].split()[1]) == me:
                out.add(int(d))
    return out

if __name__ == '__main__':
    ctx = mp.get_context(sys.argv[1])
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    p.close()
    before = children()         # the resource tracker
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    for _ in range(3):
        p = ctx.Process(target=noop)
        try:
            p.start()
            print('started without a descriptor to watch it by')
        except OSError as e:
            print('start failed: EMFILE' if e.errno == errno.EMFILE else 'start failed: %r' % e)
    for fd in hog[:8]:
        os.close(fd)
    print('no child left behind:', children() == before)
    for fd in hog[8:]:
        os.close(fd)
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    print('once descriptors are free:', p.exitcode)
"#;

/// Out of descriptors, `Process.start()` raises EMFILE and no child is left running unwatched
/// (or as a zombie): fork used to fork first and fail on the sentinel after.
fn start_without_descriptors(method: &str) {
    // A file: spawn children import the main script by path.
    let dir = TempDir::new("script");
    let script = dir.0.join("start_without_descriptors.py");
    std::fs::write(&script, START_WITHOUT_DESCRIPTORS).expect("write script");
    let mut cmd = Command::new(procpy());
    cmd.arg(&script).arg(method);
    with_limits(&mut cmd, Limits { nofile: Some(64), ..Limits::default() });
    let out = run_with_deadline(cmd, LIMIT);
    let want = "start failed: EMFILE\n".repeat(3)
        + "no child left behind: True\nonce descriptors are free: 0\n";
    assert_eq!(
        out.stdout, want,
        "under {method}: status {:?}, stderr:\n{}",
        out.status, out.stderr
    );
    assert_eq!(out.status, Some(0), "under {method}: stderr:\n{}", out.stderr);
}

#[test]
fn start_without_descriptors_fork() {
    let _serial = serial::shared();
    start_without_descriptors("fork");
}

#[test]
fn start_without_descriptors_spawn() {
    let _serial = serial::shared();
    start_without_descriptors("spawn");
}

// ------------------------------------------------------------------------ queues

const QUEUE_UNDER_PRESSURE: &str = r#"
import errno, multiprocessing as mp, os, queue

ctx = mp.get_context('fork')
N = 600

def item(i):
    return i.to_bytes(4, 'big') * 10000      # 40 KB: travels in a memory file

def index(b):
    assert len(b) == 40000
    return int.from_bytes(b[:4], 'big')

def produce(q, n):
    for i in range(n):
        q.put(item(i))

# More items in flight than RLIMIT_NOFILE allows an unprivileged sender.
q = ctx.Queue()
for i in range(N):
    q.put(item(i))
got = [index(q.get(timeout=60)) for _ in range(N)]
print('Queue, one process:', got == list(range(N)), q.qsize(), q.empty())

jq = ctx.JoinableQueue()
p = ctx.Process(target=produce, args=(jq, N))
p.start()
got = []
for _ in range(N):
    got.append(index(jq.get(timeout=60)))
    jq.task_done()
jq.join()
p.join()
print('JoinableQueue from a child:', got == list(range(N)), p.exitcode)

sq = ctx.SimpleQueue()
p = ctx.Process(target=produce, args=(sq, N))
p.start()
got = [index(sq.get()) for _ in range(N)]
p.join()
print('SimpleQueue from a child:', got == list(range(N)), p.exitcode, sq.empty())

# A reader out of descriptors cannot take an item that travels in a memory file: get()
# raises and the item stays in the queue.
for i in range(3):
    sq.put(item(i))
hog = []
try:
    while True:
        hog.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    sq.get()
    print('got an item without a free descriptor')
except OSError as e:
    print('reader out of descriptors:', errno.errorcode.get(e.errno))
for fd in hog:
    os.close(fd)
print('once descriptors are free:', [index(sq.get()) for _ in range(3)], sq.empty())
"#;

/// Nothing put is lost under descriptor pressure: items over 32 KiB travel as memory files,
/// each a descriptor in flight, and an unprivileged sender may have at most RLIMIT_NOFILE of
/// those in flight (ETOOMANYREFS). The feeder used to drop them silently (600 put, 129 came).
#[test]
fn queue_items_survive_descriptor_pressure() {
    let _serial = serial::shared();
    let _nobody = serial::nobody();
    let limits = Limits { nofile: Some(128), unprivileged: true, ..Limits::default() };
    let Some(out) = run_code(QUEUE_UNDER_PRESSURE, limits) else {
        eprintln!("skipped: no copy of procpy that uid {NOBODY} can run");
        return;
    };
    assert_eq!(
        out.stdout,
        "Queue, one process: True 0 True\n\
         JoinableQueue from a child: True 0\n\
         SimpleQueue from a child: True 0 True\n\
         reader out of descriptors: EMFILE\n\
         once descriptors are free: [0, 1, 2] True\n",
        "status {:?}, stderr:\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(out.status, Some(0), "stderr:\n{}", out.stderr);
}

const PUT_WITHOUT_THREADS: &str = r#"
import multiprocessing as mp, queue, resource

soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
print('soft limit:', soft)
for q in (mp.Queue(), mp.JoinableQueue()):
    try:
        q.put('x')
        print('put worked without a feeder thread')
    except RuntimeError as e:
        print('RuntimeError:', e)
    print('qsize:', q.qsize(), 'empty:', q.empty())
    try:
        q.get_nowait()
        print('an item arrived')
    except queue.Empty:
        print('nothing arrived')
    resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
    q.put('y')
    print('once threads can start:', q.get(timeout=60), q.qsize())
    if hasattr(q, 'task_done'):
        q.task_done()
        q.join()
        print('joined')
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
"#;

/// `Queue.put` when no thread can be created raises CPython's RuntimeError, counts nothing,
/// and works once threads can start; it used to panic. RLIMIT_NPROC binds only unprivileged
/// users, so as root the script runs as uid 65534.
#[test]
fn queue_put_without_threads_raises() {
    let _serial = serial::shared();
    let _nobody = serial::nobody();
    let limits = Limits { nproc: Some(1), unprivileged: true, ..Limits::default() };
    let Some(out) = run_code(PUT_WITHOUT_THREADS, limits) else {
        eprintln!("skipped: no copy of procpy that uid {NOBODY} can run");
        return;
    };
    let round = "RuntimeError: can't start new thread\nqsize: 0 empty: True\nnothing arrived\nonce threads can start: y 0\n";
    assert_eq!(
        out.stdout,
        format!("soft limit: 1\n{round}{round}joined\n"),
        "status {:?}, stderr:\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(out.status, Some(0), "stderr:\n{}", out.stderr);
}

const START_WITHOUT_PROCESSES: &str = r#"
import multiprocessing as mp, os, resource

def ppid(pid):
    try:
        with open('/proc/%s/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[1]
    except OSError:
        return None

def role(pid):
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as f:
            args = f.read().split(b'\0')
    except OSError:
        return None
    flag = args[1].decode() if len(args) > 1 else ''
    return flag if flag in ('--multiprocessing-resource-tracker', '--multiprocessing-forkserver') else 'other'

def others():
    '''Descendants that are neither the resource tracker nor the fork server.'''
    parent = {d: ppid(d) for d in os.listdir('/proc') if d.isdigit()}
    tree, grew = {str(os.getpid())}, True
    while grew:
        new = {d for d, p in parent.items() if p in tree} - tree
        grew = bool(new)
        tree |= new
    return [d for d in tree - {str(os.getpid())} if role(d) == 'other']

if __name__ == '__main__':
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    for method in ('fork', 'spawn', 'forkserver'):
        ctx = mp.get_context(method)
        for what in ('Process', 'Pool'):
            resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))
            try:
                if what == 'Process':
                    p = ctx.Process(target=int)
                    p.start()
                    p.join()
                    print(method, what, 'started anyway')
                else:
                    with ctx.Pool(2) as pool:
                        print(method, what, 'started anyway', pool.map(abs, [-1, -2]))
            except (OSError, RuntimeError) as e:
                # RuntimeError: a pool whose workers the fork server could start, but whose
                # own threads could not (CPython's Pool raises it too).
                print(method, what, 'raised', 'EAGAIN' if getattr(e, 'errno', None) == 11 else type(e).__name__)
            resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
            print(method, what, 'left behind:', others())
            if what == 'Process':
                p = ctx.Process(target=int)
                p.start()
                p.join()
                print(method, what, 'once processes can start:', p.exitcode)
            else:
                with ctx.Pool(2) as pool:
                    print(method, what, 'once processes can start:', pool.map(abs, [-1, -2]))
"#;

/// Out of processes (`RLIMIT_NPROC`), `Process.start()` and `Pool()` raise (`EAGAIN`, as
/// CPython's `os.fork` does) instead of hanging or panicking, leave no child or worker behind,
/// and work again once processes can start — under every start method, the fork server
/// included (it cannot start, or its pool's threads cannot). As root the script runs as uid
/// 65534, since root ignores the limit.
#[test]
fn start_without_processes_raises_and_recovers() {
    let _serial = serial::shared();
    let _nobody = serial::nobody();
    let limits = Limits { unprivileged: true, ..Limits::default() };
    let Some(out) = run_script_file("start_without_processes.py", START_WITHOUT_PROCESSES, limits)
    else {
        eprintln!("skipped: no copy of procpy that uid {NOBODY} can run");
        return;
    };
    assert_eq!(out.status, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    for method in ["fork", "spawn", "forkserver"] {
        for what in ["Process", "Pool"] {
            let tag = format!("{method} {what} ");
            let ours: Vec<&str> =
                lines.iter().filter_map(|l| l.strip_prefix(tag.as_str())).collect();
            let raised = ours.first().copied().unwrap_or_default();
            let allowed: &[&str] = if what == "Pool" {
                &["raised EAGAIN", "raised RuntimeError"]
            } else {
                &["raised EAGAIN"]
            };
            assert!(allowed.contains(&raised), "{tag}: {raised:?}\n{out:?}");
            assert_eq!(ours.get(1).copied(), Some("left behind: []"), "{tag}\n{out:?}");
            let again = if what == "Pool" {
                "once processes can start: [1, 2]"
            } else {
                "once processes can start: 0"
            };
            assert_eq!(ours.get(2).copied(), Some(again), "{tag}\n{out:?}");
        }
    }
}

const MANAGER_OUT_OF_THREADS: &str = r#"
import resource, socket, threading
from multiprocessing.managers import BaseManager

class M(BaseManager):
    pass

M.register('get', callable=list)

def call(addr, timeout):
    '''A client's round trip, on a thread so that a hang is seen, not suffered.'''
    res = []
    def go():
        try:
            c = M(address=addr, authkey=b'secret')
            c.connect()
            res.append(c.get()._getvalue())
        except Exception as e:
            res.append(type(e).__name__)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    return res[0] if res else 'HUNG'

if __name__ == '__main__':
    m = M(address=('127.0.0.1', 0), authkey=b'secret')
    m.start()       # the server keeps the low RLIMIT_NPROC it started with
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
    addr = m.address
    print('before:', call(addr, 60))
    silent = []
    for _ in range(300):
        try:
            silent.append(socket.create_connection(addr, timeout=5))
        except OSError:
            break
    print('silent clients:', len(silent) >= soft)
    # The server may have a thread for this client or drop it; it must not hang it.
    print('among silent clients:', call(addr, 60) != 'HUNG')
    for s in silent:
        s.close()
    after = 'HUNG'
    for _ in range(20):
        after = call(addr, 60)
        if after == []:
            break
    print('after:', after)
    m.shutdown()
"#;

/// A manager whose threads run out (clients that connect and say nothing, under a low
/// `RLIMIT_NPROC`) drops the connections it has no thread for and serves again once they go;
/// CPython's accepter thread dies there and the manager never answers again. Silent clients
/// also time out of the handshake (`Server.handshake_timeout`). As root, runs as uid 65534.
#[test]
fn a_manager_out_of_threads_serves_again() {
    let _serial = serial::shared();
    let _nobody = serial::nobody();
    if !is_root() {
        eprintln!("skipped: RLIMIT_NPROC counts every process of this uid; the test needs its own (root, to run as {NOBODY})");
        return;
    }
    let limits = Limits { nproc: Some(100), unprivileged: true, ..Limits::default() };
    let Some(out) = run_script_file("manager_out_of_threads.py", MANAGER_OUT_OF_THREADS, limits)
    else {
        eprintln!("skipped: no copy of procpy that uid {NOBODY} can run");
        return;
    };
    assert_eq!(
        out.stdout, "before: []\nsilent clients: True\namong silent clients: True\nafter: []\n",
        "status {:?}, stderr:\n{}",
        out.status, out.stderr
    );
    assert_eq!(out.status, Some(0), "stderr:\n{}", out.stderr);
}
