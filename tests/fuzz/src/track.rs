//! A counting global allocator, with a memory ceiling and failure injection.
//!
//! A [`Session`] counts what is allocated and freed while it is armed (the bytes held, their
//! peak, the largest single request), so a target can check that a reader holds no more than
//! the bytes it was given justify. Whatever is armed or not, a single allocation over the
//! ceiling ([`DEFAULT_LIMIT`], or the session's) is refused with a null pointer, as on a machine
//! without that much memory: fallible code must turn that into an error, and an infallible
//! allocation aborts ("memory allocation of N bytes failed"), which libFuzzer reports as a crash.
//! It also keeps huge requests away from the system allocator (and AddressSanitizer's), so a
//! declared length of 2^40 costs the fuzzer nothing.
//!
//! libFuzzer runs the target on one thread; the counters are atomics only because a global
//! allocator must be `Sync`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, Once};

/// Largest single allocation allowed outside a session that sets its own (256 MiB). No target
/// feeds more than a few MiB, so anything near this is an allocation sized by a declared length.
pub const DEFAULT_LIMIT: usize = 256 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_LIMIT);
static ARMED: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static FAIL_AT: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// The global allocator of every target (declared in lib.rs): the system allocator, counted.
pub struct Tracking;

impl Tracking {
    /// Whether a request for `size` bytes may go to the system allocator.
    fn admit(size: usize) -> bool {
        let armed = ARMED.load(Relaxed);
        let refuse = if armed {
            let n = COUNT.fetch_add(1, Relaxed) + 1;
            LARGEST.fetch_max(size, Relaxed);
            n == FAIL_AT.load(Relaxed) || size > LIMIT.load(Relaxed)
        } else {
            size > LIMIT.load(Relaxed)
        };
        if refuse && armed {
            REFUSED.fetch_add(1, Relaxed);
        }
        !refuse
    }

    fn held(delta: isize) {
        if ARMED.load(Relaxed) {
            let now = LIVE.fetch_add(delta, Relaxed) + delta;
            PEAK.fetch_max(now, Relaxed);
        }
    }
}

// SAFETY: every call is forwarded to `System` with the caller's arguments, or refused with a
// null pointer, which the `GlobalAlloc` contract allows for any request.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::held(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::held(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        Self::held(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Shrinking cannot be refused by a real allocator either.
        if new_size > layout.size() && !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::held(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// What a session saw.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Bytes allocated and not freed since the session was armed (negative if it freed older
    /// memory).
    pub live: isize,
    /// The most bytes held at once since the session was armed.
    pub peak: isize,
    /// The largest single request (granted or not).
    pub largest: usize,
    /// Requests made (allocations and growing reallocations).
    pub count: usize,
    /// Requests refused (over the ceiling, or the injected failure).
    pub refused: usize,
}

/// Counting is on while this lives; dropping it restores the default ceiling.
pub struct Session(());

/// Start counting from zero. `limit`: the largest single allocation granted meanwhile;
/// `fail_at`: refuse the n-th request (1-based; 0 = none), to reach out-of-memory paths that
/// only a failure midway can.
pub fn arm(limit: usize, fail_at: usize) -> Session {
    assert!(!ARMED.load(Relaxed), "sessions do not nest");
    LIVE.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    LARGEST.store(0, Relaxed);
    COUNT.store(0, Relaxed);
    REFUSED.store(0, Relaxed);
    FAIL_AT.store(fail_at, Relaxed);
    LIMIT.store(limit, Relaxed);
    ARMED.store(true, Relaxed);
    Session(())
}

impl Session {
    /// Bytes held now (allocated since arming, not yet freed).
    pub fn live(&self) -> isize {
        LIVE.load(Relaxed)
    }

    /// Everything counted so far.
    pub fn stats(&self) -> Stats {
        Stats {
            live: LIVE.load(Relaxed),
            peak: PEAK.load(Relaxed),
            largest: LARGEST.load(Relaxed),
            count: COUNT.load(Relaxed),
            refused: REFUSED.load(Relaxed),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        ARMED.store(false, Relaxed);
        FAIL_AT.store(0, Relaxed);
        LIMIT.store(DEFAULT_LIMIT, Relaxed);
    }
}

/// The largest peaks a run saw, printed when the fuzzer exits normally (`-max_total_time` or
/// `-runs` reached), for the figures in README.md.
struct Maxima {
    name: &'static str,
    /// (peak, input length) of the largest peak.
    peak: (isize, usize),
    /// (peak per input byte, peak, input length) of the largest ratio.
    ratio: (isize, isize, usize),
}

static MAXIMA: Mutex<Option<Maxima>> = Mutex::new(None);
static AT_EXIT: Once = Once::new();

extern "C" fn print_maxima() {
    let m = MAXIMA.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = m.as_ref() {
        eprintln!(
            "procpy-fuzz: {}: most heap held by one call: {} bytes ({} bytes in); most per byte in: {} ({} bytes held, {} bytes in)",
            m.name, m.peak.0, m.peak.1, m.ratio.0, m.ratio.1, m.ratio.2
        );
    }
}

/// Remember the peak a call of target `name` reached with `input_len` bytes in (the input, or
/// what a reader delivered).
pub fn record_peak(name: &'static str, input_len: usize, peak: isize) {
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn()` with atexit(3).
        unsafe { libc::atexit(print_maxima) };
    });
    let ratio = peak / input_len.max(1) as isize;
    let mut m = MAXIMA.lock().unwrap_or_else(|e| e.into_inner());
    let m = m.get_or_insert(Maxima { name, peak: (0, 0), ratio: (0, 0, 0) });
    if peak > m.peak.0 {
        m.peak = (peak, input_len);
    }
    if ratio > m.ratio.0 {
        m.ratio = (ratio, peak, input_len);
    }
}
