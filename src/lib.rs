//! procpy runs Python functions and scripts for a Rust host in worker processes, on the
//! RustPython VM with a `multiprocessing` whose processes, queues, pipes and codec are native
//! Rust.
//!
//! This crate is the embedding API: [`Builder`] starts an [`Engine`] of workers, which runs
//! calls, pool jobs and scripts. The `procpy` command (a drop-in for `python3 script.py`) is
//! this package's binary; the VM, the codec and the native `multiprocessing` live in the
//! `procpy-interpreter` crate (see docs/ARCHITECTURE.md).
//!
#![doc = include_str!("embed/tutorial.md")]
#![deny(missing_docs)]
// The tutorial shows `fn main` on purpose: `procpy::init()` must be its first line.
#![allow(clippy::needless_doctest_main)]

mod embed;

pub use embed::builder::Builder;
pub use embed::error::{Error, ExitStatus, Limit, Result};
pub use embed::init;
pub use embed::pool::Engine;
pub use embed::process::Output;
pub use embed::script::{Script, ScriptOutput};
pub use embed::task::{Imap, Task};
pub use embed::value::{from_value, to_value, Bytes, ValueError};
/// A Python value as the codec carries it: what [`to_value`] builds and [`from_value`] reads.
pub use procpy_interpreter::wire::Value;
