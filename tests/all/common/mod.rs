//! Shared helpers for the integration tests: run a command with a deadline and capture output,
//! write throwaway scripts, wait for processes to go, and the locks that keep the few tests
//! that must not run beside others apart ([`serial`]).

#![allow(dead_code)]

pub mod pty;
pub mod redis;
mod running;
pub mod serial;

pub use running::Running;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The start methods every per-method test runs under.
pub const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

/// The procpy binary built for these tests.
pub fn procpy() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_procpy"))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a finished (or killed) command left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Run `cmd` with a deadline; a command still running at the deadline is killed (a guard
/// against hangs, not a timing assertion).
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> Outcome {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start command");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Grandchildren that kept the pipes open would block these reads: after a timeout, do not wait.
    let (stdout, stderr) = if timed_out {
        (String::from("<killed after deadline>"), String::new())
    } else {
        (
            String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
            String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        )
    };
    use std::os::unix::process::ExitStatusExt;
    Outcome { status: status.code().or(status.signal().map(|s| -s)), stdout, stderr, timed_out }
}

/// Run a Python script under `interpreter` (a path or `python3`) with `args`.
pub fn run_script(interpreter: &Path, script: &Path, args: &[&str], limit: Duration) -> Outcome {
    let mut cmd = Command::new(interpreter);
    cmd.arg(script).args(args).current_dir(script.parent().unwrap());
    run_with_deadline(cmd, limit)
}

/// An embedding engine builder whose workers are the procpy binary built for these tests
/// (libtest owns a test binary's `main`, so it cannot be its own worker program), with a
/// generous default timeout as a guard against hangs.
pub fn embed_builder(workers: usize) -> procpy::Builder {
    procpy::Builder::new()
        .worker_program(procpy())
        .workers(workers)
        .default_timeout(Duration::from_secs(60))
}

/// Wait (up to `limit`) until the shared memory segment /dev/shm/<name> is gone; whether it
/// went. One that stays is removed, so the next test starts clean, and the caller fails.
pub fn shm_gone(name: &str, limit: Duration) -> bool {
    let path = Path::new("/dev/shm").join(name);
    let until = Instant::now() + limit;
    while path.exists() {
        if Instant::now() > until {
            let _ = std::fs::remove_file(&path);
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Makes every `print` of a script flush, so a script killed at a deadline still shows how far
/// it got.
pub const FLUSH_PRELUDE: &str =
    "import builtins as _b, functools as _f\nprint = _f.partial(_b.print, flush=True)\n";

/// Write `code` to a fresh script file `<name>.py` in a directory of its own and return its
/// path. Every call gets a new directory (one test binary: two areas may pick the same name).
pub fn temp_script(name: &str, code: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("procpy-test-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join(format!("{name}.py"));
    std::fs::write(&script, code).unwrap();
    script
}

/// [`temp_script`] with [`FLUSH_PRELUDE`] in front of `code`.
pub fn temp_script_flushed(name: &str, code: &str) -> PathBuf {
    temp_script(name, &format!("{FLUSH_PRELUDE}{code}"))
}

/// Has `pid` exited? Gone (ESRCH, no /proc entry) or a zombie waiting to be reaped by init or
/// a subreaper both count.
pub fn is_gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        }
    }
}

/// Poll until every pid is gone or `limit` passes (a condition with a deadline, not a sleep and
/// a hope); returns the ones still there.
pub fn wait_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| !is_gone(p)).collect();
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The name libtest knows the test `name` by, given the `module_path!()` of its module (the
/// crate's name dropped): what `--exact` needs to run it in a child process.
pub fn test_name(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_owned(),
    }
}
