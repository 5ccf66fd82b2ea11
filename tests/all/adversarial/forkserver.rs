//! The fork server as a hostile local user and a garbage-sending peer sees it.
//!
//! Every script here runs with `PROCPY_START_METHOD=forkserver`. Scripts that must wait for
//! the test (the hostile client to finish) read a line from stdin; nothing sleeps and hopes.
//! Deadlines are hang guards only.

use crate::common::{procpy, serial, wait_gone, Running};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: every script here finishes in seconds; this only guards against hangs.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// The uid a hostile local user runs as (nobody).
const NOBODY: u32 = 65534;

/// A test's directory, removed when the test ends (passed or not).
struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory for one test, readable by everyone (the hostile user reads its client
/// script and the payload from it).
fn test_dir(name: &str) -> TestDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "procpy-fstest-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    TestDir(dir)
}

/// Write `code` to `dir/name` (world-readable); prints flush, so a script killed at the
/// deadline still shows how far it got.
fn script(dir: &Path, name: &str, code: &str) -> PathBuf {
    let path = dir.join(name);
    let prelude =
        "import builtins as _b, functools as _f\nprint = _f.partial(_b.print, flush=True)\n";
    std::fs::write(&path, format!("{prelude}{code}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// A procpy script running under forkserver: stdout line by line, stdin kept open.
struct Owner(Running);

impl std::ops::Deref for Owner {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.0
    }
}

impl std::ops::DerefMut for Owner {
    fn deref_mut(&mut self) -> &mut Running {
        &mut self.0
    }
}

impl Owner {
    fn start(script: &Path, env: &[(&str, &str)]) -> Owner {
        let mut cmd = Command::new(procpy());
        cmd.arg(script)
            .env("PROCPY_START_METHOD", "forkserver")
            .envs(env.iter().copied())
            .current_dir(script.parent().unwrap());
        Owner::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Owner {
        cmd.stdin(Stdio::piped());
        Owner(Running::spawn(cmd))
    }

    /// Read lines until one starts with `prefix`; returns the rest of that line.
    fn expect(&mut self, prefix: &str) -> String {
        let until = Instant::now() + HANG_GUARD;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return l[prefix.len()..].trim().to_owned();
            }
            match self.lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(l) => self.seen.push(l),
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "no line {prefix:?} from the script; stdout {:?}; stderr {}",
                        self.seen,
                        self.stderr_now()
                    );
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for the exit (killing it at the hang guard); returns (status, stdout, stderr).
    fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        drop(self.stdin.take());
        let until = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.code().or(st.signal().map(|s| -s));
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.seen.push("<killed after deadline>".into());
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let err = self.stderr_now();
        (status, std::mem::take(&mut self.seen), err)
    }

    fn stderr_now(&self) -> String {
        self.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }
}

/// Run a procpy script to its end under forkserver (in its own directory).
fn run_owner(script: &Path, env: &[(&str, &str)]) -> (Option<i32>, Vec<String>, String) {
    Owner::start(script, env).finish()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ------------------------------------------------------------------------------------------
// Someone other than the owner tries to make the server run code

/// The owner: starts the server, writes `BODY` (an encoded object whose decoding creates
/// `MARKER`: `open(MARKER, 'w')`) and prints the server's address; once told to go on, starts
/// and joins a child to show the server still serves it.
const OWNER: &str = r#"
import multiprocessing as mp, os, sys, _procpy
from multiprocessing import forkserver

class Evil:
    def __reduce__(self):
        return (open, (os.environ['MARKER'], 'w'))

def hello(q):
    q.put('child ran')

if __name__ == '__main__':
    address = forkserver.ensure_running()
    with open(os.environ['BODY'], 'wb') as f:
        f.write(_procpy.dumps(Evil()))
    print('address', address.hex())
    print('server', forkserver._server[3])
    sys.stdin.readline()
    q = mp.Queue()
    p = mp.Process(target=hello, args=(q,))
    p.start()
    print('got', q.get())
    p.join()
    print('exitcode', p.exitcode)
    print('same server', forkserver._server[3])
"#;

/// A hostile client (python3): sends the request the pre-authkey server accepted (8-byte
/// length, then the body) to the published address and to every procpy socket listed in
/// /proc/net/unix; with `--answer`, first reads a challenge if one comes and answers it with
/// 32 wrong bytes. Prints one word per target: what happened.
const HOSTILE: &str = r#"
import socket, struct, sys

address = bytes.fromhex(sys.argv[1])
body = open(sys.argv[2], 'rb').read()
answer = '--answer' in sys.argv
owner = sys.argv[3]
targets = [address]
# Abstract names are listed for anyone to see (only this owner's: other servers on the machine
# are none of this test's business).
for line in open('/proc/net/unix').read().splitlines()[1:]:
    parts = line.split()
    if len(parts) >= 8 and ('procpy-forkserver-%s-' % owner) in parts[-1]:
        name = parts[-1]
        t = (b'\0' + name[1:].encode()) if name.startswith('@') else name.encode()
        if t not in targets:
            targets.append(t)
targets += [t.encode() for t in sys.argv[4:] if t != '--answer']
results = []
for t in targets:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)   # a hang guard: a server that says nothing
    try:
        s.connect(t)
    except OSError as e:
        results.append('connect:' + type(e).__name__)
        continue
    try:
        if answer:
            try:
                greeting = s.recv(64)
            except socket.timeout:
                greeting = b''
            s.sendall(b'\0' * 32)
        s.sendall(struct.pack('>Q', len(body)) + body)
        # The old server answered with the pid, then the exit status once the child ended.
        got = b''
        while len(got) < 16:
            chunk = s.recv(16 - len(got))
            if not chunk:
                break
            got += chunk
        results.append('read:%d' % len(got))
    except OSError as e:
        results.append('io:' + type(e).__name__)
    finally:
        s.close()
print('results', ' '.join(results))
"#;

/// Run the hostile client (as `uid` if given) against `address` (hex) of the server of the
/// procpy process `owner`; returns its stdout.
fn hostile(
    dir: &Path,
    address: &str,
    body: &Path,
    owner: u32,
    uid: Option<u32>,
    extra: &[&str],
) -> String {
    let client = script(dir, "hostile.py", HOSTILE);
    let mut cmd = Command::new("python3");
    cmd.arg(&client).arg(address).arg(body).arg(owner.to_string()).args(extra).current_dir("/");
    if let Some(uid) = uid {
        // As root, std also drops the supplementary groups (setgroups(0)) when uid is set.
        cmd.uid(uid).gid(uid);
    }
    let out = crate::common::run_with_deadline(cmd, HANG_GUARD);
    assert_eq!(out.status, Some(0), "hostile client failed: {out:?}");
    out.stdout
}

/// Whether the payload's decoding ran. The hostile client waits for the exit status the old
/// server sent once the decoding child ended, so where code ran the marker exists by now.
fn marker_created(marker: &Path) -> bool {
    marker.exists()
}

/// A client running as another user (uid 65534) cannot reach the server: the socket sits in a
/// directory only the owner can enter, and even given a path to it (a world-writable hard
/// link, as a leaked or misconfigured path would give), the server drops the connection
/// before sending or reading a byte (SO_PEERCRED). The owner's starts keep working.
#[test]
fn another_user_cannot_make_the_server_run_code() {
    let _serial = serial::shared();
    let _nobody = serial::nobody();
    if !is_root() {
        eprintln!("note: not root, so no other uid to run a hostile client as; skipped");
        return;
    }
    let dir = test_dir("otheruser");
    let marker = dir.join("marker");
    let body = dir.join("body");
    let owner_script = script(&dir, "owner.py", OWNER);
    let env = [("MARKER", marker.to_str().unwrap()), ("BODY", body.to_str().unwrap())];
    let mut owner = Owner::start(&owner_script, &env);
    let address = owner.expect("address ");
    let addr_bytes: Vec<u8> = (0..address.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&address[i..i + 2], 16).unwrap())
        .collect();
    std::fs::set_permissions(&body, std::fs::Permissions::from_mode(0o644)).unwrap();

    // 1. The published address and anything procpy-named in /proc/net/unix.
    let pid = owner.child.id();
    let out = hostile(&dir, &address, &body, pid, Some(NOBODY), &[]);
    // 2. A path that does reach the socket: a hard link in a world-writable directory.
    let mut extra = Vec::new();
    if addr_bytes.first() != Some(&0) {
        let public = dir.join("public");
        std::fs::create_dir(&public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = public.join("leaked.sock");
        std::fs::hard_link(std::str::from_utf8(&addr_bytes).unwrap(), &link).unwrap();
        std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o777)).unwrap();
        extra.push(link.to_str().unwrap().to_owned());
    }
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let leaked = hostile(&dir, &address, &body, pid, Some(NOBODY), &extra_refs);

    owner.say("go");
    let (status, stdout, stderr) = owner.finish();
    let created = marker_created(&marker);
    assert!(
        !created,
        "a uid-{NOBODY} client made the fork server run code; client saw {out:?}, {leaked:?}"
    );
    assert_eq!(status, Some(0), "owner: {stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "got child ran"), "{stdout:?}");
    // The link's connection was accepted and dropped without a byte from the server: the
    // client read end of file, or found the connection closed while sending.
    if !extra.is_empty() {
        let last = leaked.split_whitespace().last().unwrap_or("");
        assert!(
            ["read:0", "io:BrokenPipeError", "io:ConnectionResetError"].contains(&last),
            "leaked path: {leaked:?}"
        );
    }
}

/// A client of the owner's own uid that does not know the server's key sends a request whose
/// decoding would run code (old-style: header and body at once; and answering the challenge
/// with wrong bytes): no code runs, the connection is dropped, the owner's starts still work.
#[test]
fn same_user_client_without_the_key_runs_no_code() {
    let _serial = serial::shared();
    let dir = test_dir("samekeyless");
    let marker = dir.join("marker");
    let body = dir.join("body");
    let owner_script = script(&dir, "owner.py", OWNER);
    let env = [("MARKER", marker.to_str().unwrap()), ("BODY", body.to_str().unwrap())];
    let mut owner = Owner::start(&owner_script, &env);
    let address = owner.expect("address ");
    let server = owner.expect("server ");
    let pid = owner.child.id();
    let plain = hostile(&dir, &address, &body, pid, None, &[]);
    let answering = hostile(&dir, &address, &body, pid, None, &["--answer"]);
    owner.say("go");
    let (status, stdout, stderr) = owner.finish();
    assert!(
        !marker_created(&marker),
        "a client without the key made the server run code: {plain:?} {answering:?}"
    );
    assert_eq!(status, Some(0), "owner: {stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "got child ran"), "{stdout:?}");
    assert!(
        stdout.iter().any(|l| *l == format!("same server {server}")),
        "the server was replaced: {stdout:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Clients that stall or send garbage

/// A client that connects and says nothing does not hold up the owner's starts (before, the
/// server waited on it forever).
#[test]
fn a_silent_client_does_not_delay_starts() {
    let _serial = serial::shared();
    let dir = test_dir("silent");
    let s = script(
        &dir,
        "silent.py",
        r#"
import multiprocessing as mp, socket
from multiprocessing import forkserver

def work(x):
    return x

if __name__ == '__main__':
    address = forkserver.ensure_running()
    silent = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    for c in silent:
        c.connect(address)
    for i in range(5):
        p = mp.Process(target=work, args=(i,))
        p.start()
        p.join()
        print('started', i, p.exitcode)
    with mp.Pool(2) as pool:
        print('pool', pool.map(work, range(4)))
    print('silent still connected', len(silent))
"#,
    );
    let (status, stdout, stderr) = run_owner(&s, &[]);
    assert_eq!(status, Some(0), "{stdout:?} {stderr}");
    assert_eq!(
        stdout.iter().filter(|l| l.starts_with("started") && l.ends_with(" 0")).count(),
        5,
        "{stdout:?}"
    );
    assert!(stdout.iter().any(|l| l == "pool [0, 1, 2, 3]"), "{stdout:?}");
}

/// Garbage, a length header of 2^40 (and 2^63), truncated requests, from clients without
/// the key and (by hand, with the owner's key) from an authenticated one: the server answers
/// what it can, drops the rest and keeps serving; the same server starts children afterwards.
#[test]
fn garbage_and_oversized_requests_leave_the_server_serving() {
    let _serial = serial::shared();
    let dir = test_dir("garbage");
    let s = script(
        &dir,
        "garbage.py",
        r#"
import multiprocessing as mp, os, socket, struct, hmac, hashlib, _procpy
from multiprocessing import forkserver

def work(x):
    return x * 2

def send(address, data, wait_reply=True, keep=None):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(30)   # a hang guard
    c.connect(address)
    try:
        c.sendall(data)
    except OSError:
        pass
    if keep is not None:
        keep.append(c)
        return None
    # Done sending: the server sees end of file where it expected more (no deadline to wait).
    try:
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    got = b''
    if wait_reply:
        try:
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    c.close()
    return got

def authed(address, key, data):
    '''Pass the challenge with the owner's key, then send `data`; returns what the server said.'''
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(30)   # a hang guard
    c.connect(address)
    greeting = b''
    while len(greeting) < 1 + 32:
        chunk = c.recv(1 + 32 - len(greeting))
        if not chunk:
            break
        greeting += chunk
    assert greeting[:1] == b'C', greeting
    c.sendall(hmac.new(key, forkserver._CHALLENGE_TAG + greeting[1:], hashlib.sha256).digest())
    try:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    got = b''
    try:
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    c.close()
    return got

if __name__ == '__main__':
    address = forkserver.ensure_running()
    server = forkserver._server[3]
    kept = []
    send(address, struct.pack('>Q', 1 << 40))
    send(address, struct.pack('>Q', 1 << 40), keep=kept)
    send(address, struct.pack('>Q', (1 << 63) + 5) + b'x' * 100)
    send(address, os.urandom(4096))
    send(address, struct.pack('>Q', 1000) + b'y' * 10, wait_reply=False)
    send(address, b'\xff' * 3, wait_reply=False)
    p = mp.Process(target=work, args=(1,)); p.start(); p.join()
    print('after garbage', p.exitcode, forkserver._server[3] == server)
    if len(forkserver._server) > 4:
        key = forkserver._server[4]
        reply = authed(address, key, struct.pack('>Q', 1 << 40))
        print('huge header answered', reply[:1], 'limit' in reply.decode('utf-8', 'replace'))
        reply = authed(address, key, struct.pack('>Q', 0))
        print('empty request answered', reply[:1])
        reply = authed(address, key, struct.pack('>Q', 64) + b'z' * 10)
        print('truncated request', len(reply))
        # A well-framed body that is not a request: the child cannot decode it and exits 1.
        reply = authed(address, key, struct.pack('>Q', 16) + os.urandom(16))
        print('garbage body', reply[:1])
    p = mp.Process(target=work, args=(2,)); p.start(); p.join()
    print('after authenticated garbage', p.exitcode, forkserver._server[3] == server)
    with mp.Pool(2) as pool:
        print('pool', pool.map(work, range(4)))
    print('kept', len(kept))
"#,
    );
    let (status, stdout, stderr) = run_owner(&s, &[]);
    assert_eq!(status, Some(0), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "after garbage 0 True"), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "huge header answered b'E' True"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "empty request answered b'E'"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "truncated request 0"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "garbage body b'P'"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "after authenticated garbage 0 True"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "pool [0, 2, 4, 6]"), "{stdout:?}");
}

// ------------------------------------------------------------------------------------------
// A dead or starved server

/// SIGKILL the server between starts: the next Process.start() and a new Pool work (a new
/// server), and the dead server's directory is gone.
#[test]
fn a_killed_server_is_replaced() {
    let _serial = serial::shared();
    let dir = test_dir("killed");
    let s = script(
        &dir,
        "killed.py",
        r#"
import multiprocessing as mp, os, signal
from multiprocessing import forkserver

def work(x):
    return x + 1

if __name__ == '__main__':
    p = mp.Process(target=work, args=(0,)); p.start(); p.join()
    old, old_address = forkserver._server[3], forkserver._server[1]
    os.kill(old, signal.SIGKILL)
    # At once: the kill may not have landed yet when the next start asks.
    p = mp.Process(target=work, args=(1,)); p.start(); p.join()
    print('after kill', p.exitcode, forkserver._server[3] != old)
    with mp.Pool(2) as pool:
        print('pool', pool.map(work, range(3)))
    new = forkserver._server[3]
    os.kill(new, signal.SIGKILL)
    os.waitpid(new, 0)      # reaped by someone else: still detected
    p = mp.Process(target=work, args=(2,)); p.start(); p.join()
    print('after reaped kill', p.exitcode, forkserver._server[3] not in (old, new))
    print('old directory left', os.path.exists(os.path.dirname(old_address)) and old_address[:1] != b'\0')
"#,
    );
    let (status, stdout, stderr) = run_owner(&s, &[]);
    assert_eq!(status, Some(0), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "after kill 0 True"), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "pool [1, 2, 3]"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "after reaped kill 0 True"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "old directory left False"), "{stdout:?}");
}

/// SIGKILL the server as soon as `start()` returns, 20 times: every child still runs (its
/// event is set), as under CPython (`test_forkserver_sigkill`). The server used to release
/// the child with a byte written after the pid reply, so a kill between the two left a child
/// that never ran; now the client holds the pipe the child waits on.
#[test]
fn a_child_runs_when_its_server_dies_right_after_starting_it() {
    let _serial = serial::shared();
    let dir = test_dir("killed_after_start");
    let s = script(
        &dir,
        "killed_after_start.py",
        r#"
import multiprocessing as mp, os, signal
from multiprocessing import forkserver

def work(evt):
    evt.set()

if __name__ == '__main__':
    ran = 0
    for i in range(20):
        evt = mp.Event()
        p = mp.Process(target=work, args=(evt,))
        p.start()
        os.kill(forkserver._server[3], signal.SIGKILL)
        ran += evt.wait(60)
        p.join(60)
    print('ran', ran)
"#,
    );
    let (status, stdout, stderr) = run_owner(&s, &[]);
    assert_eq!(status, Some(0), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "ran 20"), "{stdout:?} {stderr}");
}

/// The server runs out of descriptors (`ulimit -n 64`, many live children: each costs the
/// server two descriptors and the owner one): Process.start() raises OSError(EMFILE) naming
/// the fork server; once the children end, starting works again, on the same server.
#[test]
fn descriptor_exhaustion_is_reported_and_survived() {
    let _serial = serial::shared();
    let dir = test_dir("emfile");
    let s = script(
        &dir,
        "emfile.py",
        r#"
import multiprocessing as mp, errno
from multiprocessing import forkserver

def hold(ev):
    ev.wait()

if __name__ == '__main__':
    ev = mp.Event()
    forkserver.ensure_running()
    server = forkserver._server[3]
    procs, err = [], None
    for i in range(200):
        p = mp.Process(target=hold, args=(ev,))
        try:
            p.start()
        except OSError as e:
            err = e
            break
        procs.append(p)
    print('started', len(procs))
    print('refused', type(err).__name__, err is not None and err.errno == errno.EMFILE)
    print('names the fork server', 'fork server' in str(err))
    print('message', err)
    ev.set()
    for p in procs:
        p.join()
    print('exitcodes', sorted(set(p.exitcode for p in procs)))
    for i in range(5):
        p = mp.Process(target=hold, args=(ev,))
        p.start()
        p.join()
        print('again', p.exitcode)
    print('same server', forkserver._server[3] == server)
"#,
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("ulimit -n 64 && exec '{}' '{}'", procpy().display(), s.display()));
    cmd.env("PROCPY_START_METHOD", "forkserver").current_dir(&dir);
    let (status, stdout, stderr) = Owner::spawn(cmd).finish();
    assert_eq!(status, Some(0), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "refused OSError True"), "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "names the fork server True"), "{stdout:?}");
    assert!(stdout.iter().any(|l| l == "exitcodes [0]"), "{stdout:?}");
    assert_eq!(stdout.iter().filter(|l| *l == "again 0").count(), 5, "{stdout:?} {stderr}");
    assert!(stdout.iter().any(|l| l == "same server True"), "{stdout:?}");
}

// ------------------------------------------------------------------------------------------
// Where the socket lives

/// The address is a path in a fresh directory of mode 0700 owned by us, inside $TMPDIR; the
/// directory goes when the owner exits, when the owner is SIGKILLed (the server sees its boot
/// socket hang up and removes it) and when the server is sent SIGTERM (the next start makes a
/// new server, whose directory goes at exit too): nothing is left in $TMPDIR.
#[test]
fn the_socket_lives_in_a_private_directory_removed_at_exit() {
    let _serial = serial::shared();
    let dir = test_dir("private");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let s = script(
        &dir,
        "private.py",
        r#"
import multiprocessing as mp, sys
from multiprocessing import forkserver

def work():
    pass

if __name__ == '__main__':
    p = mp.Process(target=work); p.start(); p.join()
    print('address', forkserver._server[1].hex())
    print('server', forkserver._server[3])
    sys.stdin.readline()
    p = mp.Process(target=work); p.start(); p.join()
    print('exitcode', p.exitcode)
"#,
    );
    let env = [("TMPDIR", tmp.to_str().unwrap())];
    for how in ["exit", "owner killed", "server terminated"] {
        let mut cmd = Command::new(procpy());
        cmd.arg(&s).env("PROCPY_START_METHOD", "forkserver").envs(env).current_dir(&dir);
        let mut owner = Owner::spawn(cmd);
        let hex = owner.expect("address ");
        let server: i32 = owner.expect("server ").parse().unwrap();
        let address: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_ne!(
            address.first(),
            Some(&0),
            "an abstract socket: anyone on the machine can reach it"
        );
        let path = PathBuf::from(String::from_utf8(address).unwrap());
        let private = path.parent().unwrap().to_owned();
        assert_eq!(private.parent(), Some(tmp.as_path()), "not under $TMPDIR: {path:?}");
        let meta = std::fs::metadata(&private).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700, "{private:?}");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
        match how {
            "owner killed" => {
                owner.child.kill().unwrap();
                owner.child.wait().unwrap();
                assert!(
                    wait_gone(&[server], HANG_GUARD).is_empty(),
                    "the server outlived its owner"
                );
            }
            "server terminated" => {
                assert_eq!(kill(Pid::from_raw(server), Signal::SIGTERM), Ok(()));
                assert!(
                    wait_gone(&[server], HANG_GUARD).is_empty(),
                    "the server ignored SIGTERM: waiting in {:?}, its directory {}",
                    std::fs::read_to_string(format!("/proc/{server}/wchan")),
                    if private.exists() {
                        "still there (it never reached its clean-up)"
                    } else {
                        "removed (it hung after)"
                    }
                );
                assert!(!private.exists(), "{private:?} left by a server ended by SIGTERM");
                owner.say("go");
                let (status, stdout, stderr) = owner.finish();
                assert_eq!(status, Some(0), "{stdout:?} {stderr}");
                assert!(stdout.iter().any(|l| l == "exitcode 0"), "{stdout:?} {stderr}");
            }
            _ => {
                owner.say("go");
                let (status, stdout, stderr) = owner.finish();
                assert_eq!(status, Some(0), "{stdout:?} {stderr}");
                // Removed by the owner itself at exit: gone at once.
                assert!(!private.exists(), "{private:?} left after a normal exit");
                assert!(
                    wait_gone(&[server], HANG_GUARD).is_empty(),
                    "the server outlived its owner"
                );
            }
        }
        assert!(!private.exists(), "{private:?} left ({how})");
        // The servers are gone once the owner is: wait for the last one's exit before looking.
        let until = Instant::now() + HANG_GUARD;
        while std::fs::read_dir(&tmp).unwrap().count() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left: Vec<_> =
            std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left in TMPDIR ({how}): {left:?}");
    }
}

/// The lowest descriptor number `pid` has free (the next one it would get).
fn lowest_free_fd(pid: i32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Set the soft descriptor limit of `pid`; returns the old limits.
fn set_fd_limit(pid: i32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit with a null new-limit pointer only reads `pid`'s limits into `old`.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) }, 0);
    let new = libc::rlimit { rlim_cur: soft, rlim_max: old.rlim_max };
    // SAFETY: `new` is a valid rlimit; a null old-limit pointer asks for nothing back.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit");
    old
}

/// Each place the server can run out of descriptors while taking a request, hit exactly
/// (its limit set from outside with prlimit while it idles): no descriptor to accept the
/// connection (it frees a spare one to say so), none for the descriptors that come with the
/// request. Each time the requesting start() raises OSError(EMFILE) with the server's reason;
/// with the limit back, the same server starts children again.
#[test]
fn each_descriptor_shortage_in_the_server_is_reported() {
    let _serial = serial::shared();
    let dir = test_dir("shortage");
    let s = script(
        &dir,
        "shortage.py",
        r#"
import multiprocessing as mp, sys
from multiprocessing import forkserver

def hold(ev):
    ev.wait()

if __name__ == '__main__':
    ev = mp.Event()
    # One child first: then the server has booted and idles in its loop.
    p = mp.Process(target=hold, args=(ev,))
    p.start()
    ev.set()
    p.join()
    ev.clear()
    server = forkserver._server[3]
    print('server', server)
    for step in ('accept', 'descriptors', 'restored'):
        sys.stdin.readline()
        p = mp.Process(target=hold, args=(ev,))
        try:
            p.start()
        except OSError as e:
            print(step, 'refused', e.errno, e)
        else:
            ev.set()
            p.join()
            ev.clear()
            print(step, 'started', p.exitcode)
    print('same server', forkserver._server[3] == server)
"#,
    );
    let mut owner = Owner::start(&s, &[]);
    let server: i32 = owner.expect("server ").parse().unwrap();
    // No free descriptor below the limit: accept fails.
    let free = lowest_free_fd(server);
    let old = set_fd_limit(server, free);
    owner.say("go");
    let accept = owner.expect("accept ");
    // Exactly one free: the connection is accepted, the request's descriptors cannot be.
    // (The server keeps the refused connection as its spare: its table is as it was.)
    set_fd_limit(server, free + 1);
    owner.say("go");
    let descriptors = owner.expect("descriptors ");
    set_fd_limit(server, old.rlim_cur);
    owner.say("go");
    let restored = owner.expect("restored ");
    let (status, stdout, stderr) = owner.finish();
    assert_eq!(status, Some(0), "{stdout:?} {stderr}");
    assert!(
        accept.starts_with("refused 24 ")
            && accept.contains("fork server")
            && accept.contains("file descriptors"),
        "{accept:?}"
    );
    assert!(
        descriptors.starts_with("refused 24 ") && descriptors.contains("descriptors"),
        "{descriptors:?}"
    );
    assert_eq!(restored, "started 0");
    assert!(stdout.iter().any(|l| l == "same server True"), "{stdout:?}");
}
