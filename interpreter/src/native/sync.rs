//! `SemLock`: the one native primitive under Lock, RLock, Semaphore and BoundedSemaphore (and,
//! through them, Condition, Event and Barrier). Its state lives in a small memory file mapped by
//! every process that holds it, and waiters sleep on a futex there: an uncontended acquire or
//! release is one atomic operation, with no system call and no server round trip.
//!
//! Ownership (`_is_mine`, RLock depth) is per process, as in CPython: a count of this object's
//! acquisitions here and the last thread that acquired. A lock (maxvalue 1) also records the
//! holding pid in the shared state, so a blocked acquirer notices when the holder died: it then
//! takes the lock over with a RuntimeWarning instead of waiting forever (CPython waits forever).

use super::os_err;
use crate::ipc::{self, SharedCounters};
use nix::fcntl::OFlag;
use nix::sys::mman;
use nix::sys::stat::Mode;
use rustpython_vm::builtins::{PyType, PyTypeRef};
use rustpython_vm::function::{ArgIntoFloat, FuncArgs, OptionalArg};
use rustpython_vm::types::Constructor;
use rustpython_vm::{
    pyclass, FromArgs, Py, PyObjectRef, PyPayload, PyRef, PyResult, VirtualMachine,
};
use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots of the shared state.
const VALUE: usize = 0;
const WAITERS: usize = 1;
/// The process holding a lock (maxvalue 1), so a waiter can tell when it died.
const OWNER_PID: usize = 2;
pub(crate) const SLOTS: usize = 3;

pub(crate) const RECURSIVE_MUTEX: i32 = 0;
pub(crate) const SEMAPHORE: i32 = 1;
/// As CPython's `SemLock.SEM_VALUE_MAX` on Linux.
const SEM_VALUE_MAX: i32 = i32::MAX;

/// How long a blocked acquire sleeps before it looks at signals and at the holder's health.
const NAP: Duration = Duration::from_millis(100);

fn my_ids() -> (u32, u32) {
    (ipc::pid(), ipc::tid())
}

/// Whether `pid` is gone or a zombie (dead, not yet reaped: it will never release anything).
fn process_is_dead(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        return e == nix::errno::Errno::ESRCH;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X'),
        Err(_) => true,
    }
}

/// A process-shared semaphore or (recursive) mutex, as CPython's `_multiprocessing.SemLock`.
#[pyclass(name = "SemLock", module = "_procpy")]
#[derive(PyPayload)]
pub struct SemLock {
    pub(crate) shared: Arc<SharedCounters>,
    pub(crate) kind: i32,
    pub(crate) maxvalue: i32,
    /// Acquisitions minus releases made through this object in process `local_pid` (CPython
    /// keeps the same per-process count: it decides `_is_mine`, RLock depth and the reprs).
    count: AtomicI64,
    last_tid: AtomicU32,
    local_pid: AtomicU32,
    /// The name given at creation (CPython's `SemLock.name`); None for procpy's own locks.
    name: Option<String>,
}

impl std::fmt::Debug for SemLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SemLock(kind={}, maxvalue={})", self.kind, self.maxvalue)
    }
}

impl SemLock {
    pub(crate) fn from_shared(shared: Arc<SharedCounters>, kind: i32, maxvalue: i32) -> Self {
        SemLock {
            shared,
            kind,
            maxvalue,
            count: AtomicI64::new(0),
            last_tid: AtomicU32::new(0),
            local_pid: AtomicU32::new(ipc::pid()),
            name: None,
        }
    }

    fn named(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    /// This process's count (a fork child starts from zero, as after CPython's `_after_fork`).
    fn local_count(&self) -> i64 {
        if self.local_pid.load(SeqCst) == ipc::pid() {
            self.count.load(SeqCst)
        } else {
            0
        }
    }

    fn add_count(&self, delta: i64) {
        let pid = ipc::pid();
        if self.local_pid.load(SeqCst) != pid {
            self.count.store(0, SeqCst);
            self.local_pid.store(pid, SeqCst);
        }
        self.count.fetch_add(delta, SeqCst);
    }

    fn slot(&self, i: usize) -> &AtomicU32 {
        self.shared.get(i)
    }

    fn is_lock(&self) -> bool {
        self.maxvalue == 1
    }

    fn is_mine(&self) -> bool {
        self.local_count() > 0 && self.last_tid.load(SeqCst) == my_ids().1
    }

    fn try_take(&self) -> bool {
        let v = self.slot(VALUE);
        let mut cur = v.load(SeqCst);
        while cur > 0 {
            match v.compare_exchange_weak(cur, cur - 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    fn note_owner(&self) {
        let (pid, tid) = my_ids();
        self.add_count(1);
        self.last_tid.store(tid, SeqCst);
        if self.is_lock() {
            self.slot(OWNER_PID).store(pid, SeqCst);
        }
    }

    /// The holder of a lock died: take the lock over (one waiter wins the race for it).
    fn take_over_from_dead(&self, vm: &VirtualMachine) -> PyResult<bool> {
        if !self.is_lock() || self.slot(VALUE).load(SeqCst) != 0 {
            return Ok(false);
        }
        let holder = self.slot(OWNER_PID).load(SeqCst);
        if holder == 0 || !process_is_dead(holder) {
            return Ok(false);
        }
        let pid = ipc::pid();
        if self.slot(OWNER_PID).compare_exchange(holder, pid, SeqCst, SeqCst).is_err() {
            return Ok(false);
        }
        self.note_owner();
        let msg = format!(
            "the lock was held by process {holder}, which died without releasing it; \
             process {pid} took it over (the data it guarded may be inconsistent)"
        );
        let warnings = vm.import("warnings", 0)?;
        let warn = warnings.get_attr("warn", vm)?;
        warn.call((msg, vm.ctx.exceptions.runtime_warning.to_owned(), 2), vm)?;
        Ok(true)
    }

    /// Acquire, waiting until `until` (None: forever). Returns whether it was acquired.
    fn acquire_impl(
        &self,
        block: bool,
        until: Option<Instant>,
        vm: &VirtualMachine,
    ) -> PyResult<bool> {
        if self.kind == RECURSIVE_MUTEX && self.is_mine() {
            self.add_count(1);
            return Ok(true);
        }
        if self.try_take() {
            self.note_owner();
            return Ok(true);
        }
        if !block {
            return Ok(false);
        }
        // A short spin: a holder in another process often releases within microseconds.
        for i in 0..64 {
            if i % 16 == 15 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            if self.slot(VALUE).load(SeqCst) > 0 && self.try_take() {
                self.note_owner();
                return Ok(true);
            }
        }
        loop {
            let left = ipc::remaining(until);
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            let nap = left.map_or(NAP, |l| l.min(NAP));
            self.slot(WAITERS).fetch_add(1, SeqCst);
            let r = vm.allow_threads(|| self.shared.wait(VALUE, 0, Some(nap)));
            self.slot(WAITERS).fetch_sub(1, SeqCst);
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(os_err(vm, e)),
            }
            vm.check_signals()?;
            if self.try_take() {
                self.note_owner();
                return Ok(true);
            }
            if self.take_over_from_dead(vm)? {
                return Ok(true);
            }
        }
    }

    fn release_impl(&self, vm: &VirtualMachine) -> PyResult<()> {
        if self.kind == RECURSIVE_MUTEX {
            if !self.is_mine() {
                return Err(vm.new_exception_msg(
                    vm.ctx.exceptions.assertion_error.to_owned(),
                    "attempt to release recursive lock not owned by thread".into(),
                ));
            }
            if self.local_count() > 1 {
                self.add_count(-1);
                return Ok(());
            }
        } else if self.maxvalue != SEM_VALUE_MAX
            && self.slot(VALUE).load(SeqCst) >= self.maxvalue as u32
        {
            return Err(vm.new_value_error("semaphore or lock released too many times"));
        }
        if self.is_lock() {
            // Forget the holder before the lock becomes free, so a new holder's mark stays.
            self.slot(OWNER_PID).store(0, SeqCst);
        }
        self.add_count(-1);
        self.slot(VALUE).fetch_add(1, SeqCst);
        if self.slot(WAITERS).load(SeqCst) > 0 {
            self.shared.wake_one(VALUE);
        }
        Ok(())
    }
}

/// procpy's own wrappers pass `(kind, value, maxvalue)`; code written for CPython's
/// `_multiprocessing.SemLock` (joblib, loky) passes `(kind, value, maxvalue, name, unlink)`,
/// positionally or by keyword.
#[derive(FromArgs)]
pub struct SemLockArgs {
    #[pyarg(any)]
    kind: i32,
    #[pyarg(any)]
    value: i64,
    #[pyarg(any)]
    maxvalue: i64,
    /// A str when given (None is a TypeError, as in CPython).
    #[pyarg(any, optional)]
    name: OptionalArg<String>,
    #[pyarg(any, default = true)]
    unlink: bool,
}

/// The shared-memory name behind a named SemLock. Prefixed so that it never opens a CPython
/// semaphore of the same name (`/dev/shm/sem.NAME`, a different layout).
fn segment_name(vm: &VirtualMachine, name: &str) -> PyResult<CString> {
    CString::new(format!("/procpy-sem.{}", name.trim_start_matches('/')))
        .map_err(|_| vm.new_value_error("embedded null character"))
}

/// sem_open's rule (glibc): past its leading slashes a name is one non-empty component.
fn check_name(vm: &VirtualMachine, name: &str) -> PyResult<()> {
    let bare = name.trim_start_matches('/');
    if bare.is_empty() || bare.contains('/') {
        return Err(os_err(vm, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    Ok(())
}

/// The state of the named SemLock `name`: created exclusively (FileExistsError if the name is
/// taken, as sem_open with O_EXCL) or opened.
fn named_state(vm: &VirtualMachine, name: &str, create: bool) -> PyResult<SharedCounters> {
    check_name(vm, name)?;
    let c = segment_name(vm, name)?;
    let flags =
        OFlag::O_RDWR | if create { OFlag::O_CREAT | OFlag::O_EXCL } else { OFlag::empty() };
    let err = |e: io::Error| super::shm::os_error_with_filename(vm, e, name);
    let fd = mman::shm_open(c.as_c_str(), flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| err(e.into()))?;
    let mapped = (|| {
        if create {
            nix::unistd::ftruncate(&fd, (SLOTS * 4) as libc::off_t)?;
        }
        SharedCounters::map_named(fd, SLOTS)
    })();
    mapped.map_err(|e| {
        // A segment we created but could not size or map must not stay behind.
        if create {
            let _ = mman::shm_unlink(c.as_c_str());
        }
        err(e)
    })
}

/// `_multiprocessing.sem_unlink(name)`: remove a named SemLock's name; holders keep it.
pub(crate) fn sem_unlink(vm: &VirtualMachine, name: &str) -> PyResult<()> {
    let c = segment_name(vm, name)?;
    mman::shm_unlink(c.as_c_str())
        .map_err(|e| super::shm::os_error_with_filename(vm, e.into(), name))
}

impl Constructor for SemLock {
    type Args = SemLockArgs;

    fn py_new(_cls: &Py<PyType>, args: Self::Args, vm: &VirtualMachine) -> PyResult<Self> {
        if args.kind != RECURSIVE_MUTEX && args.kind != SEMAPHORE {
            return Err(vm.new_value_error("unrecognized kind"));
        }
        if args.value < 0
            || args.value > SEM_VALUE_MAX as i64
            || args.maxvalue < 1
            || args.maxvalue > SEM_VALUE_MAX as i64
        {
            // What sem_open says of a value it cannot hold.
            return Err(os_err(vm, io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // A name unlinked at once is never opened by anyone: an anonymous memory file does,
        // and the lock has no name, as in CPython.
        if let OptionalArg::Present(n) = &args.name {
            // Checked even when unlinked at once: CPython opens the name first.
            check_name(vm, n)?;
        }
        let name = args.name.into_option().filter(|_| !args.unlink);
        let shared = match &name {
            Some(n) => named_state(vm, n, true)?,
            None => SharedCounters::create(SLOTS).map_err(|e| os_err(vm, e))?,
        };
        shared.get(VALUE).store(args.value as u32, SeqCst);
        Ok(SemLock::from_shared(Arc::new(shared), args.kind, args.maxvalue as i32).named(name))
    }
}

#[derive(FromArgs)]
struct AcquireArgs {
    #[pyarg(any, default = true)]
    block: bool,
    #[pyarg(any, default)]
    timeout: Option<ArgIntoFloat>,
}

#[pyclass(with(Constructor), flags(BASETYPE))]
impl SemLock {
    #[extend_class]
    fn extend_class(ctx: &rustpython_vm::Context, class: &Py<PyType>) {
        class.set_attr(ctx.intern_str("SEM_VALUE_MAX"), ctx.new_int(SEM_VALUE_MAX).into());
        class.set_attr(ctx.intern_str("RECURSIVE_MUTEX"), ctx.new_int(RECURSIVE_MUTEX).into());
        class.set_attr(ctx.intern_str("SEMAPHORE"), ctx.new_int(SEMAPHORE).into());
    }

    /// `acquire(block=True, timeout=None)` -> bool
    #[pymethod]
    fn acquire(&self, args: AcquireArgs, vm: &VirtualMachine) -> PyResult<bool> {
        let until = match args.timeout {
            Some(t) if args.block => super::sem_deadline(vm, Some(t.into_float()))?,
            _ => None,
        };
        self.acquire_impl(args.block, until, vm)
    }

    #[pymethod]
    fn release(&self, vm: &VirtualMachine) -> PyResult<()> {
        self.release_impl(vm)
    }

    #[pymethod]
    fn __enter__(&self, vm: &VirtualMachine) -> PyResult<bool> {
        self.acquire_impl(true, None, vm)
    }

    #[pymethod]
    fn __exit__(&self, _args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        self.release_impl(vm)
    }

    /// Acquisitions held by this process (the recursion depth when a thread of it holds a lock).
    #[pymethod]
    fn _count(&self) -> i64 {
        self.local_count()
    }

    #[pymethod]
    fn _is_mine(&self) -> bool {
        self.is_mine()
    }

    #[pymethod]
    fn _get_value(&self) -> u32 {
        self.slot(VALUE).load(SeqCst)
    }

    #[pymethod]
    fn _is_zero(&self) -> bool {
        self.slot(VALUE).load(SeqCst) == 0
    }

    #[pymethod]
    fn _after_fork(&self) {
        self.count.store(0, SeqCst);
        self.local_pid.store(ipc::pid(), SeqCst);
    }

    /// A plain `SemLock` sharing this one's state: what travels to a child for a subclass.
    #[pymethod]
    fn _raw(&self) -> SemLock {
        SemLock::from_shared(self.shared.clone(), self.kind, self.maxvalue).named(self.name.clone())
    }

    /// `cls` sharing `raw`'s state: how a subclass is rebuilt in the child.
    #[pyclassmethod]
    fn _from_raw(
        cls: PyTypeRef,
        raw: PyRef<SemLock>,
        vm: &VirtualMachine,
    ) -> PyResult<PyObjectRef> {
        Ok(raw._raw().into_ref_with_type(vm, cls)?.into())
    }

    #[pygetset]
    fn handle(&self) -> i32 {
        self.shared.fd()
    }

    #[pygetset]
    fn kind(&self) -> i32 {
        self.kind
    }

    #[pygetset]
    fn maxvalue(&self) -> i32 {
        self.maxvalue
    }

    /// None for procpy's own locks: their state is a memory file passed by descriptor.
    #[pygetset]
    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// CPython's `SemLock._rebuild(handle, kind, maxvalue, name)`, as loky's unpickling calls
    /// it: by name when there is one, else from `handle`, a descriptor this process inherited.
    #[pyclassmethod]
    fn _rebuild(
        cls: PyTypeRef,
        handle: i32,
        kind: i32,
        maxvalue: i32,
        name: Option<String>,
        vm: &VirtualMachine,
    ) -> PyResult<PyObjectRef> {
        let shared = match &name {
            Some(n) => named_state(vm, n, false)?,
            None => {
                use std::os::fd::BorrowedFd;
                if handle < 0 {
                    return Err(os_err(vm, io::Error::from_raw_os_error(libc::EBADF)));
                }
                // SAFETY: borrowed only for the dup below; an fd number that is not open makes
                // dup fail with EBADF, which becomes an OSError.
                let fd = unsafe { BorrowedFd::borrow_raw(handle) };
                let fd = fd.try_clone_to_owned().map_err(|e| os_err(vm, e))?;
                SharedCounters::map(fd, SLOTS).map_err(|e| os_err(vm, e))?
            }
        };
        let lock = SemLock::from_shared(Arc::new(shared), kind, maxvalue).named(name);
        Ok(lock.into_ref_with_type(vm, cls)?.into())
    }

    /// CPython's wrappers keep the native object here; ours are the native object.
    #[pygetset]
    #[allow(clippy::self_named_constructors)] // a Python attribute, named as in CPython
    fn _semlock(zelf: PyRef<Self>) -> PyRef<Self> {
        zelf
    }
}
