//! Command-line parsing, python3-style: options stop at the script, `-c CODE` or `-m MODULE`,
//! and everything after belongs to the script's `sys.argv`.
//!
//! Hand-written rather than clap: python3's grammar (`-c` ends option parsing, `-cCODE`,
//! arguments after the script are never options) does not fit a declarative parser.

use procpy_interpreter::{RunMode, FORK_SERVER_FLAG, SPAWN_CHILD_FLAG, TRACKER_FLAG};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Run Python code with this `sys.argv`.
    Run {
        /// What to run as `__main__`.
        mode: RunMode,
        /// `sys.argv` for the script.
        argv: Vec<String>,
    },
    /// Print this text to stdout and exit 0 (`--help`, `--version`).
    Print(String),
    /// A usage error: print to stderr, exit 2.
    Usage(String),
    /// Be the resource tracker of a program tree (no Python VM).
    ResourceTracker,
}

/// Usage text.
pub const USAGE: &str = "usage: procpy [option] ... [-c cmd | -m mod | file | -] [arg] ...
Runs Python 3 code on RustPython, with a native multi-process `multiprocessing`.
Options:
  -c cmd   program passed in as string (terminates option list)
  -m mod   run library module as a script (terminates option list)
  -u       unbuffered stdout and stderr (accepted; procpy flushes at exit and before fork)
  -B, -E, -s, -S, -I, -O, -q   accepted for python3 compatibility and ignored
  -h       print this help message and exit (also --help)
  -V       print the version and exit (also --version)
file       program read from script file
-          program read from stdin
arg ...    arguments passed to program in sys.argv[1:]
Environment: PYTHONPATH (extra module search path), PROCPY_START_METHOD (default start method:
forkserver, spawn or fork).";

/// Parse `args` (without the program name).
pub fn parse(args: &[String]) -> Invocation {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            SPAWN_CHILD_FLAG => return Invocation::Run { mode: RunMode::SpawnChild, argv: vec![String::new()] },
            TRACKER_FLAG => return Invocation::ResourceTracker,
            FORK_SERVER_FLAG => return Invocation::Run { mode: RunMode::ForkServer, argv: vec![String::new()] },
            "-h" | "--help" | "-?" => return Invocation::Print(USAGE.to_owned()),
            "-V" | "--version" => return Invocation::Print(format!("procpy {} (Python 3.11 compatible, RustPython 0.5.0)", env!("CARGO_PKG_VERSION"))),
            "-" => {
                let mut argv = vec!["-".to_owned()];
                argv.extend_from_slice(&args[i + 1..]);
                return Invocation::Run { mode: RunMode::Command(read_stdin()), argv };
            }
            "--" => {
                i += 1;
                break;
            }
            _ if a.starts_with("-c") => {
                let (code, rest) = if a.len() > 2 { (a[2..].to_owned(), i + 1) } else {
                    match args.get(i + 1) {
                        Some(c) => (c.clone(), i + 2),
                        None => return Invocation::Usage("Argument expected for the -c option".into()),
                    }
                };
                let mut argv = vec!["-c".to_owned()];
                argv.extend_from_slice(&args[rest.min(args.len())..]);
                return Invocation::Run { mode: RunMode::Command(code), argv };
            }
            _ if a.starts_with("-m") => {
                let (module, rest) = if a.len() > 2 { (a[2..].to_owned(), i + 1) } else {
                    match args.get(i + 1) {
                        Some(c) => (c.clone(), i + 2),
                        None => return Invocation::Usage("Argument expected for the -m option".into()),
                    }
                };
                let mut argv = vec!["-m".to_owned()];
                argv.extend_from_slice(&args[rest.min(args.len())..]);
                return Invocation::Run { mode: RunMode::Module(module), argv };
            }
            "-W" | "-X" => i += 2,
            _ if a.starts_with('-') && a.len() > 1 && a[1..].chars().all(|c| "BEsSIOqudb".contains(c)) => i += 1,
            _ if a.starts_with('-') && a.len() > 1 => {
                return Invocation::Usage(format!("Unknown option: {a}\n{USAGE}"));
            }
            _ => break,
        }
    }
    match args.get(i) {
        Some(script) => Invocation::Run { mode: RunMode::Script(script.clone()), argv: args[i..].to_vec() },
        None => {
            let argv = vec![String::new()];
            Invocation::Run { mode: RunMode::Command(read_stdin()), argv }
        }
    }
}

fn read_stdin() -> String {
    use std::io::Read;
    let mut s = String::new();
    let _ = std::io::stdin().read_to_string(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn script_arguments_are_never_options() {
        assert_eq!(
            parse(&v(&["-u", "s.py", "-c", "x"])),
            Invocation::Run { mode: RunMode::Script("s.py".into()), argv: v(&["s.py", "-c", "x"]) }
        );
    }

    #[test]
    fn dash_c_ends_option_parsing() {
        assert_eq!(
            parse(&v(&["-c", "print(1)", "a", "-m"])),
            Invocation::Run { mode: RunMode::Command("print(1)".into()), argv: v(&["-c", "a", "-m"]) }
        );
        assert_eq!(
            parse(&v(&["-cprint(2)"])),
            Invocation::Run { mode: RunMode::Command("print(2)".into()), argv: v(&["-c"]) }
        );
    }

    #[test]
    fn dash_m_takes_the_module_name() {
        assert_eq!(
            parse(&v(&["-m", "json.tool", "f"])),
            Invocation::Run { mode: RunMode::Module("json.tool".into()), argv: v(&["-m", "f"]) }
        );
    }

    #[test]
    fn tracker_flag_runs_the_tracker() {
        assert_eq!(parse(&v(&[TRACKER_FLAG])), Invocation::ResourceTracker);
        // Only as the first argument: after a script it belongs to the script.
        assert!(matches!(parse(&v(&["s.py", TRACKER_FLAG])), Invocation::Run { .. }));
    }

    #[test]
    fn missing_option_argument_is_a_usage_error() {
        assert!(matches!(parse(&v(&["-c"])), Invocation::Usage(m) if m.contains("-c option")));
        assert!(matches!(parse(&v(&["--bogus"])), Invocation::Usage(m) if m.contains("--bogus")));
    }
}
