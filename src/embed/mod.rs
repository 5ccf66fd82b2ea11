//! Embedding: Python functions and scripts in worker processes, called from Rust.
//! See the crate documentation for the tutorial.

pub mod engine;
pub mod error;
pub mod value;
pub mod worker;

/// Enter worker mode if this process was started as a procpy worker; otherwise return at once.
/// Call it first thing in `main()` of every program that is (or may be) a worker program.
///
/// ```
/// procpy::init(); // returns at once: this doctest was not started as a worker
/// ```
pub fn init() {
    use procpy_interpreter::embed::WORKER_FD_ENV;
    let Some(fd) = std::env::var_os(WORKER_FD_ENV) else { return };
    let fd: Option<i32> = fd.to_str().and_then(|s| s.parse().ok());
    // Our Python code's own children (multiprocessing) are not embedding workers. Removing the
    // variable is sound here: init() runs first in main(), before any thread exists.
    std::env::remove_var(WORKER_FD_ENV);
    match fd {
        Some(fd) if fd >= 0 => procpy_interpreter::embed::serve(fd),
        _ => {
            eprintln!("procpy: {WORKER_FD_ENV} is not a descriptor number");
            std::process::exit(2);
        }
    }
}
