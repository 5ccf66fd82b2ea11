//! `_procpy`: the native half of procpy's `multiprocessing`.
//!
//! Connections, queues, the codec entry points and the process-start primitives live here; the
//! Python half (`py/multiprocessing/`) only shapes them into CPython's API.

use crate::codec;
use rustpython_vm::{pyclass, pymodule};
use crate::ipc::{self, SharedCounters};
use crate::wire::HandleKind;
use crossbeam_channel::{Receiver, Sender};
use rustpython_vm::builtins::{PyBaseExceptionRef, PyType, PyTypeRef};
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyPayload, PyResult, VirtualMachine};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub(crate) use _procpy::module_def;

/// Largest payload sent inline in one queue record; bigger ones travel in a memory file.
const INLINE_MAX: usize = 32 * 1024;
/// Counter slots of a queue: items in the queue, unfinished tasks (JoinableQueue).
const COUNT: usize = 0;
const UNFINISHED: usize = 1;

/// Turn an OS error into Python's `OSError` (with errno).
fn os_err(vm: &VirtualMachine, e: io::Error) -> PyBaseExceptionRef {
    use rustpython_vm::convert::ToPyException;
    e.to_pyexception(vm)
}

/// Run a syscall, retrying after EINTR once Python signal handlers have run (they may raise,
/// e.g. KeyboardInterrupt, which then propagates).
fn retry<T>(vm: &VirtualMachine, mut f: impl FnMut() -> io::Result<T>) -> PyResult<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
            r => return r.map_err(|e| os_err(vm, e)),
        }
    }
}

fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)))
}

/// Wait until `fd` is readable (or hung up). `false` on timeout.
fn wait_readable(vm: &VirtualMachine, fd: RawFd, until: Option<Instant>) -> PyResult<bool> {
    loop {
        match ipc::poll(&[(fd, libc::POLLIN)], ipc::remaining(until)) {
            Ok(r) => return Ok(r[0] != 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
            Err(e) => return Err(os_err(vm, e)),
        }
    }
}

fn write_all(vm: &VirtualMachine, fd: RawFd, mut buf: &[u8]) -> PyResult<()> {
    while !buf.is_empty() {
        let n = retry(vm, || ipc::write(fd, buf))?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Fill `buf` completely. `Ok(false)` if end of file came before the first byte.
fn read_exact(vm: &VirtualMachine, fd: RawFd, buf: &mut [u8]) -> PyResult<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = retry(vm, || ipc::read(fd, &mut buf[got..]))?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(vm.new_os_error("got end of file during message".to_owned()));
        }
        got += n;
    }
    Ok(true)
}

/// Send `payload` on a stream socket with `fds` attached to its 8-byte length header.
fn send_with_fds_stream(vm: &VirtualMachine, sock: RawFd, payload: &[u8], fds: &[RawFd]) -> PyResult<()> {
    let header = (payload.len() as u64).to_be_bytes();
    let n = retry(vm, || ipc::send_with_fds(sock, &header, fds, 0))?;
    write_all(vm, sock, &header[n..])?;
    write_all(vm, sock, payload)
}

/// Receive what [`send_with_fds_stream`] sent. `None` on end of file.
fn recv_with_fds_stream(vm: &VirtualMachine, sock: RawFd) -> PyResult<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut header = [0u8; 8];
    let (n, fds, _) = retry(vm, || ipc::recv_with_fds(sock, &mut header, 253, 0))?;
    if n == 0 {
        return Ok(None);
    }
    if n < 8 && !read_exact(vm, sock, &mut header[n..])? {
        return Err(vm.new_os_error("got end of file during message".to_owned()));
    }
    let len = u64::from_be_bytes(header) as usize;
    let mut payload = vec![0u8; len];
    if len > 0 && !read_exact(vm, sock, &mut payload)? {
        return Err(vm.new_os_error("got end of file during message".to_owned()));
    }
    Ok(Some((payload, fds)))
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

/// Per-process writer thread of a queue, as CPython's feeder: `put` never blocks on the pipe.
struct Feeder {
    pid: u32,
    tx: Mutex<Option<Sender<Record>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records handed to the thread and not yet written.
    pending: Arc<AtomicUsize>,
    cancelled: AtomicBool,
}

impl Feeder {
    fn start(wfd: Arc<OwnedFd>) -> Arc<Feeder> {
        let (tx, rx): (Sender<Record>, Receiver<Record>) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicUsize::new(0));
        let p2 = pending.clone();
        let thread = std::thread::Builder::new()
            .name("procpy-queue-feeder".into())
            .spawn(move || {
                for (payload, fds) in rx {
                    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                    let _ = send_record(wfd.as_raw_fd(), &payload, &raw);
                    p2.fetch_sub(1, Ordering::AcqRel);
                }
            })
            .expect("spawn queue feeder thread");
        let f = Arc::new(Feeder {
            pid: std::process::id(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            pending,
            cancelled: AtomicBool::new(false),
        });
        FEEDERS.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&f));
        f
    }

    /// Stop accepting records; the thread drains what it has and ends.
    fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn join(&self) {
        self.close();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // A copy inherited through fork: its thread does not exist here, and its pthread handle
        // may by now name one of *our* threads (glibc reuses descriptors), so detaching it
        // (what dropping a JoinHandle does) would break a later join. Leak it instead.
        if self.pid != std::process::id() {
            if let Some(h) = self.thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
                std::mem::forget(h);
            }
        }
    }
}

/// Every feeder started in this process (and, after a fork, the parent's stale ones: skipped by pid).
static FEEDERS: Mutex<Vec<Weak<Feeder>>> = Mutex::new(Vec::new());

/// An encoded queue item and the descriptors of the Connections inside it (duplicated, so the
/// sender may close its own before the feeder writes).
type Record = (Vec<u8>, Vec<OwnedFd>);

/// Write one queue record: inline, or as a memory file when large, with `fds` attached.
/// Blocks while the socket is full.
fn send_record(fd: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut tries = 0;
    loop {
        let r = if payload.len() <= INLINE_MAX {
            let mut rec = Vec::with_capacity(payload.len() + 1);
            rec.push(0u8);
            rec.extend_from_slice(payload);
            ipc::send_with_fds(fd, &rec, fds, 0)
        } else {
            let mem = ipc::memfd_with(payload)?;
            let mut rec = vec![1u8];
            rec.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            let mut all = vec![mem.as_raw_fd()];
            all.extend_from_slice(fds);
            ipc::send_with_fds(fd, &rec, &all, 0)
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && tries < 1000 => tries += 1,
            r => return r.map(drop),
        }
    }
}

/// Parse a queue record into its payload and the descriptors of the handles inside it.
fn parse_record(buf: &[u8], mut fds: Vec<OwnedFd>) -> io::Result<Record> {
    match buf.first() {
        Some(0) => Ok((buf[1..].to_vec(), fds)),
        Some(1) if buf.len() == 9 && !fds.is_empty() => {
            let mem = fds.remove(0);
            let len = u64::from_le_bytes(buf[1..9].try_into().unwrap_or_default()) as usize;
            Ok((ipc::memfd_read(mem.as_raw_fd(), len)?, fds))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "malformed queue record")),
    }
}

/// Encode for a channel that carries descriptors: Connections inside `obj` travel as dups.
fn dumps_with_connections(vm: &VirtualMachine, obj: &PyObject) -> PyResult<Record> {
    let mut raw = Vec::new();
    let data = codec::dumps(vm, obj, codec::Handles::Connections(&mut raw))?;
    let fds = raw.into_iter().map(|fd| ipc::dup(fd).map_err(|e| os_err(vm, e))).collect::<PyResult<Vec<_>>>()?;
    Ok((data, fds))
}

/// Decode a message and release the descriptors that came with it (rebuilt handles hold dups).
fn loads_with(vm: &VirtualMachine, data: &[u8], fds: Vec<OwnedFd>) -> PyResult {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    codec::loads(vm, data, &raw)
}

/// The OS side of a queue, shared by every `Queue` object (in any process) for the same queue.
pub(crate) struct QueueShared {
    rfd: OwnedFd,
    wfd: Arc<OwnedFd>,
    counters: SharedCounters,
}

/// What `codec` needs to send a native handle to a child: its kind, descriptors and extras.
pub(crate) fn as_handle(obj: &PyObject) -> Option<(HandleKind, Vec<RawFd>, Vec<i64>)> {
    if let Some(c) = obj.downcast_ref::<_procpy::Connection>() {
        let fd = c.fd.load(Ordering::Acquire);
        return Some((HandleKind::Connection, vec![fd], vec![c.readable as i64, c.writable as i64]));
    }
    if let Some(q) = obj.downcast_ref::<_procpy::QueueBase>() {
        let s = &q.shared;
        return Some((
            HandleKind::Queue,
            vec![s.rfd.as_raw_fd(), s.wfd.as_raw_fd(), s.counters.fd()],
            vec![q.maxsize as i64, q.kind as i64],
        ));
    }
    None
}

/// Rebuild a native handle in the child from its (received) descriptors, which are duplicated.
pub(crate) fn rebuild_handle(vm: &VirtualMachine, kind: HandleKind, fds: &[RawFd], extra: &[i64]) -> PyResult {
    let dup = |fd: RawFd| ipc::dup(fd).map_err(|e| os_err(vm, e));
    let bad = || codec::unpickling_error(vm, "malformed message: bad handle".into());
    match kind {
        HandleKind::Connection => {
            let (&[fd], &[r, w]) = (fds, extra) else { return Err(bad()) };
            let fd = dup(fd)?;
            Ok(_procpy::Connection::new(fd, r != 0, w != 0).into_pyobject(vm))
        }
        HandleKind::Queue => {
            let (&[r, w, c], &[maxsize, kind]) = (fds, extra) else { return Err(bad()) };
            let counters = SharedCounters::map(dup(c)?, 2).map_err(|e| os_err(vm, e))?;
            let shared = Arc::new(QueueShared { rfd: dup(r)?, wfd: Arc::new(dup(w)?), counters });
            let q = _procpy::QueueBase::from_shared(shared, maxsize as u32, kind as u8);
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
    }
}

#[pymodule]
pub(crate) mod _procpy {
    use super::*;
    use rustpython_vm::builtins::{PyBytesRef, PyListRef};
    use rustpython_vm::common::lock::PyMutex;
    use rustpython_vm::function::{ArgBytesLike, ArgIntoFloat, ArgMemoryBuffer, FuncArgs, OptionalArg};
    use rustpython_vm::types::{Constructor, Representable};
    use rustpython_vm::{FromArgs, Py};

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

    /// Decode what `dumps_for_child` made, given the descriptors that came with it.
    #[pyfunction]
    fn loads_with_fds(data: ArgBytesLike, fds: Vec<i32>, vm: &VirtualMachine) -> PyResult {
        data.with_ref(|b| codec::loads(vm, b, &fds))
    }

    // ---------------------------------------------------------------- Connection

    #[pyattr]
    #[pyclass(name = "Connection", module = "multiprocessing.connection")]
    #[derive(Debug, PyPayload)]
    pub struct Connection {
        pub(crate) fd: AtomicI32,
        pub(crate) readable: bool,
        pub(crate) writable: bool,
        /// A Unix socket (duplex Pipe) can carry descriptors; a pipe cannot.
        socket: bool,
    }

    impl Connection {
        pub(crate) fn new(fd: OwnedFd, readable: bool, writable: bool) -> Self {
            let socket = ipc::is_socket(fd.as_raw_fd());
            Connection { fd: AtomicI32::new(std::os::fd::IntoRawFd::into_raw_fd(fd)), readable, writable, socket }
        }

        fn fd(&self, vm: &VirtualMachine) -> PyResult<RawFd> {
            match self.fd.load(Ordering::Acquire) {
                -1 => Err(vm.new_os_error("handle is closed".to_owned())),
                fd => Ok(fd),
            }
        }

        fn rfd(&self, vm: &VirtualMachine) -> PyResult<RawFd> {
            let fd = self.fd(vm)?;
            if !self.readable {
                return Err(vm.new_os_error("connection is write-only".to_owned()));
            }
            Ok(fd)
        }

        fn wfd(&self, vm: &VirtualMachine) -> PyResult<RawFd> {
            let fd = self.fd(vm)?;
            if !self.writable {
                return Err(vm.new_os_error("connection is read-only".to_owned()));
            }
            Ok(fd)
        }

        /// One frame: 4-byte big-endian length (or -1 and 8 bytes for huge ones), then bytes;
        /// `fds` ride on the first byte (sockets only).
        fn send_frame(&self, data: &[u8], fds: &[RawFd], vm: &VirtualMachine) -> PyResult<()> {
            let fd = self.wfd(vm)?;
            let mut head = Vec::with_capacity(12 + data.len().min(64 * 1024));
            if data.len() <= 0x7fff_ffff {
                head.extend_from_slice(&(data.len() as u32).to_be_bytes());
            } else {
                head.extend_from_slice(&(-1i32).to_be_bytes());
                head.extend_from_slice(&(data.len() as u64).to_be_bytes());
            }
            // Small frames go out in one write (as CPython does below 16 KiB).
            let inline = data.len() <= 64 * 1024;
            if inline {
                head.extend_from_slice(data);
            }
            let mut sent = 0;
            if !fds.is_empty() {
                sent = retry(vm, || ipc::send_with_fds(fd, &head, fds, 0))?;
            }
            write_all(vm, fd, &head[sent..])?;
            if !inline {
                write_all(vm, fd, data)?;
            }
            Ok(())
        }

        /// Fill `buf`, collecting descriptors that arrive with it (sockets only).
        fn read_exact_fds(&self, fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>, vm: &VirtualMachine) -> PyResult<bool> {
            if !self.socket {
                return read_exact(vm, fd, buf);
            }
            let mut got = 0;
            while got < buf.len() {
                let (n, more, _) = retry(vm, || ipc::recv_with_fds(fd, &mut buf[got..], 253, 0))?;
                fds.extend(more);
                if n == 0 {
                    if got == 0 {
                        return Ok(false);
                    }
                    return Err(vm.new_os_error("got end of file during message".to_owned()));
                }
                got += n;
            }
            Ok(true)
        }

        fn recv_frame(&self, maxsize: Option<usize>, vm: &VirtualMachine) -> PyResult<Record> {
            let fd = self.rfd(vm)?;
            let mut fds = Vec::new();
            let mut h = [0u8; 4];
            if !self.read_exact_fds(fd, &mut h, &mut fds, vm)? {
                return Err(vm.new_eof_error(String::new()));
            }
            let mut len = i32::from_be_bytes(h) as i64;
            if len == -1 {
                let mut h8 = [0u8; 8];
                if !read_exact(vm, fd, &mut h8)? {
                    return Err(vm.new_os_error("got end of file during message".to_owned()));
                }
                len = u64::from_be_bytes(h8).min(i64::MAX as u64) as i64;
            }
            if len < 0 {
                return Err(vm.new_os_error("bad message length".to_owned()));
            }
            let len = len as usize;
            if maxsize.is_some_and(|m| len > m) {
                self.do_close();
                return Err(vm.new_os_error("bad message length".to_owned()));
            }
            let mut buf = vec![0u8; len];
            if len > 0 && !self.read_exact_fds(fd, &mut buf, &mut fds, vm)? {
                return Err(vm.new_os_error("got end of file during message".to_owned()));
            }
            Ok((buf, fds))
        }

        fn do_close(&self) {
            let fd = self.fd.swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        }
    }

    impl Drop for Connection {
        fn drop(&mut self) {
            self.do_close();
        }
    }

    #[derive(FromArgs)]
    struct SendBytesArgs {
        #[pyarg(any)]
        buf: ArgBytesLike,
        #[pyarg(any, default = 0)]
        offset: isize,
        #[pyarg(any, default)]
        size: Option<isize>,
    }

    #[pyclass(with(Representable))]
    impl Connection {
        #[pymethod]
        fn send(&self, obj: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
            self.wfd(vm)?;
            if !self.socket {
                let data = codec::dumps(vm, &obj, codec::Handles::Refuse)?;
                return self.send_frame(&data, &[], vm);
            }
            let (data, fds) = dumps_with_connections(vm, &obj)?;
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            self.send_frame(&data, &raw, vm)
        }

        #[pymethod]
        fn recv(&self, vm: &VirtualMachine) -> PyResult {
            let (data, fds) = self.recv_frame(None, vm)?;
            loads_with(vm, &data, fds)
        }

        #[pymethod]
        fn send_bytes(&self, args: SendBytesArgs, vm: &VirtualMachine) -> PyResult<()> {
            self.wfd(vm)?;
            args.buf.with_ref(|b| {
                let n = b.len() as isize;
                if args.offset < 0 {
                    return Err(vm.new_value_error("offset is negative"));
                }
                if n < args.offset {
                    return Err(vm.new_value_error("buffer length < offset"));
                }
                let size = match args.size {
                    None => n - args.offset,
                    Some(s) if s < 0 => return Err(vm.new_value_error("size is negative")),
                    Some(s) if args.offset + s > n => return Err(vm.new_value_error("buffer length < offset + size")),
                    Some(s) => s,
                };
                self.send_frame(&b[args.offset as usize..(args.offset + size) as usize], &[], vm)
            })
        }

        #[pymethod]
        fn recv_bytes(&self, maxlength: OptionalArg<Option<isize>>, vm: &VirtualMachine) -> PyResult<PyBytesRef> {
            let max = match maxlength.flatten() {
                Some(m) if m < 0 => return Err(vm.new_value_error("negative maxlength")),
                m => m.map(|m| m as usize),
            };
            Ok(vm.ctx.new_bytes(self.recv_frame(max, vm)?.0))
        }

        #[pymethod]
        fn recv_bytes_into(&self, buf: ArgMemoryBuffer, offset: OptionalArg<isize>, vm: &VirtualMachine) -> PyResult<usize> {
            let offset = offset.unwrap_or(0);
            let cap = buf.len() as isize;
            if offset < 0 {
                return Err(vm.new_value_error("negative offset"));
            }
            if offset > cap {
                return Err(vm.new_value_error("offset too large"));
            }
            let (data, _) = self.recv_frame(None, vm)?;
            if data.len() as isize > cap - offset {
                let cls = mp_exception(vm, "BufferTooShort");
                return Err(vm.new_exception(cls, vec![vm.ctx.new_bytes(data).into()]));
            }
            let mut b = buf.borrow_buf_mut();
            b[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            Ok(data.len())
        }

        #[pymethod]
        fn poll(&self, timeout: OptionalArg<Option<ArgIntoFloat>>, vm: &VirtualMachine) -> PyResult<bool> {
            let fd = self.rfd(vm)?;
            let timeout = match timeout {
                OptionalArg::Missing => Some(0.0),
                OptionalArg::Present(t) => t.map(ArgIntoFloat::into_float),
            };
            wait_readable(vm, fd, deadline(timeout))
        }

        #[pymethod]
        fn close(&self) {
            self.do_close();
        }

        #[pymethod]
        fn fileno(&self, vm: &VirtualMachine) -> PyResult<i32> {
            self.fd(vm)
        }

        #[pygetset]
        fn closed(&self) -> bool {
            self.fd.load(Ordering::Acquire) == -1
        }

        #[pygetset]
        fn readable(&self) -> bool {
            self.readable
        }

        #[pygetset]
        fn writable(&self) -> bool {
            self.writable
        }

        #[pymethod]
        fn __enter__(zelf: PyObjectRef) -> PyObjectRef {
            zelf
        }

        #[pymethod]
        fn __exit__(&self, _args: FuncArgs) {
            self.do_close();
        }
    }

    impl Representable for Connection {
        fn repr_str(zelf: &Py<Self>, _vm: &VirtualMachine) -> PyResult<String> {
            Ok(format!("<multiprocessing.connection.Connection fd={}>", zelf.fd.load(Ordering::Acquire)))
        }
    }

    /// `Pipe(duplex)` -> (conn1, conn2); with duplex=False conn1 only reads and conn2 only writes.
    #[pyfunction]
    fn pipe(duplex: OptionalArg<bool>, vm: &VirtualMachine) -> PyResult<(PyObjectRef, PyObjectRef)> {
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

    // ---------------------------------------------------------------- queues

    /// Base of Queue (kind 0), JoinableQueue (kind 1) and SimpleQueue (kind 2).
    #[pyattr]
    #[pyclass(name = "QueueBase", module = "multiprocessing.queues")]
    #[derive(PyPayload)]
    pub struct QueueBase {
        pub(crate) shared: Arc<QueueShared>,
        pub(crate) maxsize: u32,
        pub(crate) kind: u8,
        closed: AtomicBool,
        feeder: PyMutex<Option<Arc<Feeder>>>,
    }

    impl std::fmt::Debug for QueueBase {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "QueueBase(kind={})", self.kind)
        }
    }

    impl QueueBase {
        pub(crate) fn from_shared(shared: Arc<QueueShared>, maxsize: u32, kind: u8) -> Self {
            QueueBase { shared, maxsize, kind, closed: AtomicBool::new(false), feeder: PyMutex::new(None) }
        }

        fn check_open(zelf: &Py<Self>, vm: &VirtualMachine) -> PyResult<()> {
            if zelf.closed.load(Ordering::Acquire) {
                if zelf.kind == 2 {
                    // SimpleQueue has no closed check of its own in CPython: its pipe says so.
                    return Err(vm.new_os_error("handle is closed".to_owned()));
                }
                let r = zelf.as_object().repr(vm)?;
                return Err(vm.new_value_error(format!("Queue {} is closed", r.to_string_lossy())));
            }
            Ok(())
        }

        /// This process's feeder (a fork child starts its own; the parent's thread is not here).
        fn feeder(&self) -> Arc<Feeder> {
            let mut g = self.feeder.lock();
            let pid = std::process::id();
            match &*g {
                Some(f) if f.pid == pid => f.clone(),
                _ => {
                    let f = Feeder::start(self.shared.wfd.clone());
                    *g = Some(f.clone());
                    f
                }
            }
        }

        fn own_pending(&self) -> usize {
            let g = self.feeder.lock();
            match &*g {
                Some(f) if f.pid == std::process::id() => f.pending.load(Ordering::Acquire),
                _ => 0,
            }
        }

        fn count(&self) -> &std::sync::atomic::AtomicU32 {
            self.shared.counters.get(COUNT)
        }

        /// Take a slot for one item, waiting while the queue is full.
        fn acquire_slot(&self, block: bool, until: Option<Instant>, vm: &VirtualMachine) -> PyResult<()> {
            if self.maxsize == 0 {
                self.count().fetch_add(1, Ordering::AcqRel);
                return Ok(());
            }
            loop {
                let c = self.count().load(Ordering::Acquire);
                if c < self.maxsize {
                    if self.count().compare_exchange(c, c + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return Ok(());
                    }
                    continue;
                }
                let left = ipc::remaining(until);
                if !block || left == Some(Duration::ZERO) {
                    return Err(queue_exception(vm, "Full"));
                }
                // Bounded naps so Ctrl-C is seen even if no wake-up comes.
                let nap = left.map_or(Duration::from_millis(200), |l| l.min(Duration::from_millis(200)));
                match self.shared.counters.wait(COUNT, c, Some(nap)) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
                    Err(e) => return Err(os_err(vm, e)),
                    Ok(()) => vm.check_signals()?,
                }
            }
        }

        fn release_slot(&self) {
            self.count().fetch_sub(1, Ordering::AcqRel);
            if self.maxsize > 0 {
                self.shared.counters.wake_all(COUNT);
            }
        }

        /// Receive one record, or `None` on timeout.
        fn recv_record(&self, block: bool, until: Option<Instant>, vm: &VirtualMachine) -> PyResult<Option<Record>> {
            let fd = self.shared.rfd.as_raw_fd();
            let mut buf = vec![0u8; INLINE_MAX + 16];
            let until = if block { until } else { Some(Instant::now()) };
            loop {
                // Our own feeder may still hold records we just put: keep looking in short steps
                // (past the deadline) rather than report empty a queue this process filled.
                let pending = self.own_pending() > 0;
                let wait_until = if pending { Some(Instant::now() + Duration::from_millis(1)) } else { until };
                if wait_readable(vm, fd, wait_until)? {
                    match ipc::recv_with_fds(fd, &mut buf, 253, libc::MSG_DONTWAIT) {
                        Ok((n, fds, _)) => {
                            return parse_record(&buf[..n], fds).map(Some).map_err(|e| os_err(vm, e));
                        }
                        // Another consumer took it first.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
                        Err(e) => return Err(os_err(vm, e)),
                    }
                }
                if !pending && until.is_some_and(|u| Instant::now() >= u) {
                    return Ok(None);
                }
            }
        }
    }

    #[derive(FromArgs)]
    pub struct QueueNewArgs {
        #[pyarg(any, default = 0)]
        maxsize: i64,
        #[pyarg(any, default = 0)]
        kind: u8,
    }

    impl Constructor for QueueBase {
        type Args = QueueNewArgs;

        fn py_new(_cls: &Py<PyType>, args: Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
            let (r, w) = ipc::socketpair(libc::SOCK_SEQPACKET).map_err(|e| os_err(vm, e))?;
            let counters = SharedCounters::create(2).map_err(|e| os_err(vm, e))?;
            let maxsize = if args.maxsize <= 0 { 0 } else { args.maxsize.min(i32::MAX as i64) as u32 };
            // Writers use one end, readers the other; records keep their boundaries.
            let shared = Arc::new(QueueShared { rfd: w, wfd: Arc::new(r), counters });
            Ok(QueueBase::from_shared(shared, maxsize, args.kind))
        }
    }

    #[derive(FromArgs)]
    struct PutArgs {
        #[pyarg(any)]
        obj: PyObjectRef,
        #[pyarg(any, default = true)]
        block: bool,
        #[pyarg(any, default)]
        timeout: Option<ArgIntoFloat>,
    }

    #[derive(FromArgs)]
    struct GetArgs {
        #[pyarg(any, default = true)]
        block: bool,
        #[pyarg(any, default)]
        timeout: Option<ArgIntoFloat>,
    }

    #[pyclass(with(Constructor), flags(BASETYPE))]
    impl QueueBase {
        #[pymethod]
        fn put(zelf: &Py<Self>, args: PutArgs, vm: &VirtualMachine) -> PyResult<()> {
            Self::check_open(zelf, vm)?;
            let timeout = args.timeout.map(ArgIntoFloat::into_float);
            if timeout.is_some_and(|t| t < 0.0) {
                return Err(vm.new_value_error("'timeout' must be a non-negative number"));
            }
            // Encode first: an unencodable object raises here and leaves the queue untouched.
            let (data, fds) = dumps_with_connections(vm, &args.obj)?;
            zelf.acquire_slot(args.block, deadline(timeout), vm)?;
            if zelf.kind == 1 {
                zelf.shared.counters.get(UNFINISHED).fetch_add(1, Ordering::AcqRel);
            }
            if zelf.kind == 2 {
                // SimpleQueue: written synchronously, as CPython's.
                let fd = zelf.shared.wfd.as_raw_fd();
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                return retry(vm, || send_record(fd, &data, &raw)).inspect_err(|_| zelf.release_slot());
            }
            let f = zelf.feeder();
            f.pending.fetch_add(1, Ordering::AcqRel);
            let sent = f.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|tx| tx.send((data, fds)).is_ok());
            if sent != Some(true) {
                f.pending.fetch_sub(1, Ordering::AcqRel);
                zelf.release_slot();
                return Err(vm.new_value_error("Queue is closed"));
            }
            Ok(())
        }

        #[pymethod]
        fn put_nowait(zelf: &Py<Self>, obj: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
            Self::put(zelf, PutArgs { obj, block: false, timeout: None }, vm)
        }

        #[pymethod]
        fn get(zelf: &Py<Self>, args: GetArgs, vm: &VirtualMachine) -> PyResult {
            Self::check_open(zelf, vm)?;
            let timeout = args.timeout.map(ArgIntoFloat::into_float);
            if timeout.is_some_and(|t| t < 0.0) {
                return Err(vm.new_value_error("'timeout' must be a non-negative number"));
            }
            match zelf.recv_record(args.block, deadline(timeout), vm)? {
                None => Err(queue_exception(vm, "Empty")),
                Some((payload, fds)) => {
                    zelf.release_slot();
                    loads_with(vm, &payload, fds)
                }
            }
        }

        #[pymethod]
        fn get_nowait(zelf: &Py<Self>, vm: &VirtualMachine) -> PyResult {
            Self::get(zelf, GetArgs { block: false, timeout: None }, vm)
        }

        #[pymethod]
        fn qsize(&self) -> u32 {
            self.count().load(Ordering::Acquire)
        }

        #[pymethod]
        fn empty(&self) -> bool {
            self.qsize() == 0
        }

        #[pymethod]
        fn full(&self) -> bool {
            self.maxsize > 0 && self.qsize() >= self.maxsize
        }

        #[pymethod]
        fn close(&self) {
            self.closed.store(true, Ordering::Release);
            if let Some(f) = &*self.feeder.lock() {
                f.close();
            }
        }

        #[pymethod]
        fn join_thread(zelf: &Py<Self>, vm: &VirtualMachine) -> PyResult<()> {
            if !zelf.closed.load(Ordering::Acquire) {
                let r = zelf.as_object().repr(vm)?;
                return Err(vm.new_exception_msg(
                    vm.ctx.exceptions.assertion_error.to_owned(),
                    format!("Queue {} not closed", r.to_string_lossy()).into(),
                ));
            }
            let f = zelf.feeder.lock().clone();
            if let Some(f) = f.filter(|f| f.pid == std::process::id()) {
                f.join();
            }
            Ok(())
        }

        #[pymethod]
        fn cancel_join_thread(&self) {
            if let Some(f) = &*self.feeder.lock() {
                f.cancelled.store(true, Ordering::Release);
            }
        }

        #[pymethod]
        fn _task_done(&self, vm: &VirtualMachine) -> PyResult<()> {
            let u = self.shared.counters.get(UNFINISHED);
            loop {
                let c = u.load(Ordering::Acquire);
                if c == 0 {
                    return Err(vm.new_value_error("task_done() called too many times"));
                }
                if u.compare_exchange(c, c - 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    if c == 1 {
                        self.shared.counters.wake_all(UNFINISHED);
                    }
                    return Ok(());
                }
            }
        }

        #[pymethod]
        fn _join(&self, vm: &VirtualMachine) -> PyResult<()> {
            loop {
                let c = self.shared.counters.get(UNFINISHED).load(Ordering::Acquire);
                if c == 0 {
                    return Ok(());
                }
                match self.shared.counters.wait(UNFINISHED, c, Some(Duration::from_millis(200))) {
                    Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(os_err(vm, e)),
                    _ => vm.check_signals()?,
                }
            }
        }

        #[pygetset]
        fn _maxsize(&self) -> u32 {
            self.maxsize
        }
    }

    /// Flush every queue feeder of this process (called at process exit, as CPython's finalizers).
    #[pyfunction]
    fn _flush_queues() {
        let pid = std::process::id();
        let feeders: Vec<Arc<Feeder>> = {
            let mut g = FEEDERS.lock().unwrap_or_else(|e| e.into_inner());
            g.retain(|w| w.strong_count() > 0);
            g.iter().filter_map(|w| w.upgrade()).filter(|f| f.pid == pid).collect()
        };
        for f in feeders {
            if f.cancelled.load(Ordering::Acquire) {
                f.close();
            } else {
                f.join();
            }
        }
    }

    // ---------------------------------------------------------------- waiting

    /// `multiprocessing.connection.wait`: the objects (connections, queues' readers, sentinels,
    /// anything with `fileno()`) that are ready, in the order given.
    #[pyfunction]
    fn wait(object_list: PyObjectRef, timeout: OptionalArg<Option<ArgIntoFloat>>, vm: &VirtualMachine) -> PyResult<PyListRef> {
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
        let until = deadline(timeout.flatten().map(ArgIntoFloat::into_float));
        loop {
            match ipc::poll(&fds, ipc::remaining(until)) {
                Ok(r) => {
                    let ready = objs.iter().zip(r).filter(|(_, rev)| *rev != 0).map(|(o, _)| o.clone()).collect();
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
    fn spawn_child(exe: String, args: Vec<String>, payload: ArgBytesLike, fds: Vec<i32>, vm: &VirtualMachine) -> PyResult<(i32, i32)> {
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = ipc::socketpair(libc::SOCK_STREAM).map_err(|e| os_err(vm, e))?;
        let child_fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&args).env("PROCPY_BOOT_FD", child_fd.to_string());
        // Between fork and exec: keep the boot socket across exec (async-signal-safe calls only).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(child_fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            vm.new_os_error(format!("cannot start child process {}: {e} (see multiprocessing.set_executable)", exe))
        })?;
        drop(theirs);
        let pid = child.id() as i32;
        payload.with_ref(|p| send_with_fds_stream(vm, ours.as_raw_fd(), p, &fds))?;
        Ok((pid, std::os::fd::IntoRawFd::into_raw_fd(ours)))
    }

    /// In a spawned child: the payload and descriptors the parent sent, plus the boot socket
    /// (kept open: it hangs up when the parent exits).
    #[pyfunction]
    fn recv_boot(vm: &VirtualMachine) -> PyResult {
        let fd: i32 = std::env::var("PROCPY_BOOT_FD")
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| vm.new_runtime_error("PROCPY_BOOT_FD is not set: this process was not started by procpy".to_owned()))?;
        // Grandchildren must not see our boot descriptor.
        unsafe { std::env::remove_var("PROCPY_BOOT_FD") };
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        let (payload, fds) = recv_with_fds_stream(vm, fd)?
            .ok_or_else(|| vm.new_eof_error("parent closed the boot channel before sending".to_owned()))?;
        let fds: Vec<i32> = fds.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect();
        Ok(vm.new_tuple((vm.ctx.new_bytes(payload), int_list(vm, &fds), fd)).into())
    }

    /// A listening socket for the fork server, on a fresh abstract-namespace address.
    #[pyfunction]
    fn forkserver_listen(vm: &VirtualMachine) -> PyResult<(i32, PyBytesRef)> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| vm.new_os_error(e.to_string()))?;
        let name = format!("\0procpy-forkserver-{}-{:016x}", std::process::id(), u64::from_le_bytes(rnd));
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err(vm, io::Error::last_os_error()));
        }
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = unix_addr(name.as_bytes());
        if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) } < 0
            || unsafe { libc::listen(fd, 128) } < 0
        {
            return Err(os_err(vm, io::Error::last_os_error()));
        }
        Ok((std::os::fd::IntoRawFd::into_raw_fd(owned), vm.ctx.new_bytes(name.into_bytes())))
    }

    /// Ask the fork server at `address` for a child running `payload`; returns (pid, sentinel):
    /// the sentinel becomes readable when the server reports the child's exit status.
    #[pyfunction]
    fn forkserver_request(address: ArgBytesLike, payload: ArgBytesLike, fds: Vec<i32>, vm: &VirtualMachine) -> PyResult<(i32, i32)> {
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err(vm, io::Error::last_os_error()));
        }
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = address.with_ref(unix_addr);
        retry(vm, || {
            if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })?;
        payload.with_ref(|p| send_with_fds_stream(vm, fd, p, &fds))?;
        let mut pid = [0u8; 8];
        if !read_exact(vm, fd, &mut pid)? {
            return Err(vm.new_os_error("the fork server closed the connection before starting the child".to_owned()));
        }
        Ok((i64::from_be_bytes(pid) as i32, std::os::fd::IntoRawFd::into_raw_fd(sock)))
    }

    fn unix_addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let n = name.len().min(addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(&name[..n]) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + n;
        (addr, len as libc::socklen_t)
    }

    /// Fork server: accept one request; returns (connection fd, payload, descriptors) or None
    /// if the client went away before sending.
    #[pyfunction]
    fn forkserver_accept(listener: i32, vm: &VirtualMachine) -> PyResult {
        let fd = retry(vm, || {
            let r = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
        })?;
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        match recv_with_fds_stream(vm, fd)? {
            None => Ok(vm.ctx.none()),
            Some((payload, fds)) => {
                let fds: Vec<i32> = fds.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect();
                let conn = std::os::fd::IntoRawFd::into_raw_fd(conn);
                Ok(vm.new_tuple((conn, vm.ctx.new_bytes(payload), int_list(vm, &fds))).into())
            }
        }
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

    /// Close descriptors, ignoring ones already closed.
    #[pyfunction]
    fn close_fds(fds: Vec<i32>) {
        for fd in fds {
            if fd >= 0 {
                unsafe { libc::close(fd) };
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
        std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| os_err(vm, e))
    }

    /// Kill this process with `signal` when its parent dies (Linux's parent-death signal).
    #[pyfunction]
    fn set_parent_death_signal(signal: i32, vm: &VirtualMachine) -> PyResult<()> {
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } < 0 {
            return Err(os_err(vm, io::Error::last_os_error()));
        }
        Ok(())
    }
}
