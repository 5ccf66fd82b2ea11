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

/// procpy's own switches (they come before the script, like python3's options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// `--trace FILE`: write a Chrome trace-event file of every process.
    pub trace: Option<String>,
    /// `--emulate-gil`: Python threads take turns on one global lock, as under CPython's GIL.
    pub emulate_gil: bool,
    /// `--progress`: a progress line for long `Pool.map`/`imap` runs when stderr is a terminal.
    pub progress: bool,
    /// `-i`: the interactive prompt after the script, `-c` or `-m` has run.
    pub inspect: bool,
    /// `-q`: no banner at the interactive prompt.
    pub quiet: bool,
    /// `--cluster URL`: process pools run on the `procpy worker`s of this Redis server.
    pub cluster: Option<String>,
    /// `--authkey-file FILE`: the key cluster tasks and results are signed with.
    pub authkey_file: Option<String>,
}

/// A parsed command line: procpy's switches and what to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// procpy's own switches.
    pub features: Features,
    /// What to do.
    pub invocation: Invocation,
}

/// The demos `--demo NAME` runs (each a frozen module `_procpy_demo_NAME`).
pub const DEMOS: &[(&str, &str)] = &[("gil", "the same CPU-bound job serially, in threads (with and without an emulated GIL) and in processes, with a timeline picture")];

/// The code `procpy worker ...` runs: the frozen supervisor's `main` with the arguments after
/// `worker` (its argparse names itself after `sys.argv[0]`, "procpy worker").
pub const WORKER_CODE: &str =
    "import sys, _procpy_cluster_worker as w\nraise SystemExit(w.main(sys.argv[1:]))";

/// Usage text.
pub const USAGE: &str = "usage: procpy [option] ... [-c cmd | -m mod | file | -] [arg] ...
       procpy worker URL [--processes N] [--name NAME] [--authkey-file FILE] [--ttl SECS]
Runs Python 3 code on RustPython, with a native multi-process `multiprocessing`.
Options:
  -c cmd   program passed in as string (terminates option list)
  -m mod   run library module as a script (terminates option list)
  -i       inspect interactively after running the script (the prompt; also with no script)
  -q       no banner at the interactive prompt
  -u       unbuffered stdout and stderr (accepted; procpy flushes at exit and before fork)
  -B, -E, -s, -S, -I, -O   accepted for python3 compatibility and ignored
  -h       print this help message and exit (also --help)
  -V       print the version and exit (also --version)
procpy's own options (before the script):
  --trace FILE    write a Chrome trace-event file (Perfetto, chrome://tracing) of every process
  --emulate-gil   make Python threads take turns on one global lock, like CPython's GIL
                  (sys.setswitchinterval sets the hand-over interval)
  --progress      show tasks done/total, rate and ETA of long Pool.map/imap runs on a terminal
  --demo NAME [arg ...]   run a teaching demo: gil (try `procpy --demo gil --help`)
  --cluster URL   run the script's process pools (Pool, ProcessPoolExecutor) on the
                  `procpy worker`s of this Redis server: redis://[user:pass@]host:port/db
  --authkey-file FILE   the secret key cluster tasks and results are signed with
                  (the same on the workers; else PROCPY_CLUSTER_KEY)
procpy worker URL ...   serve cluster pools from this machine (`procpy worker --help`)
file       program read from script file, a directory or zip archive with a __main__.py,
           or a .pyc compiled by procpy
-          program read from stdin (default; the interactive prompt when stdin is a terminal)
arg ...    arguments passed to program in sys.argv[1:]
Environment: PYTHONPATH (extra module search path), PYTHONSTARTUP (a file run before the first
prompt), PROCPY_START_METHOD (default start method:
forkserver, spawn or fork), PROCPY_CLUSTER (as --cluster), PROCPY_CLUSTER_KEY (the cluster key).";

/// Parse `args` (without the program name).
pub fn parse(args: &[String]) -> Parsed {
    let mut features = Features::default();
    let invocation = parse_into(args, &mut features);
    Parsed { features, invocation }
}

fn parse_into(args: &[String], features: &mut Features) -> Invocation {
    // `procpy worker ...`: only as the very first argument, like the internal flags, so a
    // script named `worker` still runs after any option (`procpy -- worker`).
    if args.first().is_some_and(|a| a == "worker") {
        let mut argv = vec!["procpy worker".to_owned()];
        argv.extend_from_slice(&args[1..]);
        return Invocation::Run { mode: RunMode::Command(WORKER_CODE.to_owned()), argv };
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            "--emulate-gil" => {
                features.emulate_gil = true;
                i += 1
            }
            "--progress" => {
                features.progress = true;
                i += 1
            }
            "--trace" => match args.get(i + 1) {
                Some(f) => {
                    features.trace = Some(f.clone());
                    i += 2
                }
                None => {
                    return Invocation::Usage(
                        "Argument expected for the --trace option (the trace file to write)".into(),
                    )
                }
            },
            "--cluster" | "--authkey-file" => match args.get(i + 1) {
                Some(value) => {
                    set_cluster_option(features, a, value.clone());
                    i += 2
                }
                None => {
                    let what = if a == "--cluster" {
                        "the Redis URL, e.g. redis://host:6379/0"
                    } else {
                        "the key file"
                    };
                    return Invocation::Usage(format!(
                        "Argument expected for the {a} option ({what})"
                    ));
                }
            },
            _ if a.starts_with("--cluster=") || a.starts_with("--authkey-file=") => {
                let (name, value) = a.split_once('=').unwrap_or((a, ""));
                set_cluster_option(features, name, value.to_owned());
                i += 1
            }
            _ if a.starts_with("--trace=") => {
                features.trace = Some(a["--trace=".len()..].to_owned());
                i += 1
            }
            "--demo" => {
                let Some(name) = args.get(i + 1) else {
                    return Invocation::Usage(format!(
                        "Argument expected for the --demo option: one of {}",
                        demo_names()
                    ));
                };
                if !DEMOS.iter().any(|(n, _)| n == name) {
                    return Invocation::Usage(format!(
                        "unknown demo '{name}': the demos are {}",
                        demo_names()
                    ));
                }
                let mut argv = vec![format!("procpy --demo {name}")];
                argv.extend_from_slice(&args[i + 2..]);
                return Invocation::Run {
                    mode: RunMode::Module(format!("_procpy_demo_{name}")),
                    argv,
                };
            }
            SPAWN_CHILD_FLAG => {
                return Invocation::Run { mode: RunMode::SpawnChild, argv: vec![String::new()] }
            }
            TRACKER_FLAG => return Invocation::ResourceTracker,
            FORK_SERVER_FLAG => {
                return Invocation::Run { mode: RunMode::ForkServer, argv: vec![String::new()] }
            }
            "-h" | "--help" | "-?" => return Invocation::Print(USAGE.to_owned()),
            "-V" | "--version" => {
                return Invocation::Print(format!(
                    "procpy {} (Python 3.11 compatible, RustPython 0.5.0)",
                    env!("CARGO_PKG_VERSION")
                ))
            }
            "-" => {
                let mut argv = vec!["-".to_owned()];
                argv.extend_from_slice(&args[i + 1..]);
                return Invocation::Run { mode: stdin_mode(features), argv };
            }
            "--" => {
                i += 1;
                break;
            }
            _ if a.starts_with("-c") => {
                let (code, rest) = if a.len() > 2 {
                    (a[2..].to_owned(), i + 1)
                } else {
                    match args.get(i + 1) {
                        Some(c) => (c.clone(), i + 2),
                        None => {
                            return Invocation::Usage("Argument expected for the -c option".into())
                        }
                    }
                };
                let mut argv = vec!["-c".to_owned()];
                argv.extend_from_slice(&args[rest.min(args.len())..]);
                return Invocation::Run { mode: RunMode::Command(code), argv };
            }
            _ if a.starts_with("-m") => {
                let (module, rest) = if a.len() > 2 {
                    (a[2..].to_owned(), i + 1)
                } else {
                    match args.get(i + 1) {
                        Some(c) => (c.clone(), i + 2),
                        None => {
                            return Invocation::Usage("Argument expected for the -m option".into())
                        }
                    }
                };
                let mut argv = vec!["-m".to_owned()];
                argv.extend_from_slice(&args[rest.min(args.len())..]);
                return Invocation::Run { mode: RunMode::Module(module), argv };
            }
            "-W" | "-X" => i += 2,
            _ if a.starts_with('-')
                && a.len() > 1
                && a[1..].chars().all(|c| "BEsSIOqudbi".contains(c)) =>
            {
                features.inspect |= a.contains('i');
                features.quiet |= a.contains('q');
                i += 1
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                return Invocation::Usage(format!("Unknown option: {a}\n{USAGE}"));
            }
            _ => break,
        }
    }
    match args.get(i) {
        Some(script) => {
            Invocation::Run { mode: RunMode::Script(script.clone()), argv: args[i..].to_vec() }
        }
        None => Invocation::Run { mode: stdin_mode(features), argv: vec![String::new()] },
    }
}

fn set_cluster_option(features: &mut Features, name: &str, value: String) {
    if name == "--cluster" {
        features.cluster = Some(value);
    } else {
        features.authkey_file = Some(value);
    }
}

/// No script: the prompt on a terminal (or with `-i`), else all of stdin run as the script.
fn stdin_mode(features: &Features) -> RunMode {
    use std::io::IsTerminal;
    if features.inspect || std::io::stdin().is_terminal() {
        RunMode::Prompt
    } else {
        RunMode::Command(read_stdin())
    }
}

fn demo_names() -> String {
    DEMOS.iter().map(|(n, what)| format!("'{n}' ({what})")).collect::<Vec<_>>().join(", ")
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

    fn parse(args: &[String]) -> Invocation {
        super::parse(args).invocation
    }

    #[test]
    fn procpy_switches_come_before_the_script() {
        let p = super::parse(&v(&[
            "--trace",
            "t.json",
            "--emulate-gil",
            "--progress",
            "s.py",
            "--trace",
            "x",
        ]));
        assert_eq!(
            p.features,
            Features {
                trace: Some("t.json".into()),
                emulate_gil: true,
                progress: true,
                ..Features::default()
            }
        );
        assert_eq!(
            p.invocation,
            Invocation::Run {
                mode: RunMode::Script("s.py".into()),
                argv: v(&["s.py", "--trace", "x"])
            }
        );
        assert_eq!(
            super::parse(&v(&["--trace=a.json", "-c", "1"])).features.trace.as_deref(),
            Some("a.json")
        );
        assert!(matches!(parse(&v(&["--trace"])), Invocation::Usage(m) if m.contains("--trace")));
    }

    #[test]
    fn demo_runs_its_frozen_module_with_the_remaining_arguments() {
        assert_eq!(
            parse(&v(&["--demo", "gil", "--threads", "4"])),
            Invocation::Run {
                mode: RunMode::Module("_procpy_demo_gil".into()),
                argv: v(&["procpy --demo gil", "--threads", "4"])
            }
        );
        assert!(
            matches!(parse(&v(&["--demo", "nope"])), Invocation::Usage(m) if m.contains("unknown demo 'nope'") && m.contains("'gil'"))
        );
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
            Invocation::Run {
                mode: RunMode::Command("print(1)".into()),
                argv: v(&["-c", "a", "-m"])
            }
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
    fn dash_i_and_dash_q_are_kept() {
        let p = super::parse(&v(&["-q", "-i", "s.py", "-i"]));
        assert!(p.features.inspect && p.features.quiet);
        assert_eq!(
            p.invocation,
            Invocation::Run { mode: RunMode::Script("s.py".into()), argv: v(&["s.py", "-i"]) }
        );
        // Combined, and with no script: the prompt whatever stdin is.
        let p = super::parse(&v(&["-qi"]));
        assert!(p.features.inspect && p.features.quiet);
        assert_eq!(p.invocation, Invocation::Run { mode: RunMode::Prompt, argv: v(&[""]) });
    }

    #[test]
    fn cluster_switches_come_before_the_script() {
        let p = super::parse(&v(&[
            "--cluster",
            "redis://h:6379/0",
            "--authkey-file=k.txt",
            "s.py",
            "--cluster",
            "x",
        ]));
        assert_eq!(p.features.cluster.as_deref(), Some("redis://h:6379/0"));
        assert_eq!(p.features.authkey_file.as_deref(), Some("k.txt"));
        assert_eq!(
            p.invocation,
            Invocation::Run {
                mode: RunMode::Script("s.py".into()),
                argv: v(&["s.py", "--cluster", "x"])
            }
        );
        let p = super::parse(&v(&["--cluster=redis://a/1", "--authkey-file", "f", "-c", "1"]));
        assert_eq!(p.features.cluster.as_deref(), Some("redis://a/1"));
        assert_eq!(p.features.authkey_file.as_deref(), Some("f"));
        assert!(
            matches!(parse(&v(&["--cluster"])), Invocation::Usage(m) if m.contains("--cluster") && m.contains("redis://"))
        );
        assert!(
            matches!(parse(&v(&["--authkey-file"])), Invocation::Usage(m) if m.contains("--authkey-file"))
        );
    }

    #[test]
    fn worker_runs_the_frozen_supervisor_with_the_rest() {
        assert_eq!(
            parse(&v(&["worker", "redis://h/0", "--processes", "2", "--help"])),
            Invocation::Run {
                mode: RunMode::Command(WORKER_CODE.into()),
                argv: v(&["procpy worker", "redis://h/0", "--processes", "2", "--help"])
            }
        );
        assert_eq!(
            parse(&v(&["worker"])),
            Invocation::Run {
                mode: RunMode::Command(WORKER_CODE.into()),
                argv: v(&["procpy worker"])
            }
        );
        // Elsewhere `worker` is a script's name or a script's argument.
        assert_eq!(
            parse(&v(&["--", "worker", "a"])),
            Invocation::Run { mode: RunMode::Script("worker".into()), argv: v(&["worker", "a"]) }
        );
        assert_eq!(
            parse(&v(&["s.py", "worker"])),
            Invocation::Run { mode: RunMode::Script("s.py".into()), argv: v(&["s.py", "worker"]) }
        );
    }

    #[test]
    fn usage_names_the_cluster_options() {
        for word in ["--cluster URL", "--authkey-file FILE", "procpy worker URL", "PROCPY_CLUSTER"]
        {
            assert!(USAGE.contains(word), "{word}");
        }
    }

    #[test]
    fn missing_option_argument_is_a_usage_error() {
        assert!(matches!(parse(&v(&["-c"])), Invocation::Usage(m) if m.contains("-c option")));
        assert!(matches!(parse(&v(&["--bogus"])), Invocation::Usage(m) if m.contains("--bogus")));
    }
}
