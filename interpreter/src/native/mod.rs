//! `_procpy`: the native half of procpy's `multiprocessing`.
//!
//! `connection` and `queue` hold the two channel types; this file holds what they share
//! (syscall retries, codec hooks for descriptors) and the module's functions.
//!
//! Connections, queues, the codec entry points and the process-start primitives live here; the
//! Python half (`py/multiprocessing/`) only shapes them into CPython's API.

use crate::codec;
use crate::ipc::stream::{self, StreamError, Syscall};
use crate::ipc::{self, SharedCounters};
use crate::wire::HandleKind;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{pthread_sigmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use rustpython_vm::builtins::{PyBaseExceptionRef, PyType, PyTypeRef};
use rustpython_vm::pymodule;
use rustpython_vm::{PyObject, PyObjectRef, PyPayload, PyResult, VirtualMachine};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use _procpy::module_def;

pub(crate) mod cluster;
mod connection;
mod fds;
pub(crate) mod gil;
pub(crate) mod progress;
mod queue;
mod shared_buffer;
mod shm;
mod sources;
mod sync;
mod trace_py;

pub(crate) use trace_py::module_def as trace_module_def;

pub(crate) use connection::Connection;
pub(crate) use queue::{QueueBase, QueueShared};
pub(crate) use shared_buffer::SharedBuffer;
pub(crate) use sync::SemLock;

/// Turn an OS error into a Python exception: `OSError` (the subclass its errno picks) with
/// errno and text; with [`ipc::Doing`], what was being done as well; one without an errno
/// (a message of ours) keeps its message; `OutOfMemory` is `MemoryError`. (RustPython's own
/// conversion reads only the errno: a message without one became "[Errno 0] Success".)
fn os_err(vm: &VirtualMachine, e: io::Error) -> PyBaseExceptionRef {
    use rustpython_vm::convert::ToPyException;
    if let Some(d) = e.get_ref().and_then(|inner| inner.downcast_ref::<ipc::Doing>()) {
        return os_error_with(vm, d.errno, d.to_string());
    }
    match e.raw_os_error() {
        Some(_) => e.to_pyexception(vm),
        None if e.kind() == io::ErrorKind::OutOfMemory => vm.new_memory_error(e.to_string()),
        None => vm.new_os_error(e.to_string()),
    }
}

/// `OSError(errno, strerror)`: Python picks the subclass (FileNotFoundError, ...).
fn os_error_with(vm: &VirtualMachine, errno: i32, strerror: String) -> PyBaseExceptionRef {
    use rustpython_vm::AsObject;
    match vm.ctx.exceptions.os_error.as_object().call((errno, strerror.clone()), vm) {
        Ok(exc) => exc.downcast().unwrap_or_else(|_| vm.new_os_error(strerror)),
        Err(exc) => exc,
    }
}

/// Change this thread's mask for SIGTERM and SIGHUP (`how`: block or unblock).
fn term_signals_mask(how: SigmaskHow) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    pthread_sigmask(how, Some(&set), None).map_err(io::Error::from)
}

/// Read the body of a frame whose header (sent by a peer) declared `len` bytes, with
/// [`ipc::read_body`]'s rule: the buffer grows as bytes arrive, never from the header alone.
/// As CPython: end of file before the body's first byte is EOFError, later it is
/// OSError("got end of file during message"), and no memory for it is MemoryError.
fn read_frame_body(
    vm: &VirtualMachine,
    len: usize,
    read: impl FnMut(&mut [u8]) -> PyResult<usize>,
) -> PyResult<Vec<u8>> {
    match ipc::read_body(len, read) {
        Ok(body) => Ok(body),
        Err(ipc::BodyError::Eof { got: 0 }) => Err(eof_error(vm)),
        Err(ipc::BodyError::Eof { .. }) => {
            Err(vm.new_os_error("got end of file during message".to_owned()))
        }
        Err(ipc::BodyError::NoMemory { len }) => {
            Err(vm.new_memory_error(format!("cannot allocate memory for a message of {len} bytes")))
        }
        Err(ipc::BodyError::Read(e)) => Err(e),
    }
}

/// A bare `EOFError` (CPython's `raise EOFError`: no arguments).
fn eof_error(vm: &VirtualMachine) -> PyBaseExceptionRef {
    vm.new_exception_empty(vm.ctx.exceptions.eof_error.to_owned())
}

/// How the VM runs a blocking syscall for [`ipc::stream`]: retried after EINTR once Python
/// signal handlers have run (they may raise, e.g. KeyboardInterrupt, which then propagates).
/// The thread is detached from the VM while it blocks (`allow_threads`): RustPython's
/// `os.fork` stops the world and would otherwise wait forever for a thread blocked here.
struct Vm<'a>(&'a VirtualMachine);

impl Syscall for Vm<'_> {
    type Interrupt = PyBaseExceptionRef;
    fn run<T>(&self, mut f: impl FnMut() -> io::Result<T>) -> PyResult<io::Result<T>> {
        loop {
            match self.0.allow_threads(&mut f) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.0.check_signals()?,
                r => return Ok(r),
            }
        }
    }
}

/// Run a syscall as [`Vm`] does; its failure an OSError.
fn retry<T>(vm: &VirtualMachine, f: impl FnMut() -> io::Result<T>) -> PyResult<T> {
    Vm(vm).run(f)?.map_err(|e| os_err(vm, e))
}

/// Why an [`ipc::stream`] helper stopped, as CPython's `multiprocessing` raises it: end of file
/// before the first byte is EOFError, later it is OSError("got end of file during message").
fn stream_err(vm: &VirtualMachine, e: StreamError<PyBaseExceptionRef>) -> PyBaseExceptionRef {
    match e {
        StreamError::Interrupted(e) => e,
        StreamError::Io(e) => os_err(vm, e),
        StreamError::Eof { got: 0 } => eof_error(vm),
        StreamError::Eof { .. } => vm.new_os_error("got end of file during message".to_owned()),
        StreamError::NoMemory { len } => {
            vm.new_memory_error(format!("cannot allocate memory for a message of {len} bytes"))
        }
    }
}

/// The instant `timeout` seconds from now (`None`: no deadline; negative: now), for the
/// waits CPython converts to its nanosecond clock (`Connection.poll`, `Queue.get`,
/// `connection.wait`): NaN, infinity, more than that clock holds (about 292 years) or than
/// `poll` takes (24.8 days) raise what CPython raises there.
fn deadline(vm: &VirtualMachine, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(t) = timeout else { return Ok(None) };
    if t.is_nan() {
        return Err(vm.new_value_error("cannot convert float NaN to integer"));
    }
    if t.is_infinite() && t > 0.0 {
        return Err(vm.new_overflow_error("cannot convert float infinity to integer"));
    }
    let too_large = || vm.new_overflow_error("timestamp too large to convert to C _PyTime_t");
    if t * 1e9 > i64::MAX as f64 {
        return Err(too_large());
    }
    // CPython's wait ends in poll(), whose timeout is an int of milliseconds.
    if (t * 1e3).ceil() > i32::MAX as f64 {
        return Err(vm.new_overflow_error("timeout is too large"));
    }
    let d = Duration::try_from_secs_f64(t.max(0.0)).map_err(|_| too_large())?;
    Instant::now().checked_add(d).map(Some).ok_or_else(too_large)
}

/// The instant `timeout` seconds from now for the waits CPython hands to `sem_timedwait`
/// (`Queue.put`, `SemLock.acquire`): NaN or infinity is OSError(EINVAL) as there, a negative
/// timeout (-infinity too) is now, and a deadline too far to represent waits without one (as a
/// deadline centuries away does).
fn sem_deadline(vm: &VirtualMachine, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(t) = timeout else { return Ok(None) };
    if t.is_nan() || t == f64::INFINITY {
        return Err(os_err(vm, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let d = Duration::try_from_secs_f64(t.max(0.0)).ok();
    Ok(d.and_then(|d| Instant::now().checked_add(d)))
}

/// Like [`wait_readable`], but polls briefly before it sleeps ([`stream::spin_window`]).
fn wait_readable_spin(vm: &VirtualMachine, fd: RawFd, until: Option<Instant>) -> PyResult<bool> {
    if vm.allow_threads(|| stream::spin_readable(fd, until)) {
        return Ok(true);
    }
    wait_readable(vm, fd, until)
}

/// Wait until `fd` is readable (or hung up). `false` on timeout.
fn wait_readable(vm: &VirtualMachine, fd: RawFd, until: Option<Instant>) -> PyResult<bool> {
    stream::wait_readable(&Vm(vm), fd, until).map_err(|e| stream_err(vm, e))
}

fn write_all(vm: &VirtualMachine, fd: RawFd, buf: &[u8]) -> PyResult<()> {
    stream::write_all(&Vm(vm), fd, buf).map_err(|e| stream_err(vm, e))
}

/// Fill `buf` completely. `Ok(false)` if end of file came before the first byte.
fn read_exact(vm: &VirtualMachine, fd: RawFd, buf: &mut [u8]) -> PyResult<bool> {
    fill(vm, buf, |b| ipc::read(fd, b))
}

/// Fill `buf` by repeated `read`s (each may be short; 0 is end of file). `Ok(false)` if end of
/// file came before the first byte.
fn fill(
    vm: &VirtualMachine,
    buf: &mut [u8],
    read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> PyResult<bool> {
    stream::fill(&Vm(vm), buf, read).map_err(|e| stream_err(vm, e))
}

/// Send `payload` on a stream socket with `fds` attached to its 8-byte length header.
fn send_with_fds_stream(
    vm: &VirtualMachine,
    sock: RawFd,
    payload: &[u8],
    fds: &[RawFd],
) -> PyResult<()> {
    stream::send_framed(&Vm(vm), sock, payload, fds).map_err(|e| stream_err(vm, e))
}

/// Receive what [`send_with_fds_stream`] sent. `None` on end of file before the header.
fn recv_with_fds_stream(
    vm: &VirtualMachine,
    sock: RawFd,
) -> PyResult<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    stream::recv_framed(&Vm(vm), sock).map_err(|e| stream_err(vm, e))
}

fn int_list(vm: &VirtualMachine, v: &[i32]) -> PyObjectRef {
    vm.ctx.new_list(v.iter().map(|&i| vm.ctx.new_int(i).into()).collect()).into()
}

fn mp_exception(vm: &VirtualMachine, name: &'static str) -> PyTypeRef {
    vm.import("multiprocessing", 0)
        .and_then(|m| m.get_attr(name, vm))
        .ok()
        .and_then(|t| t.downcast::<PyType>().ok())
        .unwrap_or_else(|| vm.ctx.exceptions.exception_type.to_owned())
}

fn queue_exception(vm: &VirtualMachine, name: &'static str) -> PyBaseExceptionRef {
    let cls = vm
        .import("queue", 0)
        .and_then(|m| m.get_attr(name, vm))
        .ok()
        .and_then(|t| t.downcast::<PyType>().ok())
        .unwrap_or_else(|| vm.ctx.exceptions.exception_type.to_owned());
    vm.new_exception_empty(cls)
}
/// An encoded queue item and the descriptors of the Connections inside it (duplicated, so the
/// sender may close its own before the feeder writes).
type Record = (Vec<u8>, Vec<OwnedFd>);

/// Encode for a channel that carries descriptors: Connections inside `obj` travel as dups.
fn dumps_with_connections(vm: &VirtualMachine, obj: &PyObject) -> PyResult<Record> {
    let mut raw = Vec::new();
    let data = codec::dumps(vm, obj, codec::Handles::Connections(&mut raw))?;
    let fds = raw
        .into_iter()
        .map(|fd| ipc::dup(fd).map_err(|e| os_err(vm, e)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((data, fds))
}

/// Decode a message and release the descriptors that came with it (rebuilt handles hold dups).
fn loads_with(vm: &VirtualMachine, data: &[u8], fds: Vec<OwnedFd>) -> PyResult {
    if data.is_empty() {
        // What pickle says of an empty message (CPython's recv of a zero-length frame).
        return Err(vm.new_eof_error("Ran out of input".to_owned()));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    codec::loads(vm, data, &raw)
}

/// The codec's view of the handle types below (installed by [`crate::boot::builder`]).
pub(crate) static HANDLES: codec::HandleTable =
    codec::HandleTable { as_handle, rebuild: rebuild_handle };

/// What `codec` needs to send a native handle to a child: its kind, descriptors and extras.
fn as_handle(obj: &PyObject) -> Option<(HandleKind, Vec<RawFd>, Vec<i64>)> {
    if let Some(c) = obj.downcast_ref::<Connection>() {
        let fd = c.fd.load(Ordering::Acquire);
        return Some((
            HandleKind::Connection,
            vec![fd],
            vec![c.readable.load(Ordering::Acquire) as i64, c.writable as i64],
        ));
    }
    if let Some(q) = obj.downcast_ref::<QueueBase>() {
        let s = &q.shared;
        return Some((
            HandleKind::Queue,
            vec![s.rfd.as_raw_fd(), s.wfd.as_raw_fd(), s.counters.fd()],
            vec![q.maxsize as i64, q.kind as i64],
        ));
    }
    {
        use rustpython_vm::class::StaticType;
        use rustpython_vm::AsObject;
        // Exactly these types: subclasses (Lock, RLock, ...) travel through their `__reduce__`.
        if obj.class().is(SemLock::static_type()) {
            let s = obj.downcast_ref::<SemLock>()?;
            return Some((
                HandleKind::SemLock,
                vec![s.shared.fd()],
                vec![s.kind as i64, s.maxvalue as i64],
            ));
        }
        if obj.class().is(SharedBuffer::static_type()) {
            let b = obj.downcast_ref::<SharedBuffer>()?;
            return Some((HandleKind::SharedBuffer, vec![b.fd()], vec![b.len() as i64]));
        }
    }
    None
}

/// Rebuild a native handle in the child from its (received) descriptors, which are duplicated.
/// The message may come from any peer: the descriptors must be of the kind the handle needs
/// and memory files must hold what the handle maps (else first use would be SIGBUS); anything
/// else is an UnpicklingError naming the problem.
fn rebuild_handle(vm: &VirtualMachine, kind: HandleKind, fds: &[RawFd], extra: &[i64]) -> PyResult {
    let dup = |fd: RawFd| ipc::dup(fd).map_err(|e| os_err(vm, e));
    let malformed = |what: String| {
        codec::unpickling_error(vm, format!("malformed message: bad {kind:?} handle: {what}"))
    };
    let bad = || malformed("wrong number of descriptors or values".to_owned());
    // A size or kind check of ipc/shared_buffer (InvalidData) is the message's fault.
    let mapping_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::InvalidData {
            malformed(e.to_string())
        } else {
            os_err(vm, e)
        }
    };
    match kind {
        HandleKind::Connection => {
            let (&[fd], &[r, w]) = (fds, extra) else { return Err(bad()) };
            let fd = dup(fd)?;
            Ok(Connection::new(fd, r != 0, w != 0).into_pyobject(vm))
        }
        HandleKind::Queue => {
            let (&[r, w, c], &[maxsize, kind]) = (fds, extra) else { return Err(bad()) };
            if ![r, w].iter().all(|&fd| ipc::is_socket_of_type(fd, libc::SOCK_SEQPACKET)) {
                return Err(malformed("its descriptors are not a queue's sockets".to_owned()));
            }
            let counters = SharedCounters::map(dup(c)?, queue::SLOTS).map_err(mapping_err)?;
            let shared = Arc::new(QueueShared { rfd: dup(r)?, wfd: Arc::new(dup(w)?), counters });
            let maxsize = u32::try_from(maxsize.clamp(0, i32::MAX as i64)).unwrap_or(0);
            let q = QueueBase::from_shared(shared, maxsize, kind as u8);
            let cls_name = match kind {
                1 => "JoinableQueue",
                2 => "SimpleQueue",
                _ => "Queue",
            };
            let cls = vm
                .import("multiprocessing.queues", 0)
                .and_then(|_| codec::resolve_global(vm, "multiprocessing.queues", cls_name))?
                .downcast::<PyType>()
                .map_err(|_| bad())?;
            Ok(q.into_ref_with_type(vm, cls)?.into())
        }
        HandleKind::SemLock => {
            let (&[fd], &[kind, maxvalue]) = (fds, extra) else { return Err(bad()) };
            let shared = SharedCounters::map(dup(fd)?, sync::SLOTS).map_err(mapping_err)?;
            Ok(SemLock::from_shared(Arc::new(shared), kind as i32, maxvalue as i32)
                .into_pyobject(vm))
        }
        HandleKind::SharedBuffer => {
            let (&[fd], &[len]) = (fds, extra) else { return Err(bad()) };
            let len =
                usize::try_from(len).map_err(|_| malformed(format!("negative size {len}")))?;
            let b = SharedBuffer::from_fd(dup(fd)?, len).map_err(mapping_err)?;
            Ok(b.into_pyobject(vm))
        }
    }
}

// ------------------------------------------------------------------------------------------
// The fork server's client side and its gate (the protocol itself: `crate::forkserver`)

use crate::forkserver as fsdoor;
use std::os::unix::ffi::OsStrExt;

/// The fork server's gate: one per server process, used only from its (single) loop thread.
fn gate_lock() -> std::sync::MutexGuard<'static, Option<fsdoor::Gate>> {
    static GATE: std::sync::Mutex<Option<fsdoor::Gate>> = std::sync::Mutex::new(None);
    GATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Like [`retry`], but hands the OS error back for the caller to classify.
fn io_retry<T>(vm: &VirtualMachine, f: impl FnMut() -> io::Result<T>) -> PyResult<io::Result<T>> {
    Vm(vm).run(f)
}

/// Fill `buf` from the fork server; `Ok(false)` if it hung up first.
fn recv_full(vm: &VirtualMachine, fd: RawFd, buf: &mut [u8]) -> PyResult<bool> {
    stream::recv_full(&Vm(vm), fd, buf).map_err(|e| stream_err(vm, e))
}

/// Send all of `data` to the fork server, `fds` attached to its first byte; `Ok(false)` if it
/// stopped reading (hung up).
fn send_all(vm: &VirtualMachine, fd: RawFd, data: &[u8], fds: &[RawFd]) -> PyResult<bool> {
    stream::send_all(&Vm(vm), fd, data, fds).map_err(|e| stream_err(vm, e))
}

/// Read the rest of an error record (its kind byte already read) into an OSError.
fn recv_refusal(vm: &VirtualMachine, fd: RawFd) -> PyBaseExceptionRef {
    let malformed = || vm.new_os_error("fork server: malformed error reply".to_owned());
    let mut head = [0u8; fsdoor::ERROR_HEAD_LEN];
    head[0] = fsdoor::REC_ERROR;
    match recv_full(vm, fd, &mut head[1..]) {
        Ok(true) => {}
        Ok(false) => return malformed(),
        Err(e) => return e,
    }
    let Some((errno, len)) = fsdoor::decode_error_head(&head) else { return malformed() };
    let mut msg = vec![0u8; len];
    match recv_full(vm, fd, &mut msg) {
        Ok(true) => {}
        Ok(false) => return malformed(),
        Err(e) => return e,
    }
    let errno = if errno > 0 { errno } else { libc::EIO };
    vm.new_errno_error(errno, String::from_utf8_lossy(&msg).into_owned()).upcast()
}

#[pymodule]
pub(crate) mod _procpy {
    use super::*;
    use rustpython_vm::builtins::{PyBytesRef, PyListRef};
    use rustpython_vm::function::{ArgBytesLike, ArgIntoFloat, OptionalArg};

    // ---------------------------------------------------------------- codec

    /// Encode an object (no OS handles allowed).
    #[pyfunction]
    fn dumps(obj: PyObjectRef, vm: &VirtualMachine) -> PyResult<PyBytesRef> {
        Ok(vm.ctx.new_bytes(codec::dumps(vm, &obj, codec::Handles::Refuse)?))
    }

    /// Decode bytes made by `dumps`.
    #[pyfunction]
    fn loads(data: ArgBytesLike, vm: &VirtualMachine) -> PyResult {
        data.with_ref(|b| codec::loads(vm, b, &[]))
    }

    /// Encode an object for a starting child: handles allowed, their descriptors returned.
    #[pyfunction]
    fn dumps_for_child(obj: PyObjectRef, vm: &VirtualMachine) -> PyResult {
        let mut fds = Vec::new();
        let b = codec::dumps(vm, &obj, codec::Handles::All(&mut fds))?;
        Ok(vm.new_tuple((vm.ctx.new_bytes(b), int_list(vm, &fds))).into())
    }

    /// `marshal.loads` that raises `ValueError` where RustPython's would panic (a crafted
    /// code object): used for .pyc mains.
    #[pyfunction]
    fn marshal_loads(data: ArgBytesLike, vm: &VirtualMachine) -> PyResult {
        let bytes = data.with_ref(|b| b.to_vec());
        codec::marshal_loads(vm, &bytes)
            .unwrap_or_else(|why| Err(vm.new_value_error(format!("bad marshal data ({why})"))))
    }

    /// Whether a spawn or forkserver child runs the parent's main again, given its
    /// `__spec__.name` and `__file__` (the codec decides what must travel by value by it too).
    #[pyfunction]
    fn children_rerun_main(
        spec_name: Option<rustpython_vm::builtins::PyStrRef>,
        path: Option<rustpython_vm::builtins::PyStrRef>,
    ) -> bool {
        let spec_name = spec_name.map(|s| s.to_string_lossy().into_owned());
        let path = path.map(|s| s.to_string_lossy().into_owned());
        codec::children_rerun_main(spec_name.as_deref(), path.as_deref())
    }

    /// How many `__main__` objects the codec's registry holds entries for (tests check that
    /// it stays bounded).
    #[pyfunction]
    fn _main_registry_size() -> usize {
        codec::registry_size()
    }

    /// Called before each fork: the codec notes what `__main__` holds at the first one.
    #[pyfunction]
    fn note_fork(vm: &VirtualMachine) {
        codec::note_fork(vm)
    }

    /// Decode what `dumps_for_child` made, given the descriptors that came with it.
    #[pyfunction]
    fn loads_with_fds(data: ArgBytesLike, fds: Vec<i32>, vm: &VirtualMachine) -> PyResult {
        data.with_ref(|b| codec::loads(vm, b, &fds))
    }

    /// type -> reducer, consulted by the codec before `__reduce_ex__` (see codec::extra_reducer).
    #[pyattr(name = "_reducers")]
    fn reducers(vm: &VirtualMachine) -> rustpython_vm::builtins::PyDictRef {
        vm.ctx.new_dict()
    }

    #[pyattr(name = "Connection")]
    fn connection_type(_vm: &VirtualMachine) -> PyTypeRef {
        use rustpython_vm::class::PyClassImpl;
        Connection::make_static_type()
    }

    /// `Pipe(duplex)` -> (conn1, conn2); with duplex=False conn1 only reads and conn2 only writes.
    #[pyfunction]
    fn pipe(
        duplex: OptionalArg<bool>,
        vm: &VirtualMachine,
    ) -> PyResult<(PyObjectRef, PyObjectRef)> {
        let (a, b, duplex) = if duplex.unwrap_or(true) {
            let (a, b) = ipc::socketpair(libc::SOCK_STREAM).map_err(|e| os_err(vm, e))?;
            (a, b, true)
        } else {
            let (r, w) = ipc::pipe().map_err(|e| os_err(vm, e))?;
            (r, w, false)
        };
        Ok((
            Connection::new(a, true, duplex).into_pyobject(vm),
            Connection::new(b, duplex, true).into_pyobject(vm),
        ))
    }

    #[pyattr(name = "SemLock")]
    fn semlock_type(_vm: &VirtualMachine) -> PyTypeRef {
        use rustpython_vm::class::PyClassImpl;
        SemLock::make_static_type()
    }

    /// The kernel's id of the calling thread (gettid), CPython's `_thread.get_native_id()`.
    #[pyfunction]
    fn get_native_id() -> i64 {
        i64::from(nix::unistd::gettid().as_raw())
    }

    /// `_multiprocessing.sem_unlink(name)`: remove a named SemLock's name (see sync.rs).
    #[pyfunction]
    fn sem_unlink(name: String, vm: &VirtualMachine) -> PyResult<()> {
        sync::sem_unlink(vm, &name)
    }

    /// The source text of procpy's frozen module `name`, or None (see sources.rs).
    #[pyfunction]
    fn frozen_source(name: String) -> Option<&'static str> {
        sources::frozen_source(&name)
    }

    #[pyattr(name = "SharedBuffer")]
    fn shared_buffer_type(_vm: &VirtualMachine) -> PyTypeRef {
        use rustpython_vm::class::PyClassImpl;
        SharedBuffer::make_static_type()
    }

    #[pyattr(name = "Descriptors")]
    fn descriptors_type(_vm: &VirtualMachine) -> PyTypeRef {
        use rustpython_vm::class::PyClassImpl;
        fds::Descriptors::make_static_type()
    }

    #[pyattr(name = "QueueBase")]
    fn queue_type(_vm: &VirtualMachine) -> PyTypeRef {
        use rustpython_vm::class::PyClassImpl;
        QueueBase::make_static_type()
    }

    /// Whether `procpy --progress` is on in this process (see `crate::switches`).
    #[pyfunction]
    fn progress_enabled() -> bool {
        crate::switches::get().progress
    }

    /// Whether this process records `procpy --trace` events; the hooks are then in
    /// `_procpy_trace` (imported only when tracing: an import costs even when unused).
    #[pyfunction]
    fn trace_enabled() -> bool {
        crate::trace::enabled()
    }

    // ---------------------------------------------------------------- shared memory

    /// Open the POSIX shared memory segment `name` (leading slash included), creating it with
    /// `size` bytes if `create`; returns (SharedBuffer over all of it, its size).
    #[pyfunction]
    fn shm_open(
        name: String,
        create: bool,
        size: isize,
        vm: &VirtualMachine,
    ) -> PyResult<(PyObjectRef, usize)> {
        if size < 0 {
            return Err(vm.new_value_error("'size' must be a positive integer".to_owned()));
        }
        let (buf, len) = shm::open(vm, &name, create, size as usize)?;
        Ok((buf.into_pyobject(vm), len))
    }

    /// Remove the segment `name` (leading slash included).
    #[pyfunction]
    fn shm_unlink(name: String, vm: &VirtualMachine) -> PyResult<()> {
        shm::unlink(vm, &name)
    }

    // ---------------------------------------------------------------- resource tracker

    /// Start this program tree's resource tracker if this process has none; its pipe's fd.
    #[pyfunction]
    fn tracker_getfd(vm: &VirtualMachine) -> PyResult<i32> {
        crate::tracker::ensure_running().map_err(|e| os_err(vm, e))
    }

    /// The tracker's pid if this process started it, else None.
    #[pyfunction]
    fn tracker_pid() -> Option<i32> {
        crate::tracker::pid()
    }

    /// Send one `CMD:name:rtype\n` line to the tracker (starting it if needed).
    #[pyfunction]
    fn tracker_send(msg: ArgBytesLike, vm: &VirtualMachine) -> PyResult<()> {
        msg.with_ref(crate::tracker::send).map_err(|e| os_err(vm, e))
    }

    /// Forget a tracker that died, so the next message starts a new one.
    #[pyfunction]
    fn tracker_reset() {
        crate::tracker::reset()
    }

    /// Flush every queue feeder of this process (called at process exit).
    #[pyfunction]
    fn _flush_queues() {
        super::queue::flush_all();
    }

    // ---------------------------------------------------------------- waiting

    /// `multiprocessing.connection.wait`: the objects (connections, queues' readers, sentinels,
    /// anything with `fileno()`) that are ready, in the order given.
    #[pyfunction]
    fn wait(
        object_list: PyObjectRef,
        timeout: OptionalArg<Option<ArgIntoFloat>>,
        vm: &VirtualMachine,
    ) -> PyResult<PyListRef> {
        let objs: Vec<PyObjectRef> = vm.extract_elements_with(&object_list, Ok)?;
        let mut fds = Vec::with_capacity(objs.len());
        for o in &objs {
            let fd: i32 = if let Some(c) = o.downcast_ref::<Connection>() {
                c.fd(vm)?
            } else if let Ok(i) = o.clone().try_into_value::<i32>(vm) {
                i
            } else {
                vm.call_method(o, "fileno", ())?.try_into_value(vm)?
            };
            fds.push((fd, libc::POLLIN));
        }
        let until = deadline(vm, timeout.flatten().map(ArgIntoFloat::into_float))?;
        loop {
            match vm.allow_threads(|| ipc::poll(&fds, ipc::remaining(until))) {
                Ok(r) => {
                    let ready = objs
                        .iter()
                        .zip(r)
                        .filter(|(_, rev)| *rev != 0)
                        .map(|(o, _)| o.clone())
                        .collect();
                    return Ok(vm.ctx.new_list(ready));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
                Err(e) => return Err(os_err(vm, e)),
            }
        }
    }

    // ---------------------------------------------------------------- processes

    /// A descriptor readable once process `pid` has exited (a sentinel).
    #[pyfunction]
    fn pidfd_open(pid: i32, vm: &VirtualMachine) -> PyResult<i32> {
        let fd = ipc::pidfd_open(pid).map_err(|e| os_err(vm, e))?;
        Ok(std::os::fd::IntoRawFd::into_raw_fd(fd))
    }

    /// Start `exe args...` as a fresh process and send it `payload` with `fds` over a private
    /// socket (its number in `PROCPY_BOOT_FD`). Returns (pid, our end of that socket), which the
    /// child sees hang up when we exit.
    #[pyfunction]
    fn spawn_child(
        exe: String,
        args: Vec<String>,
        payload: ArgBytesLike,
        fds: Vec<i32>,
        vm: &VirtualMachine,
    ) -> PyResult<(i32, i32)> {
        use std::os::unix::process::CommandExt;
        // Like CPython, the tree's resource tracker runs before any spawned child (or the fork
        // server) can create shared memory: the child inherits its pipe's write end.
        let tracker_fd = crate::tracker::ensure_running().map_err(|e| os_err(vm, e))?;
        let (ours, theirs) = ipc::socketpair(libc::SOCK_STREAM).map_err(|e| os_err(vm, e))?;
        let child_fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&args)
            .env("PROCPY_BOOT_FD", child_fd.to_string())
            .env(crate::tracker::TRACKER_FD_ENV, tracker_fd.to_string())
            .envs(crate::switches::get().child_env());
        if let Some(t) = crate::trace::clock() {
            // procpy --trace: the child's boot span starts at its exec, not at its main().
            cmd.env(crate::trace::EXEC_T0_ENV, format!("{t:.3}"));
        }
        // Between fork and exec: keep the boot socket and the tracker pipe across exec
        // (async-signal-safe calls only; this changes the child's descriptor table only).
        // SAFETY: the hook runs in the forked child before exec: it only calls fcntl (async-signal
        // safe), allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [child_fd, tracker_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            os_err(
                vm,
                ipc::doing(
                    e,
                    format!(
                        "cannot start child process {exe} (see multiprocessing.set_executable)"
                    ),
                ),
            )
        })?;
        drop(theirs);
        let pid = child.id() as i32;
        if let Err(e) = payload.with_ref(|p| send_with_fds_stream(vm, ours.as_raw_fd(), p, &fds)) {
            // Nobody would ever reap it: no zombie left behind.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok((pid, std::os::fd::IntoRawFd::into_raw_fd(ours)))
    }

    /// In a spawned child: the payload and descriptors the parent sent, plus the boot socket
    /// (kept open: it hangs up when the parent exits).
    #[pyfunction]
    fn recv_boot(vm: &VirtualMachine) -> PyResult {
        let fd: i32 =
            std::env::var("PROCPY_BOOT_FD").ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                vm.new_runtime_error(
                    "PROCPY_BOOT_FD is not set: this process was not started by procpy".to_owned(),
                )
            })?;
        // Grandchildren must not see our boot descriptor.
        // SAFETY: a spawned child calls this first thing in its boot, before any code of its own
        // starts a thread that could read the environment meanwhile.
        unsafe { std::env::remove_var("PROCPY_BOOT_FD") };
        if let Some(t) =
            std::env::var(crate::tracker::TRACKER_FD_ENV).ok().and_then(|s| s.parse().ok())
        {
            // SAFETY: as above.
            unsafe { std::env::remove_var(crate::tracker::TRACKER_FD_ENV) };
            crate::tracker::adopt(t);
        }
        // A number that is not a descriptor (-1 included) fails below as EBADF, not a panic.
        if let Ok(boot) = crate::ipc::borrow_fd(fd) {
            let _ = fcntl(boot, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
        let (payload, fds) = recv_with_fds_stream(vm, fd)?.ok_or_else(|| {
            vm.new_eof_error("parent closed the boot channel before sending".to_owned())
        })?;
        let fds: Vec<i32> = fds.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect();
        Ok(vm.new_tuple((vm.ctx.new_bytes(payload), int_list(vm, &fds), fd)).into())
    }

    // ---------------------------------------------------------------- fork server

    /// A listening socket for the fork server at a fresh path in a new directory of mode
    /// 0700: (listener fd, path). See `crate::forkserver`.
    #[pyfunction]
    fn forkserver_listen(vm: &VirtualMachine) -> PyResult<(i32, PyBytesRef)> {
        let (fd, path) = fsdoor::listen_private().map_err(|e| os_err(vm, e))?;
        let path = path.into_os_string().into_encoded_bytes();
        Ok((std::os::fd::IntoRawFd::into_raw_fd(fd), vm.ctx.new_bytes(path)))
    }

    /// Remove a fork server's socket and its private directory (what is gone already is fine).
    #[pyfunction]
    fn forkserver_cleanup(address: ArgBytesLike) {
        let path = address.with_ref(|b| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b)));
        fsdoor::remove_private(&path);
    }

    /// What the answer to the challenge covers before the nonce (for tests that speak the
    /// protocol by hand).
    #[pyattr(name = "_forkserver_challenge_tag")]
    fn forkserver_challenge_tag(vm: &VirtualMachine) -> PyBytesRef {
        vm.ctx.new_bytes(fsdoor::CHALLENGE_TAG.to_vec())
    }

    /// Ask the fork server at `address` for a child running `payload` (with `fds`), proving
    /// we hold `key`. Returns (pid, sentinel): the sentinel becomes readable when the server
    /// reports the child's exit status. When the server could not be reached or hung up before
    /// answering, returns why instead: 'refused' (no listener), 'missing' (no socket file) or
    /// 'hangup'; then no child was started (a child waits for a go on a pipe that comes with
    /// its pid, and that we write), and the caller may replace the server and retry. A refusal by the
    /// server raises OSError with its errno and message.
    #[pyfunction]
    fn forkserver_request(
        address: ArgBytesLike,
        key: ArgBytesLike,
        payload: ArgBytesLike,
        fds: Vec<i32>,
        vm: &VirtualMachine,
    ) -> PyResult {
        let hangup = || Ok(vm.ctx.new_str("hangup").into());
        let (addr, len) = address.with_ref(fsdoor::sockaddr).map_err(|e| os_err(vm, e))?;
        let sock = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| os_err(vm, e.into()))?;
        let fd = sock.as_raw_fd();
        let connected = io_retry(vm, || {
            // SAFETY: `addr` is a valid sockaddr_un of length `len`.
            if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })?;
        match connected {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(vm.ctx.new_str("missing").into())
            }
            Err(e) if stream::peer_gone(&e) => return Ok(vm.ctx.new_str("refused").into()),
            Err(e) => return Err(os_err(vm, e)),
        }
        // The listener must be the one this very process made: the kernel reports who called
        // listen() on it, which nobody can fake. (A server that cannot be impersonated: the
        // request may carry secrets.)
        let cred = fsdoor::peer_cred(fd).map_err(|e| os_err(vm, e))?;
        if cred.uid != nix::unistd::geteuid().as_raw() || cred.pid as u32 != std::process::id() {
            return Err(vm
                .new_errno_error(libc::EACCES, format!("fork server: the socket at {:?} is not this process's (peer pid {}, uid {})",
                    address.with_ref(|b| String::from_utf8_lossy(b).into_owned()), cred.pid, cred.uid))
                .upcast());
        }
        let mut kind = [0u8; 1];
        if !recv_full(vm, fd, &mut kind)? {
            return hangup();
        }
        match kind[0] {
            fsdoor::REC_CHALLENGE => {}
            fsdoor::REC_ERROR => return Err(recv_refusal(vm, fd)),
            _ => return Err(vm.new_os_error("fork server: malformed reply".to_owned())),
        }
        let mut nonce = [0u8; fsdoor::NONCE_LEN];
        if !recv_full(vm, fd, &mut nonce)? {
            return hangup();
        }
        let answer = key.with_ref(|k| fsdoor::answer(k, &nonce));
        let header = (payload.with_ref(|p| p.len()) as u64).to_be_bytes();
        // A server that stops reading (it refused the request) says why before it hangs up:
        // after a failed send, its reply is still read.
        let _sent = send_all(vm, fd, &answer, &[])?
            && send_all(vm, fd, &header, &fds)?
            && payload.with_ref(|p| send_all(vm, fd, p, &[]))?;
        // The pid record carries the pipe the child waits on (see `fsdoor::send_pid`).
        let got = io_retry(vm, || ipc::recv_with_fds(fd, &mut kind, 1, 0))?;
        let (n, mut go, _) = got.map_err(|e| os_err(vm, e))?;
        if n == 0 {
            return hangup();
        }
        match kind[0] {
            fsdoor::REC_PID => {}
            fsdoor::REC_ERROR => return Err(recv_refusal(vm, fd)),
            _ => return Err(vm.new_os_error("fork server: malformed reply".to_owned())),
        }
        let mut pid = [0u8; 8];
        if !recv_full(vm, fd, &mut pid)? {
            return hangup();
        }
        let pid = i64::from_be_bytes(pid);
        if pid <= 0 || pid > i32::MAX as i64 {
            return Err(vm.new_os_error(format!("fork server: malformed pid {pid}")));
        }
        let Some(go) = go.pop() else {
            return Err(vm.new_os_error("fork server: the reply carried no go pipe".to_owned()));
        };
        // Let the child run. A child already gone (EPIPE) is reported through the sentinel.
        let _ = io_retry(vm, || nix::unistd::write(&go, &[1u8]).map_err(io::Error::from))?;
        drop(go);
        Ok(vm.new_tuple((pid as i32, std::os::fd::IntoRawFd::into_raw_fd(sock))).into())
    }

    /// Fork server: serve `listener` (taking it over) with `key`; `address` is removed when
    /// the server closes the gate. One gate per process.
    #[pyfunction]
    fn forkserver_gate_open(
        listener: i32,
        key: ArgBytesLike,
        address: ArgBytesLike,
        vm: &VirtualMachine,
    ) -> PyResult<()> {
        if listener < 0 {
            return Err(vm.new_value_error("bad listener descriptor".to_owned()));
        }
        // SAFETY: the caller hands the listener over (it was received for this purpose).
        let listener = unsafe { OwnedFd::from_raw_fd(listener) };
        let path = address.with_ref(|b| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b)));
        let gate = key
            .with_ref(|k| fsdoor::Gate::new(listener, k, Some(path)))
            .map_err(|e| os_err(vm, e))?;
        *gate_lock() = Some(gate);
        Ok(())
    }

    /// Fork server: (descriptors to poll, seconds until the next deadline or None).
    #[pyfunction]
    fn forkserver_gate_watch(vm: &VirtualMachine) -> (PyObjectRef, Option<f64>) {
        let g = gate_lock();
        match g.as_ref() {
            Some(g) => (int_list(vm, &g.watch()), g.timeout().map(|d| d.as_secs_f64())),
            None => (int_list(vm, &[]), None),
        }
    }

    /// Fork server: advance the connections among `ready`, accept new ones, expire stalled
    /// ones; the completed requests as [(connection, body, descriptors)]. Never raises for a
    /// client's fault: that client is told and dropped.
    #[pyfunction]
    fn forkserver_gate_service(ready: Vec<i32>, vm: &VirtualMachine) -> PyObjectRef {
        let done = match gate_lock().as_mut() {
            Some(g) => vm.allow_threads(|| g.service(&ready)),
            None => Vec::new(),
        };
        let items = done
            .into_iter()
            .map(|r| {
                let fds: Vec<i32> =
                    r.fds.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect();
                let conn = std::os::fd::IntoRawFd::into_raw_fd(r.conn);
                vm.new_tuple((conn, vm.ctx.new_bytes(r.body), int_list(vm, &fds))).into()
            })
            .collect();
        vm.ctx.new_list(items).into()
    }

    /// Fork server: close the listener and every connection in progress and forget the key;
    /// with `remove`, also remove the socket and its directory (the server exiting, as
    /// opposed to a child it just forked).
    #[pyfunction]
    fn forkserver_gate_close(remove: bool) {
        if let Some(mut g) = gate_lock().take() {
            g.close(remove);
        }
    }

    /// Fork server, around `os.fork()`: block (`true`) or unblock SIGTERM and SIGHUP in this
    /// thread. A child forked with them blocked keeps one sent to it before it drops the
    /// server's handlers pending, instead of running the server's handler or losing it.
    #[pyfunction]
    fn forkserver_block_signals(block: bool, vm: &VirtualMachine) -> PyResult<()> {
        term_signals_mask(if block { SigmaskHow::SIG_BLOCK } else { SigmaskHow::SIG_UNBLOCK })
            .map_err(|e| os_err(vm, e))
    }

    /// Fork server's child, first thing: SIGTERM and SIGHUP back to their default action (at
    /// the C level: the server's Python handlers are not the child's), then unblocked, so one
    /// sent while the child was being forked ends it now, as it would a CPython child.
    #[pyfunction]
    fn forkserver_child_signals(vm: &VirtualMachine) -> PyResult<()> {
        for sig in [Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: SIG_DFL installs no handler of ours, so no async-signal-safety rule is at
            // stake.
            unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }
                .map_err(|e| os_err(vm, e.into()))?;
        }
        term_signals_mask(SigmaskHow::SIG_UNBLOCK).map_err(|e| os_err(vm, e))
    }

    /// Fork server: tell a client its child's pid.
    #[pyfunction]
    fn forkserver_reply_pid(conn: i32, pid: i32, go: i32, vm: &VirtualMachine) -> PyResult<()> {
        fsdoor::send_pid(conn, pid, go).map_err(|e| os_err(vm, e))
    }

    /// Fork server: tell a client its request failed (`errno`, `message`); a client that is
    /// gone is no error.
    #[pyfunction]
    fn forkserver_reply_error(conn: i32, errno: i32, message: String) {
        let _ = fsdoor::send_error(conn, errno, &message);
    }

    /// Write one big-endian i64 (a pid or an exit status) to `fd`.
    #[pyfunction]
    fn send_i64(fd: i32, value: i64, vm: &VirtualMachine) -> PyResult<()> {
        write_all(vm, fd, &value.to_be_bytes())
    }

    /// Read one big-endian i64 from `fd`; None at end of file.
    #[pyfunction]
    fn recv_i64(fd: i32, vm: &VirtualMachine) -> PyResult<Option<i64>> {
        let mut b = [0u8; 8];
        Ok(read_exact(vm, fd, &mut b)?.then(|| i64::from_be_bytes(b)))
    }

    /// A SharedBuffer over a duplicate of `fd`, which must be a sealed memory file of at least
    /// `size` bytes: how `heap.Arena` is rebuilt from a descriptor that came through a DupFd
    /// (a Queue or a Pipe, where a SharedBuffer handle itself may not travel).
    #[pyfunction]
    fn shared_buffer_from_fd(fd: i32, size: isize, vm: &VirtualMachine) -> PyResult {
        let size =
            usize::try_from(size).map_err(|_| vm.new_value_error("size must be non-negative"))?;
        let fd = ipc::dup(fd).map_err(|e| os_err(vm, e))?;
        let b = SharedBuffer::from_fd(fd, size).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                vm.new_value_error(format!("not a shared buffer's memory file: {e}"))
            } else {
                os_err(vm, e)
            }
        })?;
        Ok(b.into_pyobject(vm))
    }

    /// Close descriptors, ignoring ones already closed.
    #[pyfunction]
    fn close_fds(fds: Vec<i32>) {
        for fd in fds {
            if fd >= 0 {
                let _ = nix::unistd::close(fd);
            }
        }
    }

    /// 32 random bytes (the default authkey).
    #[pyfunction]
    fn random_key(vm: &VirtualMachine) -> PyResult<PyBytesRef> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| vm.new_os_error(e.to_string()))?;
        Ok(vm.ctx.new_bytes(k.to_vec()))
    }

    /// The path of the running procpy binary (the default executable for spawn).
    #[pyfunction]
    fn current_exe(vm: &VirtualMachine) -> PyResult<String> {
        std::env::current_exe().map(|p| p.to_string_lossy().into_owned()).map_err(|e| os_err(vm, e))
    }

    /// Die (SIGKILL) as soon as the process behind `sentinel` (a pidfd) exits: daemonic
    /// children and pool workers must not outlive a parent killed without clean-up (CPython
    /// orphans them: gh-111873). A Rust thread rather than PR_SET_PDEATHSIG, which fires when
    /// the forking *thread* exits and would not cover fork-server children at all.
    #[pyfunction]
    fn watch_parent(sentinel: i32, vm: &VirtualMachine) -> PyResult<()> {
        let fd = ipc::dup(sentinel).map_err(|e| os_err(vm, e))?;
        ipc::spawn_helper("procpy-parent-watch", move || loop {
            match ipc::poll(&[(fd.as_raw_fd(), libc::POLLIN)], None) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => {
                    let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
                }
            }
        })
        .map_err(|e| os_err(vm, e))?;
        Ok(())
    }
}
