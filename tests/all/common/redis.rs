//! Harnesses for the cluster tests: a `redis-server` of the test's own on 127.0.0.1 and a free
//! port ([`RedisServer`]), and a `procpy worker` attached to it ([`Worker`]). Both stop what they
//! started, by pid, when dropped; neither ever talks to a system redis-server (Debian's package
//! may run one on 6379).

use super::{is_gone, procpy, wait_gone};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The shared key the cluster tests give clients and workers (`PROCPY_CLUSTER_KEY`).
pub const KEY: &str = "procpy-test-cluster-key";

/// How long a redis-server gets to answer its first PING (a guard, not a timing assertion).
const START_LIMIT: Duration = Duration::from_secs(20);

/// A fresh empty directory under the system temp dir, named `<prefix>-<pid>-<n>`.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How a test wants its server.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `--appendonly yes` (data survives [`RedisServer::restart`]); otherwise nothing is kept.
    pub appendonly: bool,
    /// `--requirepass`: clients must AUTH (the URL carries `:password@`).
    pub password: Option<String>,
}

/// A redis-server started for one test. Its working directory (`procpy-redis-*`, which the CI
/// leak check looks for) holds its log and, with appendonly, its data.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    opts: RedisOptions,
}

impl RedisServer {
    /// A server that keeps nothing on disk (`--save '' --appendonly no`).
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    pub fn start_with(opts: RedisOptions) -> RedisServer {
        require_redis_server();
        let dir = fresh_dir("procpy-redis");
        let mut server = RedisServer { child: None, port: 0, dir, opts };
        // A port found free may be taken before redis-server binds it (other tests pick ports
        // the same way): try another one then.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match server.launch(port) {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start on any of 5 free ports; last: {last}");
    }

    /// Start redis-server on `port` and wait until it answers; the error says why not.
    fn launch(&mut self, port: u16) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.opts.appendonly { "yes" } else { "no" }])
            .args(["--daemonize", "no", "--logfile", "redis.log", "--dir"])
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.opts.appendonly {
            // Every write reaches the file before the reply: a SIGTERM restart loses nothing.
            cmd.args(["--appendfsync", "always"]);
        }
        if let Some(pass) = &self.opts.password {
            cmd.args(["--requirepass", pass]);
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run redis-server: {e}"))?;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(format!("redis-server exited ({status}) on port {port}: {log}"));
            }
            if ping(port) {
                self.port = port;
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no PING answer on port {port} within {START_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        match &self.opts.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The server's pid (while it runs).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Stop the server (SIGTERM, then SIGKILL after 10 s) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Stop the server and start it again on the same port (with appendonly, its data too).
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        let deadline = Instant::now() + START_LIMIT;
        // The port is briefly unbindable right after the old server closed it on some kernels.
        loop {
            match self.launch(port) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart on port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `redis-cli` against this server; its stdout, trimmed (replies one per line).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.opts.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The keys matching `pattern` (sorted).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> =
            self.cli(&["--scan", "--pattern", pattern]).lines().map(str::to_owned).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Poll (every 50 ms, up to `limit`) until `cond()` holds; whether it did.
    pub fn wait_for(&self, limit: Duration, mut cond: impl FnMut(&RedisServer) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fail the test (not skip it) when redis-server is missing: CI installs it.
fn require_redis_server() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the cluster tests need redis-server on PATH: apt-get install -y redis-server \
         (.ci/run installs it)"
    );
}

/// A port nothing listens on right now: bind port 0, read the port, release it.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Does something answer a RESP `PING` on 127.0.0.1:port? Any reply counts (a server with a
/// password answers `-NOAUTH`, which still says it is up).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && (buf[0] == b'+' || buf[0] == b'-'))
}

/// A process in a process group of its own whose stdout and stderr are read line by line on
/// threads, so a test can wait for a line (with a deadline) while it runs. Dropping it SIGKILLs
/// the group and reaps the process.
pub struct Watched {
    pub child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
    /// The stdout lines read so far.
    pub out_seen: Vec<String>,
    /// The stderr lines read so far.
    pub err_seen: Vec<String>,
    /// What the failure messages call it.
    pub label: String,
}

fn line_reader(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Which of a process's two outputs to look at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stream {
    Out,
    Err,
}

impl Watched {
    /// Start `cmd` (in a new process group, stdin closed) and read its outputs.
    pub fn spawn(mut cmd: Command, label: &str) -> Watched {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {label}: {e}"));
        let out = line_reader(child.stdout.take().unwrap());
        let err = line_reader(child.stderr.take().unwrap());
        Watched { child, out, err, out_seen: Vec::new(), err_seen: Vec::new(), label: label.into() }
    }

    fn pull(&mut self) {
        while let Ok(l) = self.out.try_recv() {
            self.out_seen.push(l);
        }
        while let Ok(l) = self.err.try_recv() {
            self.err_seen.push(l);
        }
    }

    /// Read lines until `n` lines of `which` satisfy `pred` (lines already read count); the
    /// n-th such line. Panics after `limit`, or when the process has exited without them.
    pub fn wait_lines(
        &mut self,
        which: Stream,
        limit: Duration,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            self.pull();
            let seen = if which == Stream::Out { &self.out_seen } else { &self.err_seen };
            let hits: Vec<&String> = seen.iter().filter(|l| pred(l)).collect();
            if hits.len() >= n {
                return hits[n - 1].clone();
            }
            let exited = self.child.try_wait().ok().flatten();
            if Instant::now() > deadline || exited.is_some() {
                // The pipes may still hold the last lines of an exited process.
                std::thread::sleep(Duration::from_millis(100));
                self.pull();
                let seen = if which == Stream::Out { &self.out_seen } else { &self.err_seen };
                let hits: Vec<&String> = seen.iter().filter(|l| pred(l)).collect();
                if hits.len() >= n {
                    return hits[n - 1].clone();
                }
                panic!(
                    "{}: expected {which:?} line not seen ({}){}\nstdout: {:#?}\nstderr: {:#?}",
                    self.label,
                    if exited.is_some() { "it exited" } else { "deadline passed" },
                    exited.map(|s| format!(" ({s})")).unwrap_or_default(),
                    self.out_seen,
                    self.err_seen
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first stdout line satisfying `pred`, waiting up to `limit`.
    pub fn wait_out(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_lines(Stream::Out, limit, 1, pred)
    }

    /// The first stderr line satisfying `pred`, waiting up to `limit`.
    pub fn wait_err(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_lines(Stream::Err, limit, 1, pred)
    }

    /// Wait for the process to exit (SIGKILLed at `limit`: a hang guard); its status (None
    /// when it had to be killed) with all of stdout and stderr.
    pub fn finish(
        &mut self,
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The readers end when every holder of the pipes closed them; a leftover grandchild
        // holding one must not block the test, so read with a bound.
        let until = Instant::now() + Duration::from_secs(5);
        for (rx, seen) in [(&self.out, &mut self.out_seen), (&self.err, &mut self.err_seen)] {
            // Every line up to the end of the stream (a peek with try_recv would lose one).
            loop {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(l) => seen.push(l),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() > until => {
                        break
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
        self.pull();
        (status, self.stdout(), self.stderr())
    }

    /// stdout read so far, one line per line.
    pub fn stdout(&self) -> String {
        self.out_seen.iter().map(|l| format!("{l}\n")).collect()
    }

    /// stderr read so far.
    pub fn stderr(&self) -> String {
        self.err_seen.iter().map(|l| format!("{l}\n")).collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Has the process exited (reaped now if so)?
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A `procpy worker URL --processes N --name NAME` with the test key in `PROCPY_CLUSTER_KEY`,
/// its working directory and TMPDIR an empty directory of its own (no copy of any script).
pub struct Worker {
    pub proc: Watched,
    pub name: String,
    pub dir: PathBuf,
}

impl Worker {
    pub fn start(url: &str, processes: usize, name: &str) -> Worker {
        Worker::start_with(url, processes, name, |_| {})
    }

    /// [`Worker::start`] with a hook that may adjust the command (env, extra arguments).
    pub fn start_with(
        url: &str,
        processes: usize,
        name: &str,
        adjust: impl FnOnce(&mut Command),
    ) -> Worker {
        let dir = fresh_dir(&format!("procpy-worker-{name}"));
        let mut cmd = Command::new(procpy());
        cmd.args(["worker", url, "--processes", &processes.to_string(), "--name", name]);
        Worker::env(&mut cmd, &dir);
        adjust(&mut cmd);
        Worker { proc: Watched::spawn(cmd, &format!("worker {name}")), name: name.into(), dir }
    }

    /// The environment and directory every test worker gets.
    pub fn env(cmd: &mut Command, dir: &Path) {
        cmd.env("PROCPY_CLUSTER_KEY", KEY)
            .env("TMPDIR", dir)
            .env_remove("PROCPY_CLUSTER")
            .env_remove("PROCPY_CLUSTER_KEY_FILE")
            .current_dir(dir);
    }

    /// Run a prepared command (a wrapper such as `unshare` around `procpy worker`) as a worker.
    pub fn spawn(cmd: Command, name: &str, dir: PathBuf) -> Worker {
        Worker { proc: Watched::spawn(cmd, &format!("worker {name}")), name: name.into(), dir }
    }

    /// Wait for `n` stdout lines satisfying `pred` (see [`Watched::wait_lines`]).
    pub fn wait_count(&mut self, limit: Duration, n: usize, pred: impl Fn(&str) -> bool) -> String {
        self.proc.wait_lines(Stream::Out, limit, n, pred)
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Every live descendant of the supervisor (its job worker processes, warm spares and
    /// whatever they started), from /proc/<pid>/task/*/children.
    pub fn descendants(&self) -> Vec<i32> {
        let mut all = Vec::new();
        let mut todo = vec![self.pid()];
        while let Some(p) = todo.pop() {
            for c in children_of(p) {
                all.push(c);
                todo.push(c);
            }
        }
        all
    }

    /// Stop the worker: SIGTERM to its group, SIGKILL to what is left after `grace`; reaped.
    /// Returns its whole stderr.
    pub fn stop(&mut self, grace: Duration) -> String {
        let group = Pid::from_raw(self.pid());
        if !self.proc.exited() {
            let _ = killpg(group, Signal::SIGTERM);
        }
        let (_, _, err) = self.proc.finish(grace);
        let _ = killpg(group, Signal::SIGKILL);
        err
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Descendants that left the group (none should) still go.
        for pid in self.descendants() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The children of `pid`, from every thread's `children` file.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort();
    out.dedup();
    out.retain(|&p| !is_gone(p));
    out
}

/// Wait until `pids` are gone (see `common::wait_gone`); panics naming the ones left.
pub fn assert_gone(pids: &[i32], limit: Duration, what: &str) {
    let left = wait_gone(pids, limit);
    assert!(left.is_empty(), "{what}: still running after {limit:?}: {left:?}");
}

/// Does `path` exist, polling up to `limit`?
pub fn wait_file(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
