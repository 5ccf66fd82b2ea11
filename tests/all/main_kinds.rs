//! Every kind of main python3 runs — a directory or zip archive with a `__main__.py`, `-m pkg`
//! (its `__main__`), `-m module`, a `.pyc` — as the main of a multiprocessing program under every start
//! method, children's re-import of the main included, compared with python3's stdout; and a
//! pool whose workers cannot prepare the main fails at once instead of respawning them, while
//! one that fails once is replaced.

use crate::common::{procpy, run_with_deadline, serial, temp_script, METHODS};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// The worker function lives in a module of its own: CPython's children of a directory or zip
/// main do not re-run `__main__.py`, so they could not find one defined there.
const WORK: &str = "import sys\n\ndef sq(x):\n    return x * x\n\n\
                    def probe():\n    main = sys.modules['__main__']\n    \
                    print('main re-run in the child:', hasattr(main, 'MARK'), flush=True)\n";

/// `MARK` exists in a child's `__main__` only if the child re-ran the main's body; a joined
/// Process reports it (pool workers print nothing: their timing is theirs).
const MAIN: &str = r#"import multiprocessing as mp, sys
import work
MARK = 1
if __name__ == '__main__':
    print('main', __name__, flush=True)
    mp.set_start_method(sys.argv[-1])
    with mp.Pool(2) as p:
        print(p.map(work.sq, range(5)), flush=True)
    q = mp.Process(target=work.probe)
    q.start()
    q.join()
    print('exitcode', q.exitcode, flush=True)
"#;

fn run(interp: &Path, dir: &Path, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(interp);
    cmd.args(args).current_dir(dir);
    let out = run_with_deadline(cmd, LIMIT);
    assert!(!out.timed_out, "{interp:?} {args:?} hung");
    assert_eq!(out.status, Some(0), "{interp:?} {args:?}: {}", out.stderr);
    (out.stdout, out.stderr)
}

fn same_as_python3(dir: &Path, py_args: &[&str], procpy_args: &[&str]) {
    let (want, _) = run(Path::new("python3"), dir, py_args);
    let (got, err) = run(&procpy(), dir, procpy_args);
    assert_eq!(got, want, "procpy {procpy_args:?} (python3 {py_args:?}); stderr: {err}");
}

/// A fresh directory holding `app/` (a directory main), `app.zip`, `app.pyz` (with a shebang),
/// package `pkg` and module `modmain`.
fn layout(name: &str) -> std::path::PathBuf {
    let dir = temp_script(name, WORK).parent().unwrap().to_owned();
    std::fs::write(dir.join("work.py"), WORK).unwrap();
    for sub in ["app", "pkg"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("work.py"), WORK).unwrap();
        std::fs::write(dir.join(sub).join("__main__.py"), MAIN).unwrap();
    }
    std::fs::write(dir.join("pkg/__init__.py"), "").unwrap();
    // `-m modmain`: a plain module as the main, which children re-run by name.
    std::fs::write(dir.join("modmain.py"), MAIN).unwrap();
    // -m pkg imports `work` from the current directory (the package's own is pkg.work).
    let zip = "import zipfile\nwith zipfile.ZipFile('app.zip', 'w') as z:\n    \
               z.write('app/__main__.py', '__main__.py')\n    z.write('app/work.py', 'work.py')\n";
    let out = Command::new("python3").args(["-c", zip]).current_dir(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A zipapp with a shebang: the archive does not start at the file's first byte.
    let out = Command::new("python3")
        .args(["-m", "zipapp", "app", "-p", "/usr/bin/env python3", "-o", "app.pyz"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

#[test]
fn a_directory_a_zip_and_a_package_main_run_under_every_method() {
    let _g = serial::shared();
    let dir = layout("main_kinds_dir");
    for m in METHODS {
        same_as_python3(&dir, &["app", m], &["app", m]);
        same_as_python3(&dir, &["app.zip", m], &["app.zip", m]);
        same_as_python3(&dir, &["app.pyz", m], &["app.pyz", m]);
        same_as_python3(&dir, &["-m", "pkg", m], &["-m", "pkg", m]);
        same_as_python3(&dir, &["-m", "modmain", m], &["-m", "modmain", m]);
    }
}

#[test]
fn a_pyc_main_runs_under_every_method_and_a_cpython_pyc_is_refused_clearly() {
    let _g = serial::shared();
    let script = temp_script("pycmain", MAIN);
    let dir = script.parent().unwrap().to_owned();
    std::fs::write(dir.join("work.py"), WORK).unwrap();
    // Each interpreter runs bytecode of its own making.
    let compile = "import py_compile, sys; py_compile.compile('pycmain.py', cfile=sys.argv[1])";
    run(&procpy(), &dir, &["-c", compile, "ours.pyc"]);
    run(Path::new("python3"), &dir, &["-c", compile, "theirs.pyc"]);
    for m in METHODS {
        same_as_python3(&dir, &["theirs.pyc", m], &["ours.pyc", m]);
    }
    let mut cmd = Command::new(procpy());
    cmd.args(["theirs.pyc", "fork"]).current_dir(&dir);
    let out = run_with_deadline(cmd, LIMIT);
    assert_eq!(out.status, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("RuntimeError: Bad magic number in .pyc file"), "{}", out.stderr);
}

#[test]
fn a_main_named_ipython_is_not_rerun_by_children() {
    let _g = serial::shared();
    let script = temp_script("ipython", MAIN);
    let dir = script.parent().unwrap().to_owned();
    std::fs::write(dir.join("work.py"), WORK).unwrap();
    for m in ["spawn", "forkserver"] {
        same_as_python3(&dir, &["ipython.py", m], &["ipython.py", m]);
    }
}

#[test]
fn pool_workers_that_cannot_prepare_the_main_fail_the_map_at_once() {
    let _g = serial::shared();
    let script = temp_script(
        "boom",
        r#"import multiprocessing as mp, sys
if __name__ == '__mp_main__':
    raise RuntimeError('boom')
def sq(x):
    return x * x
if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    with mp.Pool(2) as p:
        for attempt in range(2):
            try:
                p.map(sq, range(5))
            except RuntimeError as e:
                print('failed:', e)
"#,
    );
    for m in ["spawn", "forkserver"] {
        let mut cmd = Command::new(procpy());
        cmd.arg(&script).arg(m);
        // A hang guard: without the fix the pool respawns workers for ever.
        let out = run_with_deadline(cmd, Duration::from_secs(60));
        assert!(!out.timed_out, "{m}: the map hung");
        assert_eq!(out.stdout, "failed: boom\nfailed: boom\n", "{m}: {}", out.stderr);
        assert_eq!(out.status, Some(0), "{m}: {}", out.stderr);
    }
}

#[test]
fn a_pool_worker_that_fails_once_to_prepare_the_main_is_replaced() {
    let _g = serial::shared();
    // The first child to prepare the main creates the flag file and fails; every later one
    // finds it and starts normally: one failure, whichever worker it hits.
    let script = temp_script(
        "transient",
        r#"import os, sys, multiprocessing as mp
if __name__ == '__mp_main__':
    try:
        os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))
        raise RuntimeError('transient start-up failure in one worker')
    except FileExistsError:
        pass
def sq(x):
    return x * x
if __name__ == '__main__':
    maxtasks = int(sys.argv[3]) or None
    with mp.get_context(sys.argv[2]).Pool(3, maxtasksperchild=maxtasks) as p:
        try:
            print(p.map(sq, range(8), chunksize=1), flush=True)
        except Exception as e:
            print('map:', e, flush=True)
        ok = fail = 0
        for i in range(10):
            try:
                ok += p.apply(sq, (i,)) == i * i
            except Exception:
                fail += 1
        print('later applies ok=%d failed=%d' % (ok, fail))
"#,
    );
    let dir = script.parent().unwrap().to_owned();
    let flag = dir.join("flag");
    let flag = flag.to_str().unwrap();
    for m in ["spawn", "forkserver"] {
        for maxtasks in ["1", "0"] {
            let args = ["transient.py", flag, m, maxtasks];
            let _ = std::fs::remove_file(flag);
            let (want, _) = run(Path::new("python3"), &dir, &args);
            let _ = std::fs::remove_file(flag);
            let (got, err) = run(&procpy(), &dir, &args);
            assert!(Path::new(flag).exists(), "{m} {maxtasks}: no worker failed; {err}");
            assert_eq!(got, want, "{m} maxtasksperchild={maxtasks}; stderr: {err}");
        }
    }
}

#[test]
fn a_pool_worker_exiting_while_preparing_the_main_fails_the_map_clearly() {
    let _g = serial::shared();
    let script = temp_script(
        "baseexit",
        r#"import sys, multiprocessing as mp
if __name__ == '__mp_main__':
    if sys.argv[2] == 'exit':
        sys.exit(0)
    raise KeyboardInterrupt
def sq(x):
    return x * x
if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    with mp.Pool(2) as p:
        try:
            p.map(sq, range(5))
        except RuntimeError as e:
            print('failed:', e)
    print('done')
"#,
    );
    // python3 respawns such workers for ever; the parent must neither hang, nor exit
    // quietly with the worker's SystemExit, nor take its KeyboardInterrupt for a Ctrl-C.
    for m in ["spawn", "forkserver"] {
        for (how, named) in [("exit", "SystemExit: 0"), ("interrupt", "KeyboardInterrupt")] {
            let mut cmd = Command::new(procpy());
            cmd.arg(&script).args([m, how]);
            let out = run_with_deadline(cmd, LIMIT);
            assert!(!out.timed_out, "{m} {how}: the map hung");
            let want = format!(
                "failed: a pool worker could not start: preparing the main module raised \
                 {named}\ndone\n"
            );
            assert_eq!(out.stdout, want, "{m} {how}: {}", out.stderr);
            assert_eq!(out.status, Some(0), "{m} {how}: {}", out.stderr);
        }
    }
}
