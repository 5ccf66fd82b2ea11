//! procpy runs Python scripts on the RustPython VM with a `multiprocessing` whose processes,
//! queues, pipes and codec are native Rust.
//!
//! This crate is the command-line tool and its library face. The VM itself, the codec and the
//! native `multiprocessing` live in the `procpy-interpreter` crate (see docs/ARCHITECTURE.md).
//!
//! ```no_run
//! // What `procpy script.py a b` does:
//! let status = procpy::run_script("script.py", &["a".into(), "b".into()]);
//! std::process::exit(status as i32);
//! ```
//!
#![doc = include_str!("embed/tutorial.md")]
#![deny(missing_docs)]

pub mod cli;
pub mod embed;

pub use embed::builder::{Builder, StartMethod};
pub use embed::error::{Error, ExitStatus, Limit, Result};
pub use embed::init;
pub use embed::pool::Engine;
pub use embed::process::Output;
pub use embed::script::{Script, ScriptOutput};
pub use embed::task::{Imap, Task};
pub use embed::value::{from_value, to_value, Bytes, ValueError};
pub use procpy_interpreter::wire;

use procpy_interpreter::trace;
pub use procpy_interpreter::RunMode;

/// Run a Python script as `__main__` with `args` as `sys.argv[1:]`, as `python3 script args`
/// would; returns the exit status.
pub fn run_script(path: &str, args: &[String]) -> u32 {
    let mut argv = vec![path.to_owned()];
    argv.extend_from_slice(args);
    procpy_interpreter::run(RunMode::Script(path.to_owned()), argv)
}

/// Run `mode` with `argv` as `sys.argv`; returns the exit status.
pub fn run(mode: RunMode, argv: Vec<String>) -> u32 {
    procpy_interpreter::run(mode, argv)
}

/// Run `mode` with procpy's switches. They reach every child process through the environment
/// (children of every start method inherit it): `PROCPY_EMULATE_GIL`, `PROCPY_PROGRESS`,
/// `PROCPY_TRACE`.
pub fn run_with(mode: RunMode, argv: Vec<String>, features: &cli::Features) -> u32 {
    // Set before the interpreter (and any thread) exists, so setting the environment is sound.
    if features.emulate_gil {
        std::env::set_var("PROCPY_EMULATE_GIL", "1");
    }
    if features.progress {
        std::env::set_var("PROCPY_PROGRESS", "1");
    }
    // --trace: every procpy process appends to a spool named in PROCPY_TRACE; this run, the
    // top level, turns it into the trace file at the end (interpreter/src/trace.rs).
    let spool = match features.trace.as_deref().map(|out| (out, trace::create_spool(out.as_ref())))
    {
        None => None,
        Some((out, Ok((spool, path)))) => Some((out, spool, path)),
        Some((out, Err(e))) => {
            eprintln!("procpy: cannot write the trace file '{out}': {e}");
            return 2;
        }
    };
    trace::init_from_env(match mode {
        RunMode::SpawnChild => trace::Role::SpawnChild,
        RunMode::ForkServer => trace::Role::ForkServer,
        _ => trace::Role::Main,
    });
    let status = procpy_interpreter::run(mode, argv);
    trace::exit(status as i64, None);
    if let Some((out, spool, path)) = spool {
        if let Err(e) = trace::finish(&spool, &path) {
            eprintln!("procpy: cannot write the trace file '{out}': {e}");
        }
    }
    status
}
