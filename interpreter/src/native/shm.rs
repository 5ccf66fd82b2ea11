//! POSIX shared memory by name (`shm_open` in /dev/shm) for `multiprocessing.shared_memory`.
//! The mapping is a [`SharedBuffer`], so it stays mapped while any view of it lives, however
//! early `SharedMemory.close()` drops its own reference.

use super::SharedBuffer;
use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::{AsObject, PyResult, VirtualMachine};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
    let flags = libc::O_RDWR | if create { libc::O_CREAT | libc::O_EXCL } else { 0 };
    let fd = unsafe { libc::shm_open(c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(os_error_with_filename(vm, io::Error::last_os_error(), name));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sized = || -> io::Result<usize> {
        if create && unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.st_size as usize)
    };
    let mapped = match sized() {
        Ok(0) => return Err(vm.new_value_error("cannot mmap an empty file".to_owned())),
        Ok(len) => SharedBuffer::from_segment(fd, len).map(|b| (b, len)),
        Err(e) => Err(e),
    };
    mapped.map_err(|e| {
        // A segment we created but could not size or map must not stay behind.
        if create {
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
        super::os_err(vm, e)
    })
}

/// Remove the name `name` (with its leading slash); mappings stay valid.
pub(crate) fn unlink(vm: &VirtualMachine, name: &str) -> PyResult<()> {
    let c = c_name(vm, name)?;
    if unsafe { libc::shm_unlink(c.as_ptr()) } != 0 {
        return Err(os_error_with_filename(vm, io::Error::last_os_error(), name));
    }
    Ok(())
}
