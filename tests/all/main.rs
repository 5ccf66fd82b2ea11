//! procpy's integration tests: one test binary, one module per area, so RustPython is linked
//! once instead of once per area. `cargo test --test all` runs them all; `cargo test --test all
//! pool::` one area; `cargo test --test all adversarial` the adversarial suite.
//!
//! # Running side by side
//!
//! libtest runs the tests of a binary on several threads (one per core), so tests of different
//! areas run at the same time. Every test therefore looks only at what it made: its own child
//! processes and their descendants (pids the script printed, never a scan for "any procpy
//! process"), its own /dev/shm names, its own temporary directory (`common::temp_script` gives
//! each call a fresh one). Limits (`RLIMIT_AS`, `RLIMIT_NOFILE`, `RLIMIT_NPROC`), uids, the
//! working directory and environment variables are set only in child processes (in
//! `pre_exec`, `Command::env`, `prlimit` on a child's pid), never in this process, whose
//! threads all share them; descriptors this process makes are close-on-exec, so another
//! test's child cannot hold them open (the pseudo-terminal of `progress` included).
//!
//! Every test takes a lock from `common::serial` first thing: [`common::serial::shared`] for
//! nearly all, which lets them run beside each other. The exceptions:
//!
//! - `conformance::*` (and `conformance::examples::*`) take [`common::serial::alone`]: one
//!   comparison at a time with nothing else beside it, as when the harness was a binary of its
//!   own. The scripts start several processes and wait with timeouts under python3 and procpy;
//!   with more running at once on a 2-core machine CPython itself misses them.
//! - `bench_smoke::suite_runs_on_a_tiny_size_and_regenerates_the_docs` takes `alone` too: it
//!   runs the benchmark suite, whose workloads (`Pool(2)`, two threads) keep both cores busy on
//!   purpose, as when it was a binary of its own: beside it, other tests' hang guards and
//!   "promptly" checks would get tight, and the timings it prints would mean little.
//! - The tests that run processes as uid 65534 (`nobody`) also hold [`common::serial::nobody`]:
//!   `RLIMIT_NPROC` counts every process and thread of a uid, so two of them at once would use
//!   up each other's limit. They are `adversarial::leaks::{queue_items_survive_descriptor_pressure,
//!   queue_put_without_threads_raises, start_without_processes_raises_and_recovers,
//!   a_manager_out_of_threads_serves_again}` and
//!   `adversarial::forkserver::another_user_cannot_make_the_server_run_code`.
//!
//! The cluster tests (`cluster::*`) also take a lock of their own module, one at a time: each
//! starts a redis-server and several worker processes.
//!
//! Tests that need a host process of their own (`embed_limits::workers_die_with_their_host`,
//! `adversarial::embed::host_in_child`) run an `#[ignore]`d test of this binary in a child
//! process, by its full name (`common::test_name`).

mod common;

mod adversarial;
mod bench_smoke;
mod beyond_cpython;
mod by_value;
mod cluster;
mod cluster_native;
mod conformance;
mod embed_calls;
mod embed_host_fns;
mod embed_limits;
mod embed_pool;
mod embed_values;
mod gil;
mod libraries;
mod main_kinds;
mod managers;
mod pool;
mod progress;
mod prompt;
mod shm;
mod sync;
mod trace;
