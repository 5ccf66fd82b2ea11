//! `SharedBuffer`: zeroed memory that every process holding it sees (a memory file mapped
//! shared), exposed through the buffer protocol. `Value`, `Array`, `RawValue` and `RawArray`
//! view it through `memoryview.cast`, and `Barrier` keeps its counters in one.

use super::os_err;
use crate::ipc::SharedMap;
use rustpython_vm::builtins::PyType;
use rustpython_vm::protocol::{BufferDescriptor, BufferMethods, PyBuffer};
use rustpython_vm::types::{AsBuffer, Constructor};
use rustpython_vm::{pyclass, Py, PyPayload, PyResult, VirtualMachine};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

/// Map `len` bytes of `fd`, which must be a memory file (or shared memory segment) holding at
/// least that much: the descriptor may come from a peer, and touching a mapping past the end
/// of its file is SIGBUS. `InvalidData` says what is wrong.
///
/// `sealed`: the file must also be sealed against shrinking — a memory file, which travels
/// between processes. A named shared memory segment (`SharedMemory`) cannot be sealed: any
/// process of the user may shrink it, as with CPython's. See [`SharedMap`]'s invariants.
fn map(fd: OwnedFd, len: usize, sealed: bool) -> io::Result<SharedMap> {
    SharedMap::map(fd, len, sealed, "shared buffer's")
}

/// Shared memory of a fixed size, zero-filled at creation.
#[pyclass(name = "SharedBuffer", module = "_procpy")]
#[derive(PyPayload)]
pub struct SharedBuffer {
    /// Dropped (unmapped) when the last Python object using it goes.
    pub(crate) map: Arc<SharedMap>,
    /// Live buffer views (memoryviews and their slices) of this object: `SharedMemory.close()`
    /// refuses, as CPython's does, while any remains.
    exports: AtomicIsize,
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBuffer({})", self.map.len())
    }
}

impl SharedBuffer {
    pub(crate) fn fd(&self) -> RawFd {
        self.map.fd().as_raw_fd()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// A buffer received from a peer: a sealed memory file of at least `len` bytes.
    pub(crate) fn from_fd(fd: OwnedFd, len: usize) -> io::Result<Self> {
        Ok(SharedBuffer { map: Arc::new(map(fd, len, true)?), exports: AtomicIsize::new(0) })
    }

    /// A buffer over a named shared memory segment (not sealable) of at least `len` bytes.
    pub(crate) fn from_segment(fd: OwnedFd, len: usize) -> io::Result<Self> {
        Ok(SharedBuffer { map: Arc::new(map(fd, len, false)?), exports: AtomicIsize::new(0) })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the map is valid for `len` bytes while `self.map` lives, which the returned
        // borrow of `self` cannot outlive (SharedMap's invariants). Other processes and threads
        // may write these bytes meanwhile: this is the buffer protocol's raw memory, which the
        // program synchronises itself, as with CPython's ctypes over shared memory.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: as in `bytes`: valid for `len` bytes while `self` lives. Exclusive access is
        // the program's to ensure (its locks), as for any writable buffer shared with others.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.map.len()) }
    }
}

impl Constructor for SharedBuffer {
    type Args = (isize,);

    fn py_new(_cls: &Py<PyType>, (size,): Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
        if size < 0 {
            return Err(vm.new_value_error("size must be non-negative"));
        }
        let map = SharedMap::create(c"procpy-shared", size as usize, "shared buffer's")
            .map_err(|e| os_err(vm, e))?;
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
