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
#![deny(missing_docs)]

pub mod cli;

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
