//! The resource tracker: one small process per program tree that unlinks the named resources
//! (POSIX shared memory, named semaphores) the tree registered and did not unlink, once every
//! process of the tree is gone — even when they were SIGKILLed.
//!
//! How (CPython's idea, our code, no Python VM in the tracker): the tracker is the procpy binary
//! re-entered with [`TRACKER_FLAG`]; it reads `CMD:name:rtype\n` lines from a pipe on its stdin.
//! Every process of the tree holds the pipe's write end — fork children inherit it, spawned
//! children (and the fork server, hence its children) get it across exec (`PROCPY_TRACKER_FD`,
//! see `native::spawn_child`). The kernel closes a dead process's descriptors however it died,
//! so end of file on the pipe means "the whole tree is gone": then the tracker cleans up what is
//! still registered, warns on stderr as CPython does, and exits.
//!
//! Each line is written with one `write` of at most 512 bytes (< PIPE_BUF), so lines from
//! concurrent writers never interleave and no lock is needed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The argument procpy passes to re-enter itself as the resource tracker.
pub const TRACKER_FLAG: &str = "--multiprocessing-resource-tracker";

/// The environment variable that hands a spawned child the tracker's write end.
pub const TRACKER_FD_ENV: &str = "PROCPY_TRACKER_FD";

/// This process's write end of the tracker pipe (-1: none yet). A plain global: a fork child
/// gets a copy together with the inherited descriptor.
static FD: AtomicI32 = AtomicI32::new(-1);
/// The tracker's pid when this process started it (0 otherwise).
static PID: AtomicI32 = AtomicI32::new(0);
/// The process that started the tracker in `PID` (a fork child inherits both copies, and the
/// tracker is not its child).
static STARTER: AtomicI32 = AtomicI32::new(0);
/// Two threads must not start two trackers.
static START: Mutex<()> = Mutex::new(());

/// The write end of this process's tracker pipe, if it has one.
pub fn fd() -> Option<RawFd> {
    let fd = FD.load(Ordering::Acquire);
    (fd >= 0).then_some(fd)
}

/// The tracker's pid if this process started it.
pub fn pid() -> Option<i32> {
    let p = PID.load(Ordering::Acquire);
    (p > 0 && STARTER.load(Ordering::Acquire) == crate::ipc::pid() as i32).then_some(p)
}

/// Start the tracker unless this process already has one; return the pipe's write end.
pub fn ensure_running() -> io::Result<RawFd> {
    if let Some(fd) = fd() {
        return Ok(fd);
    }
    let _one = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = fd() {
        return Ok(fd);
    }
    // Errors keep their errno and say what failed (a bare "Too many open files" from
    // Process.start would not say which part ran out).
    let what = "cannot start the resource tracker";
    let (r, w) = crate::ipc::pipe().map_err(|e| crate::ipc::doing(e, what))?;
    // The read end becomes the tracker's stdin (a posix_spawn file action: no fork of this
    // multi-threaded process, and nothing else can inherit it by accident). Its stdout goes
    // nowhere; its stderr is ours, for the leak warning. Not waited for: it outlives us.
    use std::os::unix::process::CommandExt;
    // Its own process group: a signal sent to the program's group (Ctrl-C, `kill -- -pgid`,
    // a harness killing the group) does not reach it, so it is still there to clean up.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(TRACKER_FLAG).process_group(0).stdin(Stdio::from(r)).stdout(Stdio::null());
    // Ignored from before exec (dispositions set to SIG_IGN survive it): a SIGINT or SIGTERM
    // sent the moment it starts, before `main` ignores them itself, must not kill it either.
    // SAFETY: between fork and exec the closure only calls sigaction, which is
    // async-signal-safe, and installs no handler.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::signal::{signal, SigHandler, Signal};
            for sig in [Signal::SIGINT, Signal::SIGTERM] {
                signal(sig, SigHandler::SigIgn).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| crate::ipc::doing(e, what))?;
    STARTER.store(crate::ipc::pid() as i32, Ordering::Release);
    PID.store(child.id() as i32, Ordering::Release);
    FD.store(w.into_raw_fd(), Ordering::Release);
    Ok(FD.load(Ordering::Acquire))
}

/// Forget (and close) this process's tracker pipe, after the tracker died (a write got
/// `EPIPE`), and reap it if this process started it, so no zombie stays for the program's life.
pub fn reset() {
    let _one = START.lock().unwrap_or_else(|e| e.into_inner());
    let fd = FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: `FD` owned this descriptor and was just cleared, so nothing else closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let ours = STARTER.swap(0, Ordering::AcqRel) == crate::ipc::pid() as i32;
    let pid = PID.swap(0, Ordering::AcqRel);
    if pid > 0 && ours {
        // Our own unreaped child, so the pid cannot have been reused. `EPIPE` means its read
        // end is closed, which it does only as it exits: this wait is short. ECHILD (someone
        // else reaped it) is fine.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
}

/// Adopt a write end received from the parent (a spawned child or the fork server).
pub fn adopt(fd: RawFd) {
    if fd >= 0 {
        // Only our own children may inherit it, and they get it explicitly.
        if let Ok(fd) = crate::ipc::borrow_fd(fd) {
            let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
            let _ = nix::fcntl::fcntl(fd, cloexec);
        }
        FD.store(fd, Ordering::Release);
    }
}

/// Send one line (already formatted, `\n`-terminated) to the tracker.
pub fn send(msg: &[u8]) -> io::Result<()> {
    let fd = ensure_running()?;
    let n = crate::ipc::write(fd, msg)?;
    if n != msg.len() {
        return Err(io::Error::other(format!(
            "resource tracker: short write ({n} of {})",
            msg.len()
        )));
    }
    Ok(())
}

/// The longest line the tracker accepts: writers send at most 512 bytes a line (see the module
/// comment); a longer one is not ours, and is dropped without being buffered whole.
const MAX_LINE: usize = 4096;

/// Read one line (at most [`MAX_LINE`] bytes, `\n` included) into `line`; a longer line is
/// read to its end and discarded: `Ok(false)` then. `Ok(true)` with an empty `line` is end of
/// file.
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    io::Read::take(&mut *r, MAX_LINE as u64).read_until(b'\n', line)?;
    if line.len() < MAX_LINE || line.ends_with(b"\n") {
        return Ok(true);
    }
    // Skip the rest of the line, a buffer at a time.
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(false);
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

/// The resource types the tracker can clean up, as in CPython 3.11.
const RTYPES: [&str; 3] = ["noop", "semaphore", "shared_memory"];

fn cleanup(rtype: &str, name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    match rtype {
        "shared_memory" => Ok(nix::sys::mman::shm_unlink(c.as_c_str())?),
        "semaphore" => crate::ipc::sem_unlink(&c),
        _ => Ok(()),
    }
}

/// The tracker process's main loop (`procpy --multiprocessing-resource-tracker`): returns the
/// exit status once every writer has closed the pipe and the leftovers are cleaned up.
pub fn main() -> i32 {
    // The tracker must outlive the others to clean up after them: it ignores Ctrl-C and a
    // plain kill (as CPython's does), a hang-up, and SIGTTOU (writing the warning to the
    // terminal from its background process group must not stop it).
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGTTOU] {
        // SAFETY: SIG_IGN installs no handler, so no code of ours can run in signal context.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // Do not pin the program's working directory (a mount point, say) while waiting.
    let _ = nix::unistd::chdir(c"/");
    let stdin = io::stdin();
    // BTreeMap/BTreeSet: a deterministic clean-up order and set semantics (registering a name
    // twice — creator and attacher — then unregistering it once forgets it, as in CPython).
    let mut cache: BTreeMap<&'static str, BTreeSet<String>> =
        RTYPES.iter().map(|&t| (t, BTreeSet::new())).collect();
    let mut lock = stdin.lock();
    let mut line = Vec::new();
    loop {
        match read_line(&mut lock, &mut line) {
            Ok(true) if line.is_empty() => break,
            Ok(true) => {}
            Ok(false) => {
                eprintln!("resource_tracker: malformed message (a line over {MAX_LINE} bytes)");
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        let parts: Vec<&str> = text.split(':').collect();
        let &[cmd, name, rtype] = parts.as_slice() else {
            eprintln!("resource_tracker: malformed message {text:?}");
            continue;
        };
        let Some(set) =
            RTYPES.iter().position(|&t| t == rtype).and_then(|i| cache.get_mut(RTYPES[i]))
        else {
            eprintln!("resource_tracker: Cannot register {name} for automatic cleanup: unknown resource type {rtype}");
            continue;
        };
        match cmd {
            "REGISTER" => {
                set.insert(name.to_owned());
            }
            "UNREGISTER" => {
                set.remove(name);
            }
            "PROBE" => {}
            _ => eprintln!("resource_tracker: unrecognized command {cmd:?}"),
        }
    }
    drop(lock);
    // Nobody else reads this pipe: close it so no descriptor of the tree outlives the tree.
    // (Stdin's lock is gone and nothing reads it again.)
    let _ = nix::unistd::close(io::stdin().as_raw_fd());
    for (rtype, names) in &cache {
        if names.is_empty() {
            continue;
        }
        eprintln!(
            "UserWarning: resource_tracker: There appear to be {} leaked {rtype} objects to clean up at shutdown",
            names.len()
        );
        for name in names {
            if let Err(e) = cleanup(rtype, name) {
                // CPython's wording: "'name': [Errno 2] No such file or directory: 'name'".
                let errno = e.raw_os_error().unwrap_or(0);
                let text = io::Error::from_raw_os_error(errno).to_string();
                let text =
                    text.rsplit_once(" (os error").map_or(text.as_str(), |(t, _)| t).to_owned();
                eprintln!(
                    "UserWarning: resource_tracker: '{name}': [Errno {errno}] {text}: '{name}'"
                );
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_limit_is_skipped_whole_and_the_next_one_read() {
        let mut input = vec![b'x'; 3 * MAX_LINE + 5];
        input.extend_from_slice(b"\nREGISTER:/a:noop\nlast");
        let mut r = io::BufReader::with_capacity(1000, &input[..]);
        let mut line = Vec::new();
        assert!(!read_line(&mut r, &mut line).unwrap(), "the long line is reported malformed");
        assert!(line.len() <= MAX_LINE, "and never held whole");
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line, b"REGISTER:/a:noop\n");
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line, b"last");
        assert!(read_line(&mut r, &mut line).unwrap() && line.is_empty(), "then end of file");
    }
}
