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

use crate::common::serial;
use crate::common::{
    is_gone, procpy, run_with_deadline, temp_script_flushed, wait_gone, Outcome, Running, METHODS,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(script: &PathBuf, method: &str, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(procpy());
    cmd.arg(script).args(args).env("PROCPY_START_METHOD", method);
    // A guard against hangs only: each run takes a second or two.
    run_with_deadline(cmd, Duration::from_secs(60))
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
    let _serial = serial::shared();
    let server = temp_script_flushed("tcp_server", SERVER);
    let client = temp_script_flushed("tcp_client", CLIENT);
    for method in METHODS {
        let mut srv = Running::start(&server, method, &[], false);
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
    let _serial = serial::shared();
    let script = temp_script_flushed("listener", LISTENER);
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
    let _serial = serial::shared();
    let script = temp_script_flushed("orphan", ORPHAN);
    for method in METHODS {
        let mut parent = Running::start(&script, method, &[], false);
        let pid: i32 = parent.value("server", Duration::from_secs(30)).parse().unwrap();
        parent.reported.push(pid);
        assert_eq!(parent.value("ready", Duration::from_secs(30)), "True");
        assert!(!is_gone(pid), "{method}: the server is not running");
        parent.child.kill().unwrap();
        parent.child.wait().unwrap();
        assert!(
            wait_gone(&[pid], Duration::from_secs(10)).is_empty(),
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
    let _serial = serial::shared();
    let script = temp_script_flushed("ctrl_c", CTRL_C);
    for method in METHODS {
        let mut run = Running::start(&script, method, &[], true);
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
        assert_eq!(killpg(Pid::from_raw(run.child.id() as i32), Signal::SIGINT), Ok(()));
        let (status, lines) = run.finish(Duration::from_secs(30));
        assert_eq!(
            status,
            Some(0),
            "{method}: {lines:?} {}",
            run.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
        );
        assert_eq!(&lines[2..], ["interrupted", "server alive True"], "{method}");
        assert!(
            wait_gone(&[pid], Duration::from_secs(10)).is_empty(),
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
    let _serial = serial::shared();
    let script = temp_script_flushed("returned_proxy", RETURNED_PROXY_IN_CHILD);
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
