//! One worker process as the host sees it: a child that re-entered the worker program, and the
//! socket to it.

use super::error::{Error, ExitStatus, Limit, Result};
use super::value::{from_value, from_value_within, to_value};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::MsgFlags;
use procpy_interpreter::embed::{self, Frame, PyError, Setup};
use procpy_interpreter::wire::{self, Value};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The worker's first argument names its end of the socket to the host (the protocol's constant).
pub(crate) use procpy_interpreter::embed::WORKER_FD_ARG;

/// What follows [`WORKER_FD_ARG`] when it is this process's first argument.
pub(crate) fn worker_fd_arg() -> Option<OsString> {
    let arg = std::env::args_os().nth(1)?;
    let fd = arg.as_bytes().strip_prefix(WORKER_FD_ARG.as_bytes())?;
    Some(OsStr::from_bytes(fd).to_owned())
}

/// A host function, type-erased: argument tuple in, result or error message out.
pub(crate) type HostFn = Arc<dyn Fn(&Value) -> std::result::Result<Value, String> + Send + Sync>;

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
        Ok(nix::sys::socket::send(self.0.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send(stream: &UnixStream, frame: &Frame) -> io::Result<()> {
    embed::write_frame(&mut NoSigPipe(stream), frame)
}

/// Reads that end at a deadline (`TimedOut`): the deadline holds across a whole frame, so a
/// worker that stalls inside one cannot keep a call past its timeout.
struct Deadline<'a> {
    stream: &'a UnixStream,
    deadline: Option<Instant>,
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            loop {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the deadline passed"));
                }
                match procpy_interpreter::ipc::poll(
                    &[(self.stream.as_raw_fd(), libc::POLLIN)],
                    Some(left),
                ) {
                    // Readable, or hung up / in error: the read says which.
                    Ok(r) if r[0] != 0 => break,
                    // poll rounds to milliseconds: look at the clock again.
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        io::Read::read(&mut &*self.stream, buf)
    }
}

pub(crate) struct Worker {
    pub pid: u32,
    stream: UnixStream,
    child: Option<Child>,
    pids: Pids,
}

/// Why a call did not produce a reply.
pub(crate) enum CallFailure {
    /// The deadline passed (the worker must be killed).
    Timeout,
    /// The channel closed or failed: the worker died or is dying.
    Lost,
    /// The worker broke the protocol (it must be killed): what it did.
    Protocol(String),
    /// The call could not be sent (nothing was written; the worker is intact): why.
    Refused(String),
}

/// How a failed read of a worker's frame fails its call.
fn read_failure(e: io::Error) -> CallFailure {
    match e.kind() {
        io::ErrorKind::TimedOut => CallFailure::Timeout,
        io::ErrorKind::InvalidData | io::ErrorKind::OutOfMemory => {
            CallFailure::Protocol(e.to_string())
        }
        _ => CallFailure::Lost,
    }
}

/// How long a new worker may take to boot and answer `Setup`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Spawner {
    /// Start the worker program with the socket as an inherited descriptor; in `script` mode
    /// return without waiting for `Ready` (the worker runs the script and exits).
    pub fn spawn(&self, setup: &Setup, script: bool) -> Result<Worker> {
        let (host, child_end) =
            procpy_interpreter::ipc::socketpair(libc::SOCK_STREAM).map_err(Error::Spawn)?;
        let fd = child_end.as_raw_fd();
        let mut cmd = Command::new(&self.program);
        cmd.arg(format!("{WORKER_FD_ARG}{fd}"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(self.stdout.stdio(script))
            .stderr(self.stderr.stdio(script));
        // Only this child inherits its end: the socket is close-on-exec everywhere else (other
        // threads of the host may be spawning at the same time). The hook owns our copy of the
        // child's end, so the descriptor it names stays open until `cmd` drops.
        // SAFETY: between fork and exec the hook only calls fcntl, which is async-signal-safe
        // (nix's wrapper adds an errno read, no allocation or lock), on a descriptor it owns.
        unsafe {
            cmd.pre_exec(move || {
                fcntl(&child_end, FcntlArg::F_SETFD(FdFlag::empty()))?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::Spawn(io::Error::new(e.kind(), format!("{}: {e}", self.program.display())))
        })?;
        // Closes our copy of the child's end (the hook owned it).
        drop(cmd);
        let pid = child.id();
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
        let mut w = Worker {
            pid,
            stream: UnixStream::from(host),
            child: Some(child),
            pids: self.pids.clone(),
        };
        match send(&w.stream, &Frame::Setup(setup.clone())) {
            Ok(()) => {}
            // Nothing was written: the sources and paths together exceed the frame limit.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(Error::Invalid(format!("the workers' setup cannot be sent: {e}")))
            }
            Err(_) if !script => return Err(w.not_ready(setup)),
            // A script worker that is already gone: its exit status says why.
            Err(_) => {}
        }
        if script {
            return Ok(w);
        }
        let ready = embed::read_frame(&mut Deadline {
            stream: &w.stream,
            deadline: Some(Instant::now() + BOOT_TIMEOUT),
        });
        match ready {
            Ok(Frame::Ready(Ok(_))) => Ok(w),
            Ok(Frame::Ready(Err(e))) => Err(Error::from(e)),
            Ok(other) => Err(Error::Protocol {
                pid: w.pid,
                message: format!("unexpected {} frame before Ready", other.kind()),
            }),
            Err(e) => match read_failure(e) {
                CallFailure::Timeout => Err(Error::Spawn(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("worker {} was not ready after {BOOT_TIMEOUT:?}", w.pid),
                ))),
                CallFailure::Protocol(message) => Err(Error::Protocol { pid: w.pid, message }),
                _ => Err(w.not_ready(setup)),
            },
        }
    }
}

impl Worker {
    fn not_ready(&mut self, setup: &Setup) -> Error {
        let status = self.reap(Duration::from_secs(2));
        // Limits are set before Ready: a worker can die of one before it answers.
        if status == ExitStatus::Signal(libc::SIGABRT) && setup.memory_limit.is_some() {
            return Error::LimitExceeded { limit: Limit::Memory, pid: self.pid };
        }
        Error::Spawn(io::Error::other(format!(
            "worker {} exited before it was ready ({status}); does the worker program call procpy::init() first thing in main()?",
            self.pid
        )))
    }

    /// Run one call; host functions the Python code calls meanwhile are served here. The
    /// deadline holds for the whole exchange, inside frames too.
    pub fn call(
        &mut self,
        id: u64,
        target: &str,
        args: Vec<u8>,
        deadline: Option<Instant>,
        host_fns: &HashMap<String, HostFn>,
    ) -> std::result::Result<std::result::Result<Vec<u8>, PyError>, CallFailure> {
        match send(&self.stream, &Frame::Call { id, target: target.to_owned(), args }) {
            Ok(()) => {}
            // Nothing was written (the frame is over the limit): the worker is intact.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(CallFailure::Refused(format!(
                    "the arguments of {target} cannot be sent: {e}"
                )));
            }
            Err(_) => return Err(CallFailure::Lost),
        }
        loop {
            match self.read(deadline)? {
                Frame::Reply { id: got, outcome } if got == id => return Ok(outcome),
                Frame::HostCall { id: hid, name, args } => {
                    self.serve_host_call(hid, &name, &args, host_fns)?
                }
                other => {
                    return Err(CallFailure::Protocol(format!(
                        "unexpected {} frame during call {id}",
                        other.kind()
                    )))
                }
            }
        }
    }

    /// Wait for a script worker to exit, serving the host calls it makes meanwhile. Fails only
    /// with `Timeout` or `Protocol` (the worker must then be killed).
    pub fn wait_script(
        &mut self,
        deadline: Option<Instant>,
        host_fns: &HashMap<String, HostFn>,
    ) -> std::result::Result<(), CallFailure> {
        // Without a pidfd there is nothing to wait on: reap (with its grace period) at once.
        let Ok(pidfd) = procpy_interpreter::ipc::pidfd_open(self.pid as i32) else { return Ok(()) };
        let mut channel_open = true;
        loop {
            let mut fds = vec![(pidfd.as_raw_fd(), libc::POLLIN)];
            if channel_open {
                fds.push((self.stream.as_raw_fd(), libc::POLLIN));
            }
            match procpy_interpreter::ipc::poll(&fds, procpy_interpreter::ipc::remaining(deadline))
            {
                Ok(r) if r[0] != 0 => return Ok(()),
                Ok(r) if r.get(1).is_some_and(|&ev| ev != 0) => {
                    let served = match self.read(deadline) {
                        Ok(Frame::HostCall { id, name, args }) => {
                            self.serve_host_call(id, &name, &args, host_fns)
                        }
                        Ok(other) => Err(CallFailure::Protocol(format!(
                            "unexpected {} frame from a script",
                            other.kind()
                        ))),
                        Err(f) => Err(f),
                    };
                    match served {
                        Ok(()) => {}
                        // The script is ending: its exit status tells how; wait on the pidfd alone.
                        Err(CallFailure::Lost) => channel_open = false,
                        Err(f) => return Err(f),
                    }
                }
                Ok(_) => return Err(CallFailure::Timeout),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(()),
            }
        }
    }

    fn read(&self, deadline: Option<Instant>) -> std::result::Result<Frame, CallFailure> {
        embed::read_frame(&mut Deadline { stream: &self.stream, deadline }).map_err(read_failure)
    }

    fn serve_host_call(
        &self,
        id: u64,
        name: &str,
        args: &[u8],
        host_fns: &HashMap<String, HostFn>,
    ) -> std::result::Result<(), CallFailure> {
        let outcome = run_host_fn(host_fns, name, args);
        match send(&self.stream, &Frame::HostReply { id, outcome }) {
            Ok(()) => Ok(()),
            // Nothing was written: a result over the frame limit is raised in Python instead.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let outcome =
                    Err(format!("the result of host function {name} cannot be sent: {e}"));
                send(&self.stream, &Frame::HostReply { id, outcome }).map_err(|_| CallFailure::Lost)
            }
            Err(_) => Err(CallFailure::Lost),
        }
    }

    /// Wait up to `grace` for the worker to end by itself, then kill it; reap and report how it ended.
    pub fn reap(&mut self, grace: Duration) -> ExitStatus {
        let Some(mut child) = self.child.take() else { return ExitStatus::Unknown };
        // Out of the registry before it can be reaped: the engine's drop signals registered
        // pids (under this lock), and a reaped pid may belong to another process by then.
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.pid);
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
    pub fn take_pipes(
        &mut self,
    ) -> (Option<std::process::ChildStdout>, Option<std::process::ChildStderr>) {
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

fn run_host_fn(
    host_fns: &HashMap<String, HostFn>,
    name: &str,
    args: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let f = host_fns.get(name).ok_or_else(|| format!("no host function named {name:?}"))?;
    let args = wire::from_bytes(args).map_err(|e| e.to_string())?;
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&args)))
        .map_err(|_| format!("host function {name} panicked"))??;
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
    Arc::new(move |args: &Value| {
        let arg = match args {
            // One argument reads as `A` itself (a one-tuple `A` still reads it), inside the
            // whole tuple: shared references count from there.
            Value::Tuple(items) if items.len() == 1 => from_value_within::<A>(args, &items[0])
                .or_else(|e| from_value::<A>(args).map_err(|_| e)),
            Value::Tuple(_) => from_value::<A>(args),
            one => from_value::<A>(one),
        }
        .map_err(|e| format!("bad arguments to host function {name}: {e}"))?;
        let r = f(arg).map_err(|e| e.to_string())?;
        to_value(&r).map_err(|e| {
            format!("host function {name} returned a value that cannot reach Python: {e}")
        })
    })
}
