//! A procpy script running in the background, read line by line: for tests that act while it
//! runs (kill it, interrupt it, talk to the server it started) instead of waiting for its end.

use super::{is_gone, procpy};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A running script whose stdout arrives line by line and whose stderr is collected in the
/// background, so neither pipe can fill up and block it.
pub struct Running {
    pub child: Child,
    /// The script's stdin when the command asked for a pipe ([`Running::spawn`]).
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<String>,
    /// The stdout lines read so far.
    pub seen: Vec<String>,
    pub stderr: Receiver<String>,
    /// Descendants the script reported; SIGKILLed on drop if still there (a failed test must
    /// not leave processes behind).
    pub reported: Vec<i32>,
}

impl Running {
    /// Start `procpy script args...` with `method` as the default start method, in the script's
    /// directory; `own_group`: in a process group of its own, as a terminal's foreground job is.
    pub fn start(script: &Path, method: &str, args: &[&str], own_group: bool) -> Running {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(procpy());
        cmd.arg(script)
            .args(args)
            .env("PROCPY_START_METHOD", method)
            .current_dir(script.parent().unwrap())
            .stdin(Stdio::null());
        if own_group {
            cmd.process_group(0);
        }
        Running::spawn(cmd)
    }

    /// Start `cmd` with its stdout read line by line and its stderr collected; its stdin is
    /// whatever `cmd` set (kept in [`Running::stdin`] when it is a pipe).
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start procpy");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = channel();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            let _ = etx.send(String::from_utf8_lossy(&s).into_owned());
        });
        Running { child, stdin, lines, seen: Vec::new(), stderr, reported: Vec::new() }
    }

    /// The value after `tag ` on the first stdout line that starts with it.
    pub fn value(&mut self, tag: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.seen.iter().find_map(|l| l.strip_prefix(tag)?.strip_prefix(' ')) {
                return v.trim().to_owned();
            }
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {tag:?} line within {limit:?}; stdout: {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let err = self.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                    panic!("stdout closed before {tag:?}; stdout: {:?}\nstderr: {err}", self.seen)
                }
            }
        }
    }

    /// Read stdout lines until `done(lines so far)` holds; panics at the deadline.
    pub fn read_until(&mut self, limit: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no expected output within {limit:?}; stdout so far: {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let err = self.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                    panic!("stdout closed early; stdout: {:?}\nstderr: {err}", self.seen)
                }
            }
        }
    }

    /// The pids on stdout lines `<tag> <pid>`.
    pub fn pids(&self, tag: &str) -> Vec<i32> {
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' ')?.trim().parse().ok())
            .collect()
    }

    /// Wait for the script itself to end; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return Some(st);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the script to end (None at the deadline); then the rest of its stdout.
    pub fn finish(&mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let Some(status) = self.wait_exit(limit) else {
            return (None, self.seen.clone());
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.clone())
    }

    /// stderr, once every holder of the pipe has closed it (or a note after `limit`).
    pub fn stderr(&self, limit: Duration) -> String {
        self.stderr.recv_timeout(limit).unwrap_or_else(|_| String::from("<stderr still open>"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &pid in &self.reported {
            if !is_gone(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}
