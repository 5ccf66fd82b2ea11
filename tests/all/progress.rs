//! `procpy --progress`: a progress line for long Pool.map/imap runs, on stderr, only when
//! stderr is a terminal (a pseudo-terminal here), and never in the program's stdout.

use crate::common::pty::pty;
use crate::common::{procpy, root, serial, temp_script};
use std::io::Read;
use std::process::{Command, Stdio};

const SCRIPT: &str = r#"
import multiprocessing as mp, threading
go = None
def task(x):
    return x * 2
def init(ev):
    global go
    go = ev
def gated(x):
    # The first task holds the job back until the parent has seen it running for over a
    # second (the bar's delay): a wait on an event, not a sleep.
    if x == 0:
        go.wait(60)
    return x
if __name__ == '__main__':
    ev = mp.Event()
    with mp.Pool(2, initializer=init, initargs=(ev,)) as p:
        r = p.map_async(gated, range(40), chunksize=1)
        threading.Timer(1.5, ev.set).start()
        print(sum(r.get(60)))
        print(sum(p.imap(task, range(10))))
"#;

/// The job, in a file of its own for each run (tests run at once: none may see another's file
/// half written).
fn script() -> std::path::PathBuf {
    temp_script("progress_job", SCRIPT)
}

/// Run with stderr on a pseudo-terminal; returns (stdout, what the terminal showed).
fn run_on_terminal(args: &[&str]) -> (String, String) {
    let (mut term, slave) = pty();
    let mut child = Command::new(procpy())
        .args(args)
        .arg(script())
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        // EIO once every writer has closed the terminal: that ends the read.
        let _ = term.read_to_end(&mut shown);
        String::from_utf8_lossy(&shown).into_owned()
    });
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    (out, reader.join().unwrap())
}

#[test]
fn progress_line_shows_done_total_and_rate_on_a_terminal() {
    let _serial = serial::shared();
    let (out, shown) = run_on_terminal(&["--progress"]);
    assert_eq!(out, "780\n90\n");
    assert!(shown.contains("40/40 tasks"), "terminal showed: {shown:?}");
    assert!(shown.contains("tasks/s"), "terminal showed: {shown:?}");
}

#[test]
fn no_progress_line_without_the_switch() {
    let _serial = serial::shared();
    let (out, shown) = run_on_terminal(&[]);
    assert_eq!(out, "780\n90\n");
    assert!(!shown.contains("tasks"), "terminal showed: {shown:?}");
}

#[test]
fn no_progress_line_when_stderr_is_not_a_terminal() {
    let _serial = serial::shared();
    let out = Command::new(procpy()).arg("--progress").arg(script()).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "780\n90\n");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("tasks"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
