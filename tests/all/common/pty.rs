//! Pseudo-terminals for tests of what procpy does on a terminal (`--progress`, the prompt).

use std::ffi::{CStr, OsStr};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A new pseudo-terminal: (master, slave), both close-on-exec. `openpty(3)` makes them
/// inheritable: a child another test starts meanwhile would keep the slave open, and the read
/// of the master here would wait for that child's end.
pub fn pty() -> (File, File) {
    let open = |path: &Path| {
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(path)
    };
    // std opens with O_CLOEXEC.
    let master = open(Path::new("/dev/ptmx")).expect("open /dev/ptmx");
    let slave = open(&slave_path(&master)).expect("open the pseudo-terminal's slave");
    (master, slave)
}

/// Unlock the slave of the pseudo-terminal `master` and return its path (grantpt, unlockpt,
/// ptsname_r: calls nix offers only with a feature this crate does not enable).
pub fn slave_path(master: &File) -> PathBuf {
    let fd = master.as_raw_fd();
    let check = |what: &str, r: libc::c_int| {
        assert_eq!(r, 0, "{what}: {}", std::io::Error::last_os_error());
    };
    // SAFETY: grantpt and unlockpt only act on the terminal behind `fd`, which `master` owns.
    check("grantpt", unsafe { libc::grantpt(fd) });
    // SAFETY: as above.
    check("unlockpt", unsafe { libc::unlockpt(fd) });
    let mut buf = [0u8; 64];
    // SAFETY: ptsname_r writes at most `buf.len()` bytes, the terminating NUL included, into
    // `buf`, which lives across the call.
    let r = unsafe { libc::ptsname_r(fd, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(r, 0, "ptsname_r: {}", std::io::Error::from_raw_os_error(r));
    let name = CStr::from_bytes_until_nul(&buf).expect("a NUL-terminated name");
    PathBuf::from(OsStr::from_bytes(name.to_bytes()))
}
