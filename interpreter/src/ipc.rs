//! OS plumbing for moving bytes and descriptors between processes. No VM in here.
//!
//! Every call returns `io::Error` untouched, `EINTR` included, so the caller (which knows about
//! Python signal handlers) decides whether to retry.

use nix::fcntl::{fcntl, FcntlArg, FdFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `fd` borrowed for one call into nix. Every function here taking a `RawFd` requires its
/// caller to hold that descriptor open for the call (the contract `BorrowedFd` states); a
/// negative number is no descriptor, so it is `EBADF`, as the kernel says of it, rather than
/// the panic `BorrowedFd` has for -1.
pub(crate) fn borrow_fd<'a>(fd: RawFd) -> io::Result<BorrowedFd<'a>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is not -1 (the one value `BorrowedFd` cannot hold), and the caller keeps it
    // open while the borrow is used (one system call, see above). A number that is not an open
    // descriptor only makes that call fail with EBADF: the kernel checks, nothing is assumed.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// An integer socket option (`SO_DOMAIN`, `SO_TYPE`) of `fd`. Raw: nix has no `SO_DOMAIN`, and
/// its `SO_TYPE` option reads the value as its `SockType` enum, which a socket of another type
/// (DCCP, packet), perhaps a peer's, would make an invalid enum value.
fn socket_int_option(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int and `len` its size; the kernel writes at most `len`
    // bytes there. A bad descriptor is an error return, not undefined behaviour.
    cvt(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, option, (&raw mut value).cast(), &mut len)
    })?;
    Ok(value)
}

/// An OS error and what was being done when it happened ("cannot start the resource tracker"):
/// `native::os_err` turns it into `OSError(errno, "what: strerror")`, so neither is lost.
#[derive(Debug)]
pub struct Doing {
    /// The errno of the failure.
    pub errno: i32,
    /// What failed, e.g. "cannot start the resource tracker".
    pub what: String,
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = io::Error::from_raw_os_error(self.errno).to_string();
        // io::Error's text ends with " (os error N)"; Python's strerror does not.
        let text = text.rsplit_once(" (os error").map_or(text.as_str(), |(t, _)| t);
        write!(f, "{}: {text}", self.what)
    }
}

impl std::error::Error for Doing {}

/// `e` with what was being done; an error without an errno just gets the words prepended.
pub fn doing(e: io::Error, what: impl Into<String>) -> io::Error {
    let what = what.into();
    match e.raw_os_error() {
        Some(errno) => io::Error::new(e.kind(), Doing { errno, what }),
        None => io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

/// A close-on-exec AF_UNIX socket pair of the given type (`SOCK_STREAM`, `SOCK_SEQPACKET`).
pub fn socketpair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let kind = SockType::try_from(kind)?;
    Ok(nix::sys::socket::socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)?)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static FORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static AT_FORK: std::sync::Once = std::sync::Once::new();

extern "C" fn forgot_ids_in_child() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Start a helper thread (queue feeder, parent watch, host watch) with every signal blocked.
/// A process-directed signal goes to any thread that does not block it; one taken by a helper
/// only interrupts the helper's own poll, while the Python thread blocked in `recv()` never
/// wakes to run its handler: `terminate()` of a child with a SIGTERM handler hung (about once
/// in 300 runs under load). Blocked here, the signal always reaches a Python thread.
pub fn spawn_helper<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    // The new thread inherits the mask of the thread that creates it.
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))?;
    let thread = std::thread::Builder::new().name(name.to_owned()).spawn(f);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    thread
}

/// This process's id, cached: `getpid` is a real system call (glibc stopped caching it), and
/// locks and queues ask on every operation. A fork handler forgets it in the child.
pub fn pid() -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    let p = PID.load(Relaxed);
    if p != 0 {
        return p;
    }
    AT_FORK.call_once(|| at_fork_child(forgot_ids_in_child));
    let p = nix::unistd::getpid().as_raw() as u32;
    PID.store(p, Relaxed);
    p
}

/// The calling thread's kernel id, cached per thread (and refreshed after a fork, where the
/// surviving thread has a new id).
pub fn tid() -> u32 {
    use std::cell::Cell;
    use std::sync::atomic::Ordering::Relaxed;
    thread_local! {
        static TID: Cell<(u32, u32)> = const { Cell::new((u32::MAX, 0)) };
    }
    pid(); // makes sure the fork handler is registered
    let forks = FORKS.load(Relaxed);
    TID.with(|c| {
        let (gen, tid) = c.get();
        if gen == forks {
            return tid;
        }
        let tid = nix::unistd::gettid().as_raw() as u32;
        c.set((forks, tid));
        tid
    })
}

/// Whether `fd` is a Unix-domain socket (and so can carry descriptors).
pub fn is_unix_socket(fd: RawFd) -> bool {
    // Only Unix-domain sockets carry descriptors (SCM_RIGHTS); a TCP connection from
    // `Listener`/`Client` is a socket too, but cannot.
    socket_int_option(fd, libc::SO_DOMAIN).is_ok_and(|domain| domain == libc::AF_UNIX)
}

/// Duplicate a descriptor (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // Not nix's `dup`: the copy must be close-on-exec from the start, and numbered 3 or more.
    let n = fcntl(borrow_fd(fd)?, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// One `write`; may be short.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    Ok(nix::unistd::write(borrow_fd(fd)?, buf)?)
}

/// One `read`; 0 means end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(nix::unistd::read(borrow_fd(fd)?, buf)?)
}

/// `poll` over `fds` (descriptor, events); returns the revents of each. `None` waits forever.
///
/// Raw `poll`, not nix's: its `PollFd` holds a `BorrowedFd`, so it cannot carry the negative
/// entries poll(2) skips (`connection.wait` passes the numbers Python code gives it), and it
/// reports revents only as flags it knows.
pub fn poll(fds: &[(RawFd, i16)], timeout: Option<Duration>) -> io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
    let ms = match timeout {
        None => -1,
        // Rounded up to whole milliseconds; a wait longer than poll takes (24 days) is cut to
        // that, and the callers loop.
        Some(d) => (d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0))
            .min(i32::MAX as u128) as i32,
    };
    // SAFETY: `pfds` is a live, writable array of `pfds.len()` pollfd structures; the kernel
    // writes only their `revents`.
    cvt(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) })?;
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// Time left until `deadline` (`None` = no deadline), saturating at zero.
pub fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// `sendmsg` of `data` with `fds` attached as SCM_RIGHTS.
pub fn send_with_fds(
    sock: RawFd,
    data: &[u8],
    fds: &[RawFd],
    flags: libc::c_int,
) -> io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    // No control message at all without descriptors (not an empty SCM_RIGHTS one).
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let flags = MsgFlags::from_bits_retain(flags) | MsgFlags::MSG_NOSIGNAL;
    let iov = [io::IoSlice::new(data)];
    Ok(nix::sys::socket::sendmsg::<()>(sock, &iov, cmsgs, flags, None)?)
}

/// `recvmsg` into `buf`, accepting up to `max_fds` descriptors (received close-on-exec).
/// Returns the byte count, the descriptors, and whether the record was truncated.
pub fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
    flags: libc::c_int,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let (n, fds, msg_flags) = recv_with_fds_flags(sock, buf, max_fds, flags)?;
    Ok((n, fds, msg_flags & libc::MSG_TRUNC != 0))
}

/// [`recv_with_fds`] returning the message's `msg_flags` whole: `MSG_CTRUNC` there means
/// descriptors were sent but not all could be received (no room, or out of descriptors).
///
/// Raw `recvmsg`, not nix's: when the control data is truncated (`MSG_CTRUNC`), nix refuses to
/// walk it, yet the kernel has already installed the descriptors that fitted. They must be
/// taken (and closed) here, or every truncated record would leak them.
pub fn recv_with_fds_flags(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
    flags: libc::c_int,
) -> io::Result<(usize, Vec<OwnedFd>, libc::c_int)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain old data; all zeroes is a valid, empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
    let space = unsafe { libc::CMSG_SPACE((max_fds.max(1) * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (describing `buf`, writable for its length) and at `cbuf`
    // (writable for `space` bytes); all three outlive the call, and the kernel writes within
    // those lengths only.
    let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `cbuf` with well-formed control messages and set
    // `msg_controllen` to their total length; CMSG_FIRSTHDR/CMSG_NXTHDR stay within that and
    // return null past the end. Each SCM_RIGHTS message holds `bytes` bytes of descriptors,
    // read unaligned; every one was installed in this process by this call (close-on-exec),
    // owned by nobody else, so taking ownership is right, and closes it if the caller drops it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds, msg.msg_flags))
}

/// A descriptor that becomes readable when process `pid` exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers and returns a new descriptor or -1; nix has no
    // wrapper for it.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative result is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Run `child` in the child process after every `fork()`. nix has no `pthread_atfork`.
///
/// `child` runs where only async-signal-safe work is allowed (the forking process may have
/// had other threads, whose locks stay held forever in the child): atomics, no allocation.
pub(crate) fn at_fork_child(child: extern "C" fn()) {
    // SAFETY: registers a plain function pointer, valid for the program's life; the handlers
    // passed keep to the rule above.
    unsafe { libc::pthread_atfork(None, None, Some(child)) };
}

/// `sem_unlink(name)`: nix has no wrapper for POSIX named semaphores.
pub fn sem_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    cvt(unsafe { libc::sem_unlink(name.as_ptr()) })?;
    Ok(())
}

/// `FUTEX_WAIT` on `word` (private: only this process's threads wake it): sleep while it
/// still holds `expected`, at most `timeout` (`None`: no limit). nix has no futex call.
/// Returns the raw error: `EAGAIN` (the value differed), `ETIMEDOUT`, `EINTR`, ...
pub(crate) fn futex_wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
    private: bool,
) -> io::Result<()> {
    let ts = timeout
        .map(|d| libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let op = libc::FUTEX_WAIT | if private { libc::FUTEX_PRIVATE_FLAG } else { 0 };
    // SAFETY: `word` is a live, aligned u32 (an atomic, as the kernel's futex word must be
    // accessed), and `tsp` is null or points at `ts`, alive until the call returns. The kernel
    // only reads both.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, expected, tsp) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `FUTEX_WAKE` of at most `n` waiters on `word` (`private`: as they waited). nix has no
/// futex call.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32, private: bool) {
    let op = libc::FUTEX_WAKE | if private { libc::FUTEX_PRIVATE_FLAG } else { 0 };
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE neither reads nor writes memory
    // through it (the address only names the wait queue).
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, n) };
}

/// An anonymous memory file holding `data`, for payloads too big for one socket record.
pub fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(c"procpy-msg", MFdFlags::MFD_CLOEXEC)?;
    let mut off = 0;
    while off < data.len() {
        match nix::sys::uio::pwrite(&fd, &data[off..], off as i64) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

/// Read `len` bytes (a length a peer declared) from the start of a memory file made by
/// [`memfd_with`]. The file must be a regular file holding at least `len` bytes (checked with
/// `fstat` before anything is allocated); the body is read with [`read_body`].
pub fn memfd_read(fd: RawFd, len: usize) -> io::Result<Vec<u8>> {
    let size = regular_file_size(fd, "message file")?;
    if (size as u128) < len as u128 {
        return Err(invalid(format!("message file holds {size} bytes, its record says {len}")));
    }
    let file = borrow_fd(fd)?;
    let mut off = 0usize;
    let body = read_body(len, |b| loop {
        match nix::sys::uio::pread(file, b, off as i64) {
            Ok(n) => {
                off += n;
                return Ok(n);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    });
    body.map_err(io::Error::from)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The size of `fd`, which must be a regular file (a memory file or a POSIX shared memory
/// segment); `what` names it in the error otherwise.
pub fn regular_file_size(fd: RawFd, what: &str) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(borrow_fd(fd)?)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(invalid(format!("the {what} is not a memory file")));
    }
    Ok(st.st_size.max(0) as u64)
}

/// A memory file of `len` zero bytes whose size is sealed (`F_SEAL_SHRINK | F_SEAL_GROW`, then
/// `F_SEAL_SEAL`): every process that maps it may touch all `len` bytes for as long as it lives,
/// since no holder of the descriptor, however hostile, can shrink it (touching a mapping past
/// the end of its file is SIGBUS). For memory that is mapped; see [`require_sealed`].
pub fn sealed_memfd(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let len = libc::off_t::try_from(len)
        .map_err(|_| invalid(format!("a memory file of {len} bytes is too large")))?;
    nix::unistd::ftruncate(&fd, len)?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

/// A memory file from a peer, about to be mapped, must be sealed against shrinking (as
/// [`sealed_memfd`] makes them): otherwise any process holding it could make every process that
/// maps it die of SIGBUS at its next access, by `ftruncate`. `what` names it in the error.
pub fn require_sealed(fd: RawFd, what: &str) -> io::Result<()> {
    // An unsuitable descriptor (not a memory file) has no seals: the same refusal.
    let seals = borrow_fd(fd).and_then(|f| Ok(fcntl(f, FcntlArg::F_GET_SEALS)?)).unwrap_or(0);
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err(invalid(format!(
            "the {what} is not sealed against shrinking (procpy seals the memory files it maps)"
        )));
    }
    Ok(())
}

/// Whether `fd` is a socket of type `kind` (`SOCK_STREAM`, `SOCK_SEQPACKET`, ...).
pub fn is_socket_of_type(fd: RawFd, kind: libc::c_int) -> bool {
    socket_int_option(fd, libc::SO_TYPE).is_ok_and(|ty| ty == kind)
}

/// Frame bodies up to this size are read into one buffer of their declared length (zeroed by
/// the allocator: pages not yet read into are not committed); a larger declared length is read
/// in steps, the buffer growing (doubling) only as bytes arrive.
pub const BODY_STEP: usize = 1 << 20;

/// Why [`read_body`] stopped before the end of the body.
#[derive(Debug)]
pub enum BodyError<E> {
    /// End of file after `got` bytes of the body (0: before its first byte).
    Eof {
        /// Bytes of the body that did arrive.
        got: usize,
    },
    /// No memory for a body of this length (an allocation failed; nothing was aborted).
    NoMemory {
        /// The declared length.
        len: usize,
    },
    /// `read` failed.
    Read(E),
}

impl From<BodyError<io::Error>> for io::Error {
    fn from(e: BodyError<io::Error>) -> io::Error {
        match e {
            BodyError::Eof { .. } => {
                io::Error::new(io::ErrorKind::UnexpectedEof, "got end of file during message")
            }
            BodyError::NoMemory { len } => io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate memory for a message of {len} bytes"),
            ),
            BodyError::Read(e) => e,
        }
    }
}

/// Read the body of a frame whose header declared `len` bytes: the one rule of every reader of
/// a length-prefixed frame, because the header comes from a peer and is not to be trusted.
///
/// `read` fills a prefix of the slice it is given and returns how much it filled (0 = end of
/// file); it is called until the body is complete. Nothing is allocated from `len` alone:
/// - a body of at most [`BODY_STEP`] bytes gets one buffer of that size (the fast path: one
///   allocation, and usually one `read`, as before);
/// - for a larger one, a length no allocation could hold fails at once with
///   [`BodyError::NoMemory`], as CPython (which allocates the declared length) raises
///   MemoryError; that trial allocation is released at once, and the buffer then starts at
///   [`BODY_STEP`] and doubles only when full, so a peer that declares much and sends little
///   makes us hold the larger of one step (not committed until written) and twice what it
///   sent, never what it declared.
///
/// Every allocation is fallible (`try_reserve`, `alloc_zeroed`): running out of memory midway
/// is [`BodyError::NoMemory`], never an abort.
pub fn read_body<E>(
    len: usize,
    mut read: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<Vec<u8>, BodyError<E>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if len > BODY_STEP {
        // Address space only: the pages are never touched before being given back.
        Vec::<u8>::new().try_reserve_exact(len).map_err(|_| no_memory_of(len))?;
    }
    let mut buf = zeroed(len.min(BODY_STEP)).ok_or_else(|| no_memory_of(len))?;
    let mut got = 0;
    while got < len {
        if got == buf.len() {
            let more = len.min(got.saturating_mul(2)) - got;
            buf.try_reserve_exact(more).map_err(|_| no_memory_of(len))?;
            // SAFETY: `more` bytes of spare capacity were reserved just above; they are all
            // initialised (zeroed) before `set_len` makes them part of the vector.
            unsafe {
                std::ptr::write_bytes(buf.as_mut_ptr().add(got), 0, more);
                buf.set_len(got + more);
            }
        }
        let room = buf.len() - got;
        let n = read(&mut buf[got..]).map_err(BodyError::Read)?;
        if n == 0 {
            return Err(BodyError::Eof { got });
        }
        // A reader claiming more than the room it had is a bug; never index past the buffer.
        got += n.min(room);
    }
    Ok(buf)
}

fn no_memory_of<E>(len: usize) -> BodyError<E> {
    BodyError::NoMemory { len }
}

/// `n` (> 0) zero bytes, or `None` if they cannot be allocated. Zeroed by the allocator
/// (`calloc`): a large block comes from fresh pages that are not touched, hence not committed,
/// until data is read into them — no memset, as with `vec![0; n]`, but fallible.
fn zeroed(n: usize) -> Option<Vec<u8>> {
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    if n == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size. A non-null result is `n` zeroed (so initialised)
    // bytes from the global allocator with the layout of `[u8; n]`, which is what
    // `Vec::from_raw_parts` needs for a vector of length and capacity `n`.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

/// [`read_body`] from an `io::Read` (retrying `EINTR`), for VM-free readers such as the
/// embedding's frames: end of file midway is `UnexpectedEof`, no memory is `OutOfMemory`.
pub fn read_body_from(r: &mut impl io::Read, len: usize) -> io::Result<Vec<u8>> {
    let body = read_body(len, |b| loop {
        match r.read(b) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    });
    body.map_err(io::Error::from)
}

/// A memory file mapped shared and read-write, with the descriptor it maps: the one owner of
/// such a mapping in procpy, under [`SharedCounters`] and `native::SharedBuffer`.
///
/// Invariants, which make handing out its memory sound:
/// - **The pointer stays valid.** The mapping is made in the constructor and unmapped only by
///   `Drop`, so [`as_ptr`](Self::as_ptr) points at [`len`](Self::len) mapped bytes (at least
///   one page: mmap refuses a zero length, so an empty map still maps one byte) for as long as
///   the `SharedMap` lives. Closing or reusing the descriptor would not unmap it either.
/// - **The file was big enough when mapped.** The constructor checks, with `fstat`, that the
///   descriptor is a regular file (a memory file or a /dev/shm segment) of at least `len`
///   bytes before mapping: it may come from a peer, and touching a mapped page past the end of
///   its file is SIGBUS.
/// - **A sealed file cannot shrink afterwards.** A map made with `sealed` (every memory file:
///   [`create`](Self::create) makes them so, and a peer's must be) requires `F_SEAL_SHRINK`
///   ([`require_sealed`]): the kernel then refuses every `ftruncate` to less, from every holder
///   of the file however hostile, and the seal itself cannot be removed. So every byte up to
///   `len` stays backed for the mapping's whole life.
/// - **An unsealed /dev/shm segment may.** A named segment (`SharedMemory`) cannot be sealed:
///   any process of the user can `ftruncate` it after we mapped it, and the next access past the
///   new end kills this process with SIGBUS, as it kills CPython's. No memory is misread (the
///   access faults), but the process dies: that is the risk named segments carry.
///
/// The memory is shared with other processes, which may write it at any time: procpy reads it
/// only through atomics ([`SharedCounters`]) or hands it to Python code as a buffer that the
/// program synchronises itself (as CPython's ctypes over `mmap`).
pub struct SharedMap {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the struct owns a descriptor and a mapping, neither tied to a thread; the mapped
// memory is shared with other processes anyway, so other threads add nothing its users do not
// already handle (atomics, or the program's own locks).
unsafe impl Send for SharedMap {}
// SAFETY: as for Send: `&SharedMap` only reads the fields, which never change.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// `len` zero bytes in a fresh sealed memory file named `name` (see [`sealed_memfd`]);
    /// `what` as for [`map`](Self::map).
    pub fn create(name: &CStr, len: usize, what: &str) -> io::Result<SharedMap> {
        SharedMap::map(sealed_memfd(name, len)?, len, true, what)
    }

    /// Map `len` bytes of `fd`, which must be a regular file holding at least that much and, if
    /// `sealed`, sealed against shrinking (see the type's invariants). `what` (a possessive:
    /// "counters'") names the mapping in an `InvalidData` error that says what is wrong.
    pub fn map(fd: OwnedFd, len: usize, sealed: bool, what: &str) -> io::Result<SharedMap> {
        let size = regular_file_size(fd.as_raw_fd(), &format!("{what} descriptor"))?;
        if size < len as u64 {
            return Err(invalid(format!(
                "the {what} memory file holds {size} bytes, {len} needed"
            )));
        }
        if sealed {
            require_sealed(fd.as_raw_fd(), &format!("{what} memory file"))?;
        }
        // mmap refuses a zero length; an empty map still needs a valid pointer.
        let map_len = NonZeroUsize::new(len.max(1)).expect("at least 1");
        // SAFETY: a new shared mapping of a file we hold, placed by the kernel (no address
        // given), so it replaces nothing of ours; it is unmapped only in Drop.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                map_len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }?;
        Ok(SharedMap { fd, ptr: ptr.cast(), len })
    }

    /// The start of the mapping: valid for [`len`](Self::len) bytes while `self` lives, page
    /// aligned, and written by other processes at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length asked for (the file may be larger).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory file's descriptor (to hand to children).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len.max(1)` are the mapping the constructor made, still mapped
        // (only this unmaps it); nothing borrowed from `self` outlives it.
        unsafe {
            let _ = nix::sys::mman::munmap(self.ptr.cast(), self.len.max(1));
        }
    }
}

/// Counters in memory shared by every process that holds the descriptor, with futex waits.
pub struct SharedCounters {
    map: SharedMap,
    n: usize,
}

impl SharedCounters {
    /// `n` zeroed counters in a fresh memory file.
    pub fn create(n: usize) -> io::Result<Self> {
        Ok(SharedCounters { map: SharedMap::create(c"procpy-counters", n * 4, "counters'")?, n })
    }

    /// Map counters created by another process. The descriptor came from a peer: it must be a
    /// sealed memory file holding all `n` counters (see [`SharedMap`]), else `InvalidData` says
    /// what is wrong.
    pub fn map(fd: OwnedFd, n: usize) -> io::Result<Self> {
        Ok(SharedCounters { map: SharedMap::map(fd, n * 4, true, "counters'")?, n })
    }

    /// Map counters in a segment opened by name (a named SemLock): such a file cannot be
    /// sealed, so only its size is checked.
    pub fn map_named(fd: OwnedFd, n: usize) -> io::Result<Self> {
        Ok(SharedCounters { map: SharedMap::map(fd, n * 4, false, "counters'")?, n })
    }

    /// The descriptor to hand to children.
    pub fn fd(&self) -> RawFd {
        self.map.fd().as_raw_fd()
    }

    /// Counter `i`. Callers pass their own slot constants, all below the `n` they mapped, so the
    /// assertion is a guard against a programming error, not reachable from input.
    pub fn get(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.n);
        // SAFETY: `i < n` and the map holds `n * 4` bytes, valid while `self` lives (SharedMap's
        // invariants), so the pointer is in bounds; the mapping is page aligned, so aligned for
        // u32. Every process touches these words only atomically (here, or the kernel's futex),
        // which is what a shared `&AtomicU32` allows.
        unsafe { &*self.map.as_ptr().cast::<AtomicU32>().add(i) }
    }

    /// Sleep while counter `i` still equals `expected`, at most `timeout`. Spurious wake-ups are
    /// possible: callers re-check their condition.
    pub fn wait(&self, i: usize, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
        match futex_wait(self.get(i), expected, timeout, false) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ETIMEDOUT)) => Ok(()),
            r => r,
        }
    }

    /// Wake one process sleeping on counter `i`.
    pub fn wake_one(&self, i: usize) {
        futex_wake(self.get(i), 1, false);
    }

    /// Wake every process sleeping on counter `i`.
    pub fn wake_all(&self, i: usize) {
        futex_wake(self.get(i), i32::MAX, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_cross_a_socket_with_their_message() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        let (r, w) = pipe().unwrap();
        send_with_fds(a.as_raw_fd(), b"hello", &[w.as_raw_fd()], 0).unwrap();
        drop(w);
        let mut buf = [0u8; 16];
        let (n, fds, trunc) = recv_with_fds(b.as_raw_fd(), &mut buf, 4, 0).unwrap();
        assert_eq!((&buf[..n], fds.len(), trunc), (&b"hello"[..], 1, false));
        write(fds[0].as_raw_fd(), b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(read(r.as_raw_fd(), &mut one).unwrap(), 1);
    }

    #[test]
    fn memfd_round_trips_large_payloads() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let fd = memfd_with(&data).unwrap();
        assert_eq!(memfd_read(fd.as_raw_fd(), data.len()).unwrap(), data);
    }

    /// A reader that hands out `data` at most `step` bytes a call, recording how much room it
    /// was offered each time.
    fn trickle<'a>(
        data: &'a [u8],
        step: usize,
        offered: &'a mut Vec<usize>,
    ) -> impl FnMut(&mut [u8]) -> io::Result<usize> + 'a {
        let mut pos = 0;
        move |b: &mut [u8]| {
            offered.push(b.len());
            let n = b.len().min(step).min(data.len() - pos);
            b[..n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
            Ok(n)
        }
    }

    #[test]
    fn read_body_reads_small_bodies_in_one_buffer() {
        let data = b"hello world".to_vec();
        let mut offered = Vec::new();
        let body = read_body(data.len(), trickle(&data, usize::MAX, &mut offered)).unwrap();
        assert_eq!(body, data);
        assert_eq!(offered, [data.len()], "one read into a buffer of exactly the declared size");
    }

    #[test]
    fn read_body_grows_with_the_bytes_not_the_header() {
        let data: Vec<u8> = (0..3 * BODY_STEP + 7).map(|i| i as u8).collect();
        let mut offered = Vec::new();
        assert_eq!(read_body(data.len(), trickle(&data, 4096, &mut offered)).unwrap(), data);
        // The first read is offered one step, never the declared length.
        assert_eq!(offered[0], BODY_STEP);
        assert!(offered.iter().all(|&n| n <= 2 * BODY_STEP), "{:?}", &offered[..4]);
    }

    #[test]
    fn read_body_holds_about_what_arrived_when_the_peer_stops() {
        // 4 GiB declared, 10 bytes sent: end of file after them, and at most one step allocated.
        let mut offered = Vec::new();
        match read_body(4 << 30, trickle(b"0123456789", usize::MAX, &mut offered)) {
            Err(BodyError::Eof { got: 10 }) => {}
            other => panic!("{other:?}"),
        }
        assert!(offered.iter().all(|&n| n <= BODY_STEP));
    }

    #[test]
    fn read_body_refuses_impossible_lengths_without_reading() {
        for len in [usize::MAX, isize::MAX as usize, 1 << 62] {
            let mut calls = 0;
            match read_body(len, |_b: &mut [u8]| -> io::Result<usize> {
                calls += 1;
                Ok(0)
            }) {
                Err(BodyError::NoMemory { len: l }) => assert_eq!(l, len),
                other => panic!("{len}: {other:?}"),
            }
            assert_eq!(calls, 0);
        }
        let e = io::Error::from(BodyError::<io::Error>::NoMemory { len: 5 });
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
    }

    #[test]
    fn read_body_passes_read_errors_and_survives_a_lying_reader() {
        match read_body(10, |_b: &mut [u8]| Err::<usize, _>("boom")) {
            Err(BodyError::Read("boom")) => {}
            other => panic!("{other:?}"),
        }
        // A reader claiming more than it was offered does not make us index past the buffer.
        let body = read_body(10, |b: &mut [u8]| Ok::<_, ()>(b.len() + 100)).unwrap();
        assert_eq!(body.len(), 10);
    }

    #[test]
    fn memfd_read_checks_the_file_before_allocating() {
        let fd = memfd_with(b"short").unwrap();
        let e = memfd_read(fd.as_raw_fd(), 1 << 40).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let (r, _w) = pipe().unwrap();
        assert_eq!(memfd_read(r.as_raw_fd(), 10).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn counters_refuse_a_file_too_small_for_them() {
        let fd = memfd_with(&[0u8; 4]).unwrap();
        let e = SharedCounters::map(fd, 3).err().expect("3 counters over 4 bytes");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn shared_maps_need_a_seal_when_asked_and_share_their_bytes() {
        let unsealed = memfd_with(&[0u8; 8]).unwrap();
        let e = SharedMap::map(unsealed, 8, true, "test's").err().expect("unsealed refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A /dev/shm-like (unsealed) file is accepted when no seal is asked for.
        assert_eq!(
            SharedMap::map(memfd_with(&[0u8; 8]).unwrap(), 8, false, "t's").unwrap().len(),
            8
        );
        let a = SharedMap::create(c"procpy-test", 4096, "test's").unwrap();
        let b = SharedMap::map(dup(a.fd().as_raw_fd()).unwrap(), 4096, true, "test's").unwrap();
        // SAFETY: both maps are valid for 4096 bytes; one thread, no other access meanwhile.
        unsafe {
            a.as_ptr().add(4095).write(7);
            assert_eq!(b.as_ptr().add(4095).read(), 7);
        }
        // An empty map still has a valid pointer.
        assert!(SharedMap::create(c"procpy-test", 0, "test's").unwrap().is_empty());
    }

    #[test]
    fn doing_keeps_errno_and_says_what_failed() {
        let e =
            doing(io::Error::from_raw_os_error(libc::EMFILE), "cannot start the resource tracker");
        let d = e.get_ref().and_then(|i| i.downcast_ref::<Doing>()).expect("a Doing");
        assert_eq!(d.errno, libc::EMFILE);
        assert_eq!(d.to_string(), "cannot start the resource tracker: Too many open files");
    }

    #[test]
    fn futex_wait_times_out_when_nothing_changes() {
        let c = SharedCounters::create(2).unwrap();
        c.wait(0, 0, Some(Duration::from_millis(1))).unwrap();
        c.get(1).store(5, std::sync::atomic::Ordering::SeqCst);
        // Value differs from expected: returns at once.
        c.wait(1, 0, None).unwrap();
    }
}

/// Byte streams on descriptors for callers that decide what an interrupted syscall means: the
/// VM's `_procpy` runs Python's signal handlers and detaches from the VM while it blocks
/// ([`Syscall`](crate::ipc::stream::Syscall)). Messages are framed as `multiprocessing`'s (a
/// length header, then the body), and a body is read with [`read_body`]'s rule: memory follows
/// the bytes that arrive.
pub mod stream {
    use super::{poll, read, read_body, recv_with_fds, remaining, send_with_fds, write, BodyError};
    use std::io;
    use std::os::fd::{OwnedFd, RawFd};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// How the helpers below run each blocking syscall: again after every EINTR, doing in
    /// between whatever an interruption calls for, which may end the retries with the caller's
    /// own error (a Python signal handler that raised).
    pub trait Syscall {
        /// What ends the retries.
        type Interrupt;
        /// Run `f` until it does not fail with EINTR.
        fn run<T>(
            &self,
            f: impl FnMut() -> io::Result<T>,
        ) -> Result<io::Result<T>, Self::Interrupt>;
    }

    /// Retry at once after EINTR, for callers with no signal handlers of their own to run.
    pub struct Restart;

    impl Syscall for Restart {
        type Interrupt = std::convert::Infallible;
        fn run<T>(
            &self,
            mut f: impl FnMut() -> io::Result<T>,
        ) -> Result<io::Result<T>, Self::Interrupt> {
            loop {
                match f() {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => return Ok(r),
                }
            }
        }
    }

    /// Why a helper below stopped.
    #[derive(Debug)]
    pub enum StreamError<I> {
        /// The caller ended the retries after an EINTR ([`Syscall::run`]).
        Interrupted(I),
        /// A syscall failed.
        Io(io::Error),
        /// End of file `got` bytes into what was being read (0: before its first byte; for a
        /// framed message's body, after the whole header).
        Eof {
            /// Bytes that did arrive.
            got: usize,
        },
        /// No memory for a body of `len` bytes (nothing was aborted).
        NoMemory {
            /// The declared length.
            len: usize,
        },
    }

    impl<I> From<BodyError<StreamError<I>>> for StreamError<I> {
        fn from(e: BodyError<StreamError<I>>) -> Self {
            match e {
                BodyError::Eof { got } => StreamError::Eof { got },
                BodyError::NoMemory { len } => StreamError::NoMemory { len },
                BodyError::Read(e) => e,
            }
        }
    }

    /// One syscall through `s`, its failure a [`StreamError`].
    fn run<S: Syscall, T>(
        s: &S,
        f: impl FnMut() -> io::Result<T>,
    ) -> Result<T, StreamError<S::Interrupt>> {
        s.run(f).map_err(StreamError::Interrupted)?.map_err(StreamError::Io)
    }

    /// Write all of `buf` to `fd`.
    pub fn write_all<S: Syscall>(
        s: &S,
        fd: RawFd,
        mut buf: &[u8],
    ) -> Result<(), StreamError<S::Interrupt>> {
        while !buf.is_empty() {
            let n = run(s, || write(fd, buf))?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Fill `buf` by repeated `read`s (each may be short; 0 is end of file). `Ok(false)` if end
    /// of file came before the first byte; later it is [`StreamError::Eof`].
    pub fn fill<S: Syscall>(
        s: &S,
        buf: &mut [u8],
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<bool, StreamError<S::Interrupt>> {
        let mut got = 0;
        while got < buf.len() {
            let n = run(s, || read(&mut buf[got..]))?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(StreamError::Eof { got });
            }
            got += n;
        }
        Ok(true)
    }

    /// Send `payload` on stream socket `sock` after an 8-byte big-endian length header that
    /// carries `fds` (the parent's boot message to a spawned child).
    pub fn send_framed<S: Syscall>(
        s: &S,
        sock: RawFd,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), StreamError<S::Interrupt>> {
        let header = (payload.len() as u64).to_be_bytes();
        let n = run(s, || send_with_fds(sock, &header, fds, 0))?;
        write_all(s, sock, &header[n..])?;
        write_all(s, sock, payload)
    }

    /// A framed message: its body and the descriptors that came with it.
    pub type Framed = (Vec<u8>, Vec<OwnedFd>);

    /// Receive what [`send_framed`] sent: `None` on end of file before the header. The length
    /// comes from the peer: the body is read by [`read_body`].
    pub fn recv_framed<S: Syscall>(
        s: &S,
        sock: RawFd,
    ) -> Result<Option<Framed>, StreamError<S::Interrupt>> {
        let mut header = [0u8; 8];
        let (n, fds, _) = run(s, || recv_with_fds(sock, &mut header, 253, 0))?;
        if n == 0 {
            return Ok(None);
        }
        match fill(s, &mut header[n..], |b| read(sock, b)) {
            Ok(true) => {}
            Ok(false) => return Err(StreamError::Eof { got: n }),
            Err(StreamError::Eof { got }) => return Err(StreamError::Eof { got: n + got }),
            Err(e) => return Err(e),
        }
        let len = usize::try_from(u64::from_be_bytes(header)).unwrap_or(usize::MAX);
        let payload = read_body(len, |b| run(s, || read(sock, b)))?;
        Ok(Some((payload, fds)))
    }

    /// An error that means the peer is gone (or going) rather than refusing us.
    pub fn peer_gone(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::EPIPE | libc::ENOTCONN)
        )
    }

    /// Fill `buf` from a peer that may hang up: `Ok(false)` if it did first (end of file, or
    /// an error of [`peer_gone`]).
    pub fn recv_full<S: Syscall>(
        s: &S,
        fd: RawFd,
        buf: &mut [u8],
    ) -> Result<bool, StreamError<S::Interrupt>> {
        let mut got = 0;
        while got < buf.len() {
            match s.run(|| read(fd, &mut buf[got..])).map_err(StreamError::Interrupted)? {
                Ok(0) => return Ok(false),
                Ok(n) => got += n,
                Err(e) if peer_gone(&e) => return Ok(false),
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
        Ok(true)
    }

    /// Send all of `data`, `fds` attached to its first byte; `Ok(false)` if the peer stopped
    /// reading (hung up).
    pub fn send_all<S: Syscall>(
        s: &S,
        fd: RawFd,
        mut data: &[u8],
        mut fds: &[RawFd],
    ) -> Result<bool, StreamError<S::Interrupt>> {
        while !data.is_empty() {
            match s.run(|| send_with_fds(fd, data, fds, 0)).map_err(StreamError::Interrupted)? {
                Ok(n) => {
                    data = &data[n..];
                    fds = &[];
                }
                Err(e) if peer_gone(&e) => return Ok(false),
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
        Ok(true)
    }

    /// Wait until `fd` is readable (or hung up). `false` on timeout.
    pub fn wait_readable<S: Syscall>(
        s: &S,
        fd: RawFd,
        until: Option<Instant>,
    ) -> Result<bool, StreamError<S::Interrupt>> {
        Ok(run(s, || poll(&[(fd, libc::POLLIN)], remaining(until)))?[0] != 0)
    }

    /// How long a reader polls before it sleeps: `PROCPY_SPIN_US` microseconds, default 0
    /// (off). Waking a sleeping process costs tens of microseconds on these virtual machines,
    /// and a peer that answers at once (a ping-pong) usually does within ~100 µs; but on a
    /// loaded machine the poller takes the core its peer needs, and round trips got up to 10x
    /// slower in the runs recorded in docs/performance.md, so it stays an opt-in.
    pub fn spin_window() -> Duration {
        static SPIN: OnceLock<Duration> = OnceLock::new();
        *SPIN.get_or_init(|| {
            let us =
                std::env::var("PROCPY_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0u64);
            Duration::from_micros(us)
        })
    }

    /// Poll `fd` without sleeping for up to [`spin_window`] (never past `until`); `true` once
    /// readable.
    pub fn spin_readable(fd: RawFd, until: Option<Instant>) -> bool {
        let spin = spin_window();
        if spin.is_zero() {
            return false;
        }
        let start = Instant::now();
        let stop = until.map_or(start + spin, |u| u.min(start + spin));
        loop {
            if matches!(poll(&[(fd, libc::POLLIN)], Some(Duration::ZERO)), Ok(r) if r[0] != 0) {
                return true;
            }
            if Instant::now() >= stop {
                return false;
            }
            // Yield rather than burn: on a busy machine the peer may need this very core to
            // answer (`sched_yield`).
            std::thread::yield_now();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::os::fd::AsRawFd;

        #[test]
        fn framed_messages_carry_their_descriptors() {
            let (a, b) = crate::ipc::socketpair(libc::SOCK_STREAM).unwrap();
            let (r, _w) = crate::ipc::pipe().unwrap();
            send_framed(&Restart, a.as_raw_fd(), b"hello", &[r.as_raw_fd()]).unwrap();
            let (body, fds) = recv_framed(&Restart, b.as_raw_fd()).unwrap().unwrap();
            assert_eq!((&body[..], fds.len()), (&b"hello"[..], 1));
            drop(a);
            assert!(recv_framed(&Restart, b.as_raw_fd()).unwrap().is_none());
        }

        #[test]
        fn end_of_file_inside_a_message_is_an_error() {
            let (a, b) = crate::ipc::socketpair(libc::SOCK_STREAM).unwrap();
            write_all(&Restart, a.as_raw_fd(), &[0, 0, 0]).unwrap();
            drop(a);
            match recv_framed(&Restart, b.as_raw_fd()) {
                Err(StreamError::Eof { got: 3 }) => {}
                other => panic!("{other:?}"),
            }
            let (a, b) = crate::ipc::socketpair(libc::SOCK_STREAM).unwrap();
            write_all(&Restart, a.as_raw_fd(), &5u64.to_be_bytes()).unwrap();
            drop(a);
            match recv_framed(&Restart, b.as_raw_fd()) {
                Err(StreamError::Eof { got: 0 }) => {}
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn a_peer_that_hangs_up_is_not_an_error() {
            let (a, b) = crate::ipc::socketpair(libc::SOCK_STREAM).unwrap();
            drop(b);
            assert!(!send_all(&Restart, a.as_raw_fd(), b"x", &[]).unwrap());
            assert!(!recv_full(&Restart, a.as_raw_fd(), &mut [0u8; 4]).unwrap());
            assert!(wait_readable(&Restart, a.as_raw_fd(), Some(Instant::now())).unwrap());
        }
    }
}
