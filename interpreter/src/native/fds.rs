//! `Descriptors`: raw descriptors owned by a Python object (a child's sentinel and boot
//! socket, a pool's wake-up pipe), closed by `close()` or when the object is freed.
//!
//! CPython closes these with a `util.Finalize` (a weakref callback). Here the closing is a Rust
//! `Drop`, so no Python code runs: RustPython 0.5 aborts when a weakref callback runs while a
//! thread's last frame is torn down, which is exactly where a pool's manager thread drops the
//! last reference to its workers.

use crate::ipc;
use rustpython_vm::builtins::PyType;
use rustpython_vm::common::lock::PyMutex;
use rustpython_vm::types::Constructor;
use rustpython_vm::{pyclass, Py, PyPayload, PyResult, VirtualMachine};
use std::os::fd::RawFd;

#[pyclass(name = "Descriptors", module = "_procpy")]
#[derive(PyPayload)]
pub struct Descriptors {
    /// The process that owns them: a copy inherited through fork closes nothing (CPython's
    /// finalizers check the pid the same way), since the numbers may mean other files there.
    pid: u32,
    fds: PyMutex<Vec<RawFd>>,
}

impl std::fmt::Debug for Descriptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Descriptors({:?})", &*self.fds.lock())
    }
}

impl Descriptors {
    fn close_all(&self) {
        let fds = std::mem::take(&mut *self.fds.lock());
        if self.pid != ipc::pid() {
            return;
        }
        for fd in fds {
            // These numbers were handed to this object to own (see the constructor); each is
            // closed once, as the list is emptied first. A plain close, not an OwnedFd's drop:
            // a number closed behind our back is EBADF here, not an abort.
            let _ = nix::unistd::close(fd);
        }
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        self.close_all();
    }
}

impl Constructor for Descriptors {
    type Args = (Vec<i32>,);

    /// Take ownership of `fds`: nothing else may close them afterwards.
    fn py_new(_cls: &Py<PyType>, (fds,): Self::Args, _vm: &VirtualMachine) -> PyResult<Self> {
        Ok(Descriptors {
            pid: ipc::pid(),
            fds: PyMutex::new(fds.into_iter().filter(|&fd| fd >= 0).collect()),
        })
    }
}

#[pyclass(with(Constructor))]
impl Descriptors {
    /// Close them now (once; later calls do nothing).
    #[pymethod]
    fn close(&self) {
        self.close_all();
    }
}
