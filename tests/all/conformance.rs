//! The differential conformance harness: every script in tests/scripts (and every example in
//! examples/) runs under CPython 3.11 (`python3`) and under procpy, once per start method, and
//! must print the same stdout and exit with the same status.

use crate::common::{procpy, root, run_script, serial, METHODS};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);

fn compare(script: &Path) {
    // One comparison at a time, and nothing else beside it: the scripts start several
    // processes each and wait with timeouts; running many at once on a 2-core machine makes
    // CPython itself miss them.
    let _alone = serial::alone();
    let python = PathBuf::from("python3");
    let mut failures = Vec::new();
    for method in METHODS {
        let want = run_script(&python, script, &[method], LIMIT);
        let got = run_script(&procpy(), script, &[method], LIMIT);
        assert!(!want.timed_out, "CPython itself hung on {} ({method})", script.display());
        if got.timed_out || got.stdout != want.stdout || got.status != want.status {
            failures.push(format!(
                "--- {} under {method}: status procpy={:?} cpython={:?}{}\n--- CPython stdout:\n{}--- procpy stdout:\n{}--- procpy stderr:\n{}",
                script.display(),
                got.status,
                want.status,
                if got.timed_out { " (procpy killed after the deadline)" } else { "" },
                want.stdout,
                got.stdout,
                got.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn script(name: &str) -> PathBuf {
    root().join("tests/scripts").join(name)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                compare(&script(concat!(stringify!($name), ".py")));
            }
        )*
        /// Every script on disk must be listed above, so none is silently skipped.
        #[test]
        fn every_script_is_listed() {
            let _serial = serial::shared();
            let listed: Vec<&str> = vec![$(concat!(stringify!($name), ".py")),*];
            for entry in std::fs::read_dir(root().join("tests/scripts")).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                // `_name.py` files are helpers the scripts import, not scripts.
                if name.ends_with(".py") && !name.starts_with('_') {
                    assert!(listed.contains(&name.as_str()), "tests/scripts/{name} is not listed in tests/all/conformance.rs");
                }
            }
        }
    };
}

conformance!(
    authkey_refusals,
    child_exception_exitcode,
    codec_main_objects,
    codec_unpicklable,
    codec_values,
    connection_wait_sentinels,
    context_api,
    current_parent_active,
    daemon_processes,
    dummy_connection,
    dummy_threads_api,
    fixes_length_hint,
    fixes_semlock,
    fixes_thread_end,
    fixes_native_id,
    frames_truncated_garbage,
    forkserver_restart_private,
    futures_process_pool,
    futures_process_pool_more,
    join_at_exit,
    joinable_queue,
    keyboard_interrupt_exit,
    listener_client,
    main_errors,
    manager_basics,
    manager_custom_register,
    manager_proxies,
    mp_submodules,
    nonguarded_main_spawn,
    pipe_basics,
    pipe_bytes_into_and_eof,
    pool_basics,
    pool_callables,
    pool_errors,
    pool_lifecycle,
    pool_reentry,
    process_basics,
    process_descriptor_lifetime,
    process_errors_messages,
    process_exitcode_signals,
    process_subclass_run,
    queue_basics,
    queue_many_producers_consumers,
    queue_timeouts_full_empty,
    shared_memory_basics,
    shared_memory_list,
    shared_value_array,
    simple_queue,
    sync_condition_event_barrier,
    sync_locks,
    terminate_at_once,
    thread_pool,
    timeouts_out_of_range,
);

macro_rules! examples {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                compare(&root().join("examples").join(concat!(stringify!($name), ".py")));
            }
        )*
    };
}

mod examples {
    use super::*;
    examples!(
        args_kwargs,
        countdown_threads_vs_processes,
        daemon_and_sentinels,
        hello_process,
        pi_async_results,
        pool_map_speedup,
        queue_two_children,
        shared_counter_lock,
    );
}
