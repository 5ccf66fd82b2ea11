//! `codec::loads` in a real interpreter: the pure-data part of the decoder (None, bool, int,
//! float, str, bytes, tuple, list, dict and memo references, cycles included).
//!
//! Only inputs whose value names nothing are decoded: a `Global`, `Reduce` or `Function` makes
//! the decoder import a module and call what it finds (the fuzzer would find `os.system`), and
//! a `Handle` takes descriptors. Those paths are the documented trust boundary (a message is
//! code from a peer that holds the channel, as with pickle), not something to fuzz in-process.
//! Inputs that do not decode at all are passed on: `loads` refuses them before anything else.
//!
//! Checks: `loads` returns an object or a Python exception, never a panic or an abort. A
//! decoded object encodes again (`dumps`), unless it nests deeper than the encoder allows
//! (`RecursionError`); that encoding decodes, unless it holds a tuple that is reached first
//! inside its own cycle (a limitation the decoder reports as "recursive reference to an object
//! still being built"); and encoding the result gives the same bytes (a fixed point).
//!
//! Built only with `--features vm` (it links all of RustPython).
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpy_interpreter::boot;
use procpy_interpreter::codec::{self, Handles};
use procpy_interpreter::wire::{self, Value};
use rustpython_vm::builtins::PyBaseExceptionRef;
use rustpython_vm::{AsObject, Interpreter, VirtualMachine};
use std::cell::OnceCell;

/// Larger inputs are skipped: they would only make bigger strings and ints, slowly.
const MAX_INPUT: usize = 4096;

/// Objects in generation 1 that trigger a collection of it. RustPython 0.5 collects only
/// generation 0 by itself, so cyclic garbage that outlived one collection (a decoded cycle
/// still being built when one ran) stays until `gc.collect()`: without this, such inputs pile
/// up garbage until libFuzzer's memory limit ends the run (regressions/README.md). The
/// survivors of a collection move to generation 2, so each one scans little but new garbage.
const GEN1_LIMIT: usize = 10_000;

thread_local! {
    // Booted once per process; leaked so that no finalizer runs at exit.
    static INTERP: OnceCell<&'static Interpreter> = const { OnceCell::new() };
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    if let Ok(v) = wire::from_bytes(data) {
        if !pure(&v) {
            return;
        }
    }
    INTERP.with(|cell| {
        let interp = cell.get_or_init(|| {
            Box::leak(Box::new(boot::builder(vec!["codec_loads".to_owned()]).build()))
        });
        interp.enter(|vm| {
            check(vm, data);
            let gc = rustpython_vm::gc_state::gc_state();
            if gc.get_count().1 > GEN1_LIMIT {
                gc.collect_force(1);
            }
        });
    });
});

fn check(vm: &VirtualMachine, data: &[u8]) {
    let Ok(obj) = codec::loads(vm, data, &[]) else { return };
    let bytes = match codec::dumps(vm, &obj, Handles::Refuse) {
        Ok(b) => b,
        Err(e) if e.fast_isinstance(vm.ctx.exceptions.recursion_error) => return,
        Err(e) => panic!("a decoded object does not encode: {}", describe(vm, &e)),
    };
    let again = match codec::loads(vm, &bytes, &[]) {
        Ok(o) => o,
        Err(e)
            if describe(vm, &e).contains("recursive reference to an object still being built") =>
        {
            return
        }
        Err(e) => panic!("the encoding of a decoded object does not decode: {}", describe(vm, &e)),
    };
    match codec::dumps(vm, &again, Handles::Refuse) {
        Ok(b) => assert!(b == bytes, "encode(decode(encode(x))) differs from encode(x)"),
        Err(e) => panic!("a decoded object does not encode the second time: {}", describe(vm, &e)),
    }
}

fn describe(vm: &VirtualMachine, e: &PyBaseExceptionRef) -> String {
    let text = e.as_object().str(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{}: {text}", e.class().name())
}

/// Whether `v` is data only: nothing that resolves a name, calls, or takes a descriptor.
/// Exhaustive on purpose: a new variant must be classified here before this target builds.
fn pure(v: &Value) -> bool {
    match v {
        Value::None
        | Value::Bool(_)
        | Value::Int(_)
        | Value::BigInt(_)
        | Value::Float(_)
        | Value::Str(_)
        | Value::Bytes(_)
        | Value::Memo(_) => true,
        Value::Tuple(items) | Value::List(items) => items.iter().all(pure),
        Value::Dict(pairs) => pairs.iter().all(|(k, x)| pure(k) && pure(x)),
        Value::Global { .. }
        | Value::Reduce(_)
        | Value::Function(_)
        | Value::Handle { .. }
        | Value::MainGlobal(_)
        | Value::Class(_) => false,
    }
}
