//! The `procpy` command: a drop-in for `python3 script.py` whose `multiprocessing` is native.
//!
//! The command line is parsed here ([`cli`]); the interpreter, the native `multiprocessing` and
//! the `--trace` recorder live in `procpy-interpreter`. The `procpy` library is the embedding
//! API only.

mod cli;

use cli::{Features, Invocation};
use procpy_interpreter::switches::{self, Switches};
use procpy_interpreter::{trace, Interactive, RunMode};
use std::process::ExitCode;

fn main() -> ExitCode {
    // A host that embeds procpy may use this binary as its worker program.
    procpy::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = cli::parse(&args);
    match parsed.invocation {
        Invocation::Print(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Invocation::ResourceTracker => ExitCode::from(procpy_interpreter::tracker::main() as u8),
        Invocation::Usage(msg) => {
            eprintln!("procpy: {msg}");
            ExitCode::from(2)
        }
        Invocation::Run { mode, argv } => {
            if let RunMode::Script(path) = &mode {
                if !std::path::Path::new(path).exists() {
                    // python3's wording and status.
                    let abs = std::env::current_dir()
                        .map(|d| d.join(path))
                        .unwrap_or_else(|_| path.into());
                    eprintln!(
                        "procpy: can't open file '{}': [Errno 2] No such file or directory",
                        abs.display()
                    );
                    return ExitCode::from(2);
                }
            }
            let status = run(mode, argv, &parsed.features);
            ExitCode::from(status.min(255) as u8)
        }
    }
}

/// Run `mode` with procpy's switches; returns the exit status. The switches reach every child
/// process through `procpy_interpreter::switches` (stored here, inherited by forked children,
/// put in the environment of exec'd ones): this process's own environment is never changed.
fn run(mode: RunMode, argv: Vec<String>, features: &Features) -> u32 {
    // What the environment says (an exec'd child's switches, or a user's variables), and the
    // command line's switches on top.
    let mut switches = Switches::from_env();
    switches.emulate_gil |= features.emulate_gil;
    switches.progress |= features.progress;
    if let Some(url) = &features.cluster {
        switches.cluster = Some(url.clone());
    }
    if let Some(file) = &features.authkey_file {
        // Read now so a wrong path fails at once, not when the first pool starts; absolute so
        // an exec'd child in another directory finds it.
        let path = std::path::Path::new(file);
        if let Err(e) = procpy_interpreter::cluster::key_from_file(path) {
            eprintln!("procpy: cannot read the --authkey-file '{file}': {e}");
            return 2;
        }
        switches.cluster_key_file = Some(std::path::absolute(path).unwrap_or_else(|_| path.into()));
    }
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
    let interactive = Interactive { inspect: features.inspect, quiet: features.quiet };
    let status = procpy_interpreter::run_interactive(mode, argv, interactive);
    trace::exit(status as i64, None);
    if let Some((out, spool, path)) = spool {
        if let Err(e) = trace::finish(&spool, &path) {
            eprintln!("procpy: cannot write the trace file '{out}': {e}");
        }
    }
    status
}
