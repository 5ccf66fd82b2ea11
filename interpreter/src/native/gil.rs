//! `_procpy_gil`: an emulated GIL, for teaching. RustPython has no GIL, so Python threads run
//! in parallel; with this on they take turns as under CPython: a thread must hold one global
//! lock to run Python code, and hands it over at the switch interval when another thread wants
//! it (`sys.setswitchinterval`, 5 ms by default), like CPython's "new GIL" (3.2+).
//!
//! How: a native trace function (`sys.settrace` / `threading.settrace`) runs at every call,
//! line and return event, so "running bytecode" means "between two trace events". CPython
//! releases its GIL around blocking calls (sleep, I/O, lock waits); a trace function cannot see
//! those, so here a holder that produced no event for a whole interval counts as blocked and a
//! waiter takes the lock over. That keeps sleeping and I/O-bound threads from stalling the rest
//! (at the cost of one interval per hand-over), and it means a long native call may run beside
//! Python code, which CPython would not allow. Threads started with `_thread` directly (procpy's
//! own helper threads) are not traced and never take the lock.
//!
//! The state is lock-free (one packed atomic word, futex sleeps): a forked child inherits no
//! held mutex.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) use _procpy_gil::module_def;

/// Holder key (high 32 bits, 0 = free) and the holder's last event time (low 32 bits, µs,
/// wrapping): packed so that a steal and the holder's own refresh cannot both succeed.
static STATE: AtomicU64 = AtomicU64::new(0);
/// When the current holder took the lock (µs, full width).
static SINCE: AtomicU64 = AtomicU64::new(0);
static WAITERS: AtomicU32 = AtomicU32::new(0);
/// Futex word: bumped at every hand-over, so sleepers re-check.
static SEQ: AtomicU32 = AtomicU32::new(0);
static ENABLED: AtomicBool = AtomicBool::new(false);
static INTERVAL_US: AtomicU32 = AtomicU32::new(5_000);
static SWITCHES: AtomicU64 = AtomicU64::new(0);
static RECORDING: AtomicBool = AtomicBool::new(false);
/// Hold intervals (thread key, start µs, end µs) while recording.
static LOG: Mutex<Vec<(u32, u64, u64)>> = Mutex::new(Vec::new());
static NEXT_KEY: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static KEY: Cell<u32> = const { Cell::new(0) };
}

fn my_key() -> u32 {
    KEY.with(|k| {
        if k.get() == 0 {
            k.set(NEXT_KEY.fetch_add(1, Ordering::Relaxed));
        }
        k.get()
    })
}

/// CLOCK_MONOTONIC in µs: the same clock in every process, so timelines line up.
pub(crate) fn now_us() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}

fn pack(key: u32, now: u64) -> u64 {
    ((key as u64) << 32) | (now as u32 as u64)
}

fn holder(s: u64) -> u32 {
    (s >> 32) as u32
}

fn idle_us(s: u64, now: u64) -> u32 {
    (now as u32).wrapping_sub(s as u32)
}

fn record(key: u32, start: u64, end: u64) {
    if RECORDING.load(Ordering::Relaxed) {
        if let Ok(mut log) = LOG.lock() {
            log.push((key, start, end.max(start)));
        }
    }
}

fn wake_all() {
    SEQ.fetch_add(1, Ordering::Release);
    crate::ipc::futex_wake(&SEQ, i32::MAX, true);
}

fn sleep_on_seq(seq: u32, us: u32) {
    // Any return (woken, timed out, value changed, interrupted) sends the caller back to its
    // loop, which re-checks.
    let _ =
        crate::ipc::futex_wait(&SEQ, seq, Some(std::time::Duration::from_micros(us.into())), true);
}

/// Take the lock: when it is free, or when its holder has been silent for a whole interval.
fn acquire(vm: &rustpython_vm::VirtualMachine, me: u32) {
    WAITERS.fetch_add(1, Ordering::AcqRel);
    loop {
        let s = STATE.load(Ordering::Acquire);
        let now = now_us();
        let interval = INTERVAL_US.load(Ordering::Relaxed);
        let h = holder(s);
        if h == 0 || h == me || idle_us(s, now) >= interval {
            if STATE.compare_exchange(s, pack(me, now), Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                if h != 0 && h != me {
                    // Taken over from a holder blocked outside Python code: its turn ended
                    // when it was last seen.
                    let last = now - idle_us(s, now) as u64;
                    record(h, SINCE.load(Ordering::Relaxed), last);
                }
                SINCE.store(now, Ordering::Relaxed);
                break;
            }
            continue;
        }
        let seq = SEQ.load(Ordering::Acquire);
        if STATE.load(Ordering::Acquire) != s {
            continue;
        }
        let wait = (interval - idle_us(s, now)).max(50);
        // Detached from the VM while asleep, so os.fork's stop-the-world does not wait for us.
        vm.allow_threads(|| sleep_on_seq(seq, wait));
    }
    WAITERS.fetch_sub(1, Ordering::AcqRel);
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    wake_all();
}

fn release(me: u32) {
    let s = STATE.load(Ordering::Acquire);
    if holder(s) == me {
        let now = now_us();
        if STATE.compare_exchange(s, pack(0, now), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            record(me, SINCE.load(Ordering::Relaxed), now);
            wake_all();
        }
    }
}

/// After a forced release: give a waiter the chance to take the lock before competing again
/// (CPython's FORCE_SWITCHING), at most one interval.
fn let_another_run(vm: &rustpython_vm::VirtualMachine, me: u32) {
    let start = now_us();
    let interval = INTERVAL_US.load(Ordering::Relaxed);
    loop {
        let seq = SEQ.load(Ordering::Acquire);
        let h = holder(STATE.load(Ordering::Acquire));
        let waited = now_us().saturating_sub(start) as u32;
        if (h != 0 && h != me) || waited >= interval || WAITERS.load(Ordering::Acquire) == 0 {
            return;
        }
        vm.allow_threads(|| sleep_on_seq(seq, (interval - waited).max(50)));
    }
}

/// One trace event in the current thread. `leaving` = the thread's outermost frame returns.
fn on_event(vm: &rustpython_vm::VirtualMachine, leaving: bool) {
    let me = my_key();
    let s = STATE.load(Ordering::Acquire);
    if holder(s) == me {
        if leaving {
            release(me);
            return;
        }
        let now = now_us();
        if WAITERS.load(Ordering::Acquire) > 0
            && now.saturating_sub(SINCE.load(Ordering::Relaxed))
                >= INTERVAL_US.load(Ordering::Relaxed) as u64
        {
            release(me);
            let_another_run(vm, me);
            acquire(vm, me);
        } else if (now as u32) != (s as u32)
            && STATE
                .compare_exchange(s, pack(me, now), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            // Taken over while we were blocked outside Python code: wait for our turn.
            acquire(vm, me);
        }
    } else if !leaving {
        acquire(vm, me);
    }
}

#[rustpython_vm::pymodule]
mod _procpy_gil {
    use super::*;
    use rustpython_vm::builtins::PyStr;
    use rustpython_vm::function::FuncArgs;
    use rustpython_vm::types::Callable;
    use rustpython_vm::{pyclass, Py, PyObjectRef, PyPayload, PyResult, VirtualMachine};

    /// The trace function: install it with `sys.settrace` and `threading.settrace`.
    #[pyattr]
    #[pyclass(name = "Tracer", module = "_procpy_gil")]
    #[derive(Debug, PyPayload)]
    pub(super) struct Tracer {}

    impl Callable for Tracer {
        type Args = FuncArgs;

        fn call(zelf: &Py<Self>, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
            if ENABLED.load(Ordering::Relaxed) {
                let leaving = match (
                    args.args.first(),
                    args.args.get(1).and_then(|e| e.downcast_ref::<PyStr>()),
                ) {
                    (Some(frame), Some(event)) if event.to_str() == Some("return") => vm
                        .get_attribute_opt(frame.clone(), "f_back")?
                        .is_none_or(|b| vm.is_none(&b)),
                    _ => false,
                };
                on_event(vm, leaving);
            }
            // The local trace function of the frame: keep receiving its line events.
            Ok(zelf.to_owned().into())
        }
    }

    #[pyclass(with(Callable))]
    impl Tracer {}

    /// A new trace function object (one is enough for every thread).
    #[pyfunction]
    fn tracer(vm: &VirtualMachine) -> PyObjectRef {
        Tracer {}.into_pyobject(vm)
    }

    /// Turn the emulated GIL on or off (the tracer must be installed for it to act).
    #[pyfunction]
    fn enable(on: bool) {
        ENABLED.store(on, Ordering::Release);
        if !on {
            // Nobody holds it any more; sleepers re-check and find it disabled or free.
            STATE.store(0, Ordering::Release);
            wake_all();
        }
    }

    #[pyfunction]
    fn enabled() -> bool {
        ENABLED.load(Ordering::Acquire)
    }

    /// The hand-over interval in seconds (what `sys.setswitchinterval` sets).
    #[pyfunction]
    fn set_interval(seconds: f64, vm: &VirtualMachine) -> PyResult<()> {
        // NaN too is refused, as CPython does.
        if seconds.is_nan() || seconds <= 0.0 {
            return Err(vm.new_value_error("switch interval must be strictly positive"));
        }
        INTERVAL_US.store((seconds * 1e6).clamp(1.0, 60e6) as u32, Ordering::Relaxed);
        Ok(())
    }

    /// This thread's key, as it appears in `take_log()`.
    #[pyfunction]
    fn thread_key() -> u32 {
        my_key()
    }

    /// How many times the lock changed hands.
    #[pyfunction]
    fn switches() -> u64 {
        SWITCHES.load(Ordering::Relaxed)
    }

    /// Start (or stop) recording who held the lock when.
    #[pyfunction]
    fn record(on: bool) {
        RECORDING.store(on, Ordering::Release);
    }

    /// The recorded hold intervals `(thread_key, start, end)`, in seconds on the monotonic
    /// clock (`time.monotonic()`'s), and clear them.
    #[pyfunction]
    fn take_log(vm: &VirtualMachine) -> PyObjectRef {
        let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
        let items = std::mem::take(&mut *log)
            .into_iter()
            .map(|(k, a, b)| vm.new_tuple((k, a as f64 / 1e6, b as f64 / 1e6)).into())
            .collect();
        vm.ctx.new_list(items).into()
    }

    /// The clock of `take_log()` (CLOCK_MONOTONIC, seconds): comparable across processes.
    #[pyfunction]
    fn now() -> f64 {
        now_us() as f64 / 1e6
    }

    /// Release the lock if this thread holds it (before it blocks in a way the tracer cannot see).
    #[pyfunction]
    fn release_current() {
        release(my_key());
    }
}
