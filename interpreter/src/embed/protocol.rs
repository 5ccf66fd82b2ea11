//! The embedding protocol between a host application and its procpy worker processes. No VM here:
//! the host side (the `procpy` crate) uses it without an interpreter.
//!
//! Each frame is a little-endian `u32` length followed by the postcard encoding of a [`Frame`].
//! Python values inside frames are [`crate::wire`] bytes (the codec's format), so the worker
//! decodes arguments with the same code that `multiprocessing` uses.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The first argument that marks a process as an embedding worker, followed by the number of
/// the inherited socket descriptor. An argument, not an environment variable: nothing has to
/// unset it, and the worker's own children do not inherit it.
pub const WORKER_FD_ARG: &str = "--procpy-embed-fd=";

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
        #[serde(with = "raw")]
        args: Vec<u8>,
    },
    /// Worker -> host: the outcome of a `Call` (wire bytes of the result).
    Reply {
        /// The `Call` this answers.
        id: u64,
        /// Result bytes or the Python exception.
        #[serde(with = "raw_result")]
        outcome: Result<Vec<u8>, PyError>,
    },
    /// Worker -> host: Python called a host function; the worker waits for `HostReply`.
    HostCall {
        /// Matches the `HostReply`.
        id: u64,
        /// The registered name.
        name: String,
        /// Wire bytes of the argument tuple.
        #[serde(with = "raw")]
        args: Vec<u8>,
    },
    /// Host -> worker: a host function's result (wire bytes) or its error message.
    HostReply {
        /// The `HostCall` this answers.
        id: u64,
        /// Result bytes or the error message raised as `host.HostError` in Python.
        #[serde(with = "raw_result")]
        outcome: Result<Vec<u8>, String>,
    },
}

impl Frame {
    /// The frame's name, for messages about a frame that came out of place.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Setup(_) => "Setup",
            Frame::Ready(_) => "Ready",
            Frame::Call { .. } => "Call",
            Frame::Reply { .. } => "Reply",
            Frame::HostCall { .. } => "HostCall",
            Frame::HostReply { .. } => "HostReply",
        }
    }
}

/// Byte payloads as serde bytes: the same postcard layout as a `Vec<u8>` sequence (length, then
/// the bytes) but copied in one piece instead of decoded byte by byte.
mod raw {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// [`raw`] inside a `Result`.
mod raw_result {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum R<T, E> {
        Ok(T),
        Err(E),
    }

    #[derive(Serialize, Deserialize)]
    struct B(#[serde(with = "super::raw")] Vec<u8>);

    /// The same shape as `R`, borrowing (no copy of the payload on the way out).
    #[derive(Serialize)]
    enum RRef<'a, E> {
        Ok(#[serde(serialize_with = "ser_ref")] &'a Vec<u8>),
        Err(&'a E),
    }

    fn ser_ref<S: Serializer>(b: &&Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn serialize<E: Serialize, S: Serializer>(
        r: &Result<Vec<u8>, E>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match r {
            Ok(b) => RRef::<E>::Ok(b).serialize(s),
            Err(e) => RRef::Err(e).serialize(s),
        }
    }

    pub fn deserialize<'de, E: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Result<Vec<u8>, E>, D::Error> {
        Ok(match R::<B, E>::deserialize(d)? {
            R::Ok(B(b)) => Ok(b),
            R::Err(e) => Err(e),
        })
    }
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
    /// Forward every call to a pool on this cluster instead of running it here.
    pub cluster: Option<ClusterSpec>,
}

/// The cluster an engine's calls run on: `procpy worker`s reading a Redis server.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// `redis://[user:pass@]host:port/db`.
    pub url: String,
    /// The key shared with the workers; `None`: the worker's environment's
    /// (`PROCPY_CLUSTER_KEY`, `PROCPY_CLUSTER_KEY_FILE`).
    pub key: Option<Vec<u8>>,
}

// By hand: a frame's debug text must not show the key.
impl std::fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("url", &masked_url(&self.url))
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The url with the password of its user part (`user:pass@`) shown as `***`.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((user, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
        None => url.to_owned(),
    }
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

/// Write one frame. A frame over [`MAX_FRAME`] is refused (`InvalidData`, nothing written):
/// the reader would refuse it, and its length would not fit the header.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let body =
        postcard::to_allocvec(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if body.len() > MAX_FRAME {
        return Err(too_large(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    // One write per frame: header and body leave together (one syscall, no Nagle-like split).
    w.write_all(&buf)?;
    w.flush()
}

fn too_large(len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("frame of {len} bytes is too large (the limit is {MAX_FRAME})"),
    )
}

/// Read one frame. Errors by kind: `UnexpectedEof` (the peer closed, before or inside a frame),
/// `InvalidData` (a length over [`MAX_FRAME`], or a body that is not a frame), `OutOfMemory` (no
/// memory for a frame the peer is really sending), or the reader's own (a deadline's `TimedOut`).
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(too_large(len));
    }
    let body = read_body(r, len)?;
    postcard::from_bytes(&body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot decode a frame of {len} bytes: {e}"),
        )
    })
}

/// First allocation for a frame body: a header alone never costs more than this.
const FIRST_CHUNK: usize = 64 << 10;

/// Exactly `len` bytes, the buffer growing (doubling) only as they arrive, so a length header
/// costs memory only once the peer sends that much; a failed allocation is an error, not an abort.
fn read_body(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < len {
        let more = (len - body.len()).min(body.len().max(FIRST_CHUNK));
        body.try_reserve_exact(more).map_err(|_| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("no memory for a frame of {len} bytes"),
            )
        })?;
        // Fills the reserved room and no more: `take` ends the read at `more` bytes.
        let got = r.by_ref().take(more as u64).read_to_end(&mut body)?;
        if got < more {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the peer closed the channel {} bytes into a frame of {len}", body.len()),
            ));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_payloads_keep_the_plain_vec_layout() {
        // The `raw` encoding must be exactly what a derived `Vec<u8>` would write.
        #[derive(Serialize)]
        enum Plain {
            _Setup(Setup),
            _Ready(Result<u32, PyError>),
            Call { id: u64, target: String, args: Vec<u8> },
            Reply { id: u64, outcome: Result<Vec<u8>, PyError> },
        }
        let ours =
            postcard::to_allocvec(&Frame::Call { id: 3, target: "m:f".into(), args: vec![9; 300] })
                .unwrap();
        let plain =
            postcard::to_allocvec(&Plain::Call { id: 3, target: "m:f".into(), args: vec![9; 300] })
                .unwrap();
        assert_eq!(ours, plain);
        let ours = postcard::to_allocvec(&Frame::Reply { id: 3, outcome: Ok(vec![1, 2]) }).unwrap();
        let plain =
            postcard::to_allocvec(&Plain::Reply { id: 3, outcome: Ok(vec![1, 2]) }).unwrap();
        assert_eq!(ours, plain);
        let e = PyError { type_name: "E".into(), message: "m".into(), traceback: "t".into() };
        let f = Frame::Reply { id: 4, outcome: Err(e) };
        assert_eq!(postcard::from_bytes::<Frame>(&postcard::to_allocvec(&f).unwrap()).unwrap(), f);
    }

    #[test]
    fn a_cluster_spec_hides_its_password_and_key() {
        let c = ClusterSpec { url: "redis://u:secret@h:6379/0".into(), key: Some(b"k3y".to_vec()) };
        let shown = format!("{c:?}");
        assert!(shown.contains("redis://u:***@h:6379/0"), "{shown}");
        assert!(!shown.contains("secret") && !shown.contains("107, 51"), "{shown}");
        assert_eq!(masked_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(masked_url("redis://:pw@h/0"), "redis://:***@h/0");
    }

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

    #[test]
    fn a_short_body_is_eof_and_junk_is_invalid_data() {
        // 1 GiB promised, 10 bytes sent: EOF (the buffer grows only as bytes arrive).
        let mut short = ((MAX_FRAME) as u32).to_le_bytes().to_vec();
        short.extend_from_slice(&[0; 10]);
        let e = read_frame(&mut &short[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        let body = read_body(&mut &[7u8; 3 * FIRST_CHUNK + 5][..], 3 * FIRST_CHUNK + 5).unwrap();
        assert_eq!(body.len(), 3 * FIRST_CHUNK + 5);
        assert!(body.iter().all(|&b| b == 7));
        // Bodies that are not frames are InvalidData, whatever their bytes.
        for junk in [&[0xffu8; 8][..], &[], &[2, 1]] {
            let mut f = (junk.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(junk);
            assert_eq!(
                read_frame(&mut &f[..]).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "{junk:?}"
            );
        }
    }
}
