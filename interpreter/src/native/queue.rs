//! Queues: one `SOCK_SEQPACKET` pair shared by every process (a record per item, so no lock),
//! counts in shared memory, and a feeder thread per process so `put` never blocks on the socket.

use super::{
    deadline, dumps_with_connections, loads_with, os_err, queue_exception, sem_deadline,
    wait_readable, wait_readable_spin, Record,
};
use crate::ipc::{self, SharedCounters};
use crate::trace;
use crossbeam_channel::{Receiver, Sender};
use rustpython_vm::builtins::PyType;
use rustpython_vm::common::lock::PyMutex;
use rustpython_vm::function::ArgIntoFloat;
use rustpython_vm::types::Constructor;
use rustpython_vm::{
    pyclass, AsObject, FromArgs, Py, PyObjectRef, PyPayload, PyResult, VirtualMachine,
};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Largest payload sent inline in one queue record; bigger ones travel in a memory file.
const INLINE_MAX: usize = 32 * 1024;
/// Counter slots of a queue: items in the queue, unfinished tasks (JoinableQueue), and
/// whether any record has carried descriptors (then readers make sure they can take them).
const COUNT: usize = 0;
const UNFINISHED: usize = 1;
const CARRIES_FDS: usize = 2;
pub(crate) const SLOTS: usize = 3;

/// Per-process writer thread of a queue, as CPython's feeder: `put` never blocks on the pipe.
struct Feeder {
    pid: u32,
    tx: Mutex<Option<Sender<Record>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records handed to the thread and not yet written.
    pending: Arc<AtomicUsize>,
    cancelled: AtomicBool,
}

impl Feeder {
    /// Start this process's feeder for a queue; fails (as CPython's `Thread.start`) when no
    /// thread can be created.
    fn start(shared: Arc<QueueShared>, kind: u8) -> io::Result<Arc<Feeder>> {
        let (tx, rx): (Sender<Record>, Receiver<Record>) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicUsize::new(0));
        let p2 = pending.clone();
        let thread = crate::ipc::spawn_helper("procpy-queue-feeder", move || {
            for (payload, fds) in rx {
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                // A shortage waits here, as CPython's feeder waits on a full pipe: the item
                // is counted already, and a put that did not raise must arrive.
                let mut nap = Duration::from_millis(1);
                let sent = loop {
                    match send_record(&shared, &payload, &raw) {
                        Err(e) if is_shortage(&e) => {
                            std::thread::sleep(nap);
                            nap = (nap * 2).min(Duration::from_millis(100));
                        }
                        r => break r,
                    }
                };
                if let Err(e) = sent {
                    // Not a shortage (none is known to happen): say so, and uncount it.
                    eprintln!("procpy: a queue item could not be sent and was dropped: {e}");
                    uncount(&shared, kind);
                }
                p2.fetch_sub(1, Ordering::AcqRel);
            }
        })?;
        let f = Arc::new(Feeder {
            pid: ipc::pid(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            pending,
            cancelled: AtomicBool::new(false),
        });
        FEEDERS.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&f));
        Ok(f)
    }

    /// Stop accepting records; the thread drains what it has and ends.
    fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn join(&self) {
        self.close();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // A copy inherited through fork: its thread does not exist here, and its pthread handle
        // may by now name one of *our* threads (glibc reuses descriptors), so detaching it
        // (what dropping a JoinHandle does) would break a later join. Leak it instead.
        if self.pid != ipc::pid() {
            if let Some(h) = self.thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
                std::mem::forget(h);
            }
        }
    }
}

/// Every feeder started in this process (and, after a fork, the parent's stale ones: skipped by pid).
static FEEDERS: Mutex<Vec<Weak<Feeder>>> = Mutex::new(Vec::new());

/// Write one queue record: inline, or as a memory file when large (or when the socket's
/// buffer is too small for it inline), with `fds` attached. Blocks while the socket is full.
///
/// A record is `[kind, number of descriptors attached, ...]`: kind 0 is followed by the
/// payload, kind 1 by the payload's length (the payload is in the first descriptor, a memory
/// file). The count lets a reader see that descriptors it could not take were dropped.
fn send_record(shared: &QueueShared, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd = shared.wfd.as_raw_fd();
    let mut tries = 0;
    let mut inline = payload.len() <= INLINE_MAX;
    loop {
        if !(inline && fds.is_empty()) {
            shared.counters.get(CARRIES_FDS).store(1, Ordering::Release);
        }
        let r = if inline {
            let mut rec = Vec::with_capacity(payload.len() + 2);
            rec.extend_from_slice(&[0, fds.len() as u8]);
            rec.extend_from_slice(payload);
            ipc::send_with_fds(fd, &rec, fds, 0)
        } else {
            let mem = ipc::memfd_with(payload)?;
            let mut rec = vec![1, fds.len() as u8 + 1];
            rec.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            let mut all = vec![mem.as_raw_fd()];
            all.extend_from_slice(fds);
            ipc::send_with_fds(fd, &rec, &all, 0)
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && tries < 1000 => tries += 1,
            Err(e) if inline && e.raw_os_error() == Some(libc::EMSGSIZE) => inline = false,
            r => return r.map(drop),
        }
    }
}

/// A shortage that passes: more descriptors in flight than the sender's RLIMIT_NOFILE
/// (ETOOMANYREFS: readers taking items release them; root is exempt), no descriptor free for
/// the memory file (EMFILE, ENFILE), or kernel memory (ENOBUFS, ENOMEM).
fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETOOMANYREFS | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Take back the counts of an item that will never arrive.
fn uncount(shared: &QueueShared, kind: u8) {
    shared.counters.get(COUNT).fetch_sub(1, Ordering::AcqRel);
    shared.counters.wake_all(COUNT);
    if kind == 1 {
        shared.counters.get(UNFINISHED).fetch_sub(1, Ordering::AcqRel);
        shared.counters.wake_all(UNFINISHED);
    }
}

/// Parse a queue record into its payload and the descriptors of the handles inside it.
/// Records come from any process holding the queue: a record cut short by the receive buffer
/// (`truncated`: longer than any procpy writes) or one that does not parse is `InvalidData`,
/// and a memory file is read by [`ipc::memfd_read`], which checks its size first. `ctrunc`
/// (`MSG_CTRUNC`) tells a reader out of descriptors from a record that claims more than it
/// carries.
fn parse_record(
    buf: &[u8],
    mut fds: Vec<OwnedFd>,
    truncated: bool,
    ctrunc: bool,
) -> Result<Record, RecordError> {
    let malformed = |what: &str| {
        RecordError::Os(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed queue record: {what}"),
        ))
    };
    if truncated {
        return Err(malformed("longer than any queue writes inline"));
    }
    let [kind, nfds, ref rest @ ..] = *buf else {
        return Err(malformed(if buf.is_empty() { "empty" } else { "no descriptor count" }));
    };
    if fds.len() < nfds as usize {
        if ctrunc {
            // The kernel dropped what did not fit in our descriptor table: the item is gone.
            return Err(RecordError::Lost);
        }
        return Err(malformed(&format!("it claims {nfds} descriptors and carries {}", fds.len())));
    }
    match kind {
        0 => Ok((rest.to_vec(), fds)),
        1 => {
            let Ok(len) = <[u8; 8]>::try_from(rest) else {
                return Err(malformed("bad length field"));
            };
            if fds.is_empty() {
                return Err(malformed("its memory file is missing"));
            }
            let mem = fds.remove(0);
            let len = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
            Ok((ipc::memfd_read(mem.as_raw_fd(), len).map_err(RecordError::Os)?, fds))
        }
        _ => Err(malformed("unknown kind")),
    }
}

enum RecordError {
    Os(io::Error),
    /// Received, but its descriptors could not be: the reader was out of descriptors.
    Lost,
}

/// Before taking a record that may carry descriptors: whether this process can take them.
/// `Ok(false)` when the queue is empty. A peek installs copies of the descriptors (closed at
/// once), so a record that does not fit stays in the queue and `get` raises EMFILE, as a
/// reader out of descriptors must not consume an item it cannot deliver.
/// A record that claims more descriptors than it carries (no `MSG_CTRUNC`) is not a shortage:
/// it is taken, and refused as malformed, so it cannot block the queue.
fn room_for_next(fd: RawFd) -> io::Result<bool> {
    let mut head = [0u8; 2];
    match ipc::recv_with_fds_flags(fd, &mut head, 253, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok((n, fds, flags))
            if n == 2 && fds.len() < head[1] as usize && flags & libc::MSG_CTRUNC != 0 =>
        {
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// The OS side of a queue, shared by every `Queue` object (in any process) for the same queue.
pub(crate) struct QueueShared {
    pub(super) rfd: OwnedFd,
    pub(super) wfd: Arc<OwnedFd>,
    pub(super) counters: SharedCounters,
}
/// Base of Queue (kind 0), JoinableQueue (kind 1) and SimpleQueue (kind 2).
#[pyclass(name = "QueueBase", module = "multiprocessing.queues")]
#[derive(PyPayload)]
pub struct QueueBase {
    pub(crate) shared: Arc<QueueShared>,
    pub(crate) maxsize: u32,
    pub(crate) kind: u8,
    closed: AtomicBool,
    feeder: PyMutex<Option<Arc<Feeder>>>,
}

impl std::fmt::Debug for QueueBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueBase(kind={})", self.kind)
    }
}

impl QueueBase {
    pub(crate) fn from_shared(shared: Arc<QueueShared>, maxsize: u32, kind: u8) -> Self {
        QueueBase {
            shared,
            maxsize,
            kind,
            closed: AtomicBool::new(false),
            feeder: PyMutex::new(None),
        }
    }

    fn check_open(zelf: &Py<Self>, vm: &VirtualMachine) -> PyResult<()> {
        if zelf.closed.load(Ordering::Acquire) {
            if zelf.kind == 2 {
                // SimpleQueue has no closed check of its own in CPython: its pipe says so.
                return Err(vm.new_os_error("handle is closed".to_owned()));
            }
            let r = zelf.as_object().repr(vm)?;
            return Err(vm.new_value_error(format!("Queue {} is closed", r.to_string_lossy())));
        }
        Ok(())
    }

    /// This process's feeder (a fork child starts its own; the parent's thread is not here).
    fn feeder(&self, vm: &VirtualMachine) -> PyResult<Arc<Feeder>> {
        let mut g = self.feeder.lock();
        let pid = ipc::pid();
        match &*g {
            Some(f) if f.pid == pid => Ok(f.clone()),
            _ => {
                // CPython's error when its feeder thread cannot start.
                let f = Feeder::start(self.shared.clone(), self.kind)
                    .map_err(|_| vm.new_runtime_error("can't start new thread"))?;
                *g = Some(f.clone());
                Ok(f)
            }
        }
    }

    fn own_pending(&self) -> usize {
        let g = self.feeder.lock();
        match &*g {
            Some(f) if f.pid == ipc::pid() => f.pending.load(Ordering::Acquire),
            _ => 0,
        }
    }

    fn count(&self) -> &std::sync::atomic::AtomicU32 {
        self.shared.counters.get(COUNT)
    }

    /// Take a slot for one item, waiting while the queue is full.
    fn acquire_slot(
        &self,
        block: bool,
        until: Option<Instant>,
        vm: &VirtualMachine,
    ) -> PyResult<()> {
        if self.maxsize == 0 {
            self.count().fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        loop {
            let c = self.count().load(Ordering::Acquire);
            if c < self.maxsize {
                if self
                    .count()
                    .compare_exchange(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let left = ipc::remaining(until);
            if !block || left == Some(Duration::ZERO) {
                return Err(queue_exception(vm, "Full"));
            }
            // Bounded naps so Ctrl-C is seen even if no wake-up comes.
            let nap =
                left.map_or(Duration::from_millis(200), |l| l.min(Duration::from_millis(200)));
            match vm.allow_threads(|| self.shared.counters.wait(COUNT, c, Some(nap))) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
                Err(e) => return Err(os_err(vm, e)),
                Ok(()) => vm.check_signals()?,
            }
        }
    }

    /// `procpy --trace`: an item put or got since `t0` (`None` when tracing is off). Every
    /// process's mapping of the counters is the same memory file: the queue's identity.
    fn traced(&self, send: bool, t0: Option<f64>, data: &[u8]) {
        if let Some(t0) = t0 {
            let key = trace::flow_key(trace::inode(self.shared.counters.fd()), data);
            trace::message(send, "queue", key, t0, data.len());
        }
    }

    fn release_slot(&self) {
        self.count().fetch_sub(1, Ordering::AcqRel);
        if self.maxsize > 0 {
            self.shared.counters.wake_all(COUNT);
        }
    }

    /// Receive one record, or `None` on timeout.
    fn recv_record(
        &self,
        block: bool,
        until: Option<Instant>,
        vm: &VirtualMachine,
    ) -> PyResult<Option<Record>> {
        let fd = self.shared.rfd.as_raw_fd();
        let until = if block { until } else { Some(Instant::now()) };
        let mut first = true;
        loop {
            // Only queues that have carried descriptors pay for the peek.
            let careful = self.shared.counters.get(CARRIES_FDS).load(Ordering::Acquire) != 0;
            let ready = if careful {
                match room_for_next(fd) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        vm.check_signals()?;
                        continue;
                    }
                    Err(e) => return Err(os_err(vm, e)),
                }
            } else {
                true
            };
            // With a backlog the record is already there: one system call, no poll.
            let got = if ready {
                RECV_BUF.with_borrow_mut(|buf| {
                    match ipc::recv_with_fds_flags(fd, buf, 253, libc::MSG_DONTWAIT) {
                        Ok((n, fds, flags)) => parse_record(
                            &buf[..n.min(buf.len())],
                            fds,
                            flags & libc::MSG_TRUNC != 0,
                            flags & libc::MSG_CTRUNC != 0,
                        ),
                        Err(e) => Err(RecordError::Os(e)),
                    }
                })
            } else {
                Err(RecordError::Os(io::ErrorKind::WouldBlock.into()))
            };
            match got {
                Ok(record) => return Ok(Some(record)),
                // Empty, or another consumer took it first.
                Err(RecordError::Os(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(RecordError::Os(e)) if e.kind() == io::ErrorKind::Interrupted => {
                    vm.check_signals()?
                }
                Err(RecordError::Os(e)) => return Err(os_err(vm, e)),
                Err(RecordError::Lost) => {
                    // Only if another thread took the descriptors the peek found free: the
                    // item is gone; say so, and keep the count right.
                    self.release_slot();
                    return Err(vm.new_os_error(
                        "a queue item was lost: no descriptor was free to receive it (too many open files)".to_owned(),
                    ));
                }
            }
            // Our own feeder may still hold records we just put: keep looking in short steps
            // (past the deadline) rather than report empty a queue this process filled.
            let pending = self.own_pending() > 0;
            if !pending && until.is_some_and(|u| Instant::now() >= u) {
                return Ok(None);
            }
            let wait_until =
                if pending { Some(Instant::now() + Duration::from_millis(1)) } else { until };
            if first {
                first = false;
                wait_readable_spin(vm, fd, wait_until)?;
            } else {
                wait_readable(vm, fd, wait_until)?;
            }
        }
    }
}

/// SimpleQueue's synchronous write. Too many descriptors in flight (or no kernel buffer) is a
/// full pipe for CPython: wait until readers take some (signal handlers run meanwhile). Out of
/// descriptors in this process: raise, the item not counted.
fn send_simple(
    vm: &VirtualMachine,
    shared: &QueueShared,
    data: &[u8],
    fds: &[RawFd],
) -> PyResult<()> {
    let mut nap = Duration::from_millis(1);
    loop {
        match vm.allow_threads(|| send_record(shared, data, fds)) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => vm.check_signals()?,
            Err(e)
                if is_shortage(&e)
                    && !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                vm.allow_threads(|| std::thread::sleep(nap));
                vm.check_signals()?;
                nap = (nap * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(os_err(vm, e)),
        }
    }
}

thread_local! {
    /// One receive buffer per thread: a record is at most this big (larger items travel as a
    /// memory file), and zeroing 32 KiB per `get` showed up in profiles.
    static RECV_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; INLINE_MAX + 16]);
}

#[derive(FromArgs)]
pub struct QueueNewArgs {
    #[pyarg(any, default = 0)]
    maxsize: i64,
    #[pyarg(any, default = 0)]
    kind: u8,
}

impl Constructor for QueueBase {
    type Args = QueueNewArgs;

    fn py_new(_cls: &Py<PyType>, args: Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
        let (r, w) = ipc::socketpair(libc::SOCK_SEQPACKET).map_err(|e| os_err(vm, e))?;
        let counters = SharedCounters::create(SLOTS).map_err(|e| os_err(vm, e))?;
        let maxsize = if args.maxsize <= 0 { 0 } else { args.maxsize.min(i32::MAX as i64) as u32 };
        // Writers use one end, readers the other; records keep their boundaries.
        let shared = Arc::new(QueueShared { rfd: w, wfd: Arc::new(r), counters });
        Ok(QueueBase::from_shared(shared, maxsize, args.kind))
    }
}

#[derive(FromArgs)]
struct PutArgs {
    #[pyarg(any)]
    obj: PyObjectRef,
    #[pyarg(any, default = true)]
    block: bool,
    #[pyarg(any, default)]
    timeout: Option<ArgIntoFloat>,
}

#[derive(FromArgs)]
struct GetArgs {
    #[pyarg(any, default = true)]
    block: bool,
    #[pyarg(any, default)]
    timeout: Option<ArgIntoFloat>,
}

#[pyclass(with(Constructor), flags(BASETYPE))]
impl QueueBase {
    #[pymethod]
    fn put(zelf: &Py<Self>, args: PutArgs, vm: &VirtualMachine) -> PyResult<()> {
        Self::check_open(zelf, vm)?;
        let timeout = args.timeout.map(ArgIntoFloat::into_float);
        if timeout.is_some_and(|t| t < 0.0) {
            return Err(vm.new_value_error("'timeout' must be a non-negative number"));
        }
        let until = sem_deadline(vm, timeout)?;
        let t0 = trace::clock();
        // Encode first: an unencodable object raises here and leaves the queue untouched.
        let (data, fds) = dumps_with_connections(vm, &args.obj)?;
        // The feeder before the slot: no thread, no item counted.
        let f = if zelf.kind == 2 { None } else { Some(zelf.feeder(vm)?) };
        zelf.acquire_slot(args.block, until, vm)?;
        if zelf.kind == 1 {
            zelf.shared.counters.get(UNFINISHED).fetch_add(1, Ordering::AcqRel);
        }
        let Some(f) = f else {
            // SimpleQueue: written synchronously, as CPython's.
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            send_simple(vm, &zelf.shared, &data, &raw).inspect_err(|_| zelf.release_slot())?;
            zelf.traced(true, t0, &data);
            return Ok(());
        };
        f.pending.fetch_add(1, Ordering::AcqRel);
        // Recorded before the feeder owns the bytes; a put that fails below leaves an unpaired
        // send, which the converter drops.
        zelf.traced(true, t0, &data);
        let sent =
            f.tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|tx| tx.send((data, fds)).is_ok());
        if sent != Some(true) {
            f.pending.fetch_sub(1, Ordering::AcqRel);
            zelf.release_slot();
            return Err(vm.new_value_error("Queue is closed"));
        }
        Ok(())
    }

    #[pymethod]
    fn put_nowait(zelf: &Py<Self>, obj: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
        Self::put(zelf, PutArgs { obj, block: false, timeout: None }, vm)
    }

    #[pymethod]
    fn get(zelf: &Py<Self>, args: GetArgs, vm: &VirtualMachine) -> PyResult {
        Self::check_open(zelf, vm)?;
        let timeout = args.timeout.map(ArgIntoFloat::into_float);
        if timeout.is_some_and(|t| t < 0.0) {
            return Err(vm.new_value_error("'timeout' must be a non-negative number"));
        }
        let t0 = trace::clock();
        match zelf.recv_record(args.block, deadline(vm, timeout)?, vm)? {
            None => Err(queue_exception(vm, "Empty")),
            Some((payload, fds)) => {
                zelf.release_slot();
                zelf.traced(false, t0, &payload);
                loads_with(vm, &payload, fds)
            }
        }
    }

    #[pymethod]
    fn get_nowait(zelf: &Py<Self>, vm: &VirtualMachine) -> PyResult {
        Self::get(zelf, GetArgs { block: false, timeout: None }, vm)
    }

    #[pymethod]
    fn qsize(&self) -> u32 {
        self.count().load(Ordering::Acquire)
    }

    #[pymethod]
    fn empty(&self) -> bool {
        self.qsize() == 0
    }

    #[pymethod]
    fn full(&self) -> bool {
        self.maxsize > 0 && self.qsize() >= self.maxsize
    }

    #[pymethod]
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(f) = &*self.feeder.lock() {
            f.close();
        }
    }

    #[pymethod]
    fn join_thread(zelf: &Py<Self>, vm: &VirtualMachine) -> PyResult<()> {
        if !zelf.closed.load(Ordering::Acquire) {
            let r = zelf.as_object().repr(vm)?;
            return Err(vm.new_exception_msg(
                vm.ctx.exceptions.assertion_error.to_owned(),
                format!("Queue {} not closed", r.to_string_lossy()).into(),
            ));
        }
        let f = zelf.feeder.lock().clone();
        if let Some(f) = f.filter(|f| f.pid == ipc::pid()) {
            f.join();
        }
        Ok(())
    }

    #[pymethod]
    fn cancel_join_thread(&self) {
        if let Some(f) = &*self.feeder.lock() {
            f.cancelled.store(true, Ordering::Release);
        }
    }

    #[pymethod]
    fn _task_done(&self, vm: &VirtualMachine) -> PyResult<()> {
        let u = self.shared.counters.get(UNFINISHED);
        loop {
            let c = u.load(Ordering::Acquire);
            if c == 0 {
                return Err(vm.new_value_error("task_done() called too many times"));
            }
            if u.compare_exchange(c, c - 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                if c == 1 {
                    self.shared.counters.wake_all(UNFINISHED);
                }
                return Ok(());
            }
        }
    }

    #[pymethod]
    fn _join(&self, vm: &VirtualMachine) -> PyResult<()> {
        loop {
            let c = self.shared.counters.get(UNFINISHED).load(Ordering::Acquire);
            if c == 0 {
                return Ok(());
            }
            match vm.allow_threads(|| {
                self.shared.counters.wait(UNFINISHED, c, Some(Duration::from_millis(200)))
            }) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(os_err(vm, e)),
                _ => vm.check_signals()?,
            }
        }
    }

    #[pygetset]
    fn _maxsize(&self) -> u32 {
        self.maxsize
    }
}

/// Flush every queue feeder of this process (at process exit, as CPython's finalizers do).
pub(super) fn flush_all() {
    let pid = ipc::pid();
    let feeders: Vec<Arc<Feeder>> = {
        let mut g = FEEDERS.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|w| w.strong_count() > 0);
        g.iter().filter_map(|w| w.upgrade()).filter(|f| f.pid == pid).collect()
    };
    for f in feeders {
        if f.cancelled.load(Ordering::Acquire) {
            f.close();
        } else {
            f.join();
        }
    }
}
