//! Shared parts of procpy's fuzz targets.
//!
//! The VM-free modules of `interpreter/` are compiled into this crate from their own source
//! files, so the targets that need no interpreter (`wire_decode`, `frame_body`,
//! `forkserver_door`) build in seconds instead of building RustPython. They are the same files
//! `procpy-interpreter` compiles: `forkserver` reaches `crate::ipc`, which resolves to the `ipc`
//! below.
//!
//! [`track`] is a counting global allocator: the targets check that what a decoder or frame
//! reader holds follows from the bytes that arrived, not from a length a peer declared.

#[path = "../../../interpreter/src/embed/protocol.rs"]
pub mod embed;
#[path = "../../../interpreter/src/forkserver.rs"]
pub mod forkserver;
#[path = "../../../interpreter/src/ipc.rs"]
pub mod ipc;
#[path = "../../../interpreter/src/wire.rs"]
pub mod wire;

pub mod track;

#[global_allocator]
static ALLOC: track::Tracking = track::Tracking;

/// Bytes from the front of a fuzz input, with defaults once it runs out: every input, however
/// short, is a complete test case.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Read from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte, 0 past the end.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `N` bytes, zero-padded past the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in out.iter_mut() {
            *b = self.byte();
        }
        out
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
