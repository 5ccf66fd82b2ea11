//! `Connection`: one end of a `Pipe()`, framed like CPython's (4-byte big-endian length).

use super::{
    deadline, dumps_with_connections, eof_error, fill, loads_with, mp_exception, read_frame_body,
    retry, wait_readable, wait_readable_spin, write_all, Record,
};
use crate::{codec, ipc, trace};
use rustpython_vm::builtins::PyBytesRef;
use rustpython_vm::builtins::PyType;
use rustpython_vm::function::{ArgBytesLike, ArgIntoFloat, ArgMemoryBuffer, FuncArgs, OptionalArg};
use rustpython_vm::types::{Constructor, Representable};
use rustpython_vm::{pyclass, FromArgs, Py, PyObjectRef, PyPayload, PyResult, VirtualMachine};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

#[pyclass(name = "Connection", module = "multiprocessing.connection")]
#[derive(Debug, PyPayload)]
pub struct Connection {
    pub(crate) fd: AtomicI32,
    /// Cleared (as CPython does) when a duplex connection meets a message over `maxlength`:
    /// the stream is then out of step, but the connection can still send.
    pub(crate) readable: AtomicBool,
    pub(crate) writable: bool,
    /// A Unix socket (duplex Pipe) can carry descriptors; a pipe cannot.
    socket: bool,
}

impl Connection {
    pub(crate) fn new(fd: OwnedFd, readable: bool, writable: bool) -> Self {
        let socket = ipc::is_unix_socket(fd.as_raw_fd());
        let fd = AtomicI32::new(std::os::fd::IntoRawFd::into_raw_fd(fd));
        Connection { fd, readable: AtomicBool::new(readable), writable, socket }
    }

    pub(super) fn fd(&self, vm: &VirtualMachine) -> PyResult<RawFd> {
        match self.fd.load(Ordering::Acquire) {
            -1 => Err(vm.new_os_error("handle is closed".to_owned())),
            fd => Ok(fd),
        }
    }

    fn rfd(&self, vm: &VirtualMachine) -> PyResult<RawFd> {
        let fd = self.fd(vm)?;
        if !self.readable.load(Ordering::Acquire) {
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
    fn read_exact_fds(
        &self,
        fd: RawFd,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        vm: &VirtualMachine,
    ) -> PyResult<bool> {
        fill(vm, buf, |b| self.read_some(fd, b, fds))
    }

    /// One read into `b` (0 at end of file), collecting descriptors that arrive with it.
    fn read_some(&self, fd: RawFd, b: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        if !self.socket {
            return ipc::read(fd, b);
        }
        let (n, more, _) = ipc::recv_with_fds(fd, b, 253, 0)?;
        fds.extend(more);
        Ok(n)
    }

    /// One frame, read as CPython's `_recv_bytes` reads it: end of file before the header is
    /// EOFError; a negative length (other than -1, which announces an 8-byte one) is an empty
    /// message; a length over `maxsize` is OSError("bad message length") and leaves the
    /// connection unreadable (closed if it cannot send either). The body is read by
    /// [`read_frame_body`]: a length a peer declared never decides an allocation alone.
    fn recv_frame(&self, maxsize: Option<usize>, vm: &VirtualMachine) -> PyResult<Record> {
        let fd = self.rfd(vm)?;
        let mut fds = Vec::new();
        let mut h = [0u8; 4];
        // A reply often comes within microseconds: poll briefly before the read sleeps.
        wait_readable_spin(vm, fd, None)?;
        if !self.read_exact_fds(fd, &mut h, &mut fds, vm)? {
            return Err(eof_error(vm));
        }
        let mut len = i32::from_be_bytes(h) as i64;
        if len == -1 {
            let mut h8 = [0u8; 8];
            if !self.read_exact_fds(fd, &mut h8, &mut fds, vm)? {
                return Err(vm.new_os_error("got end of file during message".to_owned()));
            }
            len = u64::from_be_bytes(h8).min(i64::MAX as u64) as i64;
        }
        let len = usize::try_from(len).unwrap_or(0);
        if maxsize.is_some_and(|m| len > m) {
            if self.writable {
                self.readable.store(false, Ordering::Release);
            } else {
                self.do_close();
            }
            return Err(vm.new_os_error("bad message length".to_owned()));
        }
        let buf = read_frame_body(vm, len, |b| retry(vm, || self.read_some(fd, b, &mut fds)))?;
        Ok((buf, fds))
    }

    /// `procpy --trace`: a message sent or received since `t0` (hooks pass `trace::clock()`,
    /// `None` when tracing is off). A pipe's two ends share an inode; a socket's ends do not,
    /// so its messages are told apart by their bytes alone.
    fn traced(&self, send: bool, t0: Option<f64>, data: &[u8]) {
        if let Some(t0) = t0 {
            let fd = self.fd.load(Ordering::Acquire);
            let chan = if fd < 0 { 0 } else { trace::inode(fd) };
            trace::message(send, "pipe", trace::flow_key(chan, data), t0, data.len());
        }
    }

    fn do_close(&self) {
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // The connection owns `fd` (taken from an OwnedFd, or adopted, in `new`); swapping
            // in -1 first makes this the one close of it. A plain close, not an OwnedFd's drop:
            // a number Python code closed behind our back is EBADF here, not an abort.
            let _ = nix::unistd::close(fd);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.do_close();
    }
}

#[derive(FromArgs)]
struct PollArgs {
    /// Seconds to wait (default 0.0); None waits forever.
    #[pyarg(any, optional)]
    timeout: OptionalArg<Option<ArgIntoFloat>>,
}

#[derive(FromArgs)]
pub struct ConnectionArgs {
    #[pyarg(any)]
    handle: PyObjectRef,
    #[pyarg(any, default = true)]
    readable: bool,
    #[pyarg(any, default = true)]
    writable: bool,
}

/// `Connection(handle, readable=True, writable=True)`: adopt an open descriptor, as CPython's.
impl Constructor for Connection {
    type Args = ConnectionArgs;

    fn py_new(_cls: &Py<PyType>, args: Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
        let handle: i64 = vm.call_method(&args.handle, "__index__", ())?.try_into_value(vm)?;
        if handle < 0 || handle > i32::MAX as i64 {
            return Err(vm.new_value_error("invalid handle"));
        }
        if !args.readable && !args.writable {
            return Err(
                vm.new_value_error("at least one of `readable` and `writable` must be True")
            );
        }
        // SAFETY: `Connection(handle)` adopts the descriptor, as CPython's does: the caller
        // hands it over and no longer closes it. The number is in range (never -1); one that
        // is not open only makes the connection's calls fail with EBADF.
        let fd = unsafe { OwnedFd::from_raw_fd(handle as RawFd) };
        Ok(Connection::new(fd, args.readable, args.writable))
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

#[pyclass(with(Constructor, Representable))]
impl Connection {
    #[pymethod]
    fn send(&self, obj: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
        self.wfd(vm)?;
        let t0 = trace::clock();
        if !self.socket {
            let data = codec::dumps(vm, &obj, codec::Handles::Refuse)?;
            self.send_frame(&data, &[], vm)?;
            self.traced(true, t0, &data);
            return Ok(());
        }
        let (data, fds) = dumps_with_connections(vm, &obj)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        self.send_frame(&data, &raw, vm)?;
        self.traced(true, t0, &data);
        Ok(())
    }

    #[pymethod]
    fn recv(&self, vm: &VirtualMachine) -> PyResult {
        let t0 = trace::clock();
        let (data, fds) = self.recv_frame(None, vm)?;
        self.traced(false, t0, &data);
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
                // Checked: offset + size may overflow isize (Python ints do not).
                Some(s) if args.offset.checked_add(s).is_none_or(|end| end > n) => {
                    return Err(vm.new_value_error("buffer length < offset + size"))
                }
                Some(s) => s,
            };
            let t0 = trace::clock();
            let data = &b[args.offset as usize..(args.offset + size) as usize];
            self.send_frame(data, &[], vm)?;
            self.traced(true, t0, data);
            Ok(())
        })
    }

    #[pymethod]
    fn recv_bytes(
        &self,
        maxlength: OptionalArg<Option<isize>>,
        vm: &VirtualMachine,
    ) -> PyResult<PyBytesRef> {
        let max = match maxlength.flatten() {
            Some(m) if m < 0 => return Err(vm.new_value_error("negative maxlength")),
            m => m.map(|m| m as usize),
        };
        let t0 = trace::clock();
        let data = self.recv_frame(max, vm)?.0;
        self.traced(false, t0, &data);
        Ok(vm.ctx.new_bytes(data))
    }

    #[pymethod]
    fn recv_bytes_into(
        &self,
        buf: ArgMemoryBuffer,
        offset: OptionalArg<isize>,
        vm: &VirtualMachine,
    ) -> PyResult<usize> {
        let offset = offset.unwrap_or(0);
        let cap = buf.len() as isize;
        if offset < 0 {
            return Err(vm.new_value_error("negative offset"));
        }
        if offset > cap {
            return Err(vm.new_value_error("offset too large"));
        }
        let t0 = trace::clock();
        let (data, _) = self.recv_frame(None, vm)?;
        self.traced(false, t0, &data);
        if data.len() as isize > cap - offset {
            let cls = mp_exception(vm, "BufferTooShort");
            return Err(vm.new_exception(cls, vec![vm.ctx.new_bytes(data).into()]));
        }
        let mut b = buf.borrow_buf_mut();
        // The length checked above is the buffer's; `get_mut` keeps a disagreement a Python error.
        let start = offset as usize;
        let Some(dest) = b.get_mut(start..start + data.len()) else {
            let cls = mp_exception(vm, "BufferTooShort");
            return Err(vm.new_exception(cls, vec![vm.ctx.new_bytes(data).into()]));
        };
        dest.copy_from_slice(&data);
        Ok(data.len())
    }

    #[pymethod]
    fn poll(&self, args: PollArgs, vm: &VirtualMachine) -> PyResult<bool> {
        let fd = self.rfd(vm)?;
        let timeout = match args.timeout {
            OptionalArg::Missing => Some(0.0),
            OptionalArg::Present(t) => t.map(ArgIntoFloat::into_float),
        };
        wait_readable(vm, fd, deadline(vm, timeout)?)
    }

    #[pymethod]
    fn close(&self) {
        self.do_close();
    }

    #[pymethod]
    fn fileno(&self, vm: &VirtualMachine) -> PyResult<i32> {
        self.fd(vm)
    }

    /// CPython's private descriptor attribute: the number, or None once closed.
    #[pygetset(name = "_handle")]
    fn handle(&self) -> Option<i32> {
        match self.fd.load(Ordering::Acquire) {
            -1 => None,
            fd => Some(fd),
        }
    }

    /// `conn._handle = None` makes the connection forget its descriptor without closing it
    /// (code does this, as with CPython, for a number it does not own).
    #[pygetset(name = "_handle", setter)]
    fn set_handle(&self, value: Option<i32>, vm: &VirtualMachine) -> PyResult<()> {
        if value.is_some() {
            return Err(vm.new_type_error(
                "Connection._handle can only be set to None (forget the descriptor)".to_owned(),
            ));
        }
        self.fd.store(-1, Ordering::Release);
        Ok(())
    }

    #[pygetset]
    fn closed(&self) -> bool {
        self.fd.load(Ordering::Acquire) == -1
    }

    #[pygetset]
    fn readable(&self) -> bool {
        self.readable.load(Ordering::Acquire)
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
        Ok(format!(
            "<multiprocessing.connection.Connection fd={}>",
            zelf.fd.load(Ordering::Acquire)
        ))
    }
}
