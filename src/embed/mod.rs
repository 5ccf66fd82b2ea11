//! Embedding: Python functions and scripts in worker processes, called from Rust.
//! See the crate documentation for the tutorial.

pub(crate) mod builder;
pub(crate) mod error;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod script;
pub(crate) mod task;
pub(crate) mod value;

/// Enter worker mode if this process was started as a procpy worker; otherwise return at once.
/// Call it first thing in `main()` of every program that is (or may be) a worker program.
///
/// A worker is started with the argument `--procpy-embed-fd=N`, N being its end of the socket
/// to the host; `init()` reads it and changes nothing in the process (its environment
/// included), and a worker's own children (Python `multiprocessing`) are not started with it.
///
/// ```
/// procpy::init(); // returns at once: this doctest was not started as a worker
/// ```
pub fn init() {
    let Some(fd) = process::worker_fd_arg() else { return };
    match fd.to_str().and_then(|s| s.parse::<i32>().ok()) {
        Some(fd) if fd >= 0 => procpy_interpreter::embed::serve(fd),
        _ => {
            eprintln!(
                "procpy: {}{} is not a descriptor number",
                process::WORKER_FD_ARG,
                fd.to_string_lossy()
            );
            std::process::exit(2);
        }
    }
}
