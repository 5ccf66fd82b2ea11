//! Property tests of the codec on real Python objects, inside one booted interpreter:
//! every generated value survives `loads(dumps(x))` with its type and repr, and arbitrary bytes
//! given to `loads` raise a Python exception instead of crashing the process. Functions that
//! cannot be found by reference (lambdas, closures, local functions) travel by value.

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
def rt(x):
    return _procpy.loads(_procpy.dumps(x))
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
        proptest::collection::vec(any::<char>(), 0..12).prop_map(|cs| format!(
            "''.join(map(chr, {:?}))",
            cs.iter().map(|&c| c as u32).collect::<Vec<_>>()
        )),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| format!("bytes({b:?})")),
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| format!("complex({a}, {b})")),
    ]
}

fn value() -> impl Strategy<Value = String> {
    hashable().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| format!("tuple([{}])", v.join(", "))),
            proptest::collection::vec((hashable(), inner.clone()), 0..5).prop_map(|v| format!(
                "{{{}}}",
                v.iter().map(|(k, x)| format!("{k}: {x}")).collect::<Vec<_>>().join(", ")
            )),
            proptest::collection::vec(any::<i16>(), 0..6).prop_map(|v| format!("frozenset({v:?})")),
            proptest::collection::vec(any::<i16>(), 0..6)
                .prop_map(|v| format!("bytearray([x & 255 for x in {v:?}])")),
            (any::<i16>(), any::<i16>(), 1i16..5)
                .prop_map(|(a, b, c)| format!("range({a}, {b}, {c})")),
        ]
    })
}

fn run(vm: &VirtualMachine, scope: &Scope, src: &str) -> Result<(), String> {
    vm.run_string(scope.clone(), src, "<test>".to_owned()).map(drop).map_err(|e| {
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

/// Run `src` after HELPERS in a fresh interpreter; a failed assert fails the test with its traceback.
fn py(src: &str) {
    interp().enter(|vm| {
        let scope = vm.new_scope_with_builtins();
        run(vm, &scope, HELPERS).unwrap();
        if let Err(e) = run(vm, &scope, src) {
            panic!("{e}");
        }
    });
}

/// A real module in sys.modules, so what it defines at module level is importable by reference.
const MODULE: &str = r#"
import sys, types
m = types.ModuleType('procpy_codec_test_mod')
exec("""
def helper(x):
    return x * 10

class Point:
    def __init__(self, x):
        self.x = x

def outer():
    def inner(y):
        return helper(y) + 1
    return inner
""", m.__dict__)
sys.modules['procpy_codec_test_mod'] = m
"#;

#[test]
fn lambda_travels_by_value() {
    py(r#"
f = lambda x: x * 2
g = rt(f)
assert g is not f
assert g(21) == 42
assert (g.__name__, g.__qualname__) == ('<lambda>', '<lambda>')
assert g.__code__.co_code == f.__code__.co_code
"#);
}

#[test]
fn lambda_keeps_defaults_and_kwdefaults() {
    py(r#"
f = lambda a, b=[1], *, c={'k': 2}: (a, b, c)
g = rt(f)
assert g(0) == (0, [1], {'k': 2}), g(0)
assert g.__defaults__ == ([1],) and g.__defaults__[0] is not f.__defaults__[0]
assert g.__kwdefaults__ == {'c': {'k': 2}}
assert g(0, 5, c=6) == (0, 5, 6)
"#);
}

#[test]
fn closure_over_a_list_arrives_as_an_independent_copy() {
    py(r#"
def make():
    items = [1, 2]
    def add(x):
        items.append(x)
        return list(items)
    return add, items
add, items = make()
add2 = rt(add)
assert add2.__qualname__ == 'make.<locals>.add'
assert add2(3) == [1, 2, 3]
assert items == [1, 2]
assert add(9) == [1, 2, 9]
assert add2(4) == [1, 2, 3, 4]
assert add2.__closure__[0].cell_contents is not items
"#);
}

#[test]
fn nested_function_calls_a_module_level_function_of_its_module() {
    py(&format!(
        "{MODULE}{}",
        r#"
f = rt(m.outer())
assert f(2) == 21
assert f.__globals__['helper'] is m.helper  # importable: by reference
assert f.__globals__ is not m.__dict__
assert (f.__module__, f.__qualname__) == ('procpy_codec_test_mod', 'outer.<locals>.inner')
# Defined where nothing is importable: the module-level helper travels by value too.
def helper2(x):
    return x + 1
def outer2():
    def inner(y):
        return helper2(y) * 2
    return inner
g = rt(outer2())
assert g(3) == 8
assert g.__globals__['helper2'] is not helper2 and g.__globals__['helper2'](1) == 2
"#
    ));
}

#[test]
fn recursive_lambda_reaches_itself_through_its_globals() {
    py(r#"
fact = lambda n: 1 if n < 2 else n * fact(n - 1)
g = rt(fact)
assert g is not fact
assert g(6) == 720
assert g.__globals__['fact'] is g
"#);
}

#[test]
fn recursive_nested_def_reaches_itself_through_its_cell() {
    py(r#"
def outer():
    def count(n):
        return 0 if n == 0 else 1 + count(n - 1)
    return count
f = outer()
g = rt(f)
assert g(10) == 10
assert g.__closure__[0].cell_contents is g
assert f.__closure__[0].cell_contents is f
"#);
}

#[test]
fn mutually_recursive_local_functions_arrive_whole() {
    py(r#"
def make():
    def is_even(n):
        return True if n == 0 else is_odd(n - 1)
    def is_odd(n):
        return False if n == 0 else is_even(n - 1)
    return is_even, is_odd
ev, od = make()
ev2 = rt(ev)
assert ev2(10) is True and ev2(7) is False
od2 = ev2.__closure__[0].cell_contents
assert od2.__name__ == 'is_odd' and od2 is not od
assert od2.__closure__[0].cell_contents is ev2
# Both in one message: still one pair.
e3, o3 = rt((ev, od))
assert e3.__closure__[0].cell_contents is o3 and o3.__closure__[0].cell_contents is e3
"#);
}

#[test]
fn globals_that_are_a_module_and_classes_go_by_reference() {
    py(&format!(
        "{MODULE}{}",
        r#"
import math, collections
from procpy_codec_test_mod import Point
f = lambda x: (math.sqrt(x), Point(x), collections.OrderedDict, len)
g = rt(f)
r, p, od, ln = g(16)
assert r == 4.0 and type(p) is Point and p.x == 16 and od is collections.OrderedDict and ln is len
assert g.__globals__['math'] is math and g.__globals__['Point'] is Point
assert 'sqrt' not in g.__globals__ and 'x' not in g.__globals__
# A module on its own travels by name; one missing from sys.modules still cannot travel.
assert rt(math) is math and rt(m) is m
import types
try:
    _procpy.dumps(types.ModuleType('nowhere'))
except TypeError as e:
    assert str(e) == "cannot pickle 'module' object", str(e)
else:
    raise AssertionError('a module missing from sys.modules was encoded')
"#
    ));
}

#[test]
fn function_attributes_travel() {
    py(r#"
f = lambda: 0
f.tag = 'x'
f.counts = [1, 2]
f.__doc__ = 'documented'
g = rt(f)
assert g.tag == 'x' and g.counts == [1, 2] and g.counts is not f.counts
assert g.__doc__ == 'documented'
assert g.__dict__ == {'tag': 'x', 'counts': [1, 2]}
"#);
}

#[test]
fn importable_functions_still_travel_by_reference() {
    py(&format!(
        "{MODULE}{}",
        r#"
import os.path
assert rt(m.helper) is m.helper
assert rt(os.path.join) is os.path.join
assert rt([m.helper, m.outer])[1] is m.outer
# By reference means a name, not code: the message is small.
assert len(_procpy.dumps(m.helper)) < 40, len(_procpy.dumps(m.helper))
assert len(_procpy.dumps(m.outer())) > 40
"#
    ));
}

#[test]
fn functions_of_one_message_share_globals_and_cells() {
    py(r#"
def counter():
    n = 0
    def inc():
        nonlocal n
        n += 1
        return n
    def get():
        return n
    return inc, get
inc, get = rt(counter())
inc(); inc()
assert get() == 2  # one cell, shared as in the sender
a = lambda: 1
b = lambda: 2
a2, b2 = rt([a, b])
assert a2.__globals__ is b2.__globals__
assert '__builtins__' in a2.__globals__
a3 = rt(a)
assert a3.__globals__ is not a2.__globals__  # each message has its own
"#);
}

#[test]
fn what_still_cannot_travel_keeps_its_message() {
    py(r#"
import threading
lock = threading.Lock()
f = lambda: lock
try:
    _procpy.dumps((1, f))
except TypeError as e:
    assert str(e) == "cannot pickle '_thread.lock' object (found at [1].__globals__['lock'])", str(e)
else:
    raise AssertionError('a lock was encoded')
def outer():
    class C:
        pass
    return C
try:
    _procpy.dumps([outer()])
except AttributeError as e:
    assert str(e) == "Can't pickle local object 'outer.<locals>.C' (found at [0])", str(e)
else:
    raise AssertionError('a local class was encoded')
def gen():
    yield 1
try:
    _procpy.dumps(gen())
except TypeError as e:
    assert str(e) == "cannot pickle 'generator' object", str(e)
else:
    raise AssertionError('a generator was encoded')
"#);
}
