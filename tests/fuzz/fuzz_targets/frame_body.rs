//! The two readers of a length-prefixed frame whose length a peer declared.
//!
//! Input byte 0, bit 0 picks the reader:
//!
//! 0: `ipc::read_body(len, read)`, the body reader of every connection, queue record and boot
//!    channel. Then: the declared length (bits 1-2 of byte 0 pick its size: 1, 2 or 3 bytes, or
//!    8 for lengths up to `usize::MAX`), a memory byte (low nibble: the largest allocation
//!    granted, 1 MiB << 0..=5; high nibble: which allocation fails, 0 = none), then the reader's
//!    script, one op per byte (low 3 bits: kind, high 5 bits: argument). The reader delivers
//!    input bytes, synthetic fills of up to 1 MiB (so bodies grow past `BODY_STEP`), errors,
//!    end of file, and lies: counts larger than the room it was given. Checks: the body is
//!    exactly the delivered bytes (bytes the reader claimed but did not write are zero: no
//!    stale memory), or the error is the right one (EOF after exactly the bytes delivered, the
//!    reader's own error, no memory only when an allocation was refused or the length cannot
//!    be allocated at all); the reader is never offered an empty slice; and at every read the
//!    bytes held are at most the larger of one step and twice what was delivered, whatever the
//!    declared length (the documented rule; the trial allocation of a large declared length is
//!    released before the first read).
//!
//! 1: `embed::read_frame` on the rest of the input (a `u32` length then a postcard `Frame`),
//!    read whole or in pieces (bits 1-4) with `Interrupted` on every other read (bit 5).
//!    Checks: the outcome is what the length and a direct decode of the body predict (frame,
//!    `UnexpectedEof`, `InvalidData`), the reader stops exactly at the frame's end, a frame
//!    re-encodes and reads back equal, and the heap held stays linear in the bytes that arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpy_fuzz::embed::{self, Frame};
use procpy_fuzz::ipc::{self, BodyError};
use procpy_fuzz::{track, Input};
use std::io::{self, ErrorKind, Read};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    if mode & 1 == 0 {
        body(mode, input);
    } else {
        frame(mode, input.rest());
    }
});

/// Synthetic bytes one input may deliver: enough for the buffer to double past `BODY_STEP`
/// twice (1 -> 2 -> 4 MiB), little enough to keep an execution in milliseconds under ASan.
const FILL_BUDGET: usize = 3 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Boom(u8);

#[derive(Debug, Clone, Copy)]
enum Src {
    /// Bytes of the script, from this offset.
    Script(usize),
    /// A fill of this (non-zero) byte.
    Fill(u8),
}

/// One call of the reader, for the replay that checks the body.
#[derive(Debug, Clone, Copy)]
struct Call {
    room: usize,
    wrote: usize,
    src: Src,
    returned: Result<usize, Boom>,
}

fn body(mode: u8, mut input: Input) {
    let len = match (mode >> 1) & 3 {
        0 => input.byte() as usize,
        1 => u16::from_le_bytes(input.array()) as usize,
        2 => {
            let [a, b, c] = input.array();
            u32::from_le_bytes([a, b, c, 0]) as usize
        }
        _ => u64::from_le_bytes(input.array()) as usize,
    };
    let mem = input.byte();
    // 1 MiB to 32 MiB: every 24-bit length can be granted, or not; the logic is the same for
    // larger ones, which would only make each execution slower.
    let limit = 1usize << (20 + (mem & 15).min(5));
    let fail_at = usize::from(mem >> 4);
    let script = input.rest();

    // Every call but the last consumes at least one op, so this never grows (no allocation by
    // the harness while the session counts).
    let mut log: Vec<Call> = Vec::with_capacity(script.len() + 1);
    let step_or_len = len.min(ipc::BODY_STEP);
    let mut pos = 0;
    let mut delivered = 0usize;
    let mut fill_left = FILL_BUDGET;
    let mut most_held = 0isize;

    let session = track::arm(limit, fail_at);
    let result = ipc::read_body(len, |b: &mut [u8]| {
        let room = b.len();
        assert!(room > 0, "the reader was offered an empty slice ({delivered} of {len} delivered)");
        let buffer = delivered + room;
        assert!(buffer <= len, "a buffer of {buffer} bytes for a body of {len}");
        let held = session.live();
        most_held = most_held.max(held);
        let bound = step_or_len.max(len.min(delivered.saturating_mul(2)));
        assert!(
            held >= 0 && held as usize <= bound,
            "{held} bytes held after {delivered} of {len} delivered (at most {bound} allowed)"
        );
        let fill = 0x80 | (log.len() as u8 & 0x7f);
        let Some((&op, rest)) = script.get(pos..).and_then(|s| s.split_first()) else {
            log.push(Call { room, wrote: 0, src: Src::Fill(fill), returned: Ok(0) });
            return Ok(0);
        };
        pos += 1;
        let arg = usize::from(op >> 3);
        let (src, wrote, returned) = match op & 7 {
            0 => (Src::Fill(fill), 0, Ok(0)),
            1 => (Src::Fill(fill), 0, Err(Boom(op >> 3))),
            2 => {
                let chunk = &rest[..(arg + 1).min(rest.len())];
                let w = chunk.len().min(room);
                b[..w].copy_from_slice(&chunk[..w]);
                let src = Src::Script(pos);
                pos += chunk.len();
                (src, w, Ok(w))
            }
            3 => {
                let w = ((arg + 1) * (arg + 1) * 1024).min(room).min(fill_left);
                (Src::Fill(fill), w, Ok(w))
            }
            4 => {
                let w = room.min(fill_left);
                (Src::Fill(fill), w, Ok(w))
            }
            // Lies: more than the room, with fewer bytes (or all of them) written.
            5 => (Src::Fill(fill), arg.min(room), Ok(room + 1 + arg)),
            6 => {
                let w = room.min(fill_left);
                (Src::Fill(fill), w, Ok(if w == 0 { 0 } else { usize::MAX }))
            }
            _ => (Src::Fill(fill), 1, Ok(1)),
        };
        if let Src::Fill(f) = src {
            b[..wrote].fill(f);
            fill_left = fill_left.saturating_sub(wrote);
        }
        if let Ok(n) = returned {
            delivered += n.min(room);
        }
        log.push(Call { room, wrote, src, returned });
        returned
    });
    let stats = session.stats();
    drop(session);
    track::record_peak("frame_body", delivered, most_held);

    match result {
        Ok(body) => {
            assert_eq!(body.len(), len);
            assert_eq!(delivered, len);
            assert!(
                body.capacity() <= len,
                "a body of {len} bytes in a buffer of {}",
                body.capacity()
            );
            assert_eq!(stats.live, body.capacity() as isize, "held beside the body");
            replay(&log, script, &body);
        }
        Err(BodyError::Eof { got }) => {
            assert_eq!(got, delivered);
            assert!(got < len);
            assert!(
                matches!(log.last(), Some(Call { returned: Ok(0), .. })),
                "EOF without a read returning 0: {:?}",
                log.last()
            );
            assert_eq!(stats.live, 0, "held after EOF");
        }
        Err(BodyError::Read(e)) => {
            assert!(matches!(log.last(), Some(&Call { returned: Err(mine), .. }) if mine == e));
            assert_eq!(stats.live, 0, "held after a read error");
        }
        Err(BodyError::NoMemory { len: l }) => {
            assert_eq!(l, len);
            assert!(
                stats.refused > 0 || len > isize::MAX as usize,
                "no memory for {len} bytes, yet no allocation was refused ({stats:?})"
            );
            assert_eq!(stats.live, 0, "held after running out of memory");
        }
    }
}

/// The body must be what the reader delivered, call by call.
fn replay(log: &[Call], script: &[u8], body: &[u8]) {
    let mut at = 0;
    for c in log {
        let Ok(n) = c.returned else { panic!("the body completed after a read error") };
        let got = n.min(c.room);
        assert!(got > 0, "the body completed after a read returned 0");
        let (written, unwritten) = body[at..at + got].split_at(c.wrote);
        match c.src {
            Src::Script(off) => assert!(
                written == &script[off..off + c.wrote],
                "body bytes at {at} differ from the delivered ones"
            ),
            Src::Fill(f) => assert!(
                written.iter().all(|&x| x == f),
                "body bytes at {at} differ from the delivered fill"
            ),
        }
        assert!(
            unwritten.iter().all(|&x| x == 0),
            "claimed but unwritten bytes at {} are not zero",
            at + c.wrote
        );
        at += got;
    }
    assert_eq!(at, body.len());
}

/// A reader handing out at most `step` bytes a call, `Interrupted` every other call if asked.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    step: usize,
    interrupt: bool,
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt && self.calls % 2 == 1 {
            return Err(ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.step).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What `read_frame` must make of `stream`, worked out from the format.
fn expect(stream: &[u8]) -> Result<(Frame, usize), ErrorKind> {
    let Some((head, rest)) = stream.split_first_chunk::<4>() else {
        return Err(ErrorKind::UnexpectedEof);
    };
    let len = u32::from_le_bytes(*head) as usize;
    if len > embed::MAX_FRAME {
        return Err(ErrorKind::InvalidData);
    }
    let body = rest.get(..len).ok_or(ErrorKind::UnexpectedEof)?;
    let frame = postcard::from_bytes::<Frame>(body).map_err(|_| ErrorKind::InvalidData)?;
    Ok((frame, 4 + len))
}

fn frame(mode: u8, stream: &[u8]) {
    const STEPS: [usize; 8] = [1, 2, 3, 7, 64, 1000, 4096, usize::MAX];
    let expected = expect(stream);
    let step = if mode & 2 != 0 { STEPS[usize::from(mode >> 2) & 7] } else { usize::MAX };
    let mut reader = Trickle { data: stream, pos: 0, step, interrupt: mode & 32 != 0, calls: 0 };

    let session = track::arm(track::DEFAULT_LIMIT, 0);
    let result = embed::read_frame(&mut reader);
    let stats = session.stats();
    drop(session);
    track::record_peak("frame_body", reader.pos, stats.peak);

    // The body buffer starts at 64 KiB and doubles with what arrives; decoding may preallocate
    // up to (remaining bytes x element size) per sequence (postcard caps serde's size hint by
    // the bytes left). Linear in the bytes read, whatever the header says.
    let bound = (128 << 10) + 256 * reader.pos;
    assert!(
        stats.peak >= 0 && stats.peak as usize <= bound,
        "{} bytes held reading {} bytes",
        stats.peak,
        reader.pos
    );
    assert_eq!(stats.refused, 0, "an allocation was refused: {stats:?}");

    match (result, expected) {
        (Ok(f), Ok((want, end))) => {
            assert_eq!(f, want);
            assert_eq!(reader.pos, end, "the reader did not stop at the frame's end");
            let mut again = Vec::new();
            embed::write_frame(&mut again, &f).expect("a frame that was read can be written");
            assert_eq!(embed::read_frame(&mut &again[..]).expect("a written frame reads back"), f);
        }
        (Err(e), Err(kind)) => {
            assert_eq!(e.kind(), kind, "{e}");
            if kind == ErrorKind::UnexpectedEof {
                assert_eq!(reader.pos, stream.len(), "EOF before the end of the input");
            }
        }
        (got, want) => panic!("read_frame gave {got:?}, the format says {want:?}"),
    }
}
