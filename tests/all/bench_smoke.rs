//! The benchmark suite runs end to end on a tiny size (timings are printed, never asserted):
//! every workload yields a number under both interpreters, and the docs it regenerates keep
//! the hand-written part of performance.md while replacing the generated section and chart.

use crate::common::{procpy, root, run_with_deadline, serial};
use std::process::Command;
use std::time::Duration;

#[test]
fn suite_runs_on_a_tiny_size_and_regenerates_the_docs() {
    let _alone = serial::alone();
    let dir = std::env::temp_dir().join(format!("procpy-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let md = dir.join("performance.md");
    std::fs::copy(root().join("docs/performance.md"), &md).unwrap();
    let before = std::fs::read_to_string(&md).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/bench/compare.py"))
        .arg(procpy())
        .args(["--runs", "1", "--scale", "0.01", "--write-docs"])
        .arg(&dir)
        .env_remove("PROCPY_BENCH_RUSTPYTHON")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin"); // the peer, if installed elsewhere, is not needed here
    let out = run_with_deadline(cmd, Duration::from_secs(600));
    assert_eq!(out.status, Some(0), "suite failed:\n{}\n{}", out.stdout, out.stderr);
    for label in [
        "fork start+join",
        "forkserver start+join",
        "spawn start+join",
        "Queue child->parent",
        "Pipe round trip",
        "Pipe 64 x 4 MiB",
        "Pool(2).map identity",
        "apply_async().get()",
        "Pool(2) speedup",
        "2 threads speedup",
        "Lock acquire+release",
    ] {
        assert!(out.stdout.contains(label), "no '{label}' row in:\n{}", out.stdout);
    }
    let after = std::fs::read_to_string(&md).unwrap();
    let hand_written =
        before.split("<!-- benchmark suite: generated from here -->").next().unwrap();
    assert!(after.starts_with(hand_written), "the hand-written part of performance.md changed");
    assert_eq!(
        after.matches("generated from here").count(),
        1,
        "one generated section, replaced in place"
    );
    let svg = std::fs::read_to_string(dir.join("performance-ratios.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<rect").count() >= 10, "a bar per workload with a target:\n{svg}");
    let _ = std::fs::remove_dir_all(&dir);
}
