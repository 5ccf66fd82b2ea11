//! OS plumbing for moving bytes and descriptors between processes. No VM in here.
//!
//! Every call returns `io::Error` untouched, `EINTR` included, so the caller (which knows about
//! Python signal handlers) decides whether to retry.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
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
    let mut fds = [0; 2];
    cvt(unsafe {
        libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static FORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static AT_FORK: std::sync::Once = std::sync::Once::new();

extern "C" fn forgot_ids_in_child() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// This process's id, cached: `getpid` is a real system call (glibc stopped caching it), and
/// locks and queues ask on every operation. A fork handler forgets it in the child.
pub fn pid() -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    let p = PID.load(Relaxed);
    if p != 0 {
        return p;
    }
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forgot_ids_in_child));
    });
    let p = unsafe { libc::getpid() } as u32;
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
        let tid = unsafe { libc::gettid() } as u32;
        c.set((forks, tid));
        tid
    })
}

/// Whether `fd` is a Unix-domain socket (and so can carry descriptors).
pub fn is_unix_socket(fd: RawFd) -> bool {
    // Only Unix-domain sockets carry descriptors (SCM_RIGHTS); a TCP connection from
    // `Listener`/`Client` is a socket too, but cannot.
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && domain == libc::AF_UNIX
}

/// Duplicate a descriptor (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    let n = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// One `write`; may be short.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// One `read`; 0 means end of file.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `poll` over `fds` (descriptor, events); returns the revents of each. `None` waits forever.
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
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    cvt_size(unsafe { libc::sendmsg(sock, &msg, flags | libc::MSG_NOSIGNAL) })
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
pub fn recv_with_fds_flags(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
    flags: libc::c_int,
) -> io::Result<(usize, Vec<OwnedFd>, libc::c_int)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let space = unsafe { libc::CMSG_SPACE((max_fds.max(1) * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = cvt_size(unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
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
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = r as RawFd;
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An anonymous memory file holding `data`, for payloads too big for one socket record.
pub fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::memfd_create(c"procpy-msg".as_ptr(), libc::MFD_CLOEXEC) })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut off = 0;
    while off < data.len() {
        match cvt_size(unsafe {
            libc::pwrite(fd.as_raw_fd(), data[off..].as_ptr().cast(), data.len() - off, off as i64)
        }) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
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
    let mut off = 0usize;
    let body = read_body(len, |b| loop {
        match cvt_size(unsafe { libc::pread(fd, b.as_mut_ptr().cast(), b.len(), off as i64) }) {
            Ok(n) => {
                off += n;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
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
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(invalid(format!("the {what} is not a memory file")));
    }
    Ok(st.st_size.max(0) as u64)
}

/// A memory file of `len` zero bytes whose size is sealed (`F_SEAL_SHRINK | F_SEAL_GROW`, then
/// `F_SEAL_SEAL`): every process that maps it may touch all `len` bytes for as long as it lives,
/// since no holder of the descriptor, however hostile, can shrink it (touching a mapping past
/// the end of its file is SIGBUS). For memory that is mapped; see [`require_sealed`].
pub fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; a non-negative result is a new descriptor we own.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| invalid(format!("a memory file of {len} bytes is too large")))?;
    // SAFETY: plain system calls on a descriptor we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    // SAFETY: as above.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// A memory file from a peer, about to be mapped, must be sealed against shrinking (as
/// [`sealed_memfd`] makes them): otherwise any process holding it could make every process that
/// maps it die of SIGBUS at its next access, by `ftruncate`. `what` names it in the error.
pub fn require_sealed(fd: RawFd, what: &str) -> io::Result<()> {
    // SAFETY: F_GET_SEALS reads the descriptor's seals; an unsuitable descriptor is an error.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(invalid(format!(
            "the {what} is not sealed against shrinking (procpy seals the memory files it maps)"
        )));
    }
    Ok(())
}

/// Whether `fd` is a socket of type `kind` (`SOCK_STREAM`, `SOCK_SEQPACKET`, ...).
pub fn is_socket_of_type(fd: RawFd, kind: libc::c_int) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && ty == kind
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

/// Counters in memory shared by every process that holds the descriptor, with futex waits.
pub struct SharedCounters {
    fd: OwnedFd,
    ptr: *mut AtomicU32,
    n: usize,
}

// The mapping is shared memory accessed only through atomics.
unsafe impl Send for SharedCounters {}
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// `n` zeroed counters in a fresh memory file.
    pub fn create(n: usize) -> io::Result<Self> {
        Self::map(sealed_memfd(c"procpy-counters", n * 4)?, n)
    }

    /// Map counters created by another process. The descriptor came from a peer: it must be a
    /// memory file holding all `n` counters (touching a mapping past the end of its file is
    /// SIGBUS), else `InvalidData` says what is wrong.
    pub fn map(fd: OwnedFd, n: usize) -> io::Result<Self> {
        let size = regular_file_size(fd.as_raw_fd(), "counters' descriptor")?;
        if size < (n * 4) as u64 {
            return Err(invalid(format!(
                "the counters' memory file holds {size} bytes, {} needed",
                n * 4
            )));
        }
        require_sealed(fd.as_raw_fd(), "counters' memory file")?;
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * 4,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ptr: p.cast(), n })
    }

    /// The descriptor to hand to children.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Counter `i`. Callers pass their own slot constants, all below the `n` they mapped, so the
    /// assertion is a guard against a programming error, not reachable from input.
    pub fn get(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.n);
        unsafe { &*self.ptr.add(i) }
    }

    /// Sleep while counter `i` still equals `expected`, at most `timeout`. Spurious wake-ups are
    /// possible: callers re-check their condition.
    pub fn wait(&self, i: usize, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout
            .map(|d| libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        let r = unsafe {
            libc::syscall(libc::SYS_futex, self.get(i).as_ptr(), libc::FUTEX_WAIT, expected, tsp)
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ETIMEDOUT)) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Wake one process sleeping on counter `i`.
    pub fn wake_one(&self, i: usize) {
        unsafe { libc::syscall(libc::SYS_futex, self.get(i).as_ptr(), libc::FUTEX_WAKE, 1) };
    }

    /// Wake every process sleeping on counter `i`.
    pub fn wake_all(&self, i: usize) {
        unsafe { libc::syscall(libc::SYS_futex, self.get(i).as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.n * 4) };
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
/// ([`Syscall`]). Messages are framed as `multiprocessing`'s (a length header, then the body),
/// and a body is read with [`read_body`]'s rule: memory follows the bytes that arrive.
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

    /// Receive what [`send_framed`] sent: `None` on end of file before the header. The length
    /// comes from the peer: the body is read by [`read_body`].
    pub fn recv_framed<S: Syscall>(
        s: &S,
        sock: RawFd,
    ) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>, StreamError<S::Interrupt>> {
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
