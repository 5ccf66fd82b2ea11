//! `wire::from_bytes` on arbitrary bytes: the decoder every message between processes goes
//! through before the VM sees it.
//!
//! Checks: no panic, no abort, no stack overflow, whatever the bytes (nesting deeper than
//! `MAX_DEPTH` is refused before postcard recurses). A value that decodes re-encodes to at most
//! as many bytes (the encoding is canonical), and that encoding decodes to the same value
//! (compared as bytes: a NaN is not equal to itself). The shape walk, which only runs on input
//! longer than `MAX_DEPTH` bytes, accepts every well-formed value within the depth limit and
//! refuses the ones beyond it: each decoded value is checked again inside a padded tuple that
//! is long enough to be walked. (Its value count, which guards messages over 256 KiB, is
//! beyond the input sizes fuzzed here.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpy_fuzz::track;
use procpy_fuzz::wire::{self, Value};

fuzz_target!(|data: &[u8]| {
    let session = track::arm(track::DEFAULT_LIMIT, 0);
    let decoded = wire::from_bytes(data);
    let stats = session.stats();
    drop(session);
    track::record_peak("wire_decode", data.len(), stats.peak);
    let Ok(value) = decoded else { return };

    let bytes = wire::to_bytes(&value);
    assert!(bytes.len() <= data.len(), "{} input bytes re-encode to {}", data.len(), bytes.len());
    let again = wire::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("the re-encoding of a decoded value does not decode: {e}"));
    assert!(wire::to_bytes(&again) == bytes, "decode(encode(v)) differs from v");

    let height = height(&value);
    let wrapped = Value::Tuple(vec![value, Value::Bytes(vec![0; wire::MAX_DEPTH])]);
    let wrapped_bytes = wire::to_bytes(&wrapped);
    match wire::from_bytes(&wrapped_bytes) {
        Ok(w) => {
            assert!(
                height < wire::MAX_DEPTH,
                "a value {} deep was accepted (limit {})",
                height + 1,
                wire::MAX_DEPTH
            );
            assert!(wire::to_bytes(&w) == wrapped_bytes, "the padded value did not round-trip");
        }
        Err(e) => assert!(
            height >= wire::MAX_DEPTH,
            "a well-formed value {} deep was refused: {e}",
            height + 1
        ),
    }
});

/// Nesting depth as the decoder counts it: a leaf is 0, a node one more than its deepest part.
fn height(v: &Value) -> usize {
    let max = |it: &mut dyn Iterator<Item = &Value>| it.map(height).max().map_or(0, |h| h + 1);
    match v {
        Value::None
        | Value::Bool(_)
        | Value::Int(_)
        | Value::BigInt(_)
        | Value::Float(_)
        | Value::Str(_)
        | Value::Bytes(_)
        | Value::Global { .. }
        | Value::Memo(_)
        | Value::Handle { .. } => 0,
        Value::Tuple(items) | Value::List(items) => max(&mut items.iter()),
        Value::Dict(pairs) => max(&mut pairs.iter().flat_map(|(k, x)| [k, x])),
        Value::Reduce(r) => max(&mut [&r.func, &r.args]
            .into_iter()
            .chain(r.state.as_ref())
            .chain(&r.listitems)
            .chain(r.dictitems.iter().flat_map(|(k, x)| [k, x]))),
        Value::Function(f) => max(&mut [&f.globals, &f.name]
            .into_iter()
            .chain(f.names.iter().flat_map(|(k, x)| [k, x]))
            .chain(f.cells.iter().flatten())
            .chain([&f.defaults, &f.kwdefaults, &f.qualname, &f.module, &f.doc, &f.dict])),
        Value::MainGlobal(m) => height(&m.by_value) + 1,
        Value::Class(c) => max(&mut [&c.metaclass, &c.name, &c.bases, &c.namespace]
            .into_iter()
            .chain(c.attrs.iter().flat_map(|(k, x)| [k, x]))),
    }
}
