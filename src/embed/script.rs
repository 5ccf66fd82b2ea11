//! Scripts run as `__main__` in a fresh worker.

use super::error::{Error, ExitStatus, Result};
use super::pool::Engine;
use super::process::{CallFailure, Output, Spawner};
use procpy_interpreter::embed::{ScriptSpec, Setup};
use std::path::PathBuf;
use std::time::{Duration, Instant};

impl Engine {
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
        // Scripts run here, on a cluster engine too (its pools are the script's business).
        setup.cluster = None;
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
