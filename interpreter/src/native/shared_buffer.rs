//! `SharedBuffer`: zeroed memory that every process holding it sees (a memory file mapped
//! shared), exposed through the buffer protocol. `Value`, `Array`, `RawValue` and `RawArray`
//! view it through `memoryview.cast`, and `Barrier` keeps its counters in one.

use super::os_err;
use rustpython_vm::builtins::PyType;
use rustpython_vm::protocol::{BufferDescriptor, BufferMethods, PyBuffer};
use rustpython_vm::types::{AsBuffer, Constructor};
use rustpython_vm::{pyclass, Py, PyPayload, PyResult, VirtualMachine};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

/// One shared mapping; dropped (unmapped) when the last Python object using it goes.
pub(crate) struct Mapping {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// Plain shared memory: Python code synchronises access with its locks, as with ctypes.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn create(len: usize) -> io::Result<Self> {
        Self::map(crate::ipc::sealed_memfd(c"procpy-shared", len)?, len, true)
    }

    /// Map `len` bytes of `fd`, which must be a memory file (or shared memory segment) holding
    /// at least that much: the descriptor may come from a peer, and touching a mapping past the
    /// end of its file is SIGBUS. `InvalidData` says what is wrong.
    ///
    /// `sealed`: the file must also be sealed against shrinking — a memory file, which travels
    /// between processes. A named shared memory segment (`SharedMemory`) cannot be sealed: any
    /// process of the user may shrink it, as with CPython's.
    pub(crate) fn map(fd: OwnedFd, len: usize, sealed: bool) -> io::Result<Self> {
        let size = crate::ipc::regular_file_size(fd.as_raw_fd(), "shared buffer's descriptor")?;
        if size < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a shared buffer of {len} bytes over a memory file of {size}"),
            ));
        }
        if sealed {
            crate::ipc::require_sealed(fd.as_raw_fd(), "shared buffer's memory file")?;
        }
        // mmap refuses a zero length; a zero-sized buffer still needs a valid pointer.
        let map_len = len.max(1);
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { fd, ptr: p.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}

/// Shared memory of a fixed size, zero-filled at creation.
#[pyclass(name = "SharedBuffer", module = "_procpy")]
#[derive(PyPayload)]
pub struct SharedBuffer {
    pub(crate) map: Arc<Mapping>,
    /// Live buffer views (memoryviews and their slices) of this object: `SharedMemory.close()`
    /// refuses, as CPython's does, while any remains.
    exports: AtomicIsize,
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBuffer({})", self.map.len)
    }
}

impl SharedBuffer {
    pub(crate) fn fd(&self) -> RawFd {
        self.map.fd.as_raw_fd()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len
    }

    /// A buffer received from a peer: a sealed memory file of at least `len` bytes.
    pub(crate) fn from_fd(fd: OwnedFd, len: usize) -> io::Result<Self> {
        Ok(SharedBuffer {
            map: Arc::new(Mapping::map(fd, len, true)?),
            exports: AtomicIsize::new(0),
        })
    }

    /// A buffer over a named shared memory segment (not sealable) of at least `len` bytes.
    pub(crate) fn from_segment(fd: OwnedFd, len: usize) -> io::Result<Self> {
        Ok(SharedBuffer {
            map: Arc::new(Mapping::map(fd, len, false)?),
            exports: AtomicIsize::new(0),
        })
    }

    fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.map.ptr, self.map.len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.map.ptr, self.map.len) }
    }
}

impl Constructor for SharedBuffer {
    type Args = (isize,);

    fn py_new(_cls: &Py<PyType>, (size,): Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
        if size < 0 {
            return Err(vm.new_value_error("size must be non-negative"));
        }
        let map = Mapping::create(size as usize).map_err(|e| os_err(vm, e))?;
        Ok(SharedBuffer { map: Arc::new(map), exports: AtomicIsize::new(0) })
    }
}

static BUFFER_METHODS: BufferMethods = BufferMethods {
    obj_bytes: |buffer| buffer.obj_as::<SharedBuffer>().bytes().into(),
    obj_bytes_mut: |buffer| buffer.obj_as::<SharedBuffer>().bytes_mut().into(),
    release: |buffer| {
        buffer.obj_as::<SharedBuffer>().exports.fetch_sub(1, Ordering::AcqRel);
    },
    retain: |buffer| {
        buffer.obj_as::<SharedBuffer>().exports.fetch_add(1, Ordering::AcqRel);
    },
};

impl AsBuffer for SharedBuffer {
    fn as_buffer(zelf: &Py<Self>, _vm: &VirtualMachine) -> PyResult<PyBuffer> {
        Ok(PyBuffer::new(
            zelf.to_owned().into(),
            BufferDescriptor::simple(zelf.len(), false),
            &BUFFER_METHODS,
        ))
    }
}

#[pyclass(with(Constructor, AsBuffer))]
impl SharedBuffer {
    #[pygetset]
    fn handle(&self) -> i32 {
        self.fd()
    }

    /// How many buffer views of this object are alive.
    #[pygetset]
    fn exports(&self) -> isize {
        self.exports.load(Ordering::Acquire)
    }
}
