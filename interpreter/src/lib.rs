//! procpy's VM room: everything that touches `rustpython-vm`.
//!
//! - [`boot`] builds an interpreter with the frozen stdlib and procpy's own `multiprocessing`;
//! - [`wire`] is the VM-free wire model of the codec, [`codec`] maps Python objects onto it;
//! - [`ipc`] is the VM-free OS plumbing (sockets, descriptor passing, pidfds, shared counters);
//! - [`tracker`] is the resource tracker process (VM-free) and its client side;
//! - `native` is the `_procpy` module that `multiprocessing` is built on;
//! - [`trace`] records `procpy --trace` events (VM-free).
#![deny(missing_docs)]

pub mod boot;
pub mod codec;
pub mod ipc;
mod native;
pub mod trace;
pub mod tracker;
pub mod wire;

pub use boot::{run, RunMode, FORK_SERVER_FLAG, SPAWN_CHILD_FLAG};
pub use tracker::TRACKER_FLAG;
