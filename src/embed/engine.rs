//! The engine: a builder, a set of worker processes, calls, scripts and the pool API.

use super::error::{Error, ExitStatus, Limit, Result};
use super::value::{from_value, to_value};
use super::worker::{self, CallFailure, HostFn, Output, Pids, Spawner, Worker};
use procpy_interpreter::embed::{PyError, ScriptSpec, Setup};
use procpy_interpreter::wire::{self, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How worker processes are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Execute the worker program afresh (procspawn-style re-entry through [`crate::init`]).
    /// The only method: forking a multi-threaded host is not safe.
    #[default]
    Spawn,
}

/// Configures and builds an [`Engine`].
///
/// ```
/// # procpy::init();
/// use std::time::Duration;
/// let engine = procpy::Builder::new()
///     .workers(2)
///     .source("greet", "def hello(name):\n    return 'hello ' + name\n")
///     .default_timeout(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// let s: String = engine.call("greet:hello", "world").unwrap();
/// assert_eq!(s, "hello world");
/// ```
pub struct Builder {
    program: Option<PathBuf>,
    workers: usize,
    start_method: StartMethod,
    sys_path: Vec<String>,
    sources: Vec<(String, String, String)>,
    source_files: Vec<(String, PathBuf)>,
    env: Vec<(String, String)>,
    stdout: Output,
    stderr: Output,
    host_fns: HashMap<String, HostFn>,
    timeout: Option<Duration>,
    memory_limit: Option<u64>,
    cpu_limit: Option<u64>,
    chunksize: Option<usize>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with one worker per CPU, the current executable as worker program, no limits.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// assert_eq!(engine.workers(), 1);
    /// ```
    pub fn new() -> Self {
        Builder {
            program: None,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            start_method: StartMethod::Spawn,
            sys_path: Vec::new(),
            sources: Vec::new(),
            source_files: Vec::new(),
            env: Vec::new(),
            stdout: Output::Inherit,
            stderr: Output::Inherit,
            host_fns: HashMap::new(),
            timeout: None,
            memory_limit: None,
            cpu_limit: None,
            chunksize: None,
        }
    }

    /// The program started as a worker; it must call [`crate::init`] first thing in `main`.
    /// Defaults to the current executable. Tests, whose `main` is libtest's, point it at the
    /// `procpy` binary (`env!("CARGO_BIN_EXE_procpy")`).
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().worker_program(std::env::current_exe().unwrap()).workers(1).build().unwrap();
    /// # drop(engine);
    /// ```
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// How many worker processes (at least 1); all start in [`Builder::build`].
    ///
    /// ```
    /// # procpy::init();
    /// assert_eq!(procpy::Builder::new().workers(0).build().unwrap().workers(), 1);
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// The start method (only [`StartMethod::Spawn`] exists).
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().start_method(procpy::StartMethod::Spawn);
    /// # drop(b);
    /// ```
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.start_method = m;
        self
    }

    /// Prepend a directory to every worker's `sys.path` (in the order added).
    ///
    /// ```
    /// # procpy::init();
    /// let dir = std::env::temp_dir().join(format!("procpy-doc-path-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// std::fs::write(dir.join("plug.py"), "def twice(x):\n    return 2 * x\n").unwrap();
    /// let engine = procpy::Builder::new().workers(1).module_path(&dir).build().unwrap();
    /// assert_eq!(engine.call::<_, i64>("plug:twice", 21).unwrap(), 42);
    /// ```
    pub fn module_path(mut self, dir: impl AsRef<Path>) -> Self {
        self.sys_path.push(dir.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Register a module from a string, importable by its dotted `name` in every worker (its
    /// parent packages are made implicitly).
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).source("pkg.util", "K = 7\ndef k():\n    return K\n").build().unwrap();
    /// assert_eq!(engine.call::<_, i64>("pkg.util:k", ()).unwrap(), 7);
    /// ```
    pub fn source(mut self, name: &str, code: &str) -> Self {
        self.sources.push((name.to_owned(), code.to_owned(), format!("<{name}>")));
        self
    }

    /// Register a module from a file, read by [`Builder::build`]; tracebacks show its path.
    ///
    /// ```
    /// # procpy::init();
    /// let f = std::env::temp_dir().join(format!("procpy-doc-src-{}.py", std::process::id()));
    /// std::fs::write(&f, "def neg(x):\n    return -x\n").unwrap();
    /// let engine = procpy::Builder::new().workers(1).source_file("m", &f).build().unwrap();
    /// assert_eq!(engine.call::<_, i64>("m:neg", 3).unwrap(), -3);
    /// ```
    pub fn source_file(mut self, name: &str, path: impl AsRef<Path>) -> Self {
        self.source_files.push((name.to_owned(), path.as_ref().to_owned()));
        self
    }

    /// Set an environment variable in every worker.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).env("GREETING", "hi").build().unwrap();
    /// let v: Option<String> = engine.call("os:getenv", "GREETING").unwrap();
    /// assert_eq!(v.as_deref(), Some("hi"));
    /// ```
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Where the workers' stdout goes (default: inherited).
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().stdout(procpy::Output::Null);
    /// # drop(b);
    /// ```
    pub fn stdout(mut self, o: Output) -> Self {
        self.stdout = o;
        self
    }

    /// Where the workers' stderr goes (default: inherited).
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().stderr(procpy::Output::Capture);
    /// # drop(b);
    /// ```
    pub fn stderr(mut self, o: Output) -> Self {
        self.stderr = o;
        self
    }

    /// Register a host function, importable in every worker as `from host import NAME`. One
    /// Python argument is read as `A`; several as the tuple `A`. An `Err` is raised in Python
    /// as `host.HostError` (a `RuntimeError`) with its message.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new()
    ///     .workers(1)
    ///     .host_fn("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b))
    ///     .source("m", "from host import add\ndef f():\n    return add(2, 3)\n")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(engine.call::<_, i64>("m:f", ()).unwrap(), 5);
    /// ```
    pub fn host_fn<A, R, E, F>(mut self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        E: std::fmt::Display,
        F: Fn(A) -> std::result::Result<R, E> + Send + Sync + 'static,
    {
        self.host_fns.insert(name.to_owned(), worker::host_fn(name, f));
        self
    }

    /// The timeout of every call and script that does not set its own: past it, the worker is
    /// killed, a replacement starts and the call returns [`Error::Timeout`].
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().default_timeout(std::time::Duration::from_secs(5));
    /// # drop(b);
    /// ```
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Limit each worker's address space (`RLIMIT_AS`, bytes), set after the interpreter booted.
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().memory_limit(1 << 30);
    /// # drop(b);
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Limit each worker's CPU time (`RLIMIT_CPU`, seconds over the worker's life).
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().cpu_limit(60);
    /// # drop(b);
    /// ```
    pub fn cpu_limit(mut self, secs: u64) -> Self {
        self.cpu_limit = Some(secs);
        self
    }

    /// Items per request in [`Engine::map`]/[`Engine::imap`] (default: enough for about four
    /// chunks per worker, as CPython's `Pool.map` picks).
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().chunksize(100);
    /// # drop(b);
    /// ```
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Start the workers (in parallel) and return the engine.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(2).build().unwrap();
    /// assert_eq!(engine.workers(), 2);
    /// ```
    pub fn build(self) -> Result<Engine> {
        if std::env::var_os(procpy_interpreter::embed::WORKER_FD_ENV).is_some() {
            // We are a worker whose main() did not call init(): building an engine here would
            // start workers that start workers, without end.
            return Err(Error::Spawn(std::io::Error::other(
                "this process was started as a procpy worker but procpy::init() was not called first thing in main()",
            )));
        }
        let _ = self.start_method;
        let program = match self.program {
            Some(p) => p,
            None => std::env::current_exe().map_err(Error::Spawn)?,
        };
        let mut sources = self.sources;
        for (name, path) in &self.source_files {
            let code = std::fs::read_to_string(path).map_err(|e| {
                Error::Invalid(format!("cannot read module {name} from {}: {e}", path.display()))
            })?;
            sources.push((name.clone(), code, path.to_string_lossy().into_owned()));
        }
        let mut host_names: Vec<String> = self.host_fns.keys().cloned().collect();
        host_names.sort();
        let setup = Setup {
            sys_path: self.sys_path,
            sources,
            host_fns: host_names,
            memory_limit: self.memory_limit,
            cpu_limit: self.cpu_limit,
            script: None,
        };
        let spawner = Spawner {
            program,
            env: self.env,
            setup,
            stdout: self.stdout,
            stderr: self.stderr,
            pids: Pids::default(),
        };
        let inner = Arc::new(Inner {
            spawner,
            host_fns: self.host_fns,
            size: self.workers,
            timeout: self.timeout,
            chunksize: self.chunksize,
            pool: Mutex::new(PoolState { idle: Vec::new(), live: 0 }),
            cond: Condvar::new(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        let start = || inner.spawner.spawn(&inner.spawner.setup, false);
        let started: Vec<Result<Worker>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..inner.size)
                .map(|_| std::thread::Builder::new().spawn_scoped(s, start).ok())
                .collect();
            hs.into_iter()
                .map(|h| match h {
                    Some(h) => h.join().unwrap_or_else(|_| {
                        Err(Error::Spawn(std::io::Error::other("spawn thread panicked")))
                    }),
                    // No thread to start it alongside the others: start it here.
                    None => start(),
                })
                .collect()
        });
        {
            let mut pool = inner.lock();
            for w in started {
                pool.idle.push(w?);
                pool.live += 1;
            }
        }
        Ok(Engine { inner, dispatch: Mutex::new(None) })
    }
}

struct PoolState {
    idle: Vec<Worker>,
    /// Workers that exist (idle, busy, or being started).
    live: usize,
}

struct Inner {
    spawner: Spawner,
    host_fns: HashMap<String, HostFn>,
    size: usize,
    timeout: Option<Duration>,
    chunksize: Option<usize>,
    pool: Mutex<PoolState>,
    cond: Condvar,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
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
    fn lost(&self, pid: u32, status: ExitStatus) -> Error {
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

fn check_target(target: &str) -> Result<()> {
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

struct Dispatch {
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
    inner: Arc<Inner>,
    dispatch: Mutex<Option<Dispatch>>,
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

    /// Run a script as `__main__` in a fresh worker process (what the `procpy` CLI does) and
    /// wait for it. The engine's sources, module path, environment and host functions apply.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let out = engine.run_script(procpy::Script::source("import sys\nprint('hi', sys.argv[1])\nsys.exit(3)").arg("there").capture_output()).unwrap();
    /// assert_eq!(out.status, procpy::ExitStatus::Code(3));
    /// assert_eq!(out.stdout, b"hi there\n");
    /// ```
    pub fn run_script(&self, script: Script) -> Result<ScriptOutput> {
        let mut setup = self.inner.spawner.setup.clone();
        let argv0 = script
            .path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "-c".to_owned());
        let mut argv = vec![argv0];
        argv.extend(script.args.iter().cloned());
        setup.script = Some(ScriptSpec {
            path: script.path.as_ref().map(|p| p.to_string_lossy().into_owned()),
            source: script.source.clone(),
            argv,
        });
        let capture = |o: Output| if script.capture { Output::Capture } else { o };
        let spawner = Spawner {
            program: self.inner.spawner.program.clone(),
            env: self.inner.spawner.env.clone(),
            setup: Setup::default(),
            stdout: capture(self.inner.spawner.stdout),
            stderr: capture(self.inner.spawner.stderr),
            pids: self.inner.spawner.pids.clone(),
        };
        let mut w = spawner.spawn(&setup, true)?;
        let (out, err) = w.take_pipes();
        let read = |p: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::Builder::new().spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = p {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let readers =
            read(out.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)).and_then(|o| {
                Ok((o, read(err.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>))?))
            });
        let (t_out, t_err) = match readers {
            Ok(ts) => ts,
            Err(e) => {
                // Nobody to drain its pipes: the script must not run.
                w.kill();
                return Err(Error::Spawn(std::io::Error::new(
                    e.kind(),
                    format!("cannot start a thread to read the script's output: {e}"),
                )));
            }
        };
        let timeout = script.timeout.or(self.inner.timeout);
        let waited = w.wait_script(timeout.map(|d| Instant::now() + d), &self.inner.host_fns);
        let pid = w.pid;
        let status = match waited {
            Ok(()) => w.reap(Duration::from_secs(5)),
            Err(_) => w.kill(),
        };
        drop(w);
        let (stdout, stderr) = (t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default());
        match waited {
            Err(CallFailure::Timeout) => return Err(Error::Timeout(timeout.unwrap_or_default())),
            Err(CallFailure::Protocol(message)) => return Err(Error::Protocol { pid, message }),
            // `wait_script` fails with nothing else; the exit status tells the rest.
            Ok(()) | Err(CallFailure::Lost | CallFailure::Refused(_)) => {}
        }
        match self.inner.lost(pid, status) {
            e @ Error::LimitExceeded { .. } => Err(e),
            _ => Ok(ScriptOutput { status, stdout, stderr }),
        }
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
            // SAFETY: a plain syscall. The pid is our child, not yet reaped (`Worker::reap`
            // unregisters it under this lock before it waits), so it cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
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

/// A script for [`Engine::run_script`]: a file or source code, `sys.argv[1:]`, options.
///
/// ```
/// # procpy::init();
/// let s = procpy::Script::file("job.py").arg("--fast").timeout(std::time::Duration::from_secs(60));
/// # drop(s);
/// ```
#[derive(Debug, Clone)]
pub struct Script {
    path: Option<PathBuf>,
    source: Option<String>,
    args: Vec<String>,
    capture: bool,
    timeout: Option<Duration>,
}

impl Script {
    /// Run the file at `path` (its directory goes first on `sys.path`, as python3 does).
    ///
    /// ```
    /// # procpy::init();
    /// let f = std::env::temp_dir().join(format!("procpy-doc-script-{}.py", std::process::id()));
    /// std::fs::write(&f, "print(__name__)\n").unwrap();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let out = engine.run_script(procpy::Script::file(&f).capture_output()).unwrap();
    /// assert_eq!(out.stdout, b"__main__\n");
    /// ```
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Script {
            path: Some(path.into()),
            source: None,
            args: Vec::new(),
            capture: false,
            timeout: None,
        }
    }

    /// Run `code` (as `python3 -c code`).
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// assert!(engine.run_script(procpy::Script::source("x = 1")).unwrap().status.success());
    /// ```
    pub fn source(code: &str) -> Self {
        Script {
            path: None,
            source: Some(code.to_owned()),
            args: Vec::new(),
            capture: false,
            timeout: None,
        }
    }

    /// Append one argument to `sys.argv`.
    ///
    /// ```
    /// # procpy::init();
    /// let s = procpy::Script::source("").arg("a").arg("b");
    /// # drop(s);
    /// ```
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// Capture stdout and stderr into the [`ScriptOutput`].
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let out = engine.run_script(procpy::Script::source("import sys; sys.stderr.write('e')").capture_output()).unwrap();
    /// assert_eq!(out.stderr, b"e");
    /// ```
    pub fn capture_output(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Kill the script after `d` ([`Error::Timeout`]).
    ///
    /// ```
    /// # procpy::init();
    /// use std::time::Duration;
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let err = engine.run_script(procpy::Script::source("while True: pass").timeout(Duration::from_millis(300))).unwrap_err();
    /// assert!(err.is_timeout());
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// How a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutput {
    /// Its exit status (`sys.exit(n)` gives `Code(n)`; an uncaught exception `Code(1)`).
    pub status: ExitStatus,
    /// Captured stdout (empty unless [`Script::capture_output`]).
    pub stdout: Vec<u8>,
    /// Captured stderr (empty unless [`Script::capture_output`]).
    pub stderr: Vec<u8>,
}

/// A one-shot slot a pool thread fills and a [`Task`] waits on (blocking or as a future).
#[derive(Default)]
struct Slot {
    state: Mutex<(Option<Result<Value>>, Option<Waker>)>,
    cv: Condvar,
}

impl Slot {
    fn fill(&self, r: Result<Value>) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.0 = Some(r);
            st.1.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
    fn wait(&self, timeout: Option<Duration>) -> Option<Result<Value>> {
        let deadline = timeout.map(|d| Instant::now() + d);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = st.0.take() {
                return Some(r);
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.cv.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// A submitted call: wait for it blocking ([`Task::wait`], [`Task::wait_timeout`]) or `.await`
/// it (any async runtime: it is woken by the pool thread that finishes it).
///
/// ```
/// # procpy::init();
/// let engine = procpy::Builder::new().workers(1).build().unwrap();
/// let mut t = engine.submit::<_, String>("builtins:str", &12);
/// let s = loop {
///     if let Some(r) = t.wait_timeout(std::time::Duration::from_millis(50)) { break r.unwrap() }
/// };
/// assert_eq!(s, "12");
/// ```
pub struct Task<R> {
    slot: Arc<Slot>,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Task<R> {
    /// Block until the call finishes.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// assert_eq!(engine.submit::<_, i64>("builtins:max", &(3, 9)).wait().unwrap(), 9);
    /// ```
    pub fn wait(self) -> Result<R> {
        let v = self.slot.wait(None).unwrap_or(Err(Error::Closed))?;
        Ok(from_value(&v)?)
    }

    /// Wait at most `d`: `None` if the call is still running (wait again later).
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let mut t = engine.submit::<_, ()>("time:sleep", &0.5);
    /// assert!(t.wait_timeout(std::time::Duration::from_millis(1)).is_none());
    /// ```
    pub fn wait_timeout(&mut self, d: Duration) -> Option<Result<R>> {
        let r = self.slot.wait(Some(d))?;
        Some(r.and_then(|v| Ok(from_value(&v)?)))
    }

    /// Whether the result is ready.
    ///
    /// ```
    /// # procpy::init();
    /// let engine = procpy::Builder::new().workers(1).build().unwrap();
    /// let t = engine.submit::<_, ()>("time:sleep", &0.5);
    /// assert!(!t.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.slot.state.lock().unwrap_or_else(|e| e.into_inner()).0.is_some()
    }
}

impl<R: DeserializeOwned> Future for Task<R> {
    type Output = Result<R>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let mut st = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0.take() {
            Some(r) => Poll::Ready(r.and_then(|v| Ok(from_value(&v)?))),
            None => {
                st.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The iterator of [`Engine::imap`].
pub struct Imap<R> {
    /// (slot of the chunk, index of its first item, its length)
    chunks: VecDeque<(Arc<Slot>, usize, usize)>,
    current: VecDeque<Value>,
    index: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Iterator for Imap<R> {
    type Item = Result<R>;
    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(v) = self.current.pop_front() {
                let i = self.index;
                self.index += 1;
                return Some(from_value(&v).map_err(|e| {
                    let e = Error::from(e);
                    match e {
                        Error::Codec { path, message } => {
                            Error::Codec { path: format!("[{i}]{path}"), message }
                        }
                        e => e,
                    }
                }));
            }
            let (slot, start, _len) = self.chunks.pop_front()?;
            self.index = start;
            match slot.wait(None).unwrap_or(Err(Error::Closed)) {
                Ok(Value::List(items)) => self.current = items.into(),
                Ok(other) => {
                    return Some(Err(Error::Codec {
                        path: String::new(),
                        message: format!(
                            "expected the chunk's list, found {}",
                            super::value::describe(&other)
                        ),
                    }))
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
