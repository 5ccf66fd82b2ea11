//! Managers and Listener/Client across separately started procpy processes, which the
//! differential scripts cannot cover: a manager served with `get_server().serve_forever()`
//! on a TCP port with an authkey, reached by other procpy processes through
//! `BaseManager(address=..., authkey=...).connect()`; a wrong key gets AuthenticationError and
//! nothing else (CPython's server sends the refused peer its traceback); Listener/Client over
//! AF_UNIX and AF_INET with and without a key; a manager server that does not outlive a
//! SIGKILLed parent (CPython's stays behind); Ctrl-C interrupts a proxy call blocked in the
//! parent, and the server, which ignores it, is shut down at exit; a child iterates a
//! DictProxy (CPython cannot build the returned Iterator proxy there). Every manager test runs
//! under fork, spawn and forkserver (`PROCPY_START_METHOD`).
//!
//! Tests wait for conditions (lines read, pids gone) with deadlines; none sleeps and hopes.

mod common;

use common::{procpy, run_with_deadline, Outcome};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn killpg(pgrp: i32, sig: i32) -> i32;
}
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const ESRCH: i32 = 3;

fn temp_script(name: &str, code: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procpy-mgrtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join(format!("{name}.py"));
    let prelude =
        "import builtins as _b, functools as _f\nprint = _f.partial(_b.print, flush=True)\n";
    std::fs::write(&script, format!("{prelude}{code}")).unwrap();
    script
}

fn run(script: &PathBuf, method: &str, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(procpy());
    cmd.arg(script).args(args).env("PROCPY_START_METHOD", method);
    // A guard against hangs only: each run takes a second or two.
    run_with_deadline(cmd, Duration::from_secs(60))
}

fn is_gone(pid: i32) -> bool {
    if unsafe { kill(pid, 0) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(ESRCH)
    {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map_or(false, |(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while !is_gone(pid) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A script running in the background whose stdout arrives line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Receiver<String>,
    /// Processes to SIGKILL on drop if still there (a failed test leaves nothing behind).
    reported: Vec<i32>,
}

impl Running {
    fn start(script: &PathBuf, method: &str, args: &[&str]) -> Running {
        Running::start_in_group(script, method, args, false)
    }

    /// `own_group`: in a process group of its own, as a terminal's foreground job is.
    fn start_in_group(script: &PathBuf, method: &str, args: &[&str], own_group: bool) -> Running {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(procpy());
        cmd.arg(script)
            .args(args)
            .env("PROCPY_START_METHOD", method)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("start procpy");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = channel();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            let _ = etx.send(String::from_utf8_lossy(&s).into_owned());
        });
        Running { child, lines, seen: Vec::new(), stderr, reported: Vec::new() }
    }

    /// The value after `tag ` on the next stdout line that starts with it.
    fn value(&mut self, tag: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.seen.iter().find_map(|l| l.strip_prefix(tag)?.strip_prefix(' ')) {
                return v.trim().to_owned();
            }
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {tag:?} line within {limit:?}; stdout: {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let err = self.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                    panic!("stdout closed before {tag:?}; stdout: {:?}\nstderr: {err}", self.seen)
                }
            }
        }
    }

    /// Wait for the script to end (None at the deadline); then the rest of its stdout.
    fn finish(&mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st.code();
            }
            if start.elapsed() > limit {
                return (None, self.seen.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, self.seen.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &pid in &self.reported {
            if !is_gone(pid) {
                unsafe { kill(pid, SIGKILL) };
            }
        }
    }
}

// ------------------------------------------------------------------------------------------

/// Serves one dict and one list on 127.0.0.1 (a free port) with a key, until told to stop.
const SERVER: &str = r#"
import sys
from multiprocessing.managers import BaseManager, DictProxy, ListProxy

shared = {}
log = []

class QueueManager(BaseManager):
    pass

QueueManager.register('get_dict', callable=lambda: shared, proxytype=DictProxy)
QueueManager.register('get_log', callable=lambda: log, proxytype=ListProxy)

if __name__ == '__main__':
    m = QueueManager(address=('127.0.0.1', 0), authkey=b'right key')
    server = m.get_server()
    print('port', server.address[1])
    server.serve_forever()
"#;

/// A separately started client: `set K V`, `get K`, `wrong` (a bad key), `raw` (speaks the
/// handshake by hand with a bad digest and reads what follows), `stop`.
const CLIENT: &str = r#"
import socket, sys
import multiprocessing
from multiprocessing import connection
from multiprocessing.managers import BaseManager, DictProxy, ListProxy, dispatch

class QueueManager(BaseManager):
    pass

QueueManager.register('get_dict', proxytype=DictProxy)
QueueManager.register('get_log', proxytype=ListProxy)

if __name__ == '__main__':
    port, what = int(sys.argv[1]), sys.argv[2]
    address = ('127.0.0.1', port)
    if what == 'wrong':
        m = QueueManager(address=address, authkey=b'wrong key')
        try:
            m.connect()
        except multiprocessing.AuthenticationError as e:
            print('connect:', type(e).__name__, e)
        try:
            m._state.value = 1   # as if connected: get_dict() opens its own connection
            m.get_dict()
        except multiprocessing.AuthenticationError as e:
            print('create:', type(e).__name__, e)
    elif what == 'raw':
        s = socket.create_connection(address)
        c = connection.Connection(s.detach())
        challenge = c.recv_bytes()
        print('challenge prefix:', challenge[:11])
        c.send_bytes(b'not the digest')
        print('answer:', c.recv_bytes())
        try:
            print('then:', c.recv_bytes())
        except EOFError:
            print('then: EOF')
    elif what == 'stop':
        c = connection.Client(address, authkey=b'right key')
        print('shutdown:', dispatch(c, None, 'shutdown'))
    else:
        m = QueueManager(address=address, authkey=b'right key')
        m.connect()
        d, log = m.get_dict(), m.get_log()
        if what == 'set':
            d[sys.argv[3]] = sys.argv[4]
            log.append(sys.argv[3])
            print('set', sys.argv[3])
        else:
            print('got', d.get(sys.argv[3]), 'log', list(log), 'objects', m._number_of_objects())
"#;

#[test]
fn manager_on_a_tcp_port_reached_by_other_processes() {
    let server = temp_script("tcp_server", SERVER);
    let client = temp_script("tcp_client", CLIENT);
    for method in METHODS {
        let mut srv = Running::start(&server, method, &[]);
        let port = srv.value("port", Duration::from_secs(30));
        let client_run = |args: &[&str]| {
            let mut all = vec![port.as_str()];
            all.extend_from_slice(args);
            let out = run(&client, method, &all);
            assert_eq!(out.status, Some(0), "{method} client {args:?}: {out:?}");
            out.stdout
        };
        assert_eq!(client_run(&["set", "colour", "blue"]), "set colour\n", "{method}");
        assert_eq!(
            client_run(&["wrong"]),
            "connect: AuthenticationError digest sent was rejected\ncreate: AuthenticationError digest sent was rejected\n",
            "{method}"
        );
        // Refused: the failure message, then the connection closes with nothing else on it.
        assert_eq!(
            client_run(&["raw"]),
            "challenge prefix: b'#CHALLENGE#'\nanswer: b'#FAILURE#'\nthen: EOF\n",
            "{method}"
        );
        // The refused clients changed nothing; the first client's objects were released.
        assert_eq!(
            client_run(&["get", "colour"]),
            "got blue log ['colour'] objects 2\n",
            "{method}"
        );
        assert_eq!(client_run(&["stop"]), "shutdown: None\n", "{method}");
        let (status, _) = srv.finish(Duration::from_secs(20));
        assert_eq!(status, Some(0), "{method}: the server did not exit after shutdown");
    }
}

/// Listener/Client over a Unix socket and TCP, with and without a key, peers in threads.
const LISTENER: &str = r#"
import os, socket, sys, threading
import multiprocessing
from multiprocessing.connection import Listener, Client, Connection

def client(address, family, authkey, out):
    try:
        with Client(address, family=family, authkey=authkey) as c:
            c.send(['hello', 1, {'x': (2, 3)}])
            out.append(('client got', c.recv()))
    except Exception as e:
        out.append(('client', type(e).__name__, str(e)))

def raw_client(address, family, out):
    # Speaks the handshake by hand with a wrong digest: the listener must answer FAILURE and
    # close, sending nothing else.
    s = socket.socket(getattr(socket, family))
    s.connect(address)
    c = Connection(s.detach())
    c.recv_bytes()
    c.send_bytes(b'x' * 16)
    out.append(('raw answer', c.recv_bytes()))
    try:
        c.recv_bytes()
        out.append(('raw', 'got more'))
    except EOFError:
        out.append(('raw', 'EOF'))

def serve(listener, out):
    try:
        c = listener.accept()
    except Exception as e:
        out.append(('accept', type(e).__name__, str(e)))
        return
    with c:
        msg = c.recv()
        c.send(('echo', msg))
    out.append(('accepted', msg))

def round_trip(family, authkey, client_key):
    with Listener(family=family, authkey=authkey) as l:
        address = l.address
        out = []
        t = threading.Thread(target=client, args=(address, family, client_key, out))
        t.start()
        serve(l, out)
        t.join()
        if family == 'AF_UNIX':
            out.append(('unix path exists while open', os.path.exists(address)))
    if family == 'AF_UNIX':
        out.append(('unix path removed at close', not os.path.exists(address)))
    return sorted(out, key=repr)

if __name__ == '__main__':
    for family in ('AF_UNIX', 'AF_INET'):
        print(family, 'no key', round_trip(family, None, None))
        print(family, 'key', round_trip(family, b'k1', b'k1'))
        print(family, 'wrong key', round_trip(family, b'k1', b'k2'))
        with Listener(family=family, authkey=b'k1') as l:
            out = []
            t = threading.Thread(target=raw_client, args=(l.address, family, out))
            t.start()
            serve(l, out)
            t.join()
            # the listener still accepts after a refusal
            t = threading.Thread(target=client, args=(l.address, family, b'k1', out))
            t.start()
            serve(l, out)
            t.join()
            print(family, 'raw', sorted(out, key=repr))
    with Listener(('127.0.0.1', 0)) as l:
        try:
            Client(l.address, authkey='str')
        except TypeError as e:
            print('client key:', e)
    try:
        Listener(('127.0.0.1', 0), authkey='str')
    except TypeError as e:
        print('listener key:', e)
"#;

#[test]
fn listener_and_client_over_unix_and_tcp() {
    let script = temp_script("listener", LISTENER);
    let out = run(&script, "forkserver", &[]);
    assert_eq!(out.status, Some(0), "{out:?}");
    let ok = "[('accepted', ['hello', 1, {'x': (2, 3)}]), ('client got', ('echo', ['hello', 1, {'x': (2, 3)}]))";
    let mut want = String::new();
    for family in ["AF_UNIX", "AF_INET"] {
        let unix = if family == "AF_UNIX" {
            ", ('unix path exists while open', True), ('unix path removed at close', True)"
        } else {
            ""
        };
        want.push_str(&format!("{family} no key {ok}{unix}]\n"));
        want.push_str(&format!("{family} key {ok}{unix}]\n"));
        want.push_str(&format!(
            "{family} wrong key [('accept', 'AuthenticationError', 'digest received was wrong'), ('client', 'AuthenticationError', 'digest sent was rejected'){unix}]\n"
        ));
        want.push_str(&format!(
            "{family} raw [('accept', 'AuthenticationError', 'digest received was wrong'), ('accepted', ['hello', 1, {{'x': (2, 3)}}]), ('client got', ('echo', ['hello', 1, {{'x': (2, 3)}}])), ('raw answer', b'#FAILURE#'), ('raw', 'EOF')]\n"
        ));
    }
    want.push_str("client key: authkey should be a byte string\nlistener key: authkey should be a byte string\n");
    assert_eq!(out.stdout, want);
}

/// Prints the manager server's pid, then waits to be killed.
const ORPHAN: &str = r#"
import multiprocessing, sys, time
if __name__ == '__main__':
    m = multiprocessing.Manager()
    d = m.dict()
    d['alive'] = True
    print('server', m._process.pid)
    print('ready', d['alive'])
    time.sleep(120)
"#;

#[test]
fn manager_server_dies_with_a_sigkilled_parent() {
    let script = temp_script("orphan", ORPHAN);
    for method in METHODS {
        let mut parent = Running::start(&script, method, &[]);
        let pid: i32 = parent.value("server", Duration::from_secs(30)).parse().unwrap();
        parent.reported.push(pid);
        assert_eq!(parent.value("ready", Duration::from_secs(30)), "True");
        assert!(!is_gone(pid), "{method}: the server is not running");
        parent.child.kill().unwrap();
        parent.child.wait().unwrap();
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "{method}: manager server {pid} outlived its parent"
        );
    }
}

/// Blocks in a manager call until Ctrl-C.
const CTRL_C: &str = r#"
import multiprocessing
if __name__ == '__main__':
    m = multiprocessing.Manager()
    q = m.Queue()
    print('server', m._process.pid)
    try:
        print('waiting', True)
        q.get()
    except KeyboardInterrupt:
        print('interrupted')
    print('server alive', m._process.is_alive())
"#;

#[test]
fn ctrl_c_interrupts_a_blocked_proxy_call_and_spares_the_server() {
    let script = temp_script("ctrl_c", CTRL_C);
    for method in METHODS {
        let mut run = Running::start_in_group(&script, method, &[], true);
        let pid: i32 = run.value("server", Duration::from_secs(30)).parse().unwrap();
        run.reported.push(pid);
        run.value("waiting", Duration::from_secs(30));
        // Then its main thread goes to sleep, in the call (nothing else can block it).
        let main = run.child.id();
        let start = Instant::now();
        while !std::fs::read_to_string(format!("/proc/{main}/task/{main}/stat")).is_ok_and(|st| {
            st.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{method}: the parent never blocked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The whole group gets it, as from a terminal: the server ignores it (as CPython's);
        // the parent's blocked call raises KeyboardInterrupt, then its exit shuts the server down.
        assert_eq!(unsafe { killpg(run.child.id() as i32, SIGINT) }, 0);
        let (status, lines) = run.finish(Duration::from_secs(30));
        assert_eq!(
            status,
            Some(0),
            "{method}: {lines:?} {}",
            run.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
        );
        assert_eq!(&lines[2..], ["interrupted", "server alive True"], "{method}");
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "{method}: the server outlived the parent's exit"
        );
    }
}

/// A proxy whose manager object stayed in the parent still builds the proxies its calls
/// return (CPython's child fails: 'NoneType' object has no attribute '_registry').
const RETURNED_PROXY_IN_CHILD: &str = r#"
import multiprocessing
def child(d, q):
    print('arg', sorted(d), type(iter(d)).__name__)
    d2 = q.get()
    print('queue', sorted(d2))
if __name__ == '__main__':
    with multiprocessing.Manager() as m:
        d = m.dict(a=1, b=2)
        q = multiprocessing.Queue()
        p = multiprocessing.Process(target=child, args=(d, q))
        p.start()
        q.put(d)
        p.join()
        print('exit', p.exitcode)
"#;

#[test]
fn a_child_iterates_a_dict_proxy() {
    let script = temp_script("returned_proxy", RETURNED_PROXY_IN_CHILD);
    for method in METHODS {
        let out = run(&script, method, &[]);
        assert_eq!(out.status, Some(0), "{method}: {out:?}");
        assert_eq!(
            out.stdout, "arg ['a', 'b'] IteratorProxy\nqueue ['a', 'b']\nexit 0\n",
            "{method}: {}",
            out.stderr
        );
    }
}
