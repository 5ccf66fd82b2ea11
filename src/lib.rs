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

use procpy_interpreter::switches::{self, Switches};
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

/// Run `mode` with procpy's switches; returns the exit status. The switches reach every child
/// process through `procpy_interpreter::switches` (stored here, inherited by forked children,
/// put in the environment of exec'd ones): this process's own environment is never changed.
pub fn run_with(mode: RunMode, argv: Vec<String>, features: &cli::Features) -> u32 {
    // What the environment says (an exec'd child's switches, or a user's variables), and the
    // command line's switches on top.
    let mut switches = Switches::from_env();
    switches.emulate_gil |= features.emulate_gil;
    switches.progress |= features.progress;
    // --trace: every procpy process appends to a spool; this run, the top level, turns it into
    // the trace file at the end (interpreter/src/trace.rs).
    let spool = match features.trace.as_deref().map(|out| (out, trace::create_spool(out.as_ref())))
    {
        None => None,
        Some((out, Ok((spool, path)))) => Some((out, spool, path)),
        Some((out, Err(e))) => {
            eprintln!("procpy: cannot write the trace file '{out}': {e}");
            return 2;
        }
    };
    if let Some((_, spool, _)) = &spool {
        switches.trace_spool = Some(spool.clone());
    }
    // Nothing read them yet: the interpreter does not exist.
    let _ = switches::set(switches);
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
