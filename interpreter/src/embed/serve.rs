//! The worker's serve loop: a process started by a host application serves calls of Python
//! functions over an inherited socket, speaking [`super::protocol`].
//!
//! The host re-executes a program whose `main` calls `procpy::init()`; that finds
//! [`super::WORKER_FD_ARG`] and lands in [`serve`], which never returns.

use super::protocol::{self as embed, Frame, PyError, Setup};
use crate::boot;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{rlim_t, setrlimit, Resource};
use rustpython_vm::builtins::{PyBaseExceptionRef, PyBytes, PyStr, PyTuple};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// The socket to the host, and who may use it when. No frame is ever read by one party and
/// meant for another: the serve loop reads only between calls, when no host call can be in
/// flight; during a call only host calls read, one at a time, each its own `HostReply` (the host
/// sends nothing else until our `Reply`, which waits for every host call in flight).
struct Channel {
    stream: UnixStream,
    /// The worker's own pid: a process forked from it (os.fork, a fork-started Process) inherits
    /// the socket, but its frames would interleave with ours, so host calls are refused there.
    pid: u32,
    /// Held by a host call from writing its `HostCall` until it read its `HostReply`.
    one_at_a_time: Mutex<()>,
    waiting: Mutex<HostWaiting>,
    settled: Condvar,
}

/// Whether the host is waiting on this worker (and so reading what it sends).
#[derive(Default)]
struct HostWaiting {
    /// During a call, and for the whole of a script.
    open: bool,
    /// Host calls between their check of `open` and the end of their round trip.
    in_flight: usize,
}

static CHANNEL: OnceLock<Channel> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Channel {
    fn open(&self) {
        lock(&self.waiting).open = true;
    }

    /// No new host calls; wait for those in flight (the host is still reading: it is waiting for
    /// our reply), so that nothing follows the reply.
    fn close(&self) {
        let mut w = lock(&self.waiting);
        w.open = false;
        while w.in_flight > 0 {
            w = self.settled.wait(w).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Admit one host call, or say why not.
    fn enter(&self, name: &str) -> Result<InFlight<'_>, String> {
        if std::process::id() != self.pid {
            return Err(format!(
                "host function {name}() cannot be called from a process forked from the worker"
            ));
        }
        let mut w = lock(&self.waiting);
        if !w.open {
            return Err(format!(
                "host function {name}() called between calls: host functions can be called only while the host is \
                 waiting on this worker (during a call from the host, or in a script)"
            ));
        }
        w.in_flight += 1;
        Ok(InFlight(self))
    }

    /// Send a `HostCall` and read its `HostReply`. `Err`: the frame is over the limit and
    /// nothing was written. Touches no Python object (it runs detached from the VM).
    fn round_trip(&self, frame: &Frame, id: u64) -> io::Result<Result<Vec<u8>, String>> {
        let _one = lock(&self.one_at_a_time);
        match self.write(frame) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e),
            Err(e) => channel_failed(e),
        }
        match self.read() {
            Ok(Frame::HostReply { id: got, outcome }) if got == id => Ok(outcome),
            Ok(other) => {
                unexpected(&other, &format!("while host call {id} waited for its HostReply"))
            }
            Err(e) => channel_failed(e),
        }
    }

    fn write(&self, frame: &Frame) -> io::Result<()> {
        embed::write_frame(&mut &self.stream, frame)
    }

    fn read(&self) -> io::Result<Frame> {
        embed::read_frame(&mut &self.stream)
    }
}

/// One admitted host call; leaving lets a finished call send its reply.
struct InFlight<'a>(&'a Channel);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut w = lock(&self.0.waiting);
        w.in_flight -= 1;
        if w.in_flight == 0 {
            self.0.settled.notify_all();
        }
    }
}

/// Exit status of a worker whose host went away.
const HOST_GONE: i32 = 70;
/// Exit status of a worker whose host broke the protocol (sysexits' EX_PROTOCOL).
const HOST_BROKE_PROTOCOL: i32 = 76;

/// The channel cannot be used any more: say why and end the worker at once (other Python
/// threads may be running: no atexit handlers, as the hang-up watcher does). No memory for a
/// frame aborts, as every other failed allocation in the worker does, so that the host reports
/// its memory limit.
fn channel_failed(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        exit_now(HOST_GONE)
    }
    eprintln!("procpy worker {}: the channel to the host failed: {e}", std::process::id());
    if e.kind() == io::ErrorKind::OutOfMemory {
        std::process::abort();
    }
    exit_now(HOST_BROKE_PROTOCOL)
}

/// End the process at once: no atexit handlers, no flush of stdio buffers (other threads may be
/// in the middle of a call, or the process is a fork of the worker). nix has no `_exit`.
fn exit_now(status: i32) -> ! {
    // SAFETY: `_exit` takes no pointer and does not return; no Rust code runs after it.
    unsafe { libc::_exit(status) }
}

fn unexpected(frame: &Frame, when: &str) -> ! {
    channel_failed(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the host sent a {} frame {when}", frame.kind()),
    ))
}

/// Whether `fd` is what a host hands its worker: one end of a Unix stream socketpair made by
/// this process's parent, running as the same user. Worker mode is chosen by an argument that
/// anyone can type (`prog --procpy-embed-fd=0 < frames` would otherwise run their calls), so
/// anything else is refused before a byte is read.
fn from_our_host(fd: RawFd) -> Result<(), String> {
    if !crate::ipc::is_unix_socket(fd) || !crate::ipc::is_socket_of_type(fd, libc::SOCK_STREAM) {
        return Err(format!("descriptor {fd} is not a Unix stream socket"));
    }
    let peer = crate::forkserver::peer_cred(fd).map_err(|e| format!("descriptor {fd}: {e}"))?;
    let (parent, user) = (nix::unistd::getppid().as_raw(), nix::unistd::geteuid().as_raw());
    if peer.pid != parent || peer.uid != user {
        return Err(format!(
            "the socket on descriptor {fd} comes from pid {} (uid {}), not from this process's \
             parent {parent} (uid {user})",
            peer.pid, peer.uid
        ));
    }
    Ok(())
}

/// Serve the host on socket `fd` until it closes it; never returns. A descriptor that is not
/// a socket from this process's parent is refused: a message, and exit status 2.
pub fn serve(fd: RawFd) -> ! {
    if let Err(why) = from_our_host(fd) {
        eprintln!(
            "procpy: --procpy-embed-fd: {why}; worker mode is only for a process that an \
             embedding host (procpy::Engine) starts"
        );
        std::process::exit(2);
    }
    // As `boot::run`: a SIGSEGV must kill us, so the host sees the signal.
    boot::die_of_faults();
    // SAFETY: `fd` is the socket the host passed us (`super::WORKER_FD_ARG`); nothing else in
    // this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // Our own multiprocessing children must not inherit the host's socket.
    let _ = fcntl(&stream, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let setup = match embed::read_frame(&mut &stream) {
        Ok(Frame::Setup(s)) => s,
        Ok(other) => unexpected(&other, "before Setup"),
        Err(e) => channel_failed(e),
    };
    let chan = CHANNEL.get_or_init(|| Channel {
        stream,
        pid: std::process::id(),
        one_at_a_time: Mutex::new(()),
        waiting: Mutex::new(HostWaiting::default()),
        settled: Condvar::new(),
    });
    watch_for_hangup(chan.stream.as_fd());
    let argv = setup
        .script
        .as_ref()
        .map(|s| s.argv.clone())
        .unwrap_or_else(|| vec!["procpy-worker".to_owned()]);
    let builder = boot::builder(argv);
    let ours = _procpy_embed_native::module_def(&builder.ctx);
    let interp = builder.add_native_module(ours).build();
    let status = interp.run(|vm| run_in(vm, chan, &setup));
    std::process::exit(status.min(255) as i32)
}

/// A thread that ends the worker when the host dies (its end of the socket closes), even in the
/// middle of a long Python call. Robust where PR_SET_PDEATHSIG is not: that fires when the
/// host *thread* that started us ends, and host threads come and go.
fn watch_for_hangup(fd: BorrowedFd<'static>) {
    // nix names no POLLRDHUP (the peer shut its end down), and its `revents` cannot show it: any
    // readiness is the host going, since POLLHUP, POLLERR and POLLNVAL are all the rest poll can
    // report here.
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    // Without the thread, a host death is still seen at the next read of the channel.
    let watcher = crate::ipc::spawn_helper("procpy-host-watch", move || loop {
        if matches!(poll(&mut [PollFd::new(fd, rdhup)], PollTimeout::NONE), Ok(n) if n > 0) {
            // Other threads may be mid-call: no atexit handlers.
            exit_now(HOST_GONE);
        }
    });
    if let Err(e) = watcher {
        eprintln!(
            "procpy worker {}: no thread to watch for the host's death ({e}); going on without",
            std::process::id()
        );
    }
}

fn glue(vm: &VirtualMachine, name: &str) -> PyResult {
    crate::codec::resolve_global(vm, "_procpy_embed", name)
}

fn run_in(vm: &VirtualMachine, chan: &Channel, setup: &Setup) -> PyResult<()> {
    // As every procpy interpreter: RustPython's corrections first.
    let ready = boot::settle(vm).and_then(|()| prepare(vm, setup));
    let Some(script) = &setup.script else {
        let ready = ready.map(|()| std::process::id()).map_err(|e| describe(vm, &e));
        let failed = ready.is_err();
        if let Err(e) = chan.write(&Frame::Ready(ready)) {
            channel_failed(e);
        }
        if failed {
            return Ok(());
        }
        return serve_calls(vm, chan);
    };
    ready?;
    // The host serves host calls for as long as it waits for the script.
    chan.open();
    let scope = vm.new_scope_with_main()?;
    // As the CLI runs it: the same `site`, `sys.path` and `__file__`.
    match (&script.path, &script.source) {
        (Some(path), _) => boot::run_main(vm, scope, boot::Main::File(path)),
        (None, Some(code)) => boot::run_main(vm, scope, boot::Main::Source(code)),
        (None, None) => Ok(()),
    }
}

fn prepare(vm: &VirtualMachine, setup: &Setup) -> PyResult<()> {
    let sources: Vec<PyObjectRef> = setup
        .sources
        .iter()
        .map(|(n, c, f)| vm.new_tuple((n.clone(), c.clone(), f.clone())).into())
        .collect();
    let sys_path: Vec<PyObjectRef> =
        setup.sys_path.iter().map(|p| vm.new_pyobj(p.clone())).collect();
    let host_fns: Vec<PyObjectRef> =
        setup.host_fns.iter().map(|p| vm.new_pyobj(p.clone())).collect();
    let cluster = match &setup.cluster {
        None => vm.ctx.none(),
        Some(c) => {
            let key = match &c.key {
                Some(k) => vm.ctx.new_bytes(k.clone()).into(),
                None => vm.ctx.none(),
            };
            vm.new_tuple((c.url.clone(), key)).into()
        }
    };
    glue(vm, "_setup")?.call(
        (vm.ctx.new_list(sys_path), vm.ctx.new_list(sources), vm.ctx.new_list(host_fns), cluster),
        vm,
    )?;
    // Limits come after the boot, so the interpreter itself always starts; they bind the user's code.
    let set = |res, soft: u64, hard: u64| {
        setrlimit(res, soft as rlim_t, hard as rlim_t)
            .map_err(|e| vm.new_os_error(format!("setrlimit failed: {}", std::io::Error::from(e))))
    };
    if let Some(bytes) = setup.memory_limit {
        set(Resource::RLIMIT_AS, bytes, bytes)?;
    }
    if let Some(secs) = setup.cpu_limit {
        set(Resource::RLIMIT_CPU, secs, secs + 1)?;
    }
    Ok(())
}

fn serve_calls(vm: &VirtualMachine, chan: &Channel) -> PyResult<()> {
    let call = glue(vm, "_call")?;
    loop {
        // Detached while it blocks, as host calls are (see `host_call`).
        let (id, target, args) = match vm.allow_threads(|| chan.read()) {
            Ok(Frame::Call { id, target, args }) => (id, target, args),
            Ok(other) => unexpected(&other, "between calls"),
            // The host closed the socket between calls: we are done.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => channel_failed(e),
        };
        chan.open();
        let outcome = call
            .call((vm.ctx.new_str(target), vm.ctx.new_bytes(args)), vm)
            .and_then(|r| {
                r.downcast::<PyBytes>().map_err(|_| vm.new_type_error("_call must return bytes"))
            })
            .map(|b| b.as_bytes().to_vec())
            .map_err(|e| describe(vm, &e));
        if std::process::id() != chan.pid {
            // A bare `os.fork()` whose child returned from the call: the reply and the channel
            // are the worker's, so the child ends here without touching them.
            exit_now(0)
        }
        vm.allow_threads(|| chan.close());
        match chan.write(&Frame::Reply { id, outcome }) {
            Ok(()) => {}
            // Nothing was written: a result over the frame limit becomes an error for this call.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let e = PyError {
                    type_name: "ValueError".to_owned(),
                    message: format!("the result cannot be returned to the host: {e}"),
                    traceback: String::new(),
                };
                if let Err(e) = chan.write(&Frame::Reply { id, outcome: Err(e) }) {
                    channel_failed(e);
                }
            }
            Err(e) => channel_failed(e),
        }
    }
}

fn describe(vm: &VirtualMachine, e: &PyBaseExceptionRef) -> PyError {
    let fallback = || PyError {
        type_name: e.class().name().to_string(),
        message: e
            .as_object()
            .str(vm)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        traceback: String::new(),
    };
    let Ok(d) = glue(vm, "_describe").and_then(|f| f.call((e.clone(),), vm)) else {
        return fallback();
    };
    let Some(t) = d.downcast_ref::<PyTuple>() else { return fallback() };
    let s = |i: usize| {
        t.as_slice()
            .get(i)
            .and_then(|o| o.downcast_ref::<PyStr>())
            .map(|s| s.to_string_lossy().into_owned())
    };
    match (s(0), s(1), s(2)) {
        (Some(type_name), Some(message), Some(traceback)) => {
            PyError { type_name, message, traceback }
        }
        _ => fallback(),
    }
}

#[rustpython_vm::pymodule]
mod _procpy_embed_native {
    use super::*;
    use crate::codec::{self, Handles};
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT_ID: AtomicU64 = AtomicU64::new(1);

    /// `host_call(name, args)` -> (True, result) or (False, message): run the host function
    /// `name` with the argument tuple `args` and wait for its answer. RuntimeError when the
    /// host is not waiting on this worker (see [`Channel::enter`]).
    #[pyfunction]
    fn host_call(
        name: rustpython_vm::builtins::PyStrRef,
        args: PyObjectRef,
        vm: &VirtualMachine,
    ) -> PyResult<(bool, PyObjectRef)> {
        let name = name.to_string_lossy().into_owned();
        let Some(chan) = CHANNEL.get() else {
            return Err(vm.new_runtime_error(format!(
                "host function {name}(): this process is not an embedding worker"
            )));
        };
        let bytes = codec::dumps(vm, &args, Handles::Refuse)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::HostCall { id, name: name.clone(), args: bytes };
        let in_flight = chan.enter(&name).map_err(|m| vm.new_runtime_error(m))?;
        // Detached while it blocks: `os.fork` in another thread stops the world and waits for
        // attached threads.
        let outcome = vm.allow_threads(|| chan.round_trip(&frame, id));
        drop(in_flight);
        let outcome = outcome.map_err(|e| {
            vm.new_value_error(format!(
                "the arguments of host function {name}() cannot be sent: {e}"
            ))
        })?;
        match outcome {
            Ok(b) => Ok((true, codec::loads(vm, &b, &[])?)),
            Err(msg) => Ok((false, vm.new_pyobj(msg))),
        }
    }
}
