//! Writes the seed corpus, corpus/<target>/seed-*, from real encodings: wire values made with
//! `wire::to_bytes`, frames with `embed::write_frame`, fork-server requests laid out as the
//! client sends them. Run from tests/fuzz with `cargo run --example seeds` (a plain build: no
//! fuzzing flags, any toolchain) after a format change, and commit the result. Existing seeds
//! of the same name are overwritten; others (minimized finds) are left alone.

use procpy_fuzz::embed::{self, Frame, PyError, ScriptSpec, Setup};
use procpy_fuzz::forkserver::{HEADER_LEN, MAX_FDS, MAX_REQUEST, REC_ERROR};
use procpy_fuzz::ipc::BODY_STEP;
use procpy_fuzz::wire::{self, Class, Function, HandleKind, MainGlobal, Reduce, Value, MAX_DEPTH};
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut n = 0;
    for (name, v) in pure_values() {
        let b = wire::to_bytes(&v);
        n += write(&root.join("wire_decode"), name, &b)?;
        n += write(&root.join("codec_loads"), name, &b)?;
    }
    for (name, v) in named_values() {
        n += write(&root.join("wire_decode"), name, &wire::to_bytes(&v))?;
    }
    // Malformed on purpose: the error paths are where decoders go wrong.
    let mut truncated = wire::to_bytes(&Value::List(vec![Value::Str(b"truncated".to_vec()); 3]));
    truncated.truncate(truncated.len() - 4);
    for (name, b) in [
        ("malformed-truncated", truncated),
        ("malformed-tag", vec![15, 0]),
        ("malformed-length", vec![8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]),
    ] {
        n += write(&root.join("wire_decode"), name, &b)?;
        n += write(&root.join("codec_loads"), name, &b)?;
    }
    for (name, b) in bodies() {
        n += write(&root.join("frame_body"), name, &b)?;
    }
    for (name, b) in frames()? {
        n += write(&root.join("frame_body"), name, &b)?;
    }
    for (name, b) in door() {
        n += write(&root.join("forkserver_door"), name, &b)?;
    }
    println!("wrote {n} seeds under {}", root.display());
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let path: PathBuf = dir.join(format!("seed-{name}"));
    std::fs::write(path, bytes)?;
    Ok(1)
}

fn s(text: &str) -> Value {
    Value::Str(text.as_bytes().to_vec())
}

fn nested(depth: usize, list: bool) -> Value {
    let mut v = Value::Int(7);
    for _ in 0..depth {
        v = if list { Value::List(vec![v]) } else { Value::Tuple(vec![v]) };
    }
    v
}

/// Values `codec::dumps` makes of plain data (memo indexes as it hands them out).
fn pure_values() -> Vec<(&'static str, Value)> {
    vec![
        ("none", Value::None),
        ("bool", Value::Bool(true)),
        ("int", Value::Int(-42)),
        ("int-min", Value::Int(i64::MIN)),
        ("bigint", Value::BigInt((1u128 << 64).to_le_bytes()[..9].to_vec())),
        ("bigint-negative", Value::BigInt(vec![0x01, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xff])),
        ("float", Value::Float(1.5)),
        ("float-nan", Value::Float(f64::NAN)),
        ("float-inf", Value::Float(f64::NEG_INFINITY)),
        ("str", s("hello")),
        ("str-unicode", s("héllo €𝄞")),
        // A lone surrogate in WTF-8 ('\ud800'), as a str that came from CPython can hold.
        ("str-surrogate", Value::Str(vec![b'a', 0xed, 0xa0, 0x80])),
        ("bytes", Value::Bytes(b"\x00\x01binary\xff".to_vec())),
        ("tuple-empty", Value::Tuple(vec![])),
        ("tuple", Value::Tuple(vec![Value::Int(1), s("two"), Value::Float(3.0), Value::None])),
        ("list", Value::List(vec![Value::Int(1), Value::Bool(false), Value::Bytes(vec![])])),
        ("dict", Value::Dict(vec![(s("a"), Value::Int(1)), (s("b"), Value::List(vec![s("x")]))])),
        (
            "dict-tuple-keys",
            Value::Dict(vec![
                (Value::Tuple(vec![Value::Int(1), s("k")]), Value::None),
                (Value::Int(2), Value::Float(0.5)),
            ]),
        ),
        // [l, l]: one list twice (memo 1 is the inner list; 0 the outer).
        ("shared", Value::List(vec![Value::List(vec![Value::Int(1)]), Value::Memo(1)])),
        // l = []; l.append(l)
        ("list-self", Value::List(vec![Value::Memo(0)])),
        // d = {}; d['me'] = d
        ("dict-self", Value::Dict(vec![(s("me"), Value::Memo(0))])),
        // l = []; t = (l,); l.append(t); send l
        ("list-tuple-cycle", Value::List(vec![Value::Tuple(vec![Value::Memo(0)])])),
        // Refused: a tuple reached inside itself, a memo not yet made, an unhashable key.
        ("tuple-self", Value::Tuple(vec![Value::Memo(0)])),
        ("memo-undefined", Value::List(vec![Value::Memo(5)])),
        ("dict-list-key", Value::Dict(vec![(Value::List(vec![]), Value::None)])),
        (
            "dict-duplicate-keys",
            Value::Dict(vec![
                (s("k"), Value::List(vec![])),
                (s("j"), Value::Int(1)),
                (s("k"), Value::Memo(1)),
            ]),
        ),
        ("nested-400", nested(400, true)),
        // The deepest message accepted (long enough for the decoder's depth walk) and one more.
        ("nested-limit", nested(MAX_DEPTH, false)),
        ("nested-over-limit", nested(MAX_DEPTH + 1, false)),
        ("long-list", Value::List((0..600).map(Value::Int).collect())),
        // l = [l, [], [], ...]: a cycle still being built when 2000 new objects trigger an
        // automatic collection (regressions/README.md).
        (
            "cycle-outlives-gen0",
            Value::List(
                [Value::Memo(0)]
                    .into_iter()
                    .chain((0..2000).map(|_| Value::List(vec![])))
                    .collect(),
            ),
        ),
    ]
}

/// Values that name code or carry descriptors (wire_decode only: codec_loads skips them).
fn named_values() -> Vec<(&'static str, Value)> {
    let global = |m: &str, q: &str| Value::Global { module: m.to_owned(), qualname: q.to_owned() };
    vec![
        ("global", global("collections", "OrderedDict")),
        ("module", global("os.path", "")),
        (
            "reduce",
            Value::Reduce(Box::new(Reduce {
                func: global("collections", "OrderedDict"),
                args: Value::Tuple(vec![]),
                state: Some(Value::Dict(vec![(s("x"), Value::Int(1))])),
                listitems: vec![Value::Int(1)],
                dictitems: vec![(s("a"), Value::Memo(0))],
            })),
        ),
        (
            "handle",
            Value::Tuple(vec![
                Value::Handle { kind: HandleKind::Connection, fds: vec![0], extra: vec![1, 0] },
                Value::Handle { kind: HandleKind::SharedBuffer, fds: vec![1], extra: vec![4096] },
            ]),
        ),
        (
            "function",
            Value::Function(Box::new(Function {
                code: b"\xe3marshalled code".to_vec(),
                globals: Value::Dict(vec![(s("__name__"), s("__main__"))]),
                name: s("f"),
                closure: vec![None, Some(0)],
                names: vec![(s("f"), Value::Memo(0))],
                cells: vec![Some(Value::Int(3))],
                defaults: Value::Tuple(vec![Value::Int(1)]),
                kwdefaults: Value::None,
                qualname: s("outer.<locals>.f"),
                module: s("__main__"),
                doc: Value::None,
                dict: Value::None,
            })),
        ),
        (
            "main-class",
            Value::MainGlobal(Box::new(MainGlobal {
                qualname: "Point".to_owned(),
                token: (7, 0),
                by_value: Value::Class(Box::new(Class {
                    metaclass: global("builtins", "type"),
                    name: s("Point"),
                    bases: Value::Tuple(vec![global("builtins", "object")]),
                    namespace: Value::Dict(vec![(s("__module__"), s("__main__"))]),
                    attrs: vec![(s("dims"), Value::Int(2)), (s("me"), Value::Memo(0))],
                })),
            })),
        ),
    ]
}

/// frame_body, reader 0: `read_body` with a declared length, a memory byte and a script.
fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    // Byte 0: bit 0 = 0 (read_body), bits 1-2 = size of the length (0: u8, 1: u16, 2: u24, 3: u64).
    let u8len = |len: u8| vec![0, len];
    let u24len = |len: usize| {
        let b = (len as u32).to_le_bytes();
        vec![2 << 1, b[0], b[1], b[2]]
    };
    let u64len = |len: u64| {
        let mut v = vec![3 << 1];
        v.extend_from_slice(&len.to_le_bytes());
        v
    };
    let with = |mut head: Vec<u8>, mem: u8, script: &[u8]| {
        head.push(mem);
        head.extend_from_slice(script);
        head
    };
    // Ops: kind in bits 0-2, argument in bits 3-7.
    let input = |n: u8| ((n - 1) << 3) | 2;
    const EOF: u8 = 0;
    const ERR: u8 = (5 << 3) | 1;
    const FILL_1M: u8 = (31 << 3) | 3;
    const FILL_ROOM: u8 = 4;
    const LIE: u8 = (3 << 3) | 5;
    const LIE_MAX: u8 = 6;
    const ONE: u8 = 7;
    let mut hello = vec![input(10)];
    hello.extend_from_slice(b"helloworld");
    let mut split = vec![input(3)];
    split.extend_from_slice(b"hel");
    split.push(input(7));
    split.extend_from_slice(b"loworld");
    let mut short = vec![input(4)];
    short.extend_from_slice(b"four");
    short.push(EOF);
    vec![
        ("body-whole", with(u8len(10), 0, &hello)),
        ("body-split", with(u8len(10), 0, &split)),
        ("body-eof", with(u8len(10), 0, &short)),
        ("body-error", with(u8len(10), 0, &[ONE, ERR])),
        ("body-lie", with(u8len(10), 0, &[ONE, LIE])),
        ("body-lie-max", with(u8len(200), 0, &[LIE_MAX])),
        ("body-empty", with(u8len(0), 0, &[])),
        ("body-room", with(vec![1 << 1, 0x88, 0x13], 0, &[FILL_ROOM, ONE, FILL_ROOM])),
        // Past BODY_STEP: the buffer doubles twice as fills arrive.
        ("body-grows", with(u24len(2 * BODY_STEP + 5), 8, &[FILL_1M, FILL_1M, FILL_ROOM])),
        // Declared 16 MiB (granted), 10 bytes sent, then end of file: one step held, not 16 MiB.
        (
            "body-declared-large",
            with(
                u24len((16 << 20) - 1),
                5,
                &[input(10), b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', b'9', EOF],
            ),
        ),
        // Declared 4 GiB, over the 32 MiB granted: no memory, before any read.
        (
            "body-declared-4g",
            with(
                u64len(4 << 30),
                8,
                &[input(10), b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', b'9', EOF],
            ),
        ),
        ("body-impossible", with(u64len(u64::MAX), 8, &[ONE])),
        ("body-over-limit", with(u64len(1 << 40), 0, &[ONE])),
        // The third allocation fails: after the first read, while the buffer grows.
        (
            "body-fail-midway",
            with(u24len(2 * BODY_STEP), (3 << 4) | 8, &[FILL_1M, FILL_1M, FILL_ROOM]),
        ),
    ]
}

/// frame_body, reader 1: a `u32` length and a postcard frame, as `write_frame` writes them.
fn frames() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    let err = PyError {
        type_name: "ValueError".into(),
        message: "bad".into(),
        traceback: "Traceback...\nValueError: bad\n".into(),
    };
    let args = wire::to_bytes(&Value::Tuple(vec![Value::Int(1), s("two")]));
    let setup = Setup {
        sys_path: vec!["/srv/app".into()],
        sources: vec![("plugin".into(), "def f(x):\n    return x\n".into(), "<plugin>".into())],
        host_fns: vec!["log".into()],
        memory_limit: Some(1 << 30),
        cpu_limit: Some(10),
        script: Some(ScriptSpec {
            path: None,
            source: Some("print(1)".into()),
            argv: vec!["-".into()],
        }),
        cluster: None,
    };
    let list: Vec<(&str, u8, Frame)> = vec![
        ("frame-setup", 1, Frame::Setup(setup)),
        ("frame-setup-default", 1, Frame::Setup(Setup::default())),
        ("frame-ready", 1, Frame::Ready(Ok(4242))),
        ("frame-ready-error", 1, Frame::Ready(Err(err.clone()))),
        ("frame-call", 1, Frame::Call { id: 7, target: "plugin:f".into(), args: args.clone() }),
        // Read a byte at a time, with EINTR on every other read.
        (
            "frame-call-trickle",
            1 | 2 | 32,
            Frame::Call { id: 8, target: "pkg.mod:Cls.method".into(), args: args.clone() },
        ),
        ("frame-reply", 1 | 2 | (4 << 2), Frame::Reply { id: 7, outcome: Ok(args.clone()) }),
        ("frame-reply-error", 1, Frame::Reply { id: 7, outcome: Err(err) }),
        ("frame-host-call", 1, Frame::HostCall { id: 1, name: "log".into(), args: args.clone() }),
        ("frame-host-reply", 1, Frame::HostReply { id: 1, outcome: Ok(args) }),
        (
            "frame-host-reply-error",
            1 | 2 | (3 << 2),
            Frame::HostReply { id: 1, outcome: Err("no such function".into()) },
        ),
    ];
    let mut out = Vec::new();
    for (name, mode, f) in list {
        let mut b = vec![mode];
        embed::write_frame(&mut b, &f)?;
        out.push((name, b));
    }
    let mut truncated = vec![1];
    embed::write_frame(&mut truncated, &Frame::Ready(Ok(1)))?;
    truncated.pop();
    out.push(("frame-truncated", truncated));
    let mut huge = vec![1];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0; 8]);
    out.push(("frame-over-max", huge));
    let mut promised = vec![1];
    promised.extend_from_slice(&(embed::MAX_FRAME as u32).to_le_bytes());
    promised.extend_from_slice(&[2, 1, 0]);
    out.push(("frame-promised-max", promised));
    Ok(out)
}

/// forkserver_door: flags, nonce seed, splits (count, then (size, descriptors) pairs), stream.
/// Flags bit 0 makes the target put the right answer in front of the stream.
fn door() -> Vec<(&'static str, Vec<u8>)> {
    let request = |body: &[u8]| {
        let mut v = (body.len() as u64).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    };
    let seed = |flags: u8, splits: &[(u8, u8)], stream: &[u8]| {
        let mut v = vec![flags, 0x5a, splits.len() as u8];
        for &(size, fds) in splits {
            v.extend_from_slice(&[size, fds]);
        }
        v.extend_from_slice(stream);
        v
    };
    let header = |n: u64| n.to_be_bytes().to_vec();
    let hello = request(b"prep data and process object");
    let mut with_extra = hello.clone();
    with_extra.extend_from_slice(b"trailing");
    let mut error_head = vec![REC_ERROR, 0, 0, 0, 24, 0, 5];
    error_head.extend_from_slice(b"hello");
    assert_eq!(header(1).len(), HEADER_LEN);
    vec![
        ("honest", seed(1, &[], &hello)),
        // The header comes with 3 descriptors, as a start with pipes and a sentinel sends it.
        ("honest-fds", seed(1, &[(32, 0), (8, 3), (0, 0)], &hello)),
        ("honest-bytewise", seed(1, &[(1, 0), (3, 0), (5, 0)], &hello)),
        ("honest-then-more", seed(1 | 4, &[(0, 0), (0, 0), (0, 0), (9, 1)], &with_extra)),
        ("wrong-key", seed(1 | 2, &[], &hello)),
        ("no-answer", seed(0, &[], b"GET / HTTP/1.1\r\nHost: procpy\r\n\r\n12345678")),
        ("fds-with-answer", seed(1, &[(4, 1)], &hello)),
        ("fds-too-many", seed(1, &[(32, 0), (4, 200), (4, (MAX_FDS - 199) as u8)], &hello)),
        ("fds-with-body", seed(1, &[(32, 0), (8, 0), (2, 1)], &hello)),
        ("header-empty", seed(1, &[], &header(0))),
        ("header-too-large", seed(1, &[], &header(1 << 40))),
        ("header-max-body-short", seed(1, &[], &[header(MAX_REQUEST), b"short".to_vec()].concat())),
        ("error-record", seed(0, &[], &error_head)),
        ("error-message-long", seed(0xf0, &[], "é€𝄞".repeat(40).as_bytes())),
    ]
}
