//! The embedding channel: host functions called from Python threads, deadlines mid-frame,
//! memory limits.
//!
//! A worker runs the user's Python, so it is a peer the host must survive: the "bad worker"
//! tests below are plain Python functions that write to the worker's own socket (found through
//! /proc/self/fd), so no test-only knob exists in the production code.

use crate::common;
use crate::common::serial;
use procpy::{Error, Limit};
use procpy_interpreter::embed::{self as protocol, Frame, Setup};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generous: a guard against a hang, never a statement about speed.
const HANG_GUARD: Duration = Duration::from_secs(120);

const PLUGIN: &str = r#"
import os, stat, struct, threading, time
from host import ping, twice, depth, HostError

def pid():
    return os.getpid()

def _channel():
    # The worker's one socket is its channel to the host.
    socks = []
    for name in os.listdir('/proc/self/fd'):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                socks.append(int(name))
        except OSError:
            pass
    if len(socks) != 1:
        raise RuntimeError('expected one socket, found %r' % (socks,))
    return socks[0]

def send_raw(data, then):
    """Write `data` on the channel as if it were a frame, then stall, exit or return."""
    os.write(_channel(), data)
    if then == 'stall':
        time.sleep(3600)
    elif then == 'exit':
        os._exit(7)
    return 'returned'

_stop = threading.Event()
_seen = {'ok': 0, 'refused': 0, 'other': []}

def _pinger():
    while not _stop.is_set():
        try:
            ping()
            _seen['ok'] += 1
        except RuntimeError as e:
            if 'only while' not in str(e):
                _seen['other'].append(repr(e))
            _seen['refused'] += 1
        except BaseException as e:
            _seen['other'].append(repr(e))

_threads = []

def start_pingers(n):
    for _ in range(n):
        # Kept referenced: a thread dropping the last reference to itself trips a debug
        # assertion of RustPython's (noise on stderr, nothing else).
        _threads.append(threading.Thread(target=_pinger, daemon=True))
        _threads[-1].start()

def noop(i):
    return i

def stop_pingers():
    _stop.set()
    return _seen['ok'], _seen['refused'], _seen['other']

def vm_size():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024

def huge_bytes():
    return len(b'x' * (1 << 34))

def growing_list():
    items = []
    while True:
        items.append([0] * 1000)

def cycle():
    l = []
    l.append(l)
    return l

def cycle_to_host():
    l = []
    l.append(l)
    try:
        return 'returned %r' % (depth(l),)
    except HostError as e:
        return 'HostError: %s' % (e,)

def fork_and_call_host():
    # The child may not use the parent's channel: its frames would interleave with ours.
    pid = os.fork()
    if pid == 0:
        try:
            twice(1)
            os._exit(4)
        except RuntimeError as e:
            os._exit(3 if 'forked' in str(e) else 5)
        except BaseException:
            os._exit(6)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def fork_and_return():
    # A bare fork whose child returns too: only the worker may answer.
    return 'child' if os.fork() == 0 else 'parent'

def huge_mmap():
    import mmap
    return len(mmap.mmap(-1, 1 << 34))
"#;

/// A recursive type: a list of lists of lists...
#[derive(serde::Deserialize, Debug)]
struct Nested(Vec<Nested>);

fn builder(workers: usize) -> procpy::Builder {
    common::embed_builder(workers)
        .source("plugin", PLUGIN)
        .host_fn("ping", |(): ()| Ok::<_, String>(()))
        .host_fn("twice", |x: i64| Ok::<_, String>(2 * x))
        .host_fn("depth", |x: Nested| Ok::<_, String>(x.0.len()))
}

/// Whether `pid` still runs (a zombie is dead too).
fn alive(pid: u32) -> bool {
    !common::is_gone(pid as i32)
}

/// Run `f` on its own thread and wait at most [`HANG_GUARD`] for it: `None` means it hung.
fn guarded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG_GUARD).ok()
}

/// A little-endian u32 length header followed by `body`, as the embedding protocol frames it.
fn frame(len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn a_host_call_from_a_thread_between_calls_never_swallows_the_next_call() {
    let _serial = serial::shared();
    let e = Arc::new(builder(1).build().unwrap());
    e.call::<_, ()>("plugin:start_pingers", 2).unwrap();
    // Python threads keep calling a host function while the host calls in, between calls
    // included. Every call must be answered: the per-call timeout is only the hang guard.
    let e2 = e.clone();
    let outcome = guarded(move || {
        for i in 0..400u32 {
            match e2.call_timeout::<_, u32>("plugin:noop", i, Duration::from_secs(60)) {
                Ok(got) => assert_eq!(got, i),
                Err(err) => return Err(format!("call {i} failed: {err}")),
            }
        }
        Ok(())
    })
    .expect("the calls hung");
    outcome.unwrap();
    let (ok, refused, other): (u64, u64, Vec<String>) = e.call("plugin:stop_pingers", ()).unwrap();
    eprintln!("host calls from threads: {ok} served, {refused} refused between calls");
    assert!(other.is_empty(), "host calls from threads failed unexpectedly: {other:?}");
    assert!(ok > 0, "host calls made during a call are served ({ok} served, {refused} refused)");
}

#[test]
fn a_script_calls_host_functions() {
    let _serial = serial::shared();
    let e = Arc::new(builder(1).build().unwrap());
    let script = procpy::Script::source("from host import twice\nprint(twice(21))\n")
        .capture_output()
        .timeout(HANG_GUARD);
    let out = guarded(move || e.run_script(script)).expect("the script hung").unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}

#[test]
fn a_worker_stalled_mid_frame_times_out() {
    let _serial = serial::shared();
    let e = Arc::new(builder(1).build().unwrap());
    let first: u32 = e.call("plugin:pid", ()).unwrap();
    // The header promises 100 bytes; 10 come, then nothing.
    let data = frame(100, &[0; 10]);
    let e2 = e.clone();
    let err = guarded(move || {
        e2.call_timeout::<_, String>(
            "plugin:send_raw",
            (procpy::Bytes(data), "stall"),
            Duration::from_secs(2),
        )
    })
    .expect("the call hung past its timeout")
    .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(!alive(first), "the stalled worker was killed");
    let second: u32 = e.call("plugin:pid", ()).unwrap();
    assert_ne!(first, second, "a replacement serves");
}

#[test]
fn garbage_frames_from_a_worker_are_errors() {
    let _serial = serial::shared();
    let e = Arc::new(builder(1).build().unwrap());
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("a length past the frame limit", frame(u32::MAX, &[0; 8]), "stall", "too large"),
        ("a body that is not a frame", frame(8, &[0xff; 8]), "stall", "cannot decode"),
        // Ready(Ok(0)) is a real frame, but not one a worker may send during a call.
        ("a frame out of place", frame(3, &[1, 0, 0]), "return", "unexpected"),
        // Reply { id: 12345, outcome: Ok(b"") }: no call has that id.
        ("a reply to another call", frame(5, &[3, 0xb9, 0x60, 0, 0]), "return", "unexpected"),
    ];
    for (what, data, then, says) in cases {
        let first: u32 = e.call("plugin:pid", ()).unwrap();
        let e2 = e.clone();
        let got =
            guarded(move || e2.call::<_, String>("plugin:send_raw", (procpy::Bytes(data), then)))
                .unwrap_or_else(|| panic!("{what}: the call hung"));
        match got {
            Err(Error::Protocol { pid, ref message }) => {
                assert_eq!(pid, first, "{what}");
                assert!(message.contains(says), "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(!alive(first), "{what}: the worker that broke the protocol was killed");
        assert_eq!(
            e.call::<_, i64>("builtins:abs", -3).unwrap(),
            3,
            "{what}: the engine still serves"
        );
    }
}

#[test]
fn a_process_forked_in_a_call_leaves_the_channel_alone() {
    let _serial = serial::shared();
    let e = Arc::new(builder(1).build().unwrap());
    let worker: u32 = e.call("plugin:pid", ()).unwrap();
    let e2 = e.clone();
    let outcome = guarded(move || {
        let code: i32 = e2.call("plugin:fork_and_call_host", ())?;
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(e2.call::<_, String>("plugin:fork_and_return", ())?);
            answers.push(e2.call::<_, u32>("plugin:pid", ())?.to_string());
        }
        Ok::<_, Error>((code, answers))
    })
    .expect("a call hung");
    let (code, answers) = outcome.unwrap();
    assert_eq!(code, 3, "a forked child's host call raises RuntimeError");
    for pair in answers.chunks(2) {
        assert_eq!(pair, ["parent".to_owned(), worker.to_string()], "only the worker answers");
    }
}

/// Run the ignored test `name` of this binary as a host in a child process, under an address
/// space limit if given: a host that crashes fails the test that asked, not the whole suite.
fn host_in_child(name: &str, address_space: Option<u64>) -> common::Outcome {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        &common::test_name(module_path!(), name),
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PROCPY_EMBED_TEST_HOST", name);
    if let Some(bytes) = address_space {
        // SAFETY: only setrlimit (async-signal-safe) between fork and exec. The workers inherit
        // the limit too.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = common::run_with_deadline(cmd, HANG_GUARD);
    assert!(!out.timed_out, "the host hung");
    assert_eq!(out.status, Some(0), "the host died: {out:?}");
    out
}

/// Whether this process is the child host that `host_in_child(name)` started.
fn is_host(name: &str) -> bool {
    std::env::var("PROCPY_EMBED_TEST_HOST").is_ok_and(|v| v == name)
}

/// What the child host printed after `label `.
fn printed(out: &common::Outcome, label: &str) -> String {
    let label = format!("{label} ");
    out.stdout
        .lines()
        .find_map(|l| l.split_once(label.as_str()).map(|(_, r)| r.to_owned()))
        .unwrap_or_default()
}

/// Not a test by itself: the host of `an_oversized_frame_header_does_not_abort_the_host`.
#[test]
#[ignore]
fn host_under_an_address_space_limit() {
    if !is_host("host_under_an_address_space_limit") {
        return;
    }
    let e = builder(1).build().unwrap();
    // A header that claims 1 GiB (within the protocol's limit), 16 bytes of it, then the worker exits.
    let data = frame(1 << 30, &[0; 16]);
    let r = e.call::<_, String>("plugin:send_raw", (procpy::Bytes(data), "exit"));
    println!("RESULT {r:?}");
}

#[test]
fn an_oversized_frame_header_does_not_abort_the_host() {
    let _serial = serial::shared();
    // 512 MiB: the host and its workers run, but a buffer of the claimed 1 GiB cannot exist.
    let out = host_in_child("host_under_an_address_space_limit", Some(512 << 20));
    let r = printed(&out, "RESULT");
    assert!(r.starts_with("Err(WorkerLost") && r.contains("Code(7)"), "{out:?}");
}

/// Not a test by itself: the host of `a_value_that_contains_itself_is_an_error`.
#[test]
#[ignore]
fn host_reading_a_value_that_contains_itself() {
    if !is_host("host_reading_a_value_that_contains_itself") {
        return;
    }
    let e = builder(1).build().unwrap();
    println!("RESULT {:?}", e.call::<_, Nested>("plugin:cycle", ()));
    println!("HOSTFN {:?}", e.call::<_, String>("plugin:cycle_to_host", ()));
}

#[test]
fn a_value_that_contains_itself_is_an_error() {
    let _serial = serial::shared();
    // A list that contains itself, read into a recursive type: as a call's result and as a
    // host function's argument. Recursing without end would overflow the host's stack.
    let out = host_in_child("host_reading_a_value_that_contains_itself", None);
    let r = printed(&out, "RESULT");
    assert!(r.starts_with("Err(Codec") && r.contains("deeper than"), "{out:?}");
    let r = printed(&out, "HOSTFN");
    assert!(r.starts_with("Ok(\"HostError: ") && r.contains("deeper than"), "{out:?}");
}

#[test]
fn a_memory_limit_breach_reports_the_limit() {
    let _serial = serial::shared();
    let probe = builder(1).build().unwrap();
    let base: u64 = probe.call("plugin:vm_size", ()).unwrap();
    drop(probe);
    let e = Arc::new(builder(1).memory_limit(base + (256 << 20)).build().unwrap());
    // A large allocation aborts the worker (RustPython's allocator), a failed mmap raises
    // OSError(ENOMEM): both are the limit.
    for target in ["plugin:huge_bytes", "plugin:growing_list", "plugin:huge_mmap"] {
        let e2 = e.clone();
        let err = guarded(move || e2.call::<_, u64>(target, ()))
            .unwrap_or_else(|| panic!("{target}: the call hung"))
            .unwrap_err();
        assert!(
            matches!(err, Error::LimitExceeded { limit: Limit::Memory, .. }),
            "{target}: {err:?}"
        );
        assert!(err.to_string().contains("memory limit"), "{target}: {err}");
        assert_eq!(
            e.call::<_, i64>("builtins:abs", -1).unwrap(),
            1,
            "{target}: the engine still serves"
        );
    }
}

/// Let the child started by `cmd` inherit `fd` (everything of ours is close-on-exec).
fn inherit(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: only fcntl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A worker started by a fake host (this test) on a socketpair, optionally under RLIMIT_AS:
/// the host's end, and the child.
fn fake_host(address_space: Option<u64>) -> (UnixStream, std::process::Child) {
    let (host, worker_end) = UnixStream::pair().unwrap();
    let fd = worker_end.as_raw_fd();
    let mut cmd = Command::new(common::procpy());
    cmd.arg(format!("{}{fd}", protocol::WORKER_FD_ARG))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    inherit(&mut cmd, fd);
    if let Some(bytes) = address_space {
        // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().unwrap();
    drop(worker_end);
    (host, child)
}

/// Wait (with the hang guard) for the worker to end: its status as `run_with_deadline` gives it
/// (negative: the signal), and its stderr.
fn worker_end(mut child: std::process::Child) -> (Option<i32>, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("the worker did not end");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    use std::os::unix::process::ExitStatusExt;
    (status.code().or(status.signal().map(|s| -s)), err)
}

/// The exit statuses of interpreter/src/worker.rs (sysexits): the host went away; the host broke
/// the protocol.
const HOST_GONE: i32 = 70;
const HOST_BROKE_PROTOCOL: i32 = 76;

#[test]
fn a_bad_frame_from_the_host_ends_the_worker_with_a_message() {
    let _serial = serial::shared();
    let mut setup = Vec::new();
    protocol::write_frame(&mut setup, &Frame::Setup(Setup::default())).unwrap();
    // (what, frames sent after a good Setup or instead of it, status, message on stderr)
    let cases: Vec<(&str, bool, Vec<u8>, i32, &str)> = vec![
        (
            "garbage instead of Setup",
            false,
            frame(8, &[0xff; 8]),
            HOST_BROKE_PROTOCOL,
            "cannot decode",
        ),
        (
            "a length past the frame limit",
            false,
            frame(u32::MAX, &[0; 8]),
            HOST_BROKE_PROTOCOL,
            "too large",
        ),
        ("garbage between calls", true, frame(8, &[0xff; 8]), HOST_BROKE_PROTOCOL, "cannot decode"),
        (
            "a frame out of place",
            true,
            setup.clone(),
            HOST_BROKE_PROTOCOL,
            "sent a Setup frame between calls",
        ),
    ];
    for (what, after_setup, data, want, says) in cases {
        let (mut host, child) = fake_host(None);
        if after_setup {
            host.write_all(&setup).unwrap();
            match protocol::read_frame(&mut host) {
                Ok(Frame::Ready(Ok(_))) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        host.write_all(&data).unwrap();
        let (status, stderr) = worker_end(child);
        assert_eq!(status, Some(want), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
}

#[test]
fn a_length_header_alone_does_not_make_the_worker_allocate() {
    let _serial = serial::shared();
    // 1 GiB promised under a 512 MiB address space, 10 bytes sent, then the host goes away:
    // the worker sees its host gone, instead of dying of the allocation.
    let (mut host, child) = fake_host(Some(512 << 20));
    host.write_all(&frame(1 << 30, &[0; 10])).unwrap();
    drop(host);
    let (status, stderr) = worker_end(child);
    assert_eq!(status, Some(HOST_GONE), "{stderr}");
}

/// Worker mode is chosen by an argument anyone can type: a descriptor that is not a socket
/// from the worker's own parent (a pipe of frames, a socket someone else made) must run
/// nothing. Before the check, `procpy --procpy-embed-fd=0 < frames` served those frames.
#[test]
fn worker_mode_refuses_a_descriptor_not_from_its_host() {
    let _serial = serial::shared();
    // A pipe on stdin carrying a well-formed Setup frame.
    let mut setup = Vec::new();
    protocol::write_frame(&mut setup, &Frame::Setup(Setup::default())).unwrap();
    let mut cmd = Command::new(common::procpy());
    cmd.arg(format!("{}0", protocol::WORKER_FD_ARG))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(&setup);
    let (status, stderr) = worker_end(child);
    assert_eq!(status, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("descriptor 0 is not a Unix stream socket"), "{stderr}");

    // A stream socket made by this test, inherited by a grandchild (through sh): the right
    // kind of descriptor, from the wrong process.
    let (host, worker_end_sock) = UnixStream::pair().unwrap();
    let fd = worker_end_sock.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("\"$0\" {}{fd}; exit $?", protocol::WORKER_FD_ARG))
        .arg(common::procpy())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    inherit(&mut cmd, fd);
    let child = cmd.spawn().unwrap();
    drop(worker_end_sock);
    let (status, stderr) = worker_end(child);
    drop(host);
    assert_eq!(status, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("not from this process's parent"), "{stderr}");
}
