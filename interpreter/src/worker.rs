//! The worker side of embedding (see [`crate::embed`]): a process started by a host
//! application serves calls of Python functions over an inherited socket.
//!
//! The host re-executes a program whose `main` calls `procpy::init()`; that finds
//! [`crate::embed::WORKER_FD_ENV`] and lands in [`serve`], which never returns.

use crate::boot;
use crate::embed::{self, Frame, PyError, Setup};
use rustpython_vm::builtins::{PyBaseExceptionRef, PyBytes, PyStr, PyTuple};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, VirtualMachine};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

/// The socket to the host. Calls are read by the serve loop; host functions (called from
/// inside a call) write a `HostCall` and read their `HostReply` under the same lock.
static CHANNEL: OnceLock<Mutex<UnixStream>> = OnceLock::new();

fn channel() -> std::sync::MutexGuard<'static, UnixStream> {
    CHANNEL.get().expect("worker channel").lock().unwrap_or_else(|e| e.into_inner())
}

/// Exit status of a worker whose host went away.
const HOST_GONE: i32 = 70;

/// Serve the host on socket `fd` until it closes it; never returns.
pub fn serve(fd: RawFd) -> ! {
    unsafe {
        // As `boot::run`: a SIGSEGV must kill us, so the host sees the signal.
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        // Our own multiprocessing children must not inherit the host's socket.
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let mut stream = unsafe { UnixStream::from_raw_fd(fd) };
    let setup = match embed::read_frame(&mut stream) {
        Ok(Frame::Setup(s)) => s,
        _ => std::process::exit(HOST_GONE),
    };
    watch_for_hangup(fd);
    let _ = CHANNEL.set(Mutex::new(stream));
    let argv = setup.script.as_ref().map(|s| s.argv.clone()).unwrap_or_else(|| vec!["procpy-worker".to_owned()]);
    let builder = boot::builder(argv);
    let ours = _procpy_embed_native::module_def(&builder.ctx);
    let interp = builder.add_native_module(ours).build();
    let status = interp.run(|vm| run_in(vm, &setup));
    std::process::exit(status.min(255) as i32)
}

/// A thread that ends the worker when the host dies (its end of the socket closes), even in the
/// middle of a long Python call. Robust where PR_SET_PDEATHSIG is not: that fires when the
/// host *thread* that started us ends, and host threads come and go.
fn watch_for_hangup(fd: RawFd) {
    std::thread::spawn(move || loop {
        let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            unsafe { libc::_exit(HOST_GONE) };
        }
    });
}

fn glue(vm: &VirtualMachine, name: &str) -> PyResult {
    crate::codec::resolve_global(vm, "_procpy_embed", name)
}

fn run_in(vm: &VirtualMachine, setup: &Setup) -> PyResult<()> {
    let ready = prepare(vm, setup);
    let Some(script) = &setup.script else {
        let ready = ready.map(|()| std::process::id()).map_err(|e| describe(vm, &e));
        let failed = ready.is_err();
        send(&Frame::Ready(ready));
        if failed {
            return Ok(());
        }
        return serve_calls(vm);
    };
    ready?;
    let scope = vm.new_scope_with_main()?;
    match (&script.path, &script.source) {
        (Some(path), _) => {
            let dir = std::path::Path::new(path).parent().and_then(|p| p.to_str()).filter(|d| !d.is_empty()).unwrap_or(".");
            let abs = std::fs::canonicalize(dir).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| dir.to_owned());
            vm.insert_sys_path(vm.new_pyobj(abs))?;
            vm.run_any_file(scope, path)
        }
        (None, Some(code)) => vm.run_string(scope, code, "<string>".to_owned()).map(drop),
        (None, None) => Ok(()),
    }
}

fn prepare(vm: &VirtualMachine, setup: &Setup) -> PyResult<()> {
    let sources: Vec<PyObjectRef> = setup
        .sources
        .iter()
        .map(|(n, c, f)| vm.new_tuple((n.clone(), c.clone(), f.clone())).into())
        .collect();
    let sys_path: Vec<PyObjectRef> = setup.sys_path.iter().map(|p| vm.new_pyobj(p.clone())).collect();
    let host_fns: Vec<PyObjectRef> = setup.host_fns.iter().map(|p| vm.new_pyobj(p.clone())).collect();
    glue(vm, "_setup")?.call((vm.ctx.new_list(sys_path), vm.ctx.new_list(sources), vm.ctx.new_list(host_fns)), vm)?;
    // Limits come after the boot, so the interpreter itself always starts; they bind the user's code.
    let set = |res, soft: u64, hard: u64| {
        let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(vm.new_os_error(format!("setrlimit failed: {}", std::io::Error::last_os_error())));
        }
        Ok(())
    };
    if let Some(bytes) = setup.memory_limit {
        set(libc::RLIMIT_AS, bytes, bytes)?;
    }
    if let Some(secs) = setup.cpu_limit {
        set(libc::RLIMIT_CPU, secs, secs + 1)?;
    }
    Ok(())
}

fn send(frame: &Frame) {
    if embed::write_frame(&mut *channel(), frame).is_err() {
        std::process::exit(HOST_GONE);
    }
}

fn serve_calls(vm: &VirtualMachine) -> PyResult<()> {
    let call = glue(vm, "_call")?;
    loop {
        let frame = embed::read_frame(&mut *channel());
        match frame {
            Ok(Frame::Call { id, target, args }) => {
                let outcome = call
                    .call((vm.ctx.new_str(target), vm.ctx.new_bytes(args)), vm)
                    .and_then(|r| r.downcast::<PyBytes>().map_err(|_| vm.new_type_error("_call must return bytes")))
                    .map(|b| b.as_bytes().to_vec())
                    .map_err(|e| describe(vm, &e));
                send(&Frame::Reply { id, outcome });
            }
            // The host closed the socket (or sent garbage): we are done.
            _ => return Ok(()),
        }
    }
}

fn describe(vm: &VirtualMachine, e: &PyBaseExceptionRef) -> PyError {
    let fallback = || PyError {
        type_name: e.class().name().to_string(),
        message: e.as_object().str(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        traceback: String::new(),
    };
    let Ok(d) = glue(vm, "_describe").and_then(|f| f.call((e.clone(),), vm)) else { return fallback() };
    let Some(t) = d.downcast_ref::<PyTuple>() else { return fallback() };
    let s = |i: usize| t.as_slice().get(i).and_then(|o| o.downcast_ref::<PyStr>()).map(|s| s.to_string_lossy().into_owned());
    match (s(0), s(1), s(2)) {
        (Some(type_name), Some(message), Some(traceback)) => PyError { type_name, message, traceback },
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
    /// `name` with the argument tuple `args` and wait for its answer.
    #[pyfunction]
    fn host_call(name: rustpython_vm::builtins::PyStrRef, args: PyObjectRef, vm: &VirtualMachine) -> PyResult<(bool, PyObjectRef)> {
        let bytes = codec::dumps(vm, &args, Handles::Refuse)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::HostCall { id, name: name.to_string_lossy().into_owned(), args: bytes };
        let outcome = {
            let mut chan = channel();
            embed::write_frame(&mut *chan, &frame).map_err(|e| vm.new_os_error(format!("host connection lost: {e}")))?;
            loop {
                match embed::read_frame(&mut *chan) {
                    Ok(Frame::HostReply { id: got, outcome }) if got == id => break outcome,
                    Ok(_) => continue,
                    Err(e) => return Err(vm.new_os_error(format!("host connection lost: {e}"))),
                }
            }
        };
        match outcome {
            Ok(b) => Ok((true, codec::loads(vm, &b, &[])?)),
            Err(msg) => Ok((false, vm.new_pyobj(msg))),
        }
    }
}
