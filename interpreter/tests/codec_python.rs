//! Property tests of the codec on real Python objects, inside one booted interpreter:
//! every generated value survives `loads(dumps(x))` with its type and repr, and arbitrary bytes
//! given to `loads` raise a Python exception instead of crashing the process.

use proptest::prelude::*;
use rustpython_vm::scope::Scope;
use rustpython_vm::{Interpreter, VirtualMachine};

fn interp() -> Interpreter {
    procpy_interpreter::boot::builder(vec![String::new()]).build()
}

const HELPERS: &str = r#"
import _procpy
def check(x):
    y = _procpy.loads(_procpy.dumps(x))
    assert type(y) is type(x), (type(x), type(y))
    assert repr(y) == repr(x), (x, y)
def check_garbage(b):
    try:
        _procpy.loads(b)
    except Exception:
        pass
"#;

/// A Python expression for a value of a hashable kind.
fn hashable() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("None".to_string()),
        any::<bool>().prop_map(|b| if b { "True".into() } else { "False".into() }),
        any::<i64>().prop_map(|i| i.to_string()),
        (any::<i64>(), 1u32..4).prop_map(|(i, e)| format!("({i}) * 10**{}", 19 * e)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        Just("float('inf')".to_string()),
        proptest::collection::vec(any::<char>(), 0..12)
            .prop_map(|cs| format!("''.join(map(chr, {:?}))", cs.iter().map(|&c| c as u32).collect::<Vec<_>>())),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| format!("bytes({b:?})")),
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| format!("complex({a}, {b})")),
    ]
}

fn value() -> impl Strategy<Value = String> {
    hashable().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("tuple([{}])", v.join(", "))),
            proptest::collection::vec((hashable(), inner.clone()), 0..5)
                .prop_map(|v| format!("{{{}}}", v.iter().map(|(k, x)| format!("{k}: {x}")).collect::<Vec<_>>().join(", "))),
            proptest::collection::vec(any::<i16>(), 0..6).prop_map(|v| format!("frozenset({v:?})")),
            proptest::collection::vec(any::<i16>(), 0..6).prop_map(|v| format!("bytearray([x & 255 for x in {v:?}])")),
            (any::<i16>(), any::<i16>(), 1i16..5).prop_map(|(a, b, c)| format!("range({a}, {b}, {c})")),
        ]
    })
}

fn run(vm: &VirtualMachine, scope: &Scope, src: &str) -> Result<(), String> {
    vm.run_code_string(scope.clone(), src, "<test>".to_owned()).map(drop).map_err(|e| {
        let mut s = String::new();
        let _ = vm.write_exception(&mut s, &e);
        s
    })
}

#[test]
fn python_values_round_trip_through_the_codec() {
    interp().enter(|vm| {
        let scope = vm.new_scope_with_builtins();
        run(vm, &scope, HELPERS).unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(300));
        runner
            .run(&value(), |src| {
                run(vm, &scope, &format!("_x = {src}")).map_err(TestCaseError::fail)?;
                run(vm, &scope, "check(_x)").map_err(TestCaseError::fail)
            })
            .unwrap();
    });
}

#[test]
fn shared_references_and_cycles_survive() {
    interp().enter(|vm| {
        let scope = vm.new_scope_with_builtins();
        run(vm, &scope, HELPERS).unwrap();
        run(
            vm,
            &scope,
            r#"
a = [1, 2]
x = _procpy.loads(_procpy.dumps([a, a, (a,)]))
assert x[0] is x[1] is x[2][0]
l = [1]; l.append(l)
y = _procpy.loads(_procpy.dumps(l))
assert y[1] is y
d = {}; d['self'] = d
z = _procpy.loads(_procpy.dumps(d))
assert z['self'] is z
"#,
        )
        .unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn garbage_bytes_raise_instead_of_crashing(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        interp().enter(|vm| {
            let scope = vm.new_scope_with_builtins();
        run(vm, &scope, HELPERS).unwrap();
            run(vm, &scope, &format!("check_garbage(bytes({bytes:?}))")).unwrap();
        });
    }
}
