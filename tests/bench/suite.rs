//! `cargo bench --bench suite -- [--runs N] [--scale S] [--write-docs] [script.py ...]`: the
//! benchmark suite against CPython (tests/bench/compare.py) on the procpy binary cargo just built
//! in release mode. The driver is Python (standard library only) because every workload is a
//! Python script run under several interpreters; this wrapper only hands it the binary.

use std::process::{exit, Command};

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    // cargo passes `--bench` to every harness-less benchmark; the driver does not want it.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let status = Command::new("python3")
        .arg(format!("{root}/tests/bench/compare.py"))
        .arg(env!("CARGO_BIN_EXE_procpy"))
        .args(&args)
        .status()
        .unwrap_or_else(|e| {
            eprintln!("cannot run python3 (CPython 3.11 is the baseline of every benchmark): {e}");
            exit(2)
        });
    exit(status.code().unwrap_or(1));
}
