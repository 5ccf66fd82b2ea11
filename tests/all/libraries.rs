//! Real libraries built on multiprocessing, run unchanged: pinned pure-Python wheels from PyPI
//! are installed once into a cache directory under the cargo target dir, then each script in
//! tests/libraries runs with `PYTHONPATH` pointing there under python3 and under procpy, once
//! per start method, and must print the same stdout and exit with the same status.
//!
//! Also here: tracebacks through procpy's frozen modules show their source lines.

use crate::common::{procpy, root, run_with_deadline, serial, temp_script, Outcome, METHODS};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The wheels the scripts need, pinned, their dependencies too (joblib 1.6.0 needs
/// cloudpickle, mpire pygments and tqdm), installed with `--no-deps` so that nothing moves.
/// docs/conformance.md ("Libraries") lists them.
const PINS: [&str; 7] = [
    "joblib==1.6.0",
    "cloudpickle==3.1.3",
    "tqdm==4.70.1",
    "parmap==1.7.0",
    "pebble==5.2.3",
    "mpire==2.10.2",
    "pygments==2.21.0",
];

const LIMIT: Duration = Duration::from_secs(120);
const PIP_LIMIT: Duration = Duration::from_secs(600);

/// The directory holding the pinned wheels, installed on first use and reused afterwards (by
/// later test runs too). One install at a time: a lock within this binary, and a file lock
/// against another test binary installing into the same target dir.
fn wheels() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).expect("create the cargo target tmp dir");
        let tag = PINS.join("_").replace("==", "-");
        let dir = base.join(format!("wheels-{tag}"));
        let lock = File::create(base.join("wheels.lock")).expect("create the wheels lock file");
        lock.lock().expect("lock the wheels lock file");
        // `.complete` is written last: a directory without it is a failed or killed install.
        if dir.join(".complete").exists() {
            return dir;
        }
        let partial = base.join(format!("wheels-{tag}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "--no-deps", "--no-input", "--quiet", "--target"])
            .arg(&partial)
            .args(PINS)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        let out = run_with_deadline(pip, PIP_LIMIT);
        assert!(
            !out.timed_out && out.status == Some(0),
            "could not install {PINS:?} from PyPI with `python3 -m pip install --target` \
             (is PyPI reachable?); status {:?}{}\n--- pip stdout:\n{}--- pip stderr:\n{}",
            out.status,
            if out.timed_out { " (killed after the deadline)" } else { "" },
            out.stdout,
            out.stderr
        );
        File::create(partial.join(".complete")).expect("mark the wheels complete");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).expect("move the wheels into place");
        dir
    })
}

/// Run `script` under `interpreter` with the wheels on `PYTHONPATH`.
fn run(interpreter: &Path, script: &Path, method: &str) -> Outcome {
    let mut cmd = Command::new(interpreter);
    cmd.arg(script)
        .arg(method)
        .current_dir(script.parent().unwrap())
        .env("PYTHONPATH", wheels())
        // Libraries' own knobs that would make the two runs differ.
        .env_remove("JOBLIB_MULTIPROCESSING")
        .env_remove("JOBLIB_START_METHOD")
        .env_remove("TQDM_DISABLE");
    run_with_deadline(cmd, LIMIT)
}

fn compare(name: &str) {
    // The scripts start pools of processes under both interpreters: one comparison at a time,
    // as the conformance scripts do.
    let _alone = serial::alone();
    let script = root().join("tests/libraries").join(name);
    let python = PathBuf::from("python3");
    let mut failures = Vec::new();
    for method in METHODS {
        let want = run(&python, &script, method);
        assert!(
            !want.timed_out && want.status == Some(0),
            "CPython itself failed on {name} ({method}): {:?}\n{}",
            want.status,
            want.stderr
        );
        let got = run(&procpy(), &script, method);
        // A Rust panic in any thread (a debug assertion of RustPython included) fails too.
        let panicked = got.stderr.contains("panicked at");
        if panicked || got.timed_out || got.stdout != want.stdout || got.status != want.status {
            failures.push(format!(
                "--- {name} under {method}: status procpy={:?} cpython={:?}{}{}\n--- CPython \
                 stdout:\n{}--- procpy stdout:\n{}--- procpy stderr:\n{}",
                got.status,
                want.status,
                if panicked { " (procpy panicked)" } else { "" },
                if got.timed_out { " (procpy killed after the deadline)" } else { "" },
                want.stdout,
                got.stdout,
                got.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// joblib's `backend="multiprocessing"` (and its import, which probes `_multiprocessing`).
#[test]
fn joblib_multiprocessing_backend() {
    compare("joblib_multiprocessing.py");
}

/// tqdm's `process_map` and `thread_map`, and a bar around `Pool.imap`.
#[test]
fn tqdm_process_map_and_thread_map() {
    compare("tqdm_concurrent.py");
}

/// parmap's map/starmap/map_async over a Pool, its own or one passed in.
#[test]
fn parmap_map_and_starmap() {
    compare("parmap_map.py");
}

/// pebble's ProcessPool (timeouts, max_tasks), ThreadPool and `concurrent.thread`.
#[test]
fn pebble_process_pool() {
    compare("pebble_pools.py");
}

/// mpire's WorkerPool: map, imap_unordered, apply_async, worker state, shared objects.
#[test]
fn mpire_worker_pool() {
    compare("mpire_worker_pool.py");
}

/// Every script in tests/libraries has a test above, so none is silently skipped.
#[test]
fn every_library_script_has_a_test() {
    let _g = serial::shared();
    let this = include_str!("libraries.rs");
    for entry in std::fs::read_dir(root().join("tests/libraries")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".py") {
            assert!(
                this.contains(&format!("compare(\"{name}\")")),
                "tests/libraries/{name} has no test in tests/all/libraries.rs"
            );
        }
    }
}

/// A pool task raises: the remote traceback the parent prints (formatted in the worker by the
/// `traceback` module) shows, under each frame of procpy's frozen multiprocessing.pool, the
/// line of interpreter/py/multiprocessing/pool.py at that line number; so does the parent's
/// own traceback (sys.excepthook).
#[test]
fn remote_traceback_shows_frozen_source_lines() {
    let _g = serial::shared();
    let script = temp_script(
        "pool_raises.py",
        "import multiprocessing\n\
         def boom(x):\n    raise ValueError(x)\n\
         if __name__ == '__main__':\n\
         \x20   with multiprocessing.Pool(1) as pool:\n\
         \x20       pool.apply(boom, (7,))\n",
    );
    let pool_py = std::fs::read_to_string(root().join("interpreter/py/multiprocessing/pool.py"))
        .expect("read pool.py");
    let pool_lines: Vec<&str> = pool_py.lines().collect();
    for method in METHODS {
        let out = crate::common::run_script(&procpy(), &script, &[method], LIMIT);
        assert_eq!(out.status, Some(1), "{method}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        // The remote traceback is quoted between two `"""` lines.
        let quotes: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == "\"\"\"").collect();
        assert_eq!(quotes.len(), 2, "{method}: no quoted remote traceback:\n{}", out.stderr);
        let mut frames = 0;
        let mut remote_frames = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim().strip_prefix("File \"multiprocessing.pool\", line ")
            else {
                continue;
            };
            let lineno: usize = rest.split(',').next().unwrap().parse().expect("a line number");
            let want = pool_lines[lineno - 1].trim();
            let shown = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
            assert_eq!(shown, want, "{method}: frame at pool.py line {lineno}:\n{}", out.stderr);
            frames += 1;
            if quotes[0] < i && i < quotes[1] {
                remote_frames += 1;
            }
        }
        assert!(
            remote_frames >= 1,
            "{method}: no pool frame in the remote traceback:\n{}",
            out.stderr
        );
        assert!(frames > remote_frames, "{method}: no pool frame in the parent's:\n{}", out.stderr);
    }
}

/// Threads nobody references once started are freed on their own thread when they end, which
/// runs Python code (`__del__`, the WeakSet callback of `threading._dangling`): it must print
/// what CPython prints, and no panic (RustPython 0.5.0's debug assertion that a frame has a
/// thread slot; `_procpy_fixes._fix_thread_end`).
#[test]
fn threads_freed_on_their_own_thread_do_not_panic() {
    let _g = serial::shared();
    let script = root().join("tests/scripts/fixes_thread_end.py");
    let want = crate::common::run_script(Path::new("python3"), &script, &["fork"], LIMIT);
    assert_eq!(want.status, Some(0), "CPython: {}", want.stderr);
    for _ in 0..3 {
        let got = crate::common::run_script(&procpy(), &script, &["fork"], LIMIT);
        assert!(!got.stderr.contains("panicked at"), "procpy panicked:\n{}", got.stderr);
        assert_eq!((got.status, &got.stdout), (want.status, &want.stdout), "{}", got.stderr);
    }
}
