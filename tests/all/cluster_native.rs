//! `_procpy_cluster`, the native half of the pool on a Redis cluster (issue 14): the Redis
//! client's reply mapping and errors, the payload MAC, and the settings the command line and
//! the environment give. Each test starts its own `redis-server` on 127.0.0.1 and a free port
//! and stops it by pid.

use crate::common::{procpy, run_with_deadline, serial, temp_script, Outcome};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A guard against hangs, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(60);

/// A `redis-server` of this test's own, with no persistence; killed (by pid) on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        // A free port can be taken between the probe and redis-server's bind: then the server
        // exits at once, and another port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = match Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server is not installed; the cluster tests need it: \
                     apt-get install -y redis-server"
                ),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            let mut server = RedisServer { child, port };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Wait until the server answers PING, or has exited (its port was taken).
    fn wait_ready(&mut self) -> bool {
        let until = Instant::now() + LIMIT;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(LIMIT));
                let mut reply = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `code` under procpy with `args` before the script and `env` set.
fn run(name: &str, code: &str, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    run_with(name, code, args, &[], env)
}

/// Run `code` under procpy with the Redis URL `url` as its one argument.
fn run_at(name: &str, code: &str, url: &str) -> Outcome {
    run_with(name, code, &[], &[url], &[])
}

fn run_with(
    name: &str,
    code: &str,
    args: &[&str],
    script_args: &[&str],
    env: &[(&str, &str)],
) -> Outcome {
    let script = temp_script(name, code);
    let mut cmd = Command::new(procpy());
    cmd.args(args).arg(&script).args(script_args).current_dir(script.parent().unwrap());
    for var in ["PROCPY_CLUSTER", "PROCPY_CLUSTER_KEY", "PROCPY_CLUSTER_KEY_FILE"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    run_with_deadline(cmd, LIMIT)
}

fn assert_out(out: &Outcome, expected: &str) {
    assert!(!out.timed_out, "timed out; stderr: {}", out.stderr);
    assert_eq!(out.stdout, expected, "stderr: {}", out.stderr);
    assert_eq!(out.status, Some(0), "stderr: {}", out.stderr);
}

#[test]
fn replies_map_onto_python_values() {
    let _g = serial::shared();
    let server = RedisServer::start();
    let code = r#"
import sys, _procpy_cluster as c
r = c.Redis(sys.argv[1])
print(r.url)
print(repr(r.call("SET", "k", b"v\x00\xff")), repr(r.call("GET", "k")), r.call("GET", "absent"))
print(r.call("INCRBY", "n", 41), r.call("INCRBY", b"n", 1), r.call("INCRBYFLOAT", "f", 1.5))
print(r.call("HSET", "h", "a", 1, "b", "2"), sorted(r.call("HGETALL", "h")))
print(r.call("SADD", "s", "x"), r.call("SMEMBERS", "s"), r.call("LRANGE", "absent", 0, -1))
r.call("XADD", "st", "1-1", "t", 7)
print(r.call("XRANGE", "st", "-", "+"))
print(r.call("PING"), r.call("EXISTS", "k", "absent"))
print(r.pipeline([("SET", "p", 1), ["INCR", "p"], ("GET", "p")]))
print(r.pipeline([("SET", "t", 1), ("INCR", "t")], transaction=True))
print(r.pipeline([]))
for bad in [(), ("SET", "k", None), ("SET", "k", True)]:
    try:
        r.call(*bad)
    except (TypeError, ValueError) as e:
        print(type(e).__name__)
r.close()
try:
    r.call("PING")
except ValueError as e:
    print("closed:", "closed" in str(e))
# RESP3 has maps, sets, doubles, booleans and a null of its own.
r3 = c.Redis(sys.argv[1] + "?protocol=resp3")
r3.call("ZADD", "z", 2.5, "m")
print(r3.call("HGETALL", "h"), r3.call("SMEMBERS", "s"), r3.call("ZSCORE", "z", "m"))
t, f = (r3.call("EVAL", "redis.setresp(3); return %s" % b, 0) for b in ("true", "false"))
print(t, f, r3.call("GET", "absent"), r3.call("EVAL", "redis.setresp(3); return {double=0.25}", 0))
print(r3.call("EVAL", "return {1, 'x', {2}}", 0))
"#;
    let out = run_at("cluster_native_replies", code, &server.url());
    let url = server.url();
    assert_out(
        &out,
        &format!(
            "{url}\n\
             'OK' b'v\\x00\\xff' None\n\
             41 42 b'1.5'\n\
             2 [b'1', b'2', b'a', b'b']\n\
             1 [b'x'] []\n\
             [[b'1-1', [b't', b'7']]]\n\
             PONG 1\n\
             ['OK', 2, b'2']\n\
             ['OK', 2]\n\
             []\n\
             ValueError\n\
             TypeError\n\
             TypeError\n\
             closed: True\n\
             {{b'a': b'1', b'b': b'2'}} [b'x'] 2.5\n\
             True False None 0.25\n\
             [1, b'x', [2]]\n"
        ),
    );
}

#[test]
fn error_replies_raise_redis_error_or_sit_in_the_pipeline() {
    let _g = serial::shared();
    let server = RedisServer::start();
    let code = r#"
import sys, _procpy_cluster as c
r = c.Redis(sys.argv[1])
print(issubclass(c.RedisError, Exception), c.RedisError.__module__)
print(r.call("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"))
try:
    r.call("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
except c.RedisError as e:
    print("raised:", e)
res = r.pipeline([("SET", "a", 1), ("HSET", "a", "f", "v"), ("GET", "a")])
print(res[0], type(res[1]).__name__, str(res[1]).split()[0], res[2])
try:
    r.pipeline([("SET", "b", 1), ("NO-SUCH-COMMAND",)], transaction=True)
except c.RedisError as e:
    print("aborted:", str(e).split()[0])
print(r.call("GET", "b"))
# Redis AUTH: an ACL user in the URL; a wrong password is a RedisError (retrying cannot help),
# with the password masked.
r.call("ACL", "SETUSER", "alice", "on", ">pw", "~*", "+@all")
url = sys.argv[1].replace("redis://", "redis://alice:pw@")
print(c.Redis(url).call("ACL", "WHOAMI"))
try:
    c.Redis(url.replace(":pw@", ":wrong@"))
except c.RedisError as e:
    print("auth:", "alice:***@" in str(e), "wrong" in str(e))
# A user who may not MULTI: the transaction is refused with Redis's message, and the
# connection stays usable (redis 1.8.2's own transaction path panicked here).
r.call("ACL", "SETUSER", "nomulti", "on", ">pw", "~*", "+@all", "-multi")
nm = c.Redis(sys.argv[1].replace("redis://", "redis://nomulti:pw@"))
try:
    nm.pipeline([("SET", "m", 1)], transaction=True)
except c.RedisError as e:
    print("multi refused:", "NOPERM" in str(e))
print(nm.call("PING"))
try:
    nm.pipeline(["PING"])
except TypeError as e:
    print("typeerror:", e)
"#;
    let out = run_at("cluster_native_errors", code, &server.url());
    assert_out(
        &out,
        "True _procpy_cluster\n\
         OK\n\
         raised: BUSYGROUP Consumer Group name already exists\n\
         OK RedisError WRONGTYPE b'1'\n\
         aborted: EXECABORT\n\
         None\n\
         b'alice'\n\
         auth: True False\n\
         multi refused: True\n\
         PONG\n\
         typeerror: each command must be a list of arguments, e.g. [['PING']]\n",
    );
}

#[test]
fn io_failures_raise_connection_and_timeout_errors_then_reconnect() {
    let _g = serial::shared();
    let server = RedisServer::start();
    let code = r#"
import os, sys, socket, _procpy_cluster as c
url = sys.argv[1]
# A port bound but not listening refuses connections, always.
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
try:
    c.Redis("redis://me:hunter2@127.0.0.1:%d/0" % port)
except ConnectionError as e:
    m = str(e)
    print("refused:", ("redis://me:***@127.0.0.1:%d/0" % port) in m, "hunter2" in m,
          "redis-server" in m)
try:
    c.Redis("rediss://127.0.0.1:%d/0" % port)
except ValueError as e:
    print("tls:", "TLS" in str(e))
r = c.Redis(url, timeout=0.2)
try:
    r.call("BLPOP", "empty", 0)
except TimeoutError as e:
    print("timeout:", url in str(e))
print(r.call("PING"))
# The server drops this connection: the next call fails, the one after reconnects.
r.call("CLIENT", "SETNAME", "victim")
killer = c.Redis(url)
print(killer.call("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal") >= 1)
try:
    r.call("PING")
except ConnectionError as e:
    print("dropped:", url in str(e))
print(r.call("PING"))
# A forked child connects its own: the parent's connection stays in step.
r.call("SET", "who", "parent")
mine = r.call("CLIENT", "ID")
pid = os.fork()
if pid == 0:
    r.call("SET", "who", "child")
    os._exit(0 if r.call("CLIENT", "ID") != mine else 1)
print("child:", os.waitpid(pid, 0)[1], r.call("GET", "who"), r.call("CLIENT", "ID") == mine)
"#;
    let out = run_at("cluster_native_io", code, &server.url());
    assert_out(
        &out,
        "refused: True False True\n\
         tls: True\n\
         timeout: True\n\
         PONG\n\
         True\n\
         dropped: True\n\
         PONG\n\
         child: 0 b'child' True\n",
    );
}

#[test]
fn a_blocked_call_lets_other_threads_run() {
    let _g = serial::shared();
    let server = RedisServer::start();
    // The blocked thread waits with no timeout until the main thread, running Python beside
    // it, pushes what it waits for.
    let code = r#"
import sys, threading, _procpy_cluster as c
url = sys.argv[1]
got = []
started = threading.Event()
def wait():
    r = c.Redis(url)
    started.set()
    got.append(r.call("BLPOP", "q", 0))
t = threading.Thread(target=wait)
t.start()
started.wait()
w = c.Redis(url)
# Push only once the other connection is blocked in BLPOP (CLIENT LIST shows cmd=blpop).
while "cmd=blpop" not in w.call("CLIENT", "LIST").decode():
    pass
print(w.call("RPUSH", "q", "item"))
t.join(60)
print(got)
"#;
    let out = run_at("cluster_native_threads", code, &server.url());
    assert_out(&out, "1\n[[b'q', b'item']]\n");
}

#[test]
fn sign_and_verify_frame_their_parts() {
    let _g = serial::shared();
    let code = r#"
import hmac, hashlib, struct, _procpy_cluster as c
k = b"a-key-of-16-bytes"
m = c.sign(k, b"task", b"J", b"payload")
# The documented framing: each part prefixed by its u64 little-endian length.
ref = hmac.new(k, b"".join(struct.pack("<Q", len(p)) + p for p in (b"task", b"J", b"payload")),
               hashlib.sha256).digest()
print(len(m), m == ref)
print(c.verify(k, m, b"task", b"J", b"payload"))
flipped = bytes([m[0] ^ 1]) + m[1:]
print(c.verify(k, flipped, b"task", b"J", b"payload"))
print(c.verify(k, m, b"task", b"J", b"payloae"), c.verify(k, m, b"taskJ", b"", b"payload"))
print(c.verify(b"another-key-16-bytes", m, b"task", b"J", b"payload"), c.verify(k, m[:-1], b"task", b"J", b"payload"))
print(c.sign(k) == hmac.new(k, b"", hashlib.sha256).digest())
print(isinstance(c.hostname(), str) and len(c.hostname()) > 0)
# A short key protects nothing: refused on both sides, naming the fix.
for f in (lambda: c.sign(b"short", b"x"), lambda: c.verify(b"", m, b"x")):
    try:
        f()
    except ValueError as e:
        print("refused", "at least 16" in str(e) and "urandom" in str(e))
"#;
    let out = run("cluster_native_mac", code, &[], &[]);
    assert_out(
        &out,
        "32 True\nTrue\nFalse\nFalse False\nFalse False\nTrue\nTrue\nrefused True\nrefused True\n",
    );
}

#[test]
fn settings_come_from_the_switches_or_the_environment() {
    let _g = serial::shared();
    let code = r#"
import sys, multiprocessing as mp, _procpy_cluster as c
def child(q):
    q.put([c.settings()])
if __name__ == "__main__":
    print(c.settings())
    # A spawned child (an exec'd procpy) sees the same. (A Process, not a Pool: with
    # --cluster every process pool would run on the cluster.)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    print(q.get())
    p.join()
"#;
    let dir = temp_script("cluster_native_key", "").parent().unwrap().to_owned();
    let key = dir.join("key");
    std::fs::write(&key, b"s3cret-long-enough\n").unwrap();
    let key = key.to_str().unwrap();

    let out = run("cluster_native_settings", code, &[], &[]);
    assert_out(&out, "{'url': None, 'key': None}\n[{'url': None, 'key': None}]\n");

    let env = [("PROCPY_CLUSTER", "redis://e:1/0"), ("PROCPY_CLUSTER_KEY", "k1-long-enough-key")];
    let out = run("cluster_native_settings", code, &[], &env);
    let line = "{'url': 'redis://e:1/0', 'key': b'k1-long-enough-key'}";
    assert_out(&out, &format!("{line}\n[{line}]\n"));

    // The switches win over the environment; the key file loses one trailing newline.
    let out = run(
        "cluster_native_settings",
        code,
        &["--cluster", "redis://s:2/1", "--authkey-file", key],
        &env,
    );
    let line = "{'url': 'redis://s:2/1', 'key': b's3cret-long-enough'}";
    assert_out(&out, &format!("{line}\n[{line}]\n"));

    let out = run("cluster_native_settings", code, &[], &[("PROCPY_CLUSTER_KEY_FILE", key)]);
    let line = "{'url': None, 'key': b's3cret-long-enough'}";
    assert_out(&out, &format!("{line}\n[{line}]\n"));

    // A key file that is not there: settings() raises OSError naming it; the switch fails
    // at once.
    let missing = dir.join("missing");
    let missing = missing.to_str().unwrap();
    let probe = "import _procpy_cluster as c\ntry:\n    c.settings()\nexcept OSError as e:\n    print('OSError', repr(e.args[0]).count('missing'))\n";
    let out = run("cluster_native_nokey", probe, &[], &[("PROCPY_CLUSTER_KEY_FILE", missing)]);
    assert_out(&out, "OSError 1\n");
    let out = run("cluster_native_nokey", probe, &["--authkey-file", missing], &[]);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert!(out.stderr.contains("--authkey-file") && out.stderr.contains(missing), "{out:?}");
}
