//! Length-prefixed frames on every channel: oversized, truncated and garbage headers, crafted
//! handles, wrong and missing authkeys.
//!
//! Each test drives a procpy script and asserts what it printed: an exception named as CPython
//! names it, and a process that lives on (no SIGABRT from a huge allocation, no SIGBUS from a
//! mapping larger than its file, no hang). Timeouts are hang guards only.

use crate::common::serial;
use crate::common::{procpy, run_with_deadline, Outcome};
use procpy_interpreter::wire::{self, HandleKind, Value};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Hang guard for one script.
const LIMIT: Duration = Duration::from_secs(60);
const GIB: u64 = 1 << 30;

fn cvt(r: libc::c_int) -> RawFd {
    assert!(r >= 0, "system call failed: {}", std::io::Error::last_os_error());
    r
}

/// A close-on-exec socket pair (close-on-exec: tests run in parallel and their children must
/// not inherit each other's descriptors).
fn socketpair(kind: libc::c_int) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) });
    // SAFETY: two new descriptors nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) });
    // SAFETY: two new descriptors nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// An anonymous memory file of `size` bytes (sparse: nothing is written).
fn memfd(size: u64) -> OwnedFd {
    // SAFETY: a valid C string; the new descriptor is owned by the OwnedFd at once.
    let fd = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::memfd_create(c"frames-test".as_ptr(), libc::MFD_CLOEXEC)))
    };
    // SAFETY: a plain system call on a descriptor we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) });
    fd
}

/// A memory file of `size` bytes sealed against resizing, as procpy makes the ones it maps.
fn sealed_memfd(size: u64) -> OwnedFd {
    // SAFETY: a valid C string; the new descriptor is owned by the OwnedFd at once.
    let fd = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::memfd_create(
            c"frames-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )))
    };
    // SAFETY: plain system calls on a descriptor we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) });
    // SAFETY: as above.
    cvt(unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
    });
    fd
}

/// `sendmsg` of `data` with `fds` attached (SCM_RIGHTS); all of `data` must go in one call.
fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr is plain data, for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and `fds` (CMSG_SPACE above).
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
    // SAFETY: `msg` points at `iov` (over `data`) and the control buffer, all alive here.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(n, data.len() as isize, "sendmsg: {}", std::io::Error::last_os_error());
}

/// One `Connection` frame (4-byte big-endian length, then the body) with `fds` on it.
fn send_frame(sock: RawFd, body: &[u8], fds: &[RawFd]) {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send_with_fds(sock, &frame, fds);
}

/// One encoded object (what `Connection.send` would write for it).
fn encoded(v: &Value) -> Vec<u8> {
    wire::to_bytes(v)
}

fn text(s: &str) -> Value {
    Value::Str(s.as_bytes().to_vec())
}

/// A procpy command running `code` (as `procpy -c code args...`).
fn procpy_c(code: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(procpy());
    cmd.arg("-c").arg(code).args(args);
    cmd
}

/// Make `fd` the child's descriptor 3 (the scripts open `Connection(3)`).
fn give_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: only async-signal-safe calls between fork and exec; they change the child's
    // descriptor table only.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Limit the child's address space (RLIMIT_AS) to `bytes`, so that a huge allocation fails the
/// same way whatever the machine's overcommit policy.
fn limit_address_space(cmd: &mut Command, bytes: u64) {
    // SAFETY: setrlimit is async-signal-safe and changes only the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether this kernel grants any allocation (`vm.overcommit_memory = 1`): then a 1 TiB
/// allocation succeeds and only RLIMIT_AS makes it fail.
fn always_overcommit() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|s| s.trim() == "1")
}

fn lines(o: &Outcome) -> Vec<&str> {
    o.stdout.lines().collect()
}

/// The script ran to its end: exit status 0 and its last line printed.
fn assert_lived(o: &Outcome, last: &str) {
    assert!(!o.timed_out, "hung (killed after {LIMIT:?})\nstdout:\n{}", o.stdout);
    assert_eq!(
        o.status,
        Some(0),
        "died (negative = signal)\nstdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(o.stdout.lines().last(), Some(last), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
}

/// Write a frame header declaring `len` bytes to a Pipe's writer, close it, and call each
/// receiving method on the reader; then a normal message on a fresh Pipe.
const PIPE_HEADER: &str = r#"
import os, struct, sys
import multiprocessing as mp
n = int(sys.argv[1])
head = struct.pack('!i', n) if n < 2**31 else struct.pack('!i', -1) + struct.pack('!Q', n)
for call in ('recv', 'recv_bytes', 'recv_bytes_into'):
    for duplex in (True, False):
        a, b = mp.Pipe(duplex)
        os.write(b.fileno(), head)
        b.close()
        try:
            if call == 'recv_bytes_into':
                a.recv_bytes_into(bytearray(16))
            else:
                getattr(a, call)()
            print(call, duplex, 'returned')
        except Exception as e:
            print(call, duplex, type(e).__name__)
a, b = mp.Pipe()
b.send([1, 2])
print('alive', a.recv())
"#;

fn pipe_header_case(len: u64, address_space: Option<u64>) -> Outcome {
    let mut cmd = procpy_c(PIPE_HEADER, &[&len.to_string()]);
    if let Some(bytes) = address_space {
        limit_address_space(&mut cmd, bytes);
    }
    run_with_deadline(cmd, LIMIT)
}

fn assert_all_raised(o: &Outcome, allowed: &[&str]) {
    assert_lived(o, "alive [1, 2]");
    let results = &lines(o)[..lines(o).len() - 1];
    assert_eq!(results.len(), 6, "{}", o.stdout);
    for l in results {
        let exc = l.rsplit(' ').next().unwrap_or_default();
        assert!(allowed.contains(&exc), "{l:?}: expected one of {allowed:?}\n{}", o.stdout);
    }
}

/// A header of 2^40 on recv/recv_bytes/recv_bytes_into raises MemoryError (as CPython, which
/// tries to allocate it) instead of aborting the process.
#[test]
fn pipe_header_of_2_pow_40_raises_memory_error() {
    let _serial = serial::shared();
    let o = pipe_header_case(1 << 40, None);
    // Under `overcommit_memory = 1` the allocation of 1 TiB is granted to CPython and to us:
    // then the writer's end of file ends the message.
    let allowed: &[&str] =
        if always_overcommit() { &["MemoryError", "OSError"] } else { &["MemoryError"] };
    assert_all_raised(&o, allowed);
}

/// Under RLIMIT_AS 2 GiB, headers of 2^31 - 1 (the largest short header) and 2^31 (a long one)
/// raise MemoryError.
#[test]
fn pipe_header_of_2_pow_31_under_rlimit_as_raises_memory_error() {
    let _serial = serial::shared();
    for len in [(1u64 << 31) - 1, 1 << 31, 1 << 40] {
        let o = pipe_header_case(len, Some(2 * GIB));
        assert_all_raised(&o, &["MemoryError"]);
    }
}

/// Reads labelled objects from `Connection(3)` until end of file. After each label comes either
/// a queue to `get` from (label "get ...": two `get`s, the first meets the bad record, the
/// second must still get the good one behind it) or a handle to use.
const RECEIVER: &str = r#"
import sys
from multiprocessing.connection import Connection
from multiprocessing.queues import SimpleQueue
conn = Connection(3)

def use(obj):
    t = type(obj).__name__
    if t == 'SharedBuffer':
        m = memoryview(obj)
        m[len(m) - 1] = 1
        return len(m)
    if t == 'SemLock':
        # A fresh memory file holds a semaphore of value 0: not acquired, but its state was read.
        got = obj.acquire(False)
        if got:
            obj.release()
        return 'acquired' if got else 'not acquired'
    if t == 'Connection':
        return obj.poll()
    return obj.qsize()

while True:
    try:
        label = conn.recv()
    except EOFError:
        break
    try:
        obj = conn.recv()
        if label.startswith('get '):
            for _ in range(2):
                try:
                    item = obj.get() if isinstance(obj, SimpleQueue) else obj.get(timeout=30)
                    print(label, 'got', repr(item))
                except Exception as e:
                    print(label, type(e).__name__, e)
        else:
            print(label, 'used', use(obj))
    except Exception as e:
        print(label, type(e).__name__, e)
    sys.stdout.flush()
print('alive')
"#;

/// Run [`RECEIVER`] with the socket `theirs` as its descriptor 3, after `feed` wrote to `ours`.
fn run_receiver(address_space: Option<u64>, feed: impl FnOnce(RawFd)) -> Outcome {
    let (ours, theirs) = socketpair(libc::SOCK_STREAM);
    let mut cmd = procpy_c(RECEIVER, &[]);
    give_fd3(&mut cmd, theirs.as_raw_fd());
    if let Some(bytes) = address_space {
        limit_address_space(&mut cmd, bytes);
    }
    // Everything is written before the script starts (the messages are small: the socket
    // buffer holds them); closing our end then ends the script's loop.
    feed(ours.as_raw_fd());
    drop(ours);
    let o = run_with_deadline(cmd, LIMIT);
    drop(theirs);
    o
}

/// Sends queue handles whose reader the test controls, each with one bad record and one good.
struct QueueFeeder {
    conn: RawFd,
    keep: Vec<OwnedFd>,
}

impl QueueFeeder {
    /// A queue of `kind` (0 Queue, 2 SimpleQueue) whose socket holds `bad` (record bytes and
    /// descriptors) then a good record holding the string 'ok'.
    fn queue(&mut self, label: &str, kind: i64, bad: &[u8], bad_fds: &[RawFd]) {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET);
        let counters = sealed_memfd(COUNTERS);
        // The "has carried descriptors" slot set: readers then peek at each record's
        // descriptors before taking it, the path a record that lies about them could block.
        let carries = 1u32.to_ne_bytes();
        // SAFETY: `carries` is 4 readable bytes for the call's duration.
        assert_eq!(unsafe { libc::pwrite(counters.as_raw_fd(), carries.as_ptr().cast(), 4, 8) }, 4);
        send_with_fds(b.as_raw_fd(), bad, bad_fds);
        let mut good = vec![0u8, 0];
        good.extend_from_slice(&encoded(&text("ok")));
        send_with_fds(b.as_raw_fd(), &good, &[]);
        send_frame(self.conn, &encoded(&text(label)), &[]);
        let handle =
            Value::Handle { kind: HandleKind::Queue, fds: vec![0, 1, 2], extra: vec![0, kind] };
        send_frame(
            self.conn,
            &encoded(&handle),
            &[a.as_raw_fd(), b.as_raw_fd(), counters.as_raw_fd()],
        );
        self.keep.extend([a, b, counters]);
    }
}

/// A queue's counters: three u32 slots (interpreter/src/native/queue.rs `SLOTS`).
const COUNTERS: u64 = 12;

/// A record (kind 1: the item is in a memory file) that declares `nfds` descriptors.
fn memfd_record(len: u64, nfds: u8) -> Vec<u8> {
    let mut rec = vec![1u8, nfds];
    rec.extend_from_slice(&len.to_le_bytes());
    rec
}

/// Queue records that claim more than can be (a 2^40-byte item in an empty or sparse memory
/// file, an inline record longer than any procpy writes, a memory-file record without its
/// file) raise in `get`; the record behind each still arrives.
#[test]
fn bad_queue_records_raise_and_the_queue_stays_usable() {
    let _serial = serial::shared();
    let mut keep = Vec::new();
    let o = run_receiver(Some(2 * GIB), |conn| {
        let mut f = QueueFeeder { conn, keep: Vec::new() };
        for (kind, name) in [(0, "get Queue"), (2, "get SimpleQueue")] {
            let empty = memfd(0);
            f.queue(
                &format!("{name} 2^40 in an empty file"),
                kind,
                &memfd_record(1 << 40, 1),
                &[empty.as_raw_fd()],
            );
            let sparse = memfd(1 << 40);
            f.queue(
                &format!("{name} 2^40 in a sparse file"),
                kind,
                &memfd_record(1 << 40, 1),
                &[sparse.as_raw_fd()],
            );
            let short = memfd(10);
            f.queue(
                &format!("{name} 100 in a file of 10"),
                kind,
                &memfd_record(100, 1),
                &[short.as_raw_fd()],
            );
            f.queue(&format!("{name} memory file missing"), kind, &memfd_record(100, 0), &[]);
            // A record that declares a descriptor it does not carry is no shortage of ours: it
            // is refused, and cannot block the queue (readers must not wait for room for it).
            f.queue(
                &format!("{name} descriptor claimed, none sent"),
                kind,
                &memfd_record(100, 1),
                &[],
            );
            let (r, _w) = pipe();
            f.queue(
                &format!("{name} memory file is a pipe"),
                kind,
                &memfd_record(100, 1),
                &[r.as_raw_fd()],
            );
            let mut long = vec![0u8, 0];
            long.extend(std::iter::repeat_n(0x42, 48 * 1024));
            f.queue(&format!("{name} inline record of 48 KiB"), kind, &long, &[]);
            f.queue(&format!("{name} empty record"), kind, &[], &[]);
            keep.extend([empty, sparse, short, r]);
        }
        keep.append(&mut f.keep);
    });
    assert_lived(&o, "alive");
    let out = lines(&o);
    let expect = |label: &str, exc: &str| {
        let bad = out
            .iter()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no line for {label}:\n{}", o.stdout));
        assert!(
            bad.starts_with(&format!("{label} {exc}")),
            "{bad:?}: expected {exc}\n{}",
            o.stdout
        );
        let good = format!("{label} got 'ok'");
        assert!(
            out.contains(&good.as_str()),
            "the record behind the bad one was lost ({label}):\n{}",
            o.stdout
        );
    };
    for name in ["get Queue", "get SimpleQueue"] {
        expect(&format!("{name} 2^40 in an empty file"), "OSError");
        expect(&format!("{name} 2^40 in a sparse file"), "MemoryError");
        expect(&format!("{name} 100 in a file of 10"), "OSError");
        expect(&format!("{name} memory file missing"), "OSError");
        expect(&format!("{name} descriptor claimed, none sent"), "OSError");
        expect(&format!("{name} memory file is a pipe"), "OSError");
        expect(&format!("{name} inline record of 48 KiB"), "OSError");
        expect(&format!("{name} empty record"), "OSError");
    }
    // No OSError without its reason ("[Errno 0] Success" is RustPython's rendering of an
    // io::Error that carried a message but no errno).
    assert!(!o.stdout.contains("Errno 0"), "{}", o.stdout);
}

/// Handles whose descriptor cannot back what they claim (a 1 MiB SharedBuffer over an empty or
/// 4 KiB memory file, a SemLock or a Queue's counters over an empty one, a negative size, a
/// Queue over pipes) raise when received, naming the problem, instead of SIGBUS on first use;
/// well-formed ones still work.
#[test]
fn crafted_handles_raise_instead_of_sigbus() {
    let _serial = serial::shared();
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut peers: Vec<OwnedFd> = Vec::new();
    let o = run_receiver(None, |conn| {
        let mut send = |label: &str, kind: HandleKind, fds: Vec<OwnedFd>, extra: Vec<i64>| {
            send_frame(conn, &encoded(&text(label)), &[]);
            let idx = (0..fds.len() as u32).collect();
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            send_frame(conn, &encoded(&Value::Handle { kind, fds: idx, extra }), &raw);
            keep.extend(fds);
        };
        send("buffer 1MiB over empty", HandleKind::SharedBuffer, vec![memfd(0)], vec![1 << 20]);
        send("buffer 1MiB over 4KiB", HandleKind::SharedBuffer, vec![memfd(4096)], vec![1 << 20]);
        send("buffer negative size", HandleKind::SharedBuffer, vec![memfd(4096)], vec![-1]);
        send(
            "buffer over a socket",
            HandleKind::SharedBuffer,
            vec![socketpair(libc::SOCK_STREAM).0],
            vec![16],
        );
        send("buffer without fd", HandleKind::SharedBuffer, vec![], vec![16]);
        // Unsealed: any holder could shrink it under the receiver's mapping.
        send("buffer unsealed", HandleKind::SharedBuffer, vec![memfd(16)], vec![16]);
        send("buffer good", HandleKind::SharedBuffer, vec![sealed_memfd(16)], vec![16]);
        send("semlock over empty", HandleKind::SemLock, vec![memfd(0)], vec![1, 1]);
        send("semlock unsealed", HandleKind::SemLock, vec![memfd(12)], vec![1, 1]);
        send("semlock good", HandleKind::SemLock, vec![sealed_memfd(12)], vec![1, 1]);
        let (a, b) = socketpair(libc::SOCK_SEQPACKET);
        send("queue counters over empty", HandleKind::Queue, vec![a, b, memfd(0)], vec![0, 0]);
        let (r, w) = pipe();
        send("queue over pipes", HandleKind::Queue, vec![r, w, sealed_memfd(COUNTERS)], vec![0, 0]);
        let (a, b) = socketpair(libc::SOCK_SEQPACKET);
        send("queue counters unsealed", HandleKind::Queue, vec![a, b, memfd(COUNTERS)], vec![0, 0]);
        let (a, b) = socketpair(libc::SOCK_SEQPACKET);
        send("queue good", HandleKind::Queue, vec![a, b, sealed_memfd(COUNTERS)], vec![0, 0]);
        let (a, b) = socketpair(libc::SOCK_STREAM);
        send("connection good", HandleKind::Connection, vec![a], vec![1, 1]);
        // Its peer stays open until the script is done: poll() then says "nothing to read".
        peers.push(b);
    });
    drop((keep, peers));
    assert_lived(&o, "alive");
    let out = lines(&o);
    let line = |label: &str| -> &str {
        out.iter()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no line for {label}:\n{}", o.stdout))
    };
    for label in [
        "buffer 1MiB over empty",
        "buffer 1MiB over 4KiB",
        "buffer negative size",
        "buffer over a socket",
        "buffer without fd",
        "semlock over empty",
        "queue counters over empty",
        "queue over pipes",
        "buffer unsealed",
        "semlock unsealed",
        "queue counters unsealed",
    ] {
        let l = line(label);
        assert!(
            l.starts_with(&format!("{label} UnpicklingError malformed message:")),
            "{l:?}\n{}",
            o.stdout
        );
    }
    assert_eq!(line("buffer good"), "buffer good used 16");
    assert_eq!(line("semlock good"), "semlock good used not acquired");
    assert_eq!(line("queue good"), "queue good used 0");
    assert_eq!(line("connection good"), "connection good used False");
}

/// The spawn boot channel: a parent (or anything holding the boot socket) declaring a 2^40-byte
/// payload makes the child fail with MemoryError, and one that hangs up mid-payload with an
/// OSError: an exception and exit status 1, not SIGABRT.
#[test]
fn spawn_boot_with_a_bad_length_fails_with_an_exception() {
    let _serial = serial::shared();
    for (head, tail, exc) in [
        ((1u64 << 40).to_be_bytes(), &b""[..], "MemoryError"),
        (100u64.to_be_bytes(), &b"abc"[..], "OSError: got end of file during message"),
    ] {
        let (ours, theirs) = socketpair(libc::SOCK_STREAM);
        let mut cmd = Command::new(procpy());
        cmd.arg("--multiprocessing-spawn-child").env("PROCPY_BOOT_FD", "3");
        give_fd3(&mut cmd, theirs.as_raw_fd());
        limit_address_space(&mut cmd, 2 * GIB);
        let mut msg = head.to_vec();
        msg.extend_from_slice(tail);
        send_with_fds(ours.as_raw_fd(), &msg, &[]);
        drop(ours);
        let o = run_with_deadline(cmd, LIMIT);
        assert!(!o.timed_out, "hung");
        assert_eq!(
            o.status,
            Some(1),
            "expected a Python exception, got status {:?}\nstderr:\n{}",
            o.status,
            o.stderr
        );
        assert!(o.stderr.contains(exc), "expected {exc}:\n{}", o.stderr);
    }
}

/// The resource tracker reads lines from every process of the tree: a line without end (here
/// 256 MiB under a 192 MiB address-space limit) is dropped as malformed, not buffered whole
/// (which aborted the tracker), and the lines after it still count: the name registered after
/// it is reported and cleaned up at the end.
#[test]
fn resource_tracker_drops_an_endless_line() {
    let _serial = serial::shared();
    let name = format!("/procpy-frames-{}", std::process::id());
    let mut cmd = Command::new(procpy());
    cmd.arg("--multiprocessing-resource-tracker")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limit_address_space(&mut cmd, 192 << 20);
    let mut child = cmd.spawn().expect("start the tracker");
    let mut stdin = child.stdin.take().expect("stdin");
    let line = format!("REGISTER:{name}:shared_memory\n");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..256 {
            // A tracker that died makes this fail: the assertions below say why.
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = stdin.write_all(b"\n");
        let _ = stdin.write_all(line.as_bytes());
    });
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let stderr = reader.join().unwrap_or_default();
    let status = status.expect("the tracker hung");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.code(), Some(0), "tracker died (signal {:?}):\n{stderr}", status.signal());
    assert!(stderr.contains("malformed message"), "{stderr}");
    assert!(
        stderr.contains("leaked shared_memory") && stderr.contains(&name),
        "the line after the long one was lost:\n{stderr}"
    );
}

/// `Listener.close()` from one thread while another is blocked in `accept()` returns, and the
/// acceptor is woken with an OSError (CPython's close returns but leaves the acceptor blocked
/// for ever; RustPython's socket lock made ours block in close).
#[test]
fn listener_close_wakes_a_blocked_accept() {
    let _serial = serial::shared();
    const SCRIPT: &str = r#"
import os, sys, threading, time
from multiprocessing.connection import Listener
l = Listener(('127.0.0.1', 0)) if sys.argv[1] == 'inet' else Listener(family='AF_UNIX')
result = []
def acceptor():
    try:
        l.accept()
        result.append('accepted')
    except OSError as e:
        result.append('OSError')
# accept / accept4 by machine: the test waits until a thread is really blocked in one.
ACCEPT = {'x86_64': {'43', '288'}, 'aarch64': {'202', '242'}}.get(os.uname().machine)
def in_accept():
    for task in os.listdir('/proc/self/task'):
        try:
            with open('/proc/self/task/%s/syscall' % task) as f:
                if f.read().split()[0] in ACCEPT:
                    return True
        except (OSError, IndexError):
            pass
    return False
t = threading.Thread(target=acceptor)
t.start()
if ACCEPT:
    while not in_accept():
        time.sleep(0.01)
else:
    time.sleep(0.5)  # another machine: most likely blocked by then (the outcome is the same)
l.close()
print('closed')
t.join()
print('acceptor', result)
"#;
    for family in ["unix", "inet"] {
        let o = run_with_deadline(procpy_c(SCRIPT, &[family]), LIMIT);
        assert_lived(&o, "acceptor ['OSError']");
        assert_eq!(lines(&o), ["closed", "acceptor ['OSError']"]);
    }
}

/// When the resource tracker (or a child) cannot be started for want of descriptors, the
/// OSError carries errno EMFILE and its text, not "[Errno 0] Success" or no errno at all.
#[test]
fn process_start_without_descriptors_reports_emfile() {
    let _serial = serial::shared();
    const SCRIPT: &str = r#"
import multiprocessing as mp, os, sys
def f():
    pass
if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    fds = []
    try:
        while True:
            fds.append(os.open('/dev/null', os.O_RDONLY))
    except OSError:
        pass
    for _ in range(int(sys.argv[2])):
        os.close(fds.pop())
    try:
        p = mp.Process(target=f)
        p.start()
        p.join()
        print('ran', p.exitcode)
    except OSError as e:
        print('OSError', e.errno, str(e))
"#;
    let mut seen_error = 0;
    for method in ["fork", "spawn", "forkserver"] {
        for free in 0..8 {
            let mut cmd = procpy_c(SCRIPT, &[method, &free.to_string()]);
            // SAFETY: setrlimit is async-signal-safe and changes only the child.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let o = run_with_deadline(cmd, LIMIT);
            assert!(!o.timed_out, "{method} with {free} free: hung");
            let last = o.stdout.lines().last().unwrap_or_default().to_owned();
            if last.starts_with("ran") {
                continue;
            }
            seen_error += 1;
            assert!(
                last.starts_with("OSError 24 ") && last.contains("Too many open files"),
                "{method} with {free} descriptors free: {last:?}\nstderr:\n{}",
                o.stderr
            );
        }
    }
    assert!(seen_error > 0, "no start failed: the test did not exercise anything");
}

/// A manager server survives an authenticated client declaring a 2^40-byte request, both as its
/// first request and on a connection the server serves (`accept_connection`): that client gets
/// a '#TRACEBACK' naming MemoryError, and the server serves the next client.
#[test]
fn manager_survives_a_2_pow_40_header() {
    let _serial = serial::shared();
    const SCRIPT: &str = r#"
import os, struct, sys
import multiprocessing as mp
from multiprocessing.connection import Client
HEAD = struct.pack('!i', -1) + struct.pack('!Q', 1 << 40)
if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    m = mp.Manager()
    d = m.dict(a=1)
    key = mp.current_process().authkey
    c = Client(m.address, authkey=key)
    os.write(c.fileno(), HEAD)
    kind, text = c.recv()
    print('request:', kind, text.strip().splitlines()[-1].split(':')[0])
    c.close()
    c = Client(m.address, authkey=key)
    c.send((None, 'accept_connection', ('evil',), {}))
    print('accept_connection:', c.recv())
    os.write(c.fileno(), HEAD)
    kind, text = c.recv()
    print('served connection:', kind, text.strip().splitlines()[-1].split(':')[0])
    c.close()
    d['b'] = 2
    print('next client:', sorted(d.items()))
    m.shutdown()
    print('done')
"#;
    for method in ["fork", "spawn", "forkserver"] {
        let mut cmd = procpy_c(SCRIPT, &[method]);
        limit_address_space(&mut cmd, 2 * GIB);
        let o = run_with_deadline(cmd, LIMIT);
        assert_lived(&o, "done");
        assert_eq!(
            lines(&o),
            [
                "request: #TRACEBACK MemoryError",
                "accept_connection: ('#RETURN', None)",
                "served connection: #TRACEBACK MemoryError",
                "next client: [('a', 1), ('b', 2)]",
                "done"
            ],
            "{method}\nstderr:\n{}",
            o.stderr
        );
    }
}

/// Nesting from a peer is bounded by what a Python thread's stack can decode. A thread (2 MiB
/// of stack: pool result handlers and manager servers receive on threads) gets messages nested
/// 650 and 100,000 levels deep as raw bytes: `UnpicklingError`, the process lives; the deepest
/// object the encoder writes (500 levels) still travels, one level more is its RecursionError.
const DEEP_IN_A_THREAD: &str = r#"
import threading
import multiprocessing as mp

def nested(n):
    v = []
    for _ in range(n):
        v = [v]
    return v

def depth(v):
    d = 0
    while v:
        v, d = v[0], d + 1
    return d

def in_thread(fn):
    out = []
    def run():
        try:
            out.append(fn())
        except Exception as e:
            out.append(type(e).__name__)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]

a, b = mp.Pipe()
for n in (650, 100000):
    # A list of one element (tag 7, length 1), n times, around None (tag 0).
    a.send_bytes(b'\x07\x01' * n + b'\x00')
    print('raw', n, in_thread(b.recv))
a.send(nested(500))
print('encoded 500', in_thread(lambda: depth(b.recv())))
try:
    a.send(nested(501))
    print('encoded 501 sent')
except RecursionError:
    print('encoded 501 RecursionError')
a.send('after')
print('alive', b.recv())
"#;

#[test]
fn deep_nesting_from_a_peer_raises_in_a_thread() {
    let _serial = serial::shared();
    let o = run_with_deadline(procpy_c(DEEP_IN_A_THREAD, &[]), LIMIT);
    assert_lived(&o, "alive after");
    assert_eq!(
        lines(&o)[..4],
        [
            "raw 650 UnpicklingError",
            "raw 100000 UnpicklingError",
            "encoded 500 500",
            "encoded 501 RecursionError"
        ],
        "{}",
        o.stdout
    );
}

/// A child that holds a Queue, a Lock, a RawValue and a RawArray shrinks every memory file it
/// can find (`ftruncate` to 0): the kernel refuses (the files are sealed), and the parent uses
/// each afterwards without SIGBUS. Before the seals, the parent died of SIGBUS in all four.
const SHRINK_SHARED_FILES: &str = r#"
import os, sys, multiprocessing as mp

def shrink(obj):
    refused = 0
    for fd in os.listdir('/proc/self/fd'):
        try:
            if not os.readlink('/proc/self/fd/' + fd).startswith('/memfd:procpy-'):
                continue
            os.ftruncate(int(fd), 0)
        except PermissionError:
            refused += 1
        except OSError:
            pass
    sys.exit(0 if refused else 7)

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    for what, make in (('queue', mp.Queue), ('lock', mp.Lock), ('value', lambda: mp.RawValue('i', 5)),
                       ('array', lambda: mp.RawArray('i', 10))):
        obj = make()
        p = mp.Process(target=shrink, args=(obj,))
        p.start()
        p.join()
        if what == 'queue':
            obj.put(1)
            got = obj.get(timeout=30)
        elif what == 'lock':
            got = obj.acquire(False)
            obj.release()
        elif what == 'value':
            got = obj.value
        else:
            got = obj[9]
        print(what, 'shrink refused' if p.exitcode == 0 else 'exit %s' % p.exitcode, got)
    print('alive')
"#;

#[test]
fn shared_memory_files_cannot_be_shrunk_under_their_users() {
    let _serial = serial::shared();
    let dir = std::env::temp_dir().join(format!("procpy-shrink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("shrink.py");
    std::fs::write(&script, SHRINK_SHARED_FILES).unwrap();
    for method in ["fork", "spawn", "forkserver"] {
        let mut cmd = Command::new(procpy());
        cmd.arg(&script).arg(method);
        let o = run_with_deadline(cmd, LIMIT);
        assert_lived(&o, "alive");
        assert_eq!(
            lines(&o)[..4],
            [
                "queue shrink refused 1",
                "lock shrink refused True",
                "value shrink refused 5",
                "array shrink refused 0"
            ],
            "{method}: {}",
            o.stdout
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message whose values take far more memory than its bytes (a tuple of 20 million `None`s
/// in 20 MB: each value becomes a tree node of tens of bytes) raises MemoryError under an
/// address-space limit the tree would not fit in, instead of aborting in the allocator; one of
/// 2 million is decoded as usual.
const MANY_SMALL_VALUES: &str = r#"
import threading
import multiprocessing as mp

def varint(v):
    out = bytearray()
    while True:
        b, v = v & 0x7f, v >> 7
        if not v:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)

for n in (2000000, 20000000):
    a, b = mp.Pipe()
    # A tuple (tag 7) of n values, each None (tag 0).
    msg = b'\x07' + varint(n) + b'\x00' * n
    t = threading.Thread(target=a.send_bytes, args=(msg,))
    t.start()
    try:
        print(n, 'decoded', len(b.recv()))
    except MemoryError:
        print(n, 'MemoryError')
    t.join()
    del msg
print('alive')
"#;

#[test]
fn a_message_of_many_small_values_raises_memory_error() {
    let _serial = serial::shared();
    let mut cmd = procpy_c(MANY_SMALL_VALUES, &[]);
    limit_address_space(&mut cmd, 3 * GIB / 2);
    let o = run_with_deadline(cmd, LIMIT);
    assert_lived(&o, "alive");
    assert_eq!(lines(&o)[..2], ["2000000 decoded 2000000", "20000000 MemoryError"], "{}", o.stdout);
}
