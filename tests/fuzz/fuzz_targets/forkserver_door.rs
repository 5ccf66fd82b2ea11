//! The fork server's door, without sockets: the per-connection state machine `Inbound` and the
//! record helpers (`answer`, `verify`, `request_len`, `encode_error`, `decode_error_head`).
//!
//! Input: a flags byte, a nonce seed, a split count (0-16) and that many (size, descriptor
//! count) pairs, then the client's byte stream. Flags bit 0 puts the right answer to the nonce
//! (HMAC under the server's key) in front of the stream, so the fuzzer gets past the door to the
//! header and body; bit 1 computes that answer under another key instead; bit 2 keeps feeding
//! after the request is complete; bits 4-7 repeat the error message fed to `encode_error`.
//! The stream is fed as the server would: one read per split (size 0: all that `want()` asks
//! for), cycling through the splits, a read never taking more than `want()` (the slice handed
//! to `feed` may be longer: it must take only what it asked for).
//!
//! Checks, against a model of the protocol written from its description (forkserver.rs):
//! `want`, `done`, `authenticated` and `fds_allowed` at every step; each `feed`'s result,
//! errors included (descriptors with the answer or the body, more than `MAX_FDS`, a wrong
//! answer, an empty or oversized header); no request byte is taken before a right answer;
//! the body is exactly the header's length of bytes after it, held in a buffer that grew with
//! what arrived (at most twice that), never with what the header declared; nothing changes
//! once done. And: `verify` accepts exactly `answer`'s bytes; `request_len` and the error
//! records follow the format (a message cut at a char boundary to at most `MAX_MESSAGE`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpy_fuzz::forkserver::{
    answer, decode_error_head, encode_error, request_len, verify, Inbound, Reject, ANSWER_LEN,
    ERROR_HEAD_LEN, HEADER_LEN, KEY_LEN, MAX_FDS, MAX_MESSAGE, MAX_REQUEST, NONCE_LEN, REC_ERROR,
};
use procpy_fuzz::{track, Input};

/// The server's key (any 32 bytes: the door must not depend on which).
const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
/// A key the client should not have.
const OTHER_KEY: [u8; KEY_LEN] = [8; KEY_LEN];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let seed = input.byte();
    let nonce: [u8; NONCE_LEN] =
        std::array::from_fn(|i| seed.wrapping_add((i as u8).wrapping_mul(37)));
    let splits: Vec<(u8, u8)> =
        (0..input.byte() % 17).map(|_| (input.byte(), input.byte())).collect();
    let rest = input.rest();

    let mut stream = Vec::with_capacity(ANSWER_LEN + rest.len());
    if flags & 1 != 0 {
        stream.extend_from_slice(&answer(if flags & 2 != 0 { &OTHER_KEY } else { &KEY }, &nonce));
    }
    stream.extend_from_slice(rest);

    door(&nonce, &splits, &stream, flags & 4 != 0);
    handshake(&nonce, rest);
    records(flags, seed, rest);
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Answer,
    Header,
    Body,
    Done,
}

fn door(nonce: &[u8; NONCE_LEN], splits: &[(u8, u8)], stream: &[u8], feed_after_done: bool) {
    let right = answer(&KEY, nonce);
    let mut inb = Inbound::new(*nonce);
    assert_eq!(inb.nonce(), nonce);

    // The model: where the stream is, what phase the protocol is in, and what it has counted.
    let mut phase = Phase::Answer;
    let mut off = 0;
    let mut part = 0;
    let mut fds = 0usize;
    let mut len = 0usize;
    let mut turn = 0;

    let session = track::arm(track::DEFAULT_LIMIT, 0);
    loop {
        let want = inb.want();
        assert_eq!(inb.done(), phase == Phase::Done);
        assert_eq!(inb.authenticated(), phase != Phase::Answer);
        assert_eq!(inb.fds_allowed(), phase == Phase::Header, "descriptors allowed in {phase:?}");
        match phase {
            Phase::Answer => assert_eq!(want, ANSWER_LEN - part),
            Phase::Header => assert_eq!(want, HEADER_LEN - part),
            Phase::Body => assert!(
                want > 0 && want <= len - part,
                "want {want} with {} of the body to come",
                len - part
            ),
            Phase::Done => assert_eq!(want, 0),
        }
        // The body's buffer grows with the bytes that arrived, never with the header's length.
        let held = session.live();
        let body_got = match phase {
            Phase::Body => part,
            Phase::Done => len,
            Phase::Answer | Phase::Header => 0,
        };
        assert!(
            held >= 0 && held as usize <= (2 * body_got).max(8),
            "{held} bytes held with {body_got} body bytes in"
        );
        if phase == Phase::Done || off == stream.len() {
            break;
        }

        let (size, nfds) = if splits.is_empty() { (0, 0) } else { splits[turn % splits.len()] };
        turn += 1;
        let size = if size == 0 { want } else { usize::from(size) };
        let chunk = &stream[off..stream.len().min(off + size)];
        let nfds = usize::from(nfds);
        let took = chunk.len().min(want);

        let expected = match phase {
            Phase::Answer if nfds > 0 => Err(Reject::UnexpectedFds),
            Phase::Answer => {
                part += took;
                if part < ANSWER_LEN {
                    Ok(false)
                } else if stream[..ANSWER_LEN] == right {
                    (phase, part) = (Phase::Header, 0);
                    Ok(false)
                } else {
                    Err(Reject::BadAnswer)
                }
            }
            Phase::Header => {
                fds += nfds;
                part += took;
                if fds > MAX_FDS {
                    Err(Reject::TooManyFds(fds))
                } else if part < HEADER_LEN {
                    Ok(false)
                } else {
                    let header = &stream[ANSWER_LEN..ANSWER_LEN + HEADER_LEN];
                    match u64::from_be_bytes(header.try_into().expect("8 bytes")) {
                        0 => Err(Reject::Empty),
                        n if n > MAX_REQUEST => Err(Reject::TooLarge(n)),
                        n => {
                            (phase, part, len) = (Phase::Body, 0, n as usize);
                            Ok(false)
                        }
                    }
                }
            }
            Phase::Body if nfds > 0 => Err(Reject::UnexpectedFds),
            Phase::Body => {
                part += took;
                if part == len {
                    phase = Phase::Done;
                }
                Ok(phase == Phase::Done)
            }
            Phase::Done => unreachable!("the loop ends once done"),
        };
        let got = inb.feed(&KEY, chunk, nfds);
        assert_eq!(
            got,
            expected,
            "feeding {} bytes ({took} wanted) with {nfds} descriptors",
            chunk.len()
        );
        if let Err(reject) = got {
            // The server drops the connection, telling the client why.
            assert!(reject.errno() > 0);
            assert!(reject.to_string().starts_with("fork server: "));
            return;
        }
        off += took;
    }
    let stats = session.stats();
    drop(session);
    track::record_peak("forkserver_door", off, stats.peak);

    if phase != Phase::Done {
        return;
    }
    if feed_after_done {
        for (i, &(size, nfds)) in splits.iter().enumerate() {
            let extra = &stream[off..stream.len().min(off + usize::from(size))];
            assert_eq!(inb.feed(&KEY, extra, usize::from(nfds)), Ok(true), "feed {i} after done");
            assert_eq!(inb.want(), 0);
            assert!(!inb.fds_allowed());
        }
    }
    let body = inb.into_body();
    let start = ANSWER_LEN + HEADER_LEN;
    assert!(body == stream[start..start + len], "the body is not the {len} bytes after the header");
    assert!(
        body.capacity() <= (2 * len).max(8),
        "a body of {len} bytes in a buffer of {}",
        body.capacity()
    );
}

/// `verify` accepts the answer `answer` computes and nothing else, under any key.
fn handshake(nonce: &[u8; NONCE_LEN], rest: &[u8]) {
    let right = answer(&KEY, nonce);
    assert!(verify(&KEY, nonce, &right));
    assert!(!verify(&OTHER_KEY, nonce, &right));
    let candidate = &rest[..rest.len().min(ANSWER_LEN)];
    assert_eq!(verify(&KEY, nonce, candidate), candidate == right, "verify disagrees with answer");
    // The HMAC takes a key of any length (the server's is always KEY_LEN bytes).
    let key = &rest[..rest.len().min(97)];
    assert!(verify(key, nonce, &answer(key, nonce)));
    if !rest.is_empty() {
        let mut wrong = answer(key, nonce);
        wrong[rest[0] as usize % ANSWER_LEN] ^= 1 << (rest[0] >> 5);
        assert!(!verify(key, nonce, &wrong), "a flipped bit was accepted");
    }
}

fn records(flags: u8, seed: u8, rest: &[u8]) {
    let mut input = Input::new(rest);
    // A length header as the wire carries it.
    let header: [u8; HEADER_LEN] = input.array();
    let n = u64::from_be_bytes(header);
    match request_len(header) {
        Ok(len) => assert!(n != 0 && n <= MAX_REQUEST && len as u64 == n, "{n} accepted as {len}"),
        Err(Reject::Empty) => assert_eq!(n, 0),
        Err(Reject::TooLarge(m)) => assert!(m == n && n > MAX_REQUEST),
        Err(other) => panic!("request_len({n}) gave {other:?}"),
    }

    // Any 7 bytes as an error record's head.
    let mut input = Input::new(rest);
    let head: [u8; ERROR_HEAD_LEN] = input.array();
    let declared = usize::from(u16::from_be_bytes([head[5], head[6]]));
    match decode_error_head(&head) {
        Some((errno, len)) => {
            assert!(head[0] == REC_ERROR && declared <= MAX_MESSAGE);
            assert_eq!(
                (errno, len),
                (i32::from_be_bytes([head[1], head[2], head[3], head[4]]), declared)
            );
        }
        None => assert!(head[0] != REC_ERROR || declared > MAX_MESSAGE),
    }

    // Our own records round-trip, cut to at most MAX_MESSAGE bytes at a char boundary.
    let errno = i32::from_le_bytes([seed, flags, seed ^ flags, seed.wrapping_mul(3)]);
    // Repeated (bits 4-7) so that short inputs reach the cut too; a few KiB at most.
    let base = String::from_utf8_lossy(rest);
    let message = base.repeat((1 + usize::from(flags >> 4)).min(1 + 4096 / base.len().max(1)));
    let rec = encode_error(errno, &message);
    let head: [u8; ERROR_HEAD_LEN] = rec[..ERROR_HEAD_LEN].try_into().expect("a whole head");
    let (e, len) = decode_error_head(&head).expect("our own record decodes");
    assert_eq!(e, errno);
    assert_eq!(rec.len(), ERROR_HEAD_LEN + len);
    let text =
        std::str::from_utf8(&rec[ERROR_HEAD_LEN..]).expect("the message is cut at a char boundary");
    assert!(message.starts_with(text));
    if message.len() <= MAX_MESSAGE {
        assert_eq!(text.len(), message.len());
    } else {
        // A UTF-8 char is at most 4 bytes: the cut loses at most 3 bytes of the last one.
        assert!(
            text.len() <= MAX_MESSAGE && text.len() + 3 >= MAX_MESSAGE,
            "cut to {} bytes",
            text.len()
        );
    }
}
