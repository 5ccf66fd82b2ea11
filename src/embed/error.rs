//! The one error type of the embedding API.

use std::fmt;

/// Which resource limit a worker ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// `RLIMIT_AS` ([`crate::Builder::memory_limit`]).
    Memory,
    /// `RLIMIT_CPU` ([`crate::Builder::cpu_limit`]).
    Cpu,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Limit::Memory => "memory",
            Limit::Cpu => "CPU time",
        })
    }
}

/// How a worker process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Not known (it could not be reaped).
    Unknown,
}

impl ExitStatus {
    pub(crate) fn from_wait(status: libc::c_int) -> Self {
        if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Unknown
        }
    }
    /// True for `Code(0)`.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s} ({})", signal_description(*s)),
            ExitStatus::Unknown => f.write_str("unknown status"),
        }
    }
}

/// The C library's description of a signal (`Killed`, `Segmentation fault`), as a shell prints
/// it; nix names signals (`SIGKILL`) but does not describe them.
fn signal_description(sig: i32) -> String {
    // SAFETY: strsignal takes any int and returns NULL or a NUL-terminated string that stays
    // valid until the next strsignal call in this thread (glibc's buffer is thread-local); it is
    // copied out before this function returns.
    unsafe {
        let p = libc::strsignal(sig);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Everything that can go wrong between a host and its Python workers.
///
/// ```
/// # procpy::init();
/// let engine = procpy::Builder::new().workers(1).build().unwrap();
/// let err = engine.call::<_, i64>("builtins:int", ("x",)).unwrap_err();
/// assert!(err.is_python());
/// assert_eq!(err.python_type(), Some("ValueError"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Python code raised an exception.
    #[error("{type_name}: {message}")]
    Python {
        /// `ValueError`, or `module.QualName` outside builtins.
        type_name: String,
        /// `str(exc)`.
        message: String,
        /// The formatted traceback (what Python would print).
        traceback: String,
    },
    /// A Rust value could not become a Python one, or the Python result not the Rust type.
    #[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Codec {
        /// Where in the value: `[3].name` (empty: the value itself).
        path: String,
        /// What was expected and what was found.
        message: String,
    },
    /// The worker died during the call (a crash, `os._exit`, a signal).
    #[error("worker {pid} was lost: {status}")]
    WorkerLost {
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The call or script ran past its timeout; its worker was killed (and, for a call, is
    /// being replaced).
    #[error("timed out after {0:?} (the worker was killed)")]
    Timeout(std::time::Duration),
    /// The worker ran into a resource limit (and was killed, or raised `MemoryError`).
    #[error("worker {pid} exceeded its {limit} limit")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The worker's process id.
        pid: u32,
    },
    /// A worker sent what the protocol does not allow (a frame over the size limit, bytes that
    /// are not a frame, a frame out of place) or a frame the host had no memory for. The
    /// worker was killed (and, for a call, is being replaced).
    #[error("protocol error from worker {pid}: {message} (the worker was killed)")]
    Protocol {
        /// Its process id.
        pid: u32,
        /// What it sent.
        message: String,
    },
    /// A worker could not be started or set up.
    #[error("could not start a worker: {0}")]
    Spawn(#[source] std::io::Error),
    /// A bad argument to the API (a malformed target, an unknown host function...).
    #[error("{0}")]
    Invalid(String),
    /// The engine is shutting down.
    #[error("the engine is shut down")]
    Closed,
}

impl Error {
    /// The call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }
    /// The failure came from a Python exception.
    pub fn is_python(&self) -> bool {
        matches!(self, Error::Python { .. })
    }
    /// A value did not convert.
    pub fn is_codec(&self) -> bool {
        matches!(self, Error::Codec { .. })
    }
    /// The worker died.
    pub fn is_worker_lost(&self) -> bool {
        matches!(self, Error::WorkerLost { .. })
    }
    /// A resource limit was hit.
    pub fn is_limit_exceeded(&self) -> bool {
        matches!(self, Error::LimitExceeded { .. })
    }
    /// A worker broke the protocol.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Protocol { .. })
    }
    /// The Python exception type, when the failure came from Python.
    pub fn python_type(&self) -> Option<&str> {
        match self {
            Error::Python { type_name, .. } => Some(type_name),
            _ => None,
        }
    }
    /// The Python traceback, when the failure came from Python.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            Error::Python { traceback, .. } => Some(traceback),
            _ => None,
        }
    }
}

impl From<crate::embed::value::ValueError> for Error {
    fn from(e: crate::embed::value::ValueError) -> Self {
        Error::Codec { path: e.path(), message: e.message().to_owned() }
    }
}

impl From<procpy_interpreter::embed::PyError> for Error {
    fn from(e: procpy_interpreter::embed::PyError) -> Self {
        Error::Python { type_name: e.type_name, message: e.message, traceback: e.traceback }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
