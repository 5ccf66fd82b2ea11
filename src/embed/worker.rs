//! One worker process as the host sees it: a child that re-entered the worker program, and the
//! socket to it.

use super::error::{Error, ExitStatus, Result};
use super::value::{from_value, to_value};
use procpy_interpreter::embed::{self, Frame, PyError, Setup};
use procpy_interpreter::wire::{self, Value};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A host function, type-erased: argument tuple in, result or error message out.
pub(crate) type HostFn = Arc<dyn Fn(&[Value]) -> std::result::Result<Value, String> + Send + Sync>;

/// Registry of live worker pids, so the engine can kill every one (busy ones included) on drop.
pub(crate) type Pids = Arc<Mutex<HashSet<u32>>>;

/// Where a worker's stdout or stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The host's own stream (the default).
    #[default]
    Inherit,
    /// Discarded.
    Null,
    /// Captured: [`crate::Engine::run_script`] returns it in [`crate::ScriptOutput`]. Pool
    /// workers have no one call to attribute output to, so for them this discards it.
    Capture,
}

impl Output {
    pub(crate) fn stdio(self, script: bool) -> Stdio {
        match self {
            Output::Inherit => Stdio::inherit(),
            Output::Capture if script => Stdio::piped(),
            Output::Null | Output::Capture => Stdio::null(),
        }
    }
}

/// What every worker of an engine is started with.
pub(crate) struct Spawner {
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
    pub setup: Setup,
    pub stdout: Output,
    pub stderr: Output,
    pub pids: Pids,
}

/// Writes with `MSG_NOSIGNAL`: a write to a worker that just died must be an error for this
/// call, not a SIGPIPE for the host (whose disposition the host may have reset).
struct NoSigPipe<'a>(&'a UnixStream);

impl io::Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send(stream: &UnixStream, frame: &Frame) -> io::Result<()> {
    embed::write_frame(&mut NoSigPipe(stream), frame)
}

pub(crate) struct Worker {
    pub pid: u32,
    stream: UnixStream,
    child: Option<Child>,
    pids: Pids,
}

/// Why a call did not produce a reply.
pub(crate) enum CallFailure {
    Timeout,
    Lost,
}

/// How long a new worker may take to boot and answer `Setup`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Spawner {
    /// Start the worker program with the socket as an inherited descriptor; in `script` mode
    /// return without waiting for `Ready` (the worker runs the script and exits).
    pub fn spawn(&self, setup: &Setup, script: bool) -> Result<Worker> {
        let (host, child_end) = procpy_interpreter::ipc::socketpair(libc::SOCK_STREAM).map_err(Error::Spawn)?;
        let fd = child_end.as_raw_fd();
        let mut cmd = Command::new(&self.program);
        cmd.env(embed::WORKER_FD_ENV, fd.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(self.stdout.stdio(script))
            .stderr(self.stderr.stdio(script));
        // Only this child inherits its end: the socket is close-on-exec everywhere else (other
        // threads of the host may be spawning at the same time).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| Error::Spawn(io::Error::new(e.kind(), format!("{}: {e}", self.program.display()))))?;
        drop(child_end);
        let pid = child.id();
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
        let mut w = Worker { pid, stream: UnixStream::from(host), child: Some(child), pids: self.pids.clone() };
        if send(&w.stream, &Frame::Setup(setup.clone())).is_err() && !script {
            return Err(w.not_ready());
        }
        if script {
            return Ok(w);
        }
        let _ = w.stream.set_read_timeout(Some(BOOT_TIMEOUT));
        let ready = embed::read_frame(&mut w.stream);
        let _ = w.stream.set_read_timeout(None);
        match ready {
            Ok(Frame::Ready(Ok(_))) => Ok(w),
            Ok(Frame::Ready(Err(e))) => Err(Error::from(e)),
            _ => Err(w.not_ready()),
        }
    }
}

impl Worker {
    fn not_ready(&mut self) -> Error {
        let status = self.reap(Duration::from_secs(2));
        Error::Spawn(io::Error::other(format!(
            "worker {} exited before it was ready ({status}); does the worker program call procpy::init() first thing in main()?",
            self.pid
        )))
    }

    /// Run one call; host functions the Python code calls meanwhile are served here.
    pub fn call(&mut self, id: u64, target: &str, args: Vec<u8>, deadline: Option<Instant>, host_fns: &HashMap<String, HostFn>) -> std::result::Result<std::result::Result<Vec<u8>, PyError>, CallFailure> {
        let frame = Frame::Call { id, target: target.to_owned(), args };
        send(&self.stream, &frame).map_err(|_| CallFailure::Lost)?;
        loop {
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(CallFailure::Timeout),
                },
            };
            // poll for the deadline instead of a socket timeout: no syscall when there is none.
            if let Some(left) = left {
                match procpy_interpreter::ipc::poll(&[(self.stream.as_raw_fd(), libc::POLLIN)], Some(left)) {
                    Ok(r) if r[0] == 0 => return Err(CallFailure::Timeout),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(CallFailure::Lost),
                }
            }
            match embed::read_frame(&mut self.stream) {
                Ok(Frame::Reply { id: got, outcome }) if got == id => return Ok(outcome),
                Ok(Frame::HostCall { id: hid, name, args }) => {
                    let outcome = run_host_fn(host_fns, &name, &args);
                    let reply = Frame::HostReply { id: hid, outcome };
                    send(&self.stream, &reply).map_err(|_| CallFailure::Lost)?;
                }
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(CallFailure::Timeout),
                Err(_) => return Err(CallFailure::Lost),
            }
        }
    }

    /// Wait up to `grace` for the worker to end by itself, then kill it; reap and report how it ended.
    pub fn reap(&mut self, grace: Duration) -> ExitStatus {
        let Some(mut child) = self.child.take() else { return ExitStatus::Unknown };
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if start.elapsed() < grace => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Err(_) => break None,
            }
        };
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.pid);
        use std::os::unix::process::ExitStatusExt;
        status.map(|s| ExitStatus::from_wait(s.into_raw())).unwrap_or(ExitStatus::Unknown)
    }

    /// Kill now and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.reap(Duration::from_secs(5))
    }

    /// The captured stdout/stderr pipes of a script worker.
    pub fn take_pipes(&mut self) -> (Option<std::process::ChildStdout>, Option<std::process::ChildStderr>) {
        match self.child.as_mut() {
            Some(c) => (c.stdout.take(), c.stderr.take()),
            None => (None, None),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

fn run_host_fn(host_fns: &HashMap<String, HostFn>, name: &str, args: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let f = host_fns.get(name).ok_or_else(|| format!("no host function named {name:?}"))?;
    let args = wire::from_bytes(args).map_err(|e| e.to_string())?;
    let items = match &args {
        Value::Tuple(items) => items.as_slice(),
        other => std::slice::from_ref(other),
    };
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(items))).map_err(|_| format!("host function {name} panicked"))??;
    Ok(wire::to_bytes(&out))
}

/// Wrap a typed closure as a [`HostFn`]: one Python argument reads as `A` itself, several (or
/// none) as the tuple `A`.
pub(crate) fn host_fn<A, R, E, F>(name: &str, f: F) -> HostFn
where
    A: serde::de::DeserializeOwned,
    R: serde::Serialize,
    E: std::fmt::Display,
    F: Fn(A) -> std::result::Result<R, E> + Send + Sync + 'static,
{
    let name = name.to_owned();
    Arc::new(move |items: &[Value]| {
        let arg = match items {
            // A one-tuple `A` still reads a single argument.
            [one] => from_value::<A>(one).or_else(|e| from_value::<A>(&Value::Tuple(vec![one.clone()])).map_err(|_| e)),
            many => from_value::<A>(&Value::Tuple(many.to_vec())),
        }
        .map_err(|e| format!("bad arguments to host function {name}: {e}"))?;
        let r = f(arg).map_err(|e| e.to_string())?;
        to_value(&r).map_err(|e| format!("host function {name} returned a value that cannot reach Python: {e}"))
    })
}
