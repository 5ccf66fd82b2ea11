//! Configuring and starting an engine.

use super::error::{Error, Result};
use super::pool::{Engine, Inner, PoolState};
use super::process::{self, HostFn, Output, Pids, Spawner, Worker};
use procpy_interpreter::embed::{masked_url, ClusterSpec, Setup};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    cluster: Option<String>,
    cluster_key: Option<ClusterKey>,
}

/// Where a cluster engine's key comes from.
enum ClusterKey {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut host_fns: Vec<&str> = self.host_fns.keys().map(String::as_str).collect();
        host_fns.sort_unstable();
        let sources: Vec<&str> = self.sources.iter().map(|(name, ..)| name.as_str()).collect();
        f.debug_struct("Builder")
            .field("program", &self.program)
            .field("workers", &self.workers)
            .field("sys_path", &self.sys_path)
            .field("sources", &sources)
            .field("source_files", &self.source_files)
            .field("env", &self.env)
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .field("host_fns", &host_fns)
            .field("timeout", &self.timeout)
            .field("memory_limit", &self.memory_limit)
            .field("cpu_limit", &self.cpu_limit)
            .field("chunksize", &self.chunksize)
            .field("cluster", &self.cluster.as_deref().map(masked_url))
            .field(
                "cluster_key",
                &match &self.cluster_key {
                    None => None,
                    Some(ClusterKey::Bytes(_)) => Some("***".to_owned()),
                    Some(ClusterKey::File(p)) => Some(p.display().to_string()),
                },
            )
            .finish()
    }
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
            cluster: None,
            cluster_key: None,
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
        self.host_fns.insert(name.to_owned(), process::host_fn(name, f));
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

    /// Run every [`Engine::call`], [`Engine::submit`] and [`Engine::map`] on a cluster: the
    /// `procpy worker`s reading the Redis server at `url` (`redis://[user:pass@]host:port/db`),
    /// as `procpy --cluster URL` runs a script's pools there. The engine's own workers stay (they
    /// forward the calls, one at a time each: [`Builder::workers`] is how many calls run on the
    /// cluster at once) and [`Engine::run_script`] still runs here. The modules of
    /// [`Builder::source`], [`Builder::source_file`] and [`Builder::module_path`] travel with the
    /// calls; other targets must be importable on the workers. Host functions cannot run there:
    /// calling one raises `host.HostError`. A call past its timeout is abandoned: its worker
    /// here is killed, and the cluster's workers leave its job when the job's keys expire.
    /// Needs the cluster's key: [`Builder::cluster_key`], [`Builder::cluster_key_file`], or
    /// `PROCPY_CLUSTER_KEY` / `PROCPY_CLUSTER_KEY_FILE` in the environment.
    ///
    /// ```no_run
    /// # procpy::init();
    /// let engine = procpy::Builder::new()
    ///     .workers(4)
    ///     .cluster("redis://10.0.0.1:6379/0")
    ///     .cluster_key_file("/etc/procpy/cluster.key")
    ///     .source("stats", "def mean(xs):\n    return sum(xs) / len(xs)\n")
    ///     .build()
    ///     .unwrap();
    /// let m: f64 = engine.call("stats:mean", (vec![1.0, 2.0, 6.0],)).unwrap();
    /// assert_eq!(m, 3.0);
    /// ```
    pub fn cluster(mut self, url: &str) -> Self {
        self.cluster = Some(url.to_owned());
        self
    }

    /// The key shared with the cluster's workers (their `--authkey-file`'s bytes): every task and
    /// result is signed with it.
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().cluster("redis://127.0.0.1:6379/0").cluster_key(b"a long random secret");
    /// # drop(b);
    /// ```
    pub fn cluster_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.cluster_key = Some(ClusterKey::Bytes(key.as_ref().to_vec()));
        self
    }

    /// The key shared with the cluster's workers, read from a file by [`Builder::build`] (one
    /// trailing newline is not part of it, as for `procpy worker --authkey-file`).
    ///
    /// ```
    /// # procpy::init();
    /// let b = procpy::Builder::new().cluster("redis://127.0.0.1:6379/0").cluster_key_file("cluster.key");
    /// # drop(b);
    /// ```
    pub fn cluster_key_file(mut self, path: impl AsRef<Path>) -> Self {
        self.cluster_key = Some(ClusterKey::File(path.as_ref().to_owned()));
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
        if process::worker_fd_arg().is_some() {
            // We are a worker whose main() did not call init(): building an engine here would
            // start workers that start workers, without end.
            return Err(Error::Spawn(std::io::Error::other(
                "this process was started as a procpy worker but procpy::init() was not called first thing in main()",
            )));
        }
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
        let cluster = match self.cluster {
            None => None,
            Some(url) => {
                let key = match self.cluster_key {
                    Some(ClusterKey::Bytes(k)) => Some(k),
                    Some(ClusterKey::File(path)) => {
                        // The same rules as `--authkey-file`: a regular file, a size cap, one
                        // trailing newline dropped, at least 16 bytes.
                        Some(procpy_interpreter::cluster::key_from_file(&path).map_err(|e| {
                            Error::Invalid(format!(
                                "cannot read the cluster key from {}: {e}",
                                path.display()
                            ))
                        })?)
                    }
                    // The workers' environment may hold it (they inherit ours, plus `env`).
                    None => None,
                };
                let in_env = |name: &str| {
                    self.env.iter().any(|(k, _)| k == name) || std::env::var_os(name).is_some()
                };
                if key.is_none()
                    && !in_env("PROCPY_CLUSTER_KEY")
                    && !in_env("PROCPY_CLUSTER_KEY_FILE")
                {
                    return Err(Error::Invalid(
                        "a cluster engine needs the key its workers were started with: \
                         Builder::cluster_key or Builder::cluster_key_file (or \
                         PROCPY_CLUSTER_KEY / PROCPY_CLUSTER_KEY_FILE in the environment)"
                            .to_owned(),
                    ));
                }
                if let Some(k) = &key {
                    procpy_interpreter::cluster::check_key(k, "Builder::cluster_key")
                        .map_err(Error::Invalid)?;
                }
                Some(ClusterSpec { url, key })
            }
        };
        let mut host_names: Vec<String> = self.host_fns.keys().cloned().collect();
        host_names.sort();
        let setup = Setup {
            sys_path: self.sys_path,
            sources,
            host_fns: host_names,
            memory_limit: self.memory_limit,
            cpu_limit: self.cpu_limit,
            script: None,
            cluster,
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
