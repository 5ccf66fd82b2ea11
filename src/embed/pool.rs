//! The engine: a set of worker processes, the calls and the pool API on them.

use super::builder::Builder;
use super::error::{Error, ExitStatus, Limit, Result};
use super::process::{CallFailure, HostFn, Spawner, Worker};
use super::task::{Imap, Slot, Task};
use super::value::{from_value, to_value};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use procpy_interpreter::embed::PyError;
use procpy_interpreter::wire::{self, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub(super) struct PoolState {
    pub(super) idle: Vec<Worker>,
    /// Workers that exist (idle, busy, or being started).
    pub(super) live: usize,
}

pub(super) struct Inner {
    pub(super) spawner: Spawner,
    pub(super) host_fns: HashMap<String, HostFn>,
    pub(super) size: usize,
    pub(super) timeout: Option<Duration>,
    pub(super) chunksize: Option<usize>,
    pub(super) pool: Mutex<PoolState>,
    pub(super) cond: Condvar,
    pub(super) next_id: AtomicU64,
    pub(super) closed: AtomicBool,
}

impl Inner {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle worker, or a new one while fewer than `size` exist, or wait for one.
    fn acquire(&self) -> Result<Worker> {
        let mut pool = self.lock();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            if let Some(w) = pool.idle.pop() {
                return Ok(w);
            }
            if pool.live < self.size {
                pool.live += 1;
                drop(pool);
                let w = self.spawner.spawn(&self.spawner.setup, false);
                if w.is_err() {
                    self.lock().live -= 1;
                    self.cond.notify_one();
                }
                return w;
            }
            pool = self.cond.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, w: Worker) {
        let mut pool = self.lock();
        if self.closed.load(Ordering::SeqCst) {
            pool.live -= 1;
            drop(pool);
            drop(w);
            return;
        }
        pool.idle.push(w);
        drop(pool);
        self.cond.notify_one();
    }

    /// A worker is gone: let a waiter (or the replacement below) take its place.
    fn forget(self: &Arc<Self>) {
        self.lock().live -= 1;
        self.cond.notify_one();
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        // Start the replacement now, off the caller's thread, so the next call finds it warm
        // (without a thread for it, the next call starts it).
        let me = self.clone();
        let _ = std::thread::Builder::new().spawn(move || {
            let mut pool = me.lock();
            if pool.live >= me.size || me.closed.load(Ordering::SeqCst) {
                return;
            }
            pool.live += 1;
            drop(pool);
            match me.spawner.spawn(&me.spawner.setup, false) {
                Ok(w) => me.release(w),
                Err(_) => {
                    me.lock().live -= 1;
                    me.cond.notify_one();
                }
            }
        });
    }

    fn call_value(
        self: &Arc<Self>,
        target: &str,
        args: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        check_target(target)?;
        let bytes = wire::to_bytes(args);
        let timeout = timeout.or(self.timeout);
        let mut w = self.acquire()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = timeout.map(|d| Instant::now() + d);
        match w.call(id, target, bytes, deadline, &self.host_fns) {
            Ok(outcome) => {
                let pid = w.pid;
                self.release(w);
                match outcome {
                    Ok(b) => wire::from_bytes(&b)
                        .map_err(|e| Error::Codec { path: String::new(), message: e.to_string() }),
                    Err(e) if out_of_memory(&e) && self.spawner.setup.memory_limit.is_some() => {
                        Err(Error::LimitExceeded { limit: Limit::Memory, pid })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(CallFailure::Refused(message)) => {
                self.release(w);
                Err(Error::Invalid(message))
            }
            Err(CallFailure::Timeout) => {
                w.kill();
                drop(w);
                self.forget();
                Err(Error::Timeout(timeout.unwrap_or_default()))
            }
            Err(CallFailure::Protocol(message)) => {
                let pid = w.pid;
                w.kill();
                drop(w);
                self.forget();
                Err(Error::Protocol { pid, message })
            }
            Err(CallFailure::Lost) => {
                let pid = w.pid;
                let status = w.reap(Duration::from_secs(2));
                drop(w);
                self.forget();
                Err(self.lost(pid, status))
            }
        }
    }

    /// A dead worker's error: a limit when its death says so, else `WorkerLost`.
    pub(super) fn lost(&self, pid: u32, status: ExitStatus) -> Error {
        let setup = &self.spawner.setup;
        match status {
            // SIGXCPU at the soft limit; SIGKILL at the hard one (a second later).
            ExitStatus::Signal(libc::SIGXCPU) if setup.cpu_limit.is_some() => {
                Error::LimitExceeded { limit: Limit::Cpu, pid }
            }
            ExitStatus::Signal(libc::SIGKILL) if setup.cpu_limit.is_some() => {
                Error::LimitExceeded { limit: Limit::Cpu, pid }
            }
            // A failed allocation in Rust aborts the process.
            ExitStatus::Signal(libc::SIGABRT) if setup.memory_limit.is_some() => {
                Error::LimitExceeded { limit: Limit::Memory, pid }
            }
            _ => Error::WorkerLost { pid, status },
        }
    }
}

/// A Python exception that says memory ran out: `MemoryError`, or `OSError` with ENOMEM (a failed
/// `mmap`, for one).
fn out_of_memory(e: &PyError) -> bool {
    e.type_name == "MemoryError"
        || (e.type_name == "OSError" && e.message.starts_with(&format!("[Errno {}]", libc::ENOMEM)))
}

pub(super) fn check_target(target: &str) -> Result<()> {
    match target.split_once(':') {
        Some((m, f)) if !m.is_empty() && !f.is_empty() => Ok(()),
        _ => Err(Error::Invalid(format!(
            "target {target:?} is not of the form \"package.module:function\""
        ))),
    }
}

/// Arguments as the positional tuple: a Rust tuple spreads, `()` is no arguments, anything
/// else is the one argument.
fn args_tuple<A: Serialize + ?Sized>(args: &A) -> Result<Value> {
    Ok(match to_value(args)? {
        t @ Value::Tuple(_) => t,
        one => Value::Tuple(vec![one]),
    })
}

type Job = Box<dyn FnOnce(&Arc<Inner>) + Send>;

pub(super) struct Dispatch {
    tx: mpsc::Sender<Job>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A set of Python worker processes serving calls, scripts and pool jobs. `Send + Sync`: share
/// it by reference or in an `Arc` across threads; each call takes an idle worker. Dropping it
/// kills and reaps every worker.
///
/// ```
/// # procpy::init();
/// let engine = procpy::Builder::new().workers(2).build().unwrap();
/// std::thread::scope(|s| {
///     for i in 0..4i64 {
///         let engine = &engine;
///         s.spawn(move || assert_eq!(engine.call::<_, i64>("operator:mul", (i, 10)).unwrap(), i * 10));
///     }
/// });
/// ```
pub struct Engine {
    pub(super) inner: Arc<Inner>,
    pub(super) dispatch: Mutex<Option<Dispatch>>,
}

// The engine is shared across threads (see its documentation): keep it so.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
};

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("program", &self.inner.spawner.program)
            .field("workers", &self.inner.size)
            .field("worker_pids", &self.worker_pids())
            .field("timeout", &self.inner.timeout)
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A [`Builder`].
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Engine::builder().workers(1).build().unwrap();
    /// # drop(engine);
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The number of worker processes.
    ///
    /// ```
    /// # procpy::init();
    /// assert_eq!(procpy::Builder::new().workers(3).build().unwrap().workers(), 3);
    /// ```
    pub fn workers(&self) -> usize {
        self.inner.size
    }

    /// The process ids of the live workers (busy or idle), sorted: for monitoring.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(2).build().unwrap();
    /// assert_eq!(engine.worker_pids().len(), 2);
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .inner
            .spawner
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Call `"package.module:function"` with `args` (a tuple spreads into positional
    /// arguments, `()` passes none, any other value is the one argument) and convert the
    /// result to `R`.
    ///
    /// ```
    /// # procpy::init();
    /// use std::collections::BTreeMap;
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let m: BTreeMap<String, i64> = engine.call("builtins:dict", (vec![("a", 1), ("b", 2)],)).unwrap();
    /// assert_eq!(m["b"], 2);
    /// ```
    pub fn call<A: Serialize, R: DeserializeOwned>(&self, target: &str, args: A) -> Result<R> {
        self.call_timeout_opt(target, &args, None)
    }

    /// [`Engine::call`] with its own timeout.
    ///
    /// ```
    /// # procpy::init();
    /// use std::time::Duration;
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let err = engine.call_timeout::<_, ()>("time:sleep", &30, Duration::from_millis(200)).unwrap_err();
    /// assert!(err.is_timeout());
    /// // The worker was replaced: the engine still serves.
    /// assert_eq!(engine.call::<_, i64>("builtins:abs", &-4).unwrap(), 4);
    /// ```
    pub fn call_timeout<A: Serialize, R: DeserializeOwned>(
        &self,
        target: &str,
        args: A,
        timeout: Duration,
    ) -> Result<R> {
        self.call_timeout_opt(target, &args, Some(timeout))
    }

    fn call_timeout_opt<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        target: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<R> {
        let v = self.inner.call_value(target, &args_tuple(args)?, timeout)?;
        Ok(from_value(&v)?)
    }

    /// The pool threads' queue, started on first use with one thread per worker (or as many
    /// as the host can start, at least one).
    fn dispatcher(&self) -> Result<mpsc::Sender<Job>> {
        let mut d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = d.as_ref() {
            return Ok(d.tx.clone());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..self.inner.size {
            let (rx, inner) = (rx.clone(), self.inner.clone());
            let started = std::thread::Builder::new().spawn(move || loop {
                let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                match job {
                    Ok(job) => job(&inner),
                    Err(_) => return,
                }
            });
            match started {
                Ok(t) => threads.push(t),
                Err(e) if threads.is_empty() => {
                    return Err(Error::Spawn(std::io::Error::new(
                        e.kind(),
                        format!("cannot start a pool thread: {e}"),
                    )))
                }
                Err(_) => break,
            }
        }
        let tx2 = tx.clone();
        *d = Some(Dispatch { tx, threads });
        Ok(tx2)
    }

    fn submit_value(
        &self,
        target: &str,
        args: Result<Value>,
        timeout: Option<Duration>,
    ) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let args = match args {
            Ok(a) => a,
            Err(e) => {
                slot.fill(Err(e));
                return slot;
            }
        };
        let (target, s) = (target.to_owned(), slot.clone());
        let job: Job = Box::new(move |inner| s.fill(inner.call_value(&target, &args, timeout)));
        match self.dispatcher() {
            Ok(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    drop(job);
                    slot.fill(Err(Error::Closed));
                }
            }
            Err(e) => slot.fill(Err(e)),
        }
        slot
    }

    /// Start a call on a pool thread and return at once; the [`Task`] waits (blocking, with a
    /// timeout, or as a `Future`).
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(2).build().unwrap();
    /// let a = engine.submit::<_, i64>("operator:add", &(1, 2));
    /// let b = engine.submit::<_, i64>("operator:add", &(3, 4));
    /// assert_eq!(a.wait().unwrap() + b.wait().unwrap(), 10);
    /// ```
    pub fn submit<A: Serialize, R: DeserializeOwned>(&self, target: &str, args: A) -> Task<R> {
        Task { slot: self.submit_value(target, args_tuple(&args), None), _r: PhantomData }
    }

    /// [`Engine::submit`] with its own timeout.
    ///
    /// ```
    /// # procpy::init();
    /// use std::time::Duration;
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let t = engine.submit_timeout::<_, ()>("time:sleep", &30, Duration::from_millis(200));
    /// assert!(t.wait().unwrap_err().is_timeout());
    /// ```
    pub fn submit_timeout<A: Serialize, R: DeserializeOwned>(
        &self,
        target: &str,
        args: A,
        timeout: Duration,
    ) -> Task<R> {
        Task { slot: self.submit_value(target, args_tuple(&args), Some(timeout)), _r: PhantomData }
    }

    /// Apply `target` to every item (each item is the one argument) across the workers, in
    /// chunks; results in order. The first failure is returned.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(2).build().unwrap();
    /// let lens: Vec<usize> = engine.map("builtins:len", ["a", "bb", "ccc"]).unwrap();
    /// assert_eq!(lens, [1, 2, 3]);
    /// ```
    pub fn map<I, R>(&self, target: &str, items: I) -> Result<Vec<R>>
    where
        I: IntoIterator,
        I::Item: Serialize,
        R: DeserializeOwned,
    {
        self.imap(target, items).collect()
    }

    /// Like [`Engine::map`] but an iterator: results in order, as they arrive. A chunk that
    /// failed yields its error once in place of its items.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(2).chunksize(2).build().unwrap();
    /// let mut it = engine.imap::<_, f64>("math:sqrt", [1.0, 4.0, 9.0]);
    /// assert_eq!(it.next().unwrap().unwrap(), 1.0);
    /// assert_eq!(it.map(|r| r.unwrap()).collect::<Vec<_>>(), [2.0, 3.0]);
    /// ```
    pub fn imap<I, R>(&self, target: &str, items: I) -> Imap<R>
    where
        I: IntoIterator,
        I::Item: Serialize,
        R: DeserializeOwned,
    {
        let mut values = Vec::new();
        let mut first_err = None;
        for (i, it) in items.into_iter().enumerate() {
            match to_value(&it) {
                Ok(v) => values.push(v),
                Err(e) => {
                    let e = Error::from(e);
                    first_err = Some(match e {
                        Error::Codec { path, message } => {
                            Error::Codec { path: format!("[{i}]{path}"), message }
                        }
                        e => e,
                    });
                    break;
                }
            }
        }
        let mut chunks = VecDeque::new();
        if let Some(e) = first_err {
            let slot = Arc::new(Slot::default());
            slot.fill(Err(e));
            chunks.push_back((slot, 0, 0));
        } else if let Err(e) = check_target(target) {
            let slot = Arc::new(Slot::default());
            slot.fill(Err(e));
            chunks.push_back((slot, 0, 0));
        } else {
            let n = values.len();
            let size =
                self.inner.chunksize.unwrap_or_else(|| n.div_ceil(self.inner.size * 4).max(1));
            let mut start = 0;
            let mut rest = values.into_iter();
            while start < n {
                let chunk: Vec<Value> = rest.by_ref().take(size).collect();
                let len = chunk.len();
                let args =
                    Value::Tuple(vec![Value::Str(target.as_bytes().to_vec()), Value::List(chunk)]);
                chunks.push_back((
                    self.submit_value("_procpy_embed:_map_chunk", Ok(args), None),
                    start,
                    len,
                ));
                start += len;
            }
        }
        Imap { chunks, current: VecDeque::new(), index: 0, _r: PhantomData }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Under the lock, so a caller between its `closed` check and its wait cannot miss it.
        drop(self.inner.lock());
        self.inner.cond.notify_all();
        // Busy workers die too, so pool threads blocked in a call return at once.
        let pids = self.inner.spawner.pids.lock().unwrap_or_else(|e| e.into_inner());
        for &pid in pids.iter() {
            // The pid is our child, not yet reaped (`Worker::reap` unregisters it under this
            // lock before it waits), so it cannot have been reused.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        drop(pids);
        if let Some(d) = self.dispatch.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(d.tx);
            for t in d.threads {
                let _ = t.join();
            }
        }
        // Idle workers are reaped as they drop.
        let idle = std::mem::take(&mut self.inner.lock().idle);
        drop(idle);
        self.inner.cond.notify_all();
    }
}
