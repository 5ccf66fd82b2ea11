//! Which tests may run side by side. All areas share one test binary, so libtest runs tests of
//! different areas at once (one per core). Most tests only look at their own processes, files
//! and names and do not mind; the few that do take a lock here (tests/all/main.rs lists them).
//!
//! Every test takes one of [`shared`] or [`alone`] first thing (and exactly once: a second
//! `shared` in the same test would wait behind a waiting `alone` that waits for the first).

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

static RUNNING: RwLock<()> = RwLock::new(());
static NOBODY: Mutex<()> = Mutex::new(());

/// For a test that may run beside any other test but those that must run [`alone`].
pub fn shared() -> RwLockReadGuard<'static, ()> {
    // A failed test poisons the lock; the next ones still run (and fail on their own merits).
    RUNNING.read().unwrap_or_else(|e| e.into_inner())
}

/// For a test that must have the machine to itself: no other test of the binary runs until the
/// guard drops (the standard library's lock lets no new reader in while a writer waits).
pub fn alone() -> RwLockWriteGuard<'static, ()> {
    RUNNING.write().unwrap_or_else(|e| e.into_inner())
}

/// Held (after [`shared`]) by a test that runs processes as uid 65534: `RLIMIT_NPROC` counts
/// every process and thread of that uid, whoever started it, so two such tests at once would
/// eat into each other's limits.
pub fn nobody() -> MutexGuard<'static, ()> {
    NOBODY.lock().unwrap_or_else(|e| e.into_inner())
}
