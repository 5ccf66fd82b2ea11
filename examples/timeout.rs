//! A runaway script and a runaway call, killed at their timeouts; the host carries on.
//! Run: `cargo run --example timeout`.

use std::time::{Duration, Instant};

fn main() -> Result<(), procpy::Error> {
    procpy::init();

    let engine = procpy::Builder::new()
        .workers(1)
        .source("plugin", "def runaway():\n    n = 0\n    while True:\n        n += 1\n")
        .build()?;

    // A whole script as __main__, with a wall-clock limit.
    let start = Instant::now();
    let script = procpy::Script::source("print('starting')\nwhile True:\n    pass\n")
        .timeout(Duration::from_secs(1));
    match engine.run_script(script) {
        Err(e) if e.is_timeout() => println!("script killed after {:.1?}: {e}", start.elapsed()),
        other => panic!("expected a timeout, got {other:?}"),
    }

    // A function call: its worker is killed and replaced.
    let before = engine.worker_pids();
    let start = Instant::now();
    let err =
        engine.call_timeout::<_, ()>("plugin:runaway", (), Duration::from_millis(500)).unwrap_err();
    assert!(err.is_timeout());
    println!("call killed after {:.1?}: {err}", start.elapsed());

    let v: i64 = engine.call("builtins:sum", vec![1, 2, 3])?;
    println!(
        "the engine still serves: sum = {v}; worker {:?} replaced by {:?}",
        before,
        engine.worker_pids()
    );
    Ok(())
}
