//! The `procpy` command: a drop-in for `python3 script.py` whose `multiprocessing` is native.

use procpy::cli::{self, Invocation};
use procpy::RunMode;
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
            let status = procpy::run_with(mode, argv, &parsed.features);
            ExitCode::from(status.min(255) as u8)
        }
    }
}
