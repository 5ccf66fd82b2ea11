//! POSIX shared memory by name (`shm_open` in /dev/shm) for `multiprocessing.shared_memory`.
//! The mapping is a [`SharedBuffer`], so it stays mapped while any view of it lives, however
//! early `SharedMemory.close()` drops its own reference.

use super::SharedBuffer;
use nix::fcntl::OFlag;
use nix::sys::mman;
use nix::sys::stat::Mode;
use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::{AsObject, PyResult, VirtualMachine};
use std::ffi::CString;
use std::io;

/// `OSError(errno, strerror, filename)`: Python picks the subclass (FileNotFoundError, ...).
pub(crate) fn os_error_with_filename(
    vm: &VirtualMachine,
    e: io::Error,
    filename: &str,
) -> PyBaseExceptionRef {
    let Some(errno) = e.raw_os_error() else { return super::os_err(vm, e) };
    let strerror = io::Error::from_raw_os_error(errno).to_string();
    // io::Error's text ends with " (os error N)"; Python's strerror does not.
    let strerror =
        strerror.rsplit_once(" (os error").map(|(s, _)| s.to_owned()).unwrap_or(strerror);
    let args: (i32, String, String) = (errno, strerror, filename.to_owned());
    match vm.ctx.exceptions.os_error.as_object().call(args, vm) {
        Ok(exc) => exc
            .downcast()
            .unwrap_or_else(|_| super::os_err(vm, io::Error::from_raw_os_error(errno))),
        Err(exc) => exc,
    }
}

fn c_name(vm: &VirtualMachine, name: &str) -> PyResult<CString> {
    CString::new(name).map_err(|_| vm.new_value_error("embedded null character in name".to_owned()))
}

/// Open (or create, exclusively, with `size` bytes) the segment `name` (with its leading
/// slash) and map all of it; returns the mapping and its size (`st_size`, as CPython reports).
pub(crate) fn open(
    vm: &VirtualMachine,
    name: &str,
    create: bool,
    size: usize,
) -> PyResult<(SharedBuffer, usize)> {
    let c = c_name(vm, name)?;
    let flags =
        OFlag::O_RDWR | if create { OFlag::O_CREAT | OFlag::O_EXCL } else { OFlag::empty() };
    let fd = mman::shm_open(c.as_c_str(), flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| os_error_with_filename(vm, e.into(), name))?;
    let sized = || -> io::Result<usize> {
        if create {
            nix::unistd::ftruncate(&fd, size as libc::off_t)?;
        }
        Ok(nix::sys::stat::fstat(&fd)?.st_size as usize)
    };
    let mapped = match sized() {
        Ok(0) => return Err(vm.new_value_error("cannot mmap an empty file".to_owned())),
        Ok(len) => SharedBuffer::from_segment(fd, len).map(|b| (b, len)),
        Err(e) => Err(e),
    };
    mapped.map_err(|e| {
        // A segment we created but could not size or map must not stay behind.
        if create {
            let _ = mman::shm_unlink(c.as_c_str());
        }
        super::os_err(vm, e)
    })
}

/// Remove the name `name` (with its leading slash); mappings stay valid.
pub(crate) fn unlink(vm: &VirtualMachine, name: &str) -> PyResult<()> {
    let c = c_name(vm, name)?;
    mman::shm_unlink(c.as_c_str()).map_err(|e| os_error_with_filename(vm, e.into(), name))
}
