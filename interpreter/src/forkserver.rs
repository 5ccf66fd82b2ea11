//! The fork server's door: who may ask it for a child, and how a request is framed. No VM in
//! here (like [`crate::ipc`]), so a fuzzer can drive the protocol without an interpreter.
//!
//! Three locks, each enough to stop a stranger (docs/reliability.md, "The fork server"):
//! 1. the socket is a path in a fresh directory of mode 0700 ([`listen_private`]): other users
//!    cannot even connect (CPython keeps its fork server's socket in such a directory since
//!    CVE-2022-42919);
//! 2. on accept the server reads the peer's credentials (`SO_PEERCRED`) and drops, without a
//!    byte either way, any peer whose uid is not its own;
//! 3. before reading a byte of the request, the server sends a fresh random nonce and the
//!    client must answer HMAC-SHA256(key, [`CHALLENGE_TAG`] || nonce), where the key is a random
//!    per-server secret the owner handed the server through its private boot channel (as
//!    CPython 3.14 authenticates its fork server, gh-97514). Same-uid processes without the key
//!    get nothing decoded.
//!
//! One connection per request:
//! ```text
//! server -> client   'C' nonce[32]                     (or 'E' error, e.g. out of descriptors)
//! client -> server   answer[32]
//! client -> server   length: u64 BE   (SCM_RIGHTS: the child's descriptors, at most MAX_FDS)
//! client -> server   body[length]     (length <= MAX_REQUEST; the buffer grows as data arrives)
//! server -> client   'P' pid: i64 BE                   (or 'E' error)
//! server -> client   exit status: i64 BE, then close   (the connection is the parent's sentinel)
//! error record:      'E' errno: i32 BE  len: u16 BE (<= MAX_MESSAGE)  message[len] (UTF-8)
//! ```
//! The server is single-threaded and forks, so it never blocks on one client: [`Gate`] keeps
//! every connection non-blocking in its poll set with its own state ([`Inbound`]) and deadline.

use crate::ipc;
use hmac::{Hmac, Mac};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self as sock, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use sha2::Sha256;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Length of the server's secret key.
pub const KEY_LEN: usize = 32;
/// Length of the server's per-connection challenge.
pub const NONCE_LEN: usize = 32;
/// Length of the client's answer (an HMAC-SHA256).
pub const ANSWER_LEN: usize = 32;
/// Length of the request's length header.
pub const HEADER_LEN: usize = 8;
/// What the answer's HMAC covers before the nonce: binds the answer to this protocol.
pub const CHALLENGE_TAG: &[u8] = b"procpy-forkserver-challenge-v1";
/// Largest request accepted (4 GiB). A request is the spawn preparation data plus the encoded
/// process object, arguments included, and CPython sets no limit on those, so the cap is far
/// above any reasonable argument (bulk data belongs in shared memory); it exists so that a
/// nonsense header is refused at once. Memory is only ever taken for bytes that arrived.
pub const MAX_REQUEST: u64 = 4 << 30;
/// Most descriptors one request may carry (Linux's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Longest message in an error record.
pub const MAX_MESSAGE: usize = 1024;
/// Time a client has, from accept, to answer the challenge.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Time an authenticated client may go without sending a byte before its request is dropped.
pub const STALL_DEADLINE: Duration = Duration::from_secs(60);
/// Connections that have not answered yet; beyond this the oldest is dropped.
pub const MAX_UNAUTHENTICATED: usize = 64;
/// Record kinds, server to client.
pub const REC_CHALLENGE: u8 = b'C';
/// A child was started: its pid follows.
pub const REC_PID: u8 = b'P';
/// The request failed: errno, message.
pub const REC_ERROR: u8 = b'E';
/// Length of an error record before its message: kind, errno, message length.
pub const ERROR_HEAD_LEN: usize = 1 + 4 + 2;
/// Name of the socket inside its private directory.
const SOCKET_NAME: &str = "fs.sock";
/// Prefix of the private directory's name.
const DIR_PREFIX: &str = "procpy-";
/// Reads per connection per [`Gate::service`] call (64 KiB each), so one large request does not
/// keep the others waiting.
const READS_PER_TURN: usize = 64;
const CHUNK: usize = 64 * 1024;
/// Connections accepted per [`Gate::service`] call.
const ACCEPTS_PER_TURN: usize = 16;
/// How long the listener is left alone after an accept failure that cannot be answered.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answer a client holding `key` gives to `nonce`.
pub fn answer(key: &[u8], nonce: &[u8]) -> [u8; ANSWER_LEN] {
    // Cannot fail: HMAC accepts keys of any length (only fixed-key MACs return InvalidLength).
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(CHALLENGE_TAG);
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Whether `answer` is right for `nonce` under `key` (compared in constant time).
pub fn verify(key: &[u8], nonce: &[u8], answer: &[u8]) -> bool {
    // Cannot fail, as in `answer`.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(CHALLENGE_TAG);
    mac.update(nonce);
    mac.verify_slice(answer).is_ok()
}

/// The request length a header announces, if acceptable.
pub fn request_len(header: [u8; HEADER_LEN]) -> Result<usize, Reject> {
    match u64::from_be_bytes(header) {
        0 => Err(Reject::Empty),
        n if n > MAX_REQUEST => Err(Reject::TooLarge(n)),
        n => usize::try_from(n).map_err(|_| Reject::TooLarge(n)),
    }
}

/// An error record: `errno` and `message` (cut to [`MAX_MESSAGE`] bytes at a char boundary).
pub fn encode_error(errno: i32, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let mut out = Vec::with_capacity(ERROR_HEAD_LEN + msg.len());
    out.push(REC_ERROR);
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The errno and message length of an error record's head (`head[0]` is [`REC_ERROR`]);
/// `None` if the length is over [`MAX_MESSAGE`].
pub fn decode_error_head(head: &[u8; ERROR_HEAD_LEN]) -> Option<(i32, usize)> {
    let errno = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = u16::from_be_bytes([head[5], head[6]]) as usize;
    (head[0] == REC_ERROR && len <= MAX_MESSAGE).then_some((errno, len))
}

/// Why a connection was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// The answer to the challenge was wrong.
    BadAnswer,
    /// Descriptors came with the answer or with the body (only the header may carry them).
    UnexpectedFds,
    /// More than [`MAX_FDS`] descriptors.
    TooManyFds(usize),
    /// Descriptors were sent but could not be received (`MSG_CTRUNC`: out of descriptors).
    FdsLost,
    /// A zero-length request.
    Empty,
    /// A header over [`MAX_REQUEST`].
    TooLarge(u64),
    /// No memory for the request's bytes.
    OutOfMemory(usize),
    /// The client went silent past its deadline.
    Stalled,
}

impl Reject {
    /// The errno the client's OSError carries.
    pub fn errno(&self) -> i32 {
        match self {
            Reject::BadAnswer => libc::EACCES,
            Reject::UnexpectedFds | Reject::Empty => libc::EPROTO,
            Reject::TooManyFds(_) => libc::EINVAL,
            Reject::FdsLost => libc::EMFILE,
            Reject::TooLarge(_) => libc::E2BIG,
            Reject::OutOfMemory(_) => libc::ENOMEM,
            Reject::Stalled => libc::ETIMEDOUT,
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::BadAnswer => write!(f, "fork server: authentication failed (wrong key)"),
            Reject::UnexpectedFds => {
                write!(f, "fork server: descriptors outside the request header")
            }
            Reject::TooManyFds(n) => {
                write!(f, "fork server: request carries {n} descriptors (limit {MAX_FDS})")
            }
            Reject::FdsLost => write!(
                f,
                "fork server: could not receive the request's descriptors (too many open files)"
            ),
            Reject::Empty => write!(f, "fork server: empty request"),
            Reject::TooLarge(n) => write!(
                f,
                "fork server: request of {n} bytes is over the limit of {MAX_REQUEST} bytes"
            ),
            Reject::OutOfMemory(n) => {
                write!(f, "fork server: no memory for a request of {n} bytes")
            }
            Reject::Stalled => write!(f, "fork server: request not completed in time"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Answer,
    Header,
    Body,
    Done,
}

/// One connection's progress through the protocol, fed with the bytes read from it. Pure: no
/// I/O, so a fuzzer can call it with any bytes, split anywhere.
#[derive(Debug)]
pub struct Inbound {
    nonce: [u8; NONCE_LEN],
    phase: Phase,
    part: [u8; ANSWER_LEN],
    got: usize,
    len: usize,
    body: Vec<u8>,
    nfds: usize,
}

impl Inbound {
    /// A connection that was sent `nonce`.
    pub fn new(nonce: [u8; NONCE_LEN]) -> Inbound {
        Inbound {
            nonce,
            phase: Phase::Answer,
            part: [0; ANSWER_LEN],
            got: 0,
            len: 0,
            body: Vec::new(),
            nfds: 0,
        }
    }

    /// The challenge this connection must answer.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Whether the client has answered the challenge rightly.
    pub fn authenticated(&self) -> bool {
        self.phase != Phase::Answer
    }

    /// Whether the whole request has arrived.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether descriptors may come with the next bytes (only with the header).
    pub fn fds_allowed(&self) -> bool {
        self.phase == Phase::Header
    }

    /// How many bytes the next read may take: never past the current part, so the answer is
    /// checked before any byte of the request is read. 0 once done.
    pub fn want(&self) -> usize {
        match self.phase {
            Phase::Answer => ANSWER_LEN - self.got,
            Phase::Header => HEADER_LEN - self.got,
            Phase::Body => (self.len - self.body.len()).min(CHUNK),
            Phase::Done => 0,
        }
    }

    /// Take `data` (at most [`want`](Self::want) bytes, fewer is fine) that arrived with `nfds`
    /// descriptors. `Ok(true)` once the request is complete.
    pub fn feed(&mut self, key: &[u8], data: &[u8], nfds: usize) -> Result<bool, Reject> {
        let data = &data[..data.len().min(self.want())];
        match self.phase {
            Phase::Answer => {
                if nfds > 0 {
                    return Err(Reject::UnexpectedFds);
                }
                self.part[self.got..self.got + data.len()].copy_from_slice(data);
                self.got += data.len();
                if self.got == ANSWER_LEN {
                    if !verify(key, &self.nonce, &self.part) {
                        return Err(Reject::BadAnswer);
                    }
                    self.phase = Phase::Header;
                    self.got = 0;
                }
            }
            Phase::Header => {
                self.nfds += nfds;
                if self.nfds > MAX_FDS {
                    return Err(Reject::TooManyFds(self.nfds));
                }
                self.part[self.got..self.got + data.len()].copy_from_slice(data);
                self.got += data.len();
                if self.got == HEADER_LEN {
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(&self.part[..HEADER_LEN]);
                    self.len = request_len(h)?;
                    self.phase = Phase::Body;
                }
            }
            Phase::Body => {
                if nfds > 0 {
                    return Err(Reject::UnexpectedFds);
                }
                // Grow with what arrived, never with what the header claims.
                self.body.try_reserve(data.len()).map_err(|_| Reject::OutOfMemory(self.len))?;
                self.body.extend_from_slice(data);
                if self.body.len() == self.len {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        Ok(self.phase == Phase::Done)
    }

    /// The request's bytes (complete once [`done`](Self::done)).
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

// ------------------------------------------------------------------------------------------
// The socket and its directory

/// `sockaddr_un` for a filesystem path; ENAMETOOLONG if it does not fit.
pub fn sockaddr(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= addr.sun_path.len() || path.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(b)
}

/// Make a fresh directory of mode 0700 in `base` (mkdtemp's semantics: a random name, created
/// exclusively, so nobody else can have made or entered it first).
fn make_private_dir(base: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    for _ in 0..100 {
        let name: String = random::<10>()?
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        let dir = base.join(format!("{DIR_PREFIX}{name}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Whether `base` may hold our private directory: an absolute path (a relative one would move
/// with the working directory) to a directory owned by us or root that nobody else can rename
/// entries in (not writable by group or others, or sticky, as /tmp). In a directory another
/// user controls, they could move our directory away or plant a socket at its path: no code
/// would run (the uid check and the key hold), but every start would fail or restart.
fn safe_base(base: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if !base.is_absolute() {
        return false;
    }
    let Ok(meta) = std::fs::metadata(base) else { return false };
    let me = nix::unistd::geteuid().as_raw();
    meta.is_dir()
        && (meta.uid() == me || meta.uid() == 0)
        && (meta.mode() & 0o022 == 0 || meta.mode() & 0o1000 != 0)
}

/// A listening socket at a fresh path `<tmp>/procpy-XXXXXXXXXX/fs.sock`, the directory of
/// mode 0700; `<tmp>` is `$TMPDIR`, else /tmp (also when `$TMPDIR` is unset, relative, not a
/// `safe_base` or too long for a socket address). Returns the listener and the socket's path.
pub fn listen_private() -> io::Result<(OwnedFd, PathBuf)> {
    let mut bases = Vec::new();
    if let Some(tmpdir) = std::env::var_os("TMPDIR").map(PathBuf::from) {
        if safe_base(&tmpdir) && tmpdir != Path::new("/tmp") {
            bases.push(tmpdir);
        }
    }
    bases.push(PathBuf::from("/tmp"));
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for base in bases {
        // The longest path we could make must fit a socket address.
        let probe = base.join(format!("{DIR_PREFIX}0123456789/{SOCKET_NAME}"));
        if sockaddr(probe.as_os_str().as_encoded_bytes()).is_err() {
            last = io::Error::from_raw_os_error(libc::ENAMETOOLONG);
            continue;
        }
        let dir = match make_private_dir(&base) {
            Ok(d) => d,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let path = dir.join(SOCKET_NAME);
        match bind_listen(&path) {
            Ok(fd) => return Ok((fd, path)),
            Err(e) => {
                remove_private(&path);
                return Err(e);
            }
        }
    }
    Err(last)
}

fn bind_listen(path: &Path) -> io::Result<OwnedFd> {
    // The same checks (and ENAMETOOLONG) as the client's address.
    sockaddr(path.as_os_str().as_encoded_bytes())?;
    let addr = UnixAddr::new(path)?;
    let fd = sock::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    sock::bind(fd.as_raw_fd(), &addr)?;
    // The directory already keeps others out; the file's mode is a second fence (as CPython).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    sock::listen(&fd, Backlog::new(128)?)?;
    Ok(fd)
}

/// Remove the socket made by [`listen_private`] and its directory (what is already gone is
/// fine). Only paths of that shape are touched.
pub fn remove_private(path: &Path) {
    let Some(dir) = path.parent() else { return };
    let ours = path.file_name().is_some_and(|n| n == SOCKET_NAME)
        && dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(DIR_PREFIX));
    if ours {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(dir);
    }
}

/// The credentials of the process at the other end of a Unix socket (for a connecting
/// client: as of its connect; for a server's socket: as of its listen).
pub fn peer_cred(fd: RawFd) -> io::Result<libc::ucred> {
    let cred = sock::getsockopt(&ipc::borrow_fd(fd)?, sock::sockopt::PeerCredentials)?;
    Ok(cred.into())
}

/// Write all of a small record to a non-blocking socket, `fds` attached to its first byte; a
/// socket that cannot take it now (EAGAIN) gets an error rather than a wait: the server never
/// blocks on one client.
pub fn send_record(fd: RawFd, mut data: &[u8], mut fds: &[RawFd]) -> io::Result<()> {
    while !data.is_empty() {
        match ipc::send_with_fds(fd, data, fds, libc::MSG_DONTWAIT) {
            Ok(n) => {
                data = &data[n..];
                fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Tell a client its child's pid, handing it `go`, the pipe its child waits on: the client,
/// not the server, lets the child run. A server killed right after this record still leaves a
/// child that runs (the client holds the pipe); one killed before it leaves none (the pipe's
/// last writer died with it), and the client may safely ask a new server.
pub fn send_pid(fd: RawFd, pid: i32, go: RawFd) -> io::Result<()> {
    let mut rec = [0u8; 9];
    rec[0] = REC_PID;
    rec[1..].copy_from_slice(&(pid as i64).to_be_bytes());
    send_record(fd, &rec, &[go])
}

/// Tell a client its request failed.
pub fn send_error(fd: RawFd, errno: i32, message: &str) -> io::Result<()> {
    send_record(fd, &encode_error(errno, message), &[])
}

// ------------------------------------------------------------------------------------------
// The server's side: the listener and every connection in progress

/// A complete, authenticated request: the connection (to answer on, non-blocking), the body,
/// and the descriptors that came with it.
#[derive(Debug)]
pub struct Request {
    /// The connection; becomes the parent's sentinel.
    pub conn: OwnedFd,
    /// The encoded (preparation data, process object).
    pub body: Vec<u8>,
    /// The child's descriptors.
    pub fds: Vec<OwnedFd>,
}

struct Pending {
    sock: OwnedFd,
    inbound: Inbound,
    fds: Vec<OwnedFd>,
    deadline: Instant,
    accepted: Instant,
}

/// The fork server's listener and the connections it is reading, all non-blocking. The server
/// polls [`watch`](Self::watch) (with [`timeout`](Self::timeout)) and calls
/// [`service`](Self::service) with what was ready; no call blocks.
pub struct Gate {
    listener: Option<OwnedFd>,
    key: [u8; KEY_LEN],
    uid: u32,
    path: Option<PathBuf>,
    pending: Vec<Pending>,
    /// A spare descriptor, closed to accept (and answer) a client when out of descriptors.
    reserve: Option<OwnedFd>,
    paused_until: Option<Instant>,
    scratch: Vec<u8>,
}

impl Gate {
    /// Serve `listener` (made non-blocking here) with `key`; `path` is removed by
    /// [`close`](Self::close).
    pub fn new(listener: OwnedFd, key: &[u8], path: Option<PathBuf>) -> io::Result<Gate> {
        let key: [u8; KEY_LEN] =
            key.try_into().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = OFlag::from_bits_retain(fcntl(&listener, FcntlArg::F_GETFL)?);
        fcntl(&listener, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Gate {
            listener: Some(listener),
            key,
            uid: nix::unistd::geteuid().as_raw(),
            path,
            pending: Vec::new(),
            reserve: open_reserve(),
            paused_until: None,
            scratch: vec![0; CHUNK],
        })
    }

    /// The descriptors to poll for reading: the listener (unless paused) and every connection.
    pub fn watch(&self) -> Vec<RawFd> {
        let mut v = Vec::with_capacity(1 + self.pending.len());
        if let (Some(l), None) = (&self.listener, self.paused_until) {
            v.push(l.as_raw_fd());
        }
        v.extend(self.pending.iter().map(|p| p.sock.as_raw_fd()));
        v
    }

    /// How long the poll may sleep: until the next deadline (`None`: no deadline pending).
    pub fn timeout(&self) -> Option<Duration> {
        let next = self.pending.iter().map(|p| p.deadline).chain(self.paused_until).min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Connections in progress (for tests and the fuzzer's harness).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Advance the connections in `ready`, accept new ones if the listener is, drop the ones
    /// past their deadline; returns the requests completed. Failures concern one client each:
    /// it is told when it can be (an error record) and dropped.
    pub fn service(&mut self, ready: &[RawFd]) -> Vec<Request> {
        let now = Instant::now();
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if !ready.contains(&self.pending[i].sock.as_raw_fd()) {
                i += 1;
                continue;
            }
            match self.pump(i) {
                Ok(false) => i += 1,
                Ok(true) => {
                    let p = self.pending.swap_remove(i);
                    done.push(Request { conn: p.sock, body: p.inbound.into_body(), fds: p.fds });
                }
                Err(reject) => {
                    let p = self.pending.swap_remove(i);
                    if let Some(r) = reject {
                        let _ = send_error(p.sock.as_raw_fd(), r.errno(), &r.to_string());
                    }
                }
            }
        }
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        let listener_ready = self.listener.as_ref().is_some_and(|l| ready.contains(&l.as_raw_fd()));
        if listener_ready && self.paused_until.is_none() {
            self.accept_some();
        }
        let now = Instant::now();
        self.pending.retain(|p| {
            if now < p.deadline {
                return true;
            }
            if p.inbound.authenticated() {
                let r = Reject::Stalled;
                let _ = send_error(p.sock.as_raw_fd(), r.errno(), &r.to_string());
            }
            false
        });
        done
    }

    /// Read what connection `i` has. `Ok(true)`: its request is complete; `Err(Some)`: drop it
    /// and say why; `Err(None)`: drop it silently (it hung up or failed).
    fn pump(&mut self, i: usize) -> Result<bool, Option<Reject>> {
        let key = self.key;
        let p = &mut self.pending[i];
        for _ in 0..READS_PER_TURN {
            let want = p.inbound.want();
            if want == 0 {
                return Ok(true);
            }
            let max_fds = if p.inbound.fds_allowed() { MAX_FDS } else { 1 };
            let r = ipc::recv_with_fds_flags(
                p.sock.as_raw_fd(),
                &mut self.scratch[..want],
                max_fds,
                libc::MSG_DONTWAIT,
            );
            let (n, fds, flags) = match r {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => return Err(None),
            };
            if n == 0 {
                return Err(None);
            }
            if flags & libc::MSG_CTRUNC != 0 {
                // Only an authenticated client is told (an unauthenticated one hears nothing).
                return Err(p.inbound.authenticated().then_some(Reject::FdsLost));
            }
            let nfds = fds.len();
            if let Err(r) = p.inbound.feed(&key, &self.scratch[..n], nfds) {
                // `fds` close as they drop.
                return Err(Some(r));
            }
            p.fds.extend(fds);
            if p.inbound.authenticated() {
                // Authenticated: our own owner, allowed to be slow, not to stall.
                p.deadline = Instant::now() + STALL_DEADLINE;
            }
            if p.inbound.done() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn accept_some(&mut self) {
        let Some(listener) = self.listener.as_ref().map(AsRawFd::as_raw_fd) else { return };
        for _ in 0..ACCEPTS_PER_TURN {
            match accept(listener) {
                Ok(sock) => self.admit(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO)
                    ) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: free the spare one to take the client and tell it,
                    // rather than leave it waiting (or spin on a listener that stays ready).
                    let errno = e.raw_os_error().unwrap_or(libc::EMFILE);
                    if self.reserve.take().is_none() {
                        self.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                    match accept(listener) {
                        Ok(sock) => {
                            if peer_cred(sock.as_raw_fd()).is_ok_and(|c| c.uid == self.uid) {
                                let _ = send_error(
                                    sock.as_raw_fd(),
                                    errno,
                                    "fork server: out of file descriptors, cannot take the request (too many open files)",
                                );
                            }
                            // Hang up, and keep the descriptor as the next spare: reopening one
                            // after closing this could lose the slot to the next accept.
                            let _ = sock::shutdown(sock.as_raw_fd(), sock::Shutdown::Both);
                            self.reserve = Some(sock);
                        }
                        Err(_) => self.reserve = open_reserve(),
                    }
                }
                Err(_) => {
                    self.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// A new connection: strangers are dropped before a byte is exchanged; others get the
    /// challenge.
    fn admit(&mut self, sock: OwnedFd) {
        match peer_cred(sock.as_raw_fd()) {
            Ok(c) if c.uid == self.uid => {}
            _ => return,
        }
        let Ok(nonce) = random::<NONCE_LEN>() else { return };
        let mut greeting = [0u8; 1 + NONCE_LEN];
        greeting[0] = REC_CHALLENGE;
        greeting[1..].copy_from_slice(&nonce);
        if send_record(sock.as_raw_fd(), &greeting, &[]).is_err() {
            return;
        }
        let unauthenticated = self.pending.iter().filter(|p| !p.inbound.authenticated()).count();
        if unauthenticated >= MAX_UNAUTHENTICATED {
            if let Some(oldest) = (0..self.pending.len())
                .filter(|&i| !self.pending[i].inbound.authenticated())
                .min_by_key(|&i| self.pending[i].accepted)
            {
                self.pending.swap_remove(oldest);
            }
        }
        let now = Instant::now();
        self.pending.push(Pending {
            sock,
            inbound: Inbound::new(nonce),
            fds: Vec::new(),
            deadline: now + AUTH_DEADLINE,
            accepted: now,
        });
    }

    /// Close the listener and every connection and forget the key; remove the socket and its
    /// directory if `remove` (the server exiting; not a forked child, whose copy of the gate
    /// only has to go).
    pub fn close(&mut self, remove: bool) {
        self.listener = None;
        self.pending.clear();
        self.reserve = None;
        wipe(&mut self.key);
        if let Some(path) = self.path.take() {
            if remove {
                remove_private(&path);
            }
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        wipe(&mut self.key);
    }
}

/// Overwrite a secret so that the write is not optimised away.
fn wipe(key: &mut [u8; KEY_LEN]) {
    for b in key.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

fn open_reserve() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    let fd = sock::accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
    // SAFETY: a fresh descriptor from accept4, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    fn request(nonce: &[u8; NONCE_LEN], body: &[u8]) -> Vec<u8> {
        let mut v = answer(&KEY, nonce).to_vec();
        v.extend_from_slice(&(body.len() as u64).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Feed `bytes` in pieces of `step`, as reads would deliver them.
    fn feed_all(inb: &mut Inbound, bytes: &[u8], step: usize) -> Result<bool, Reject> {
        let mut off = 0;
        while off < bytes.len() && !inb.done() {
            let n = step.min(inb.want()).min(bytes.len() - off);
            inb.feed(&KEY, &bytes[off..off + n], 0)?;
            off += n;
        }
        Ok(inb.done())
    }

    #[test]
    fn a_right_answer_opens_the_door_however_the_bytes_are_split() {
        for step in [1, 3, 8, 32, 100_000] {
            let nonce = [step as u8; NONCE_LEN];
            let mut inb = Inbound::new(nonce);
            assert_eq!(feed_all(&mut inb, &request(&nonce, b"hello body"), step), Ok(true));
            assert_eq!(inb.into_body(), b"hello body");
        }
    }

    #[test]
    fn a_wrong_answer_is_refused_before_any_request_byte() {
        let nonce = [1; NONCE_LEN];
        let mut inb = Inbound::new(nonce);
        // The answer for another nonce, and one under another key.
        let mut bad = answer(&KEY, &[2; NONCE_LEN]).to_vec();
        bad.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(feed_all(&mut inb, &bad, 64), Err(Reject::BadAnswer));
        let mut inb = Inbound::new(nonce);
        assert_eq!(inb.feed(&KEY, &answer(&[8; KEY_LEN], &nonce), 0), Err(Reject::BadAnswer));
        // The request's first bytes are never asked for before the answer is complete.
        let inb = Inbound::new(nonce);
        assert_eq!(inb.want(), ANSWER_LEN);
    }

    #[test]
    fn headers_are_checked_against_the_cap() {
        assert_eq!(request_len((1u64 << 40).to_be_bytes()), Err(Reject::TooLarge(1 << 40)));
        assert_eq!(request_len(u64::MAX.to_be_bytes()), Err(Reject::TooLarge(u64::MAX)));
        assert_eq!(request_len(0u64.to_be_bytes()), Err(Reject::Empty));
        assert_eq!(request_len(MAX_REQUEST.to_be_bytes()), Ok(MAX_REQUEST as usize));
        // A huge (accepted) header takes no memory until bytes arrive.
        let nonce = [3; NONCE_LEN];
        let mut inb = Inbound::new(nonce);
        inb.feed(&KEY, &answer(&KEY, &nonce), 0).unwrap();
        inb.feed(&KEY, &MAX_REQUEST.to_be_bytes(), 2).unwrap();
        assert_eq!(inb.body.capacity(), 0);
        assert_eq!(inb.want(), CHUNK);
    }

    #[test]
    fn descriptors_only_with_the_header() {
        let nonce = [4; NONCE_LEN];
        let mut inb = Inbound::new(nonce);
        assert_eq!(inb.feed(&KEY, &answer(&KEY, &nonce)[..4], 1), Err(Reject::UnexpectedFds));
        let mut inb = Inbound::new(nonce);
        inb.feed(&KEY, &answer(&KEY, &nonce), 0).unwrap();
        assert_eq!(
            inb.feed(&KEY, &[0, 0, 0, 0], MAX_FDS + 1),
            Err(Reject::TooManyFds(MAX_FDS + 1))
        );
        let mut inb = Inbound::new(nonce);
        inb.feed(&KEY, &answer(&KEY, &nonce), 0).unwrap();
        inb.feed(&KEY, &4u64.to_be_bytes(), 3).unwrap();
        assert_eq!(inb.feed(&KEY, b"ab", 1), Err(Reject::UnexpectedFds));
    }

    #[test]
    fn error_records_round_trip_and_are_capped() {
        let rec = encode_error(24, &"é".repeat(2000));
        let head: [u8; ERROR_HEAD_LEN] = rec[..ERROR_HEAD_LEN].try_into().unwrap();
        let (errno, len) = decode_error_head(&head).unwrap();
        assert_eq!((errno, len, rec.len()), (24, MAX_MESSAGE, ERROR_HEAD_LEN + MAX_MESSAGE));
        assert!(std::str::from_utf8(&rec[ERROR_HEAD_LEN..]).is_ok());
        assert_eq!(decode_error_head(&[REC_ERROR, 0, 0, 0, 1, 0xff, 0xff]), None);
    }

    #[test]
    fn only_a_directory_others_cannot_rename_in_is_a_base() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("procpy-base-test-{}", std::process::id()));
        let dir = |name: &str, mode: u32| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            d
        };
        assert!(safe_base(&dir("private", 0o700)));
        assert!(safe_base(&dir("shared-sticky", 0o1777)));
        assert!(!safe_base(&dir("world-writable", 0o777)));
        assert!(!safe_base(&dir("group-writable", 0o770)));
        assert!(!safe_base(Path::new("relative/dir")));
        assert!(!safe_base(Path::new("")));
        assert!(!safe_base(&root.join("missing")));
        assert!(safe_base(Path::new("/tmp")));
        if nix::unistd::geteuid().is_root() {
            let theirs = dir("theirs", 0o755);
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(!safe_base(&theirs), "a directory another user owns");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_gate_serves_an_honest_client_and_drops_a_silent_one() {
        let dir = std::env::temp_dir();
        let (listener, path) = listen_private().unwrap();
        assert!(path.starts_with(&dir) || path.starts_with("/tmp"));
        let mut gate = Gate::new(listener, &KEY, Some(path.clone())).unwrap();
        let connect = || std::os::unix::net::UnixStream::connect(&path).unwrap();
        // One turn of the server's loop: poll (a hang guard of 10 s), then service.
        let turn = |gate: &mut Gate| {
            let watch = gate.watch();
            let polled: Vec<(RawFd, i16)> = watch.iter().map(|&fd| (fd, libc::POLLIN)).collect();
            let revents = ipc::poll(&polled, Some(Duration::from_secs(10))).unwrap();
            assert!(revents.iter().any(|&r| r != 0), "nothing ready within 10 s");
            let ready: Vec<RawFd> =
                watch.iter().zip(revents).filter(|(_, r)| *r != 0).map(|(fd, _)| *fd).collect();
            gate.service(&ready)
        };
        let _silent = connect();
        let mut honest = connect();
        // Accept both; the honest one reads its challenge and answers.
        while gate.pending() < 2 {
            turn(&mut gate);
        }
        use std::io::{Read, Write};
        let mut greeting = [0u8; 1 + NONCE_LEN];
        honest.read_exact(&mut greeting).unwrap();
        assert_eq!(greeting[0], REC_CHALLENGE);
        let nonce: [u8; NONCE_LEN] = greeting[1..].try_into().unwrap();
        honest.write_all(&request(&nonce, b"xyz")).unwrap();
        let done = loop {
            let d = turn(&mut gate);
            if !d.is_empty() {
                break d;
            }
        };
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].body, b"xyz");
        assert_eq!(gate.pending(), 1, "the silent client waits alone");
        gate.close(true);
        assert!(!path.exists() && !path.parent().unwrap().exists());
    }
}
