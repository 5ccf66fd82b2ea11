//! OS plumbing for moving bytes and descriptors between processes. No VM in here.
//!
//! Every call returns `io::Error` untouched, `EINTR` included, so the caller (which knows about
//! Python signal handlers) decides whether to retry.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// A close-on-exec AF_UNIX socket pair of the given type (`SOCK_STREAM`, `SOCK_SEQPACKET`).
pub fn socketpair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
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
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut domain as *mut libc::c_int).cast(), &mut len) };
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
    let mut pfds: Vec<libc::pollfd> = fds.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as i32 + i32::from(d.subsec_nanos() % 1_000_000 != 0),
    };
    cvt(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) })?;
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// Time left until `deadline` (`None` = no deadline), saturating at zero.
pub fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// `sendmsg` of `data` with `fds` attached as SCM_RIGHTS.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd], flags: libc::c_int) -> io::Result<usize> {
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
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    cvt_size(unsafe { libc::sendmsg(sock, &msg, flags | libc::MSG_NOSIGNAL) })
}

/// `recvmsg` into `buf`, accepting up to `max_fds` descriptors (received close-on-exec).
/// Returns the byte count, the descriptors, and whether the record was truncated.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], max_fds: usize, flags: libc::c_int) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let (n, fds, msg_flags) = recv_with_fds_flags(sock, buf, max_fds, flags)?;
    Ok((n, fds, msg_flags & libc::MSG_TRUNC != 0))
}

/// [`recv_with_fds`] returning the message's `msg_flags` whole: `MSG_CTRUNC` there means
/// descriptors were sent but not all could be received (no room, or out of descriptors).
pub fn recv_with_fds_flags(sock: RawFd, buf: &mut [u8], max_fds: usize, flags: libc::c_int) -> io::Result<(usize, Vec<OwnedFd>, libc::c_int)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let space = unsafe { libc::CMSG_SPACE((max_fds.max(1) * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = cvt_size(unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
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
        match cvt_size(unsafe { libc::pwrite(fd.as_raw_fd(), data[off..].as_ptr().cast(), data.len() - off, off as i64) }) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(fd)
}

/// Read `len` bytes from the start of a memory file made by [`memfd_with`].
pub fn memfd_read(fd: RawFd, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut off = 0;
    while off < len {
        match cvt_size(unsafe { libc::pread(fd, out[off..].as_mut_ptr().cast(), len - off, off as i64) }) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short message file")),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
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
        let fd = cvt(unsafe { libc::memfd_create(c"procpy-counters".as_ptr(), libc::MFD_CLOEXEC) })?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), (n * 4) as i64) })?;
        Self::map(fd, n)
    }

    /// Map counters created by another process.
    pub fn map(fd: OwnedFd, n: usize) -> io::Result<Self> {
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), n * 4, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
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

    /// Counter `i`.
    pub fn get(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.n);
        unsafe { &*self.ptr.add(i) }
    }

    /// Sleep while counter `i` still equals `expected`, at most `timeout`. Spurious wake-ups are
    /// possible: callers re-check their condition.
    pub fn wait(&self, i: usize, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|d| libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        let r = unsafe { libc::syscall(libc::SYS_futex, self.get(i).as_ptr(), libc::FUTEX_WAIT, expected, tsp) };
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

    #[test]
    fn futex_wait_times_out_when_nothing_changes() {
        let c = SharedCounters::create(2).unwrap();
        c.wait(0, 0, Some(Duration::from_millis(1))).unwrap();
        c.get(1).store(5, std::sync::atomic::Ordering::SeqCst);
        // Value differs from expected: returns at once.
        c.wait(1, 0, None).unwrap();
    }
}
