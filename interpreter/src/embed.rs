//! The embedding protocol between a host application and its procpy worker processes. No VM here:
//! the host side (the `procpy` crate) uses it without an interpreter.
//!
//! Each frame is a little-endian `u32` length followed by the postcard encoding of a [`Frame`].
//! Python values inside frames are [`crate::wire`] bytes (the codec's format), so the worker
//! decodes arguments with the same code that `multiprocessing` uses.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The environment variable that marks a process as an embedding worker: its value is the
/// number of the inherited socket descriptor.
pub const WORKER_FD_ENV: &str = "PROCPY_EMBED_FD";

/// Largest frame accepted (1 GiB): a corrupt length must not make us allocate the world.
pub const MAX_FRAME: usize = 1 << 30;

/// One message on a worker socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Host -> worker, first frame: how to set the worker up.
    Setup(Setup),
    /// Worker -> host: set up (or failed to), answer to `Setup`.
    Ready(Result<u32, PyError>),
    /// Host -> worker: call `target` ("module:function") with the positional arguments in
    /// `args` (wire bytes of a tuple).
    Call {
        /// Matches the `Reply`.
        id: u64,
        /// `"package.module:function"` (a dotted qualname after the colon is allowed).
        target: String,
        /// Wire bytes of the argument tuple.
        args: Vec<u8>,
    },
    /// Worker -> host: the outcome of a `Call` (wire bytes of the result).
    Reply {
        /// The `Call` this answers.
        id: u64,
        /// Result bytes or the Python exception.
        outcome: Result<Vec<u8>, PyError>,
    },
    /// Worker -> host: Python called a host function; the worker waits for `HostReply`.
    HostCall {
        /// Matches the `HostReply`.
        id: u64,
        /// The registered name.
        name: String,
        /// Wire bytes of the argument tuple.
        args: Vec<u8>,
    },
    /// Host -> worker: a host function's result (wire bytes) or its error message.
    HostReply {
        /// The `HostCall` this answers.
        id: u64,
        /// Result bytes or the error message raised as `host.HostError` in Python.
        outcome: Result<Vec<u8>, String>,
    },
}

/// How a worker is set up before it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Directories prepended to `sys.path`, in order.
    pub sys_path: Vec<String>,
    /// Modules importable by name: (dotted module name, source, file name shown in tracebacks).
    pub sources: Vec<(String, String, String)>,
    /// Names of the host functions importable as `from host import NAME`.
    pub host_fns: Vec<String>,
    /// `RLIMIT_AS` in bytes, applied after the interpreter booted.
    pub memory_limit: Option<u64>,
    /// `RLIMIT_CPU` in seconds (soft; the hard limit is one second more).
    pub cpu_limit: Option<u64>,
    /// Run this script as `__main__` and exit with its status instead of serving calls.
    pub script: Option<ScriptSpec>,
}

/// A script a worker runs as `__main__`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptSpec {
    /// A file path, or `None` when `source` holds the code.
    pub path: Option<String>,
    /// The code when there is no path.
    pub source: Option<String>,
    /// `sys.argv`.
    pub argv: Vec<String>,
}

/// A Python exception, flattened for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PyError {
    /// `ValueError`, or `module.QualName` for exceptions outside builtins.
    pub type_name: String,
    /// `str(exc)`.
    pub message: String,
    /// The formatted traceback (`traceback.format_exception`), ending with the message line.
    pub traceback: String,
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let body = postcard::to_allocvec(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    // One write per frame: header and body leave together (one syscall, no Nagle-like split).
    w.write_all(&buf)?;
    w.flush()
}

/// Read one frame; end of file before a frame starts is `UnexpectedEof`.
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let f = Frame::Call { id: 7, target: "m:f".into(), args: vec![1, 2, 3] };
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).unwrap();
        assert_eq!(read_frame(&mut &buf[..]).unwrap(), f);
        assert!(read_frame(&mut &buf[..buf.len() - 1]).is_err());
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(read_frame(&mut &huge[..]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
