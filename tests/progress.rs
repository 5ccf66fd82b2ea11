//! `procpy --progress`: a progress line for long Pool.map/imap runs, on stderr, only when
//! stderr is a terminal (a pseudo-terminal here), and never in the program's stdout.

mod common;

use common::{procpy, root};
use std::io::Read;
use std::os::fd::FromRawFd;
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

fn script() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("procpy-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("progress_job.py");
    std::fs::write(&path, SCRIPT).unwrap();
    path
}

/// Run with stderr on a pseudo-terminal; returns (stdout, what the terminal showed).
fn run_on_terminal(args: &[&str]) -> (String, String) {
    let (mut master, mut slave) = (0, 0);
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty failed");
    let mut child = Command::new(procpy())
        .args(args)
        .arg(script())
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(unsafe { Stdio::from_raw_fd(slave) })
        .spawn()
        .unwrap();
    let mut term = unsafe { std::fs::File::from_raw_fd(master) };
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
    let (out, shown) = run_on_terminal(&["--progress"]);
    assert_eq!(out, "780\n90\n");
    assert!(shown.contains("40/40 tasks"), "terminal showed: {shown:?}");
    assert!(shown.contains("tasks/s"), "terminal showed: {shown:?}");
}

#[test]
fn no_progress_line_without_the_switch() {
    let (out, shown) = run_on_terminal(&[]);
    assert_eq!(out, "780\n90\n");
    assert!(!shown.contains("tasks"), "terminal showed: {shown:?}");
}

#[test]
fn no_progress_line_when_stderr_is_not_a_terminal() {
    let out = Command::new(procpy()).arg("--progress").arg(script()).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "780\n90\n");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("tasks"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
