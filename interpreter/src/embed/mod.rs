//! Embedding, the interpreter's half: [`protocol`] is what host and worker say to each other
//! (VM-free: the host side, the `procpy` crate, uses it without an interpreter); [`serve`] is the
//! worker's loop that answers the host.
//!
//! The protocol's items are re-exported here, so `procpy_interpreter::embed::{Frame, Setup, ...}`
//! name them.

pub mod protocol;
mod serve;

pub use protocol::*;
pub use serve::serve;
