//! procpy's VM room: everything that touches `rustpython-vm`.
//!
//! - [`cluster`] is the VM-free half of `_procpy_cluster` (URL masking, payload MACs);
//! - [`boot`] builds an interpreter with the frozen stdlib and procpy's own `multiprocessing`;
//! - [`wire`] is the VM-free wire model of the codec, [`codec`] maps Python objects onto it;
//! - [`ipc`] is the VM-free OS plumbing (sockets, descriptor passing, pidfds, shared counters);
//! - [`forkserver`] is the fork server's VM-free door: its socket, handshake and request framing;
//! - [`tracker`] is the resource tracker process (VM-free) and its client side;
//! - [`trace`] records `procpy --trace` events (VM-free);
//! - [`switches`] hands `--emulate-gil`, `--progress` and `--trace` to every process (VM-free);
//! - [`repl`] is the interactive prompt (`procpy` on a terminal, `procpy -i`);
//! - [`embed`] is embedding's worker side: the host<->worker protocol and the worker's serve loop;
//! - `native` is the `_procpy` module that `multiprocessing` is built on.
#![deny(missing_docs)]

pub mod boot;
pub mod cluster;
pub mod codec;
pub mod embed;
pub mod forkserver;
pub mod ipc;
mod native;
pub mod repl;
pub mod switches;
pub mod trace;
pub mod tracker;
pub mod wire;

pub use boot::{run, run_interactive, Interactive, RunMode, FORK_SERVER_FLAG, SPAWN_CHILD_FLAG};
pub use tracker::TRACKER_FLAG;
