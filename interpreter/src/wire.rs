//! The wire value model: what a Python object graph becomes on its way between processes.
//!
//! This module knows nothing about the VM. `codec` turns Python objects into [`Value`]s and back;
//! this module turns [`Value`]s into bytes with postcard (a documented, stable serde format).
//!
//! Identity is kept the way pickle keeps it: every container or reduced object gets the next memo
//! index, in pre-order, when it is first written; a later occurrence is written as [`Value::Memo`].
//! The decoder hands out indexes in the same order, so `[a, a]` arrives with `x[0] is x[1]` and a
//! list that contains itself arrives whole.
//!
//! Functions that cannot be found by reference (lambdas, closures, functions defined inside
//! other functions) travel by value as [`Value::Function`]: their code object (marshal bytes of
//! the same procpy binary on both ends), the globals the code names, closure cells, defaults and
//! attributes. They are rebuilt in two phases, like a memoized reduce, so a function may reach
//! itself (recursion through its globals or a closure cell) or another function of the message.
//!
//! A function or class of the sender's `__main__` that the receiver may lack (see
//! `codec`'s module doc) travels as [`Value::MainGlobal`]: its name, a token, and the object by
//! value, which the receiver builds only if it finds the object neither by token nor by name.

use serde::{Deserialize, Serialize};

/// One node of an encoded object graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// Any other int: two's-complement little-endian bytes.
    BigInt(Vec<u8>),
    /// A float (nan and inf included).
    Float(f64),
    /// A str, as WTF-8 bytes so lone surrogates survive.
    Str(Vec<u8>),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// A tuple (memoized).
    Tuple(Vec<Value>),
    /// A list (memoized; may contain itself).
    List(Vec<Value>),
    /// A dict (memoized; may contain itself), in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A module-level object found by reference: `module` + dotted `qualname`; an empty
    /// `qualname` is the module itself (modules travel by name, as cloudpickle sends them).
    Global {
        /// Module name (`__main__` resolves to the child's main module).
        module: String,
        /// Dotted qualified name inside the module; empty for the module itself.
        qualname: String,
    },
    /// The `__reduce_ex__` protocol: `obj = func(*args)`, then state and items (memoized).
    Reduce(Box<Reduce>),
    /// A reference to the memo index of an object already written.
    Memo(u32),
    /// An OS handle (a connection end or queue) whose descriptors travel beside the bytes.
    Handle {
        /// Which native type to rebuild.
        kind: HandleKind,
        /// Indexes into the descriptor list sent with the message.
        fds: Vec<u32>,
        /// Extra integers the type needs (flags, maxsize, ...).
        extra: Vec<i64>,
    },
    /// A function shipped by value (memoized); see [`Function`].
    Function(Box<Function>),
    /// A function or class of the sender's `__main__` that the receiver may not have (defined
    /// under `if __name__ == '__main__':`, at a prompt, after a fork); see [`MainGlobal`].
    MainGlobal(Box<MainGlobal>),
    /// A class shipped by value; valid only as the `by_value` of a [`MainGlobal`].
    Class(Box<Class>),
}

/// What a [`Value::MainGlobal`] node holds. It takes one memo index, the object's. The receiver
/// uses, in order: the object it already knows under `token` (received before, or its own
/// sent back); its own `__main__.qualname` when that is a function (class) with this
/// qualname, as pickle would find it by reference; else the one `by_value` builds.
///
/// `by_value` is a memo scope of its own: the memo indexes handed out inside it are released
/// after it (the encoder forgets what it memoized there), so the receiver may skip it whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MainGlobal {
    /// Dotted qualified name in `__main__`.
    pub qualname: String,
    /// Names this object in every process it reaches: (origin, serial) from the process that
    /// first sent it, so receiving it again (from anyone) gives the same object back.
    pub token: (u64, u64),
    /// A [`Value::Function`] (whose globals are the receiver's `__main__` dict; the names it
    /// ships fill only those missing there) or a [`Value::Class`]; neither takes a memo index
    /// of its own (it has the node's).
    pub by_value: Value,
}

/// A class shipped by value, rebuilt in two phases as cloudpickle does: phase 1 makes
/// `metaclass(name, bases, namespace)` (nothing in it may refer to the class); the class then
/// takes its memo index, and phase 2 sets `attrs` (methods, class attributes) on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Class {
    /// `type(cls)`.
    pub metaclass: Value,
    /// `__name__`.
    pub name: Value,
    /// `__bases__` (a tuple).
    pub bases: Value,
    /// What the class is created with: `__module__`, `__qualname__`, `__doc__`, `__slots__`.
    pub namespace: Value,
    /// Phase 2: every other entry of the class `__dict__`, set with `setattr`.
    pub attrs: Vec<(Value, Value)>,
}

/// What a [`Value::Function`] node holds, in the order both ends process it.
///
/// Phase 1 (before the function exists, so nothing here may refer to it): `code`, `globals`,
/// `name`, `closure`. The function is then created and takes the memo index reserved for it
/// before phase 1, so phase 2 (`names` onwards) may refer to it, which is how recursive and
/// mutually recursive functions arrive whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    /// `marshal.dumps(f.__code__)`.
    pub code: Vec<u8>,
    /// The globals dict the function gets: a [`Value::Dict`] holding only the module attributes
    /// `__name__`, `__package__`, `__path__`, `__file__` (the decoder adds `__builtins__`), or a
    /// [`Value::Memo`] of the one an earlier function of the same message got, when both shared
    /// one globals dict in the sender (cloudpickle's per-message sharing).
    pub globals: Value,
    /// `__name__` (given to the constructor).
    pub name: Value,
    /// One entry per free variable: `None` makes a new empty cell, which takes the next memo
    /// index and is filled from `cells`; `Some(i)` is the memo index of a cell already made in
    /// this message (cells shared between closures stay shared).
    pub closure: Vec<Option<u32>>,
    /// Phase 2: the globals the code names (`co_names` of the code and its nested code objects)
    /// that exist in the sender's `__globals__`, set into `globals`.
    pub names: Vec<(Value, Value)>,
    /// The contents of the new cells of `closure`, in order; `None` leaves a cell empty.
    pub cells: Vec<Option<Value>>,
    /// `__defaults__` (None or a tuple).
    pub defaults: Value,
    /// `__kwdefaults__` (None or a dict).
    pub kwdefaults: Value,
    /// `__qualname__`.
    pub qualname: Value,
    /// `__module__`.
    pub module: Value,
    /// `__doc__`.
    pub doc: Value,
    /// The function's `__dict__` (a dict), or None when it is empty.
    pub dict: Value,
}

/// What a [`Value::Reduce`] node holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reduce {
    /// The callable that makes the object.
    pub func: Value,
    /// Its positional arguments (a tuple value).
    pub args: Value,
    /// The state for `__setstate__` / `__dict__` update, if any.
    pub state: Option<Value>,
    /// Items to append (list subclasses).
    pub listitems: Vec<Value>,
    /// Items to set (dict subclasses).
    pub dictitems: Vec<(Value, Value)>,
}

/// The native handle types that can cross a process boundary with their descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandleKind {
    /// A `Connection` end of a `Pipe()`.
    Connection,
    /// A `Queue`/`JoinableQueue`/`SimpleQueue`.
    Queue,
    /// A `SemLock` (the state under Lock, RLock, Semaphore, BoundedSemaphore).
    SemLock,
    /// Shared memory under `Value`/`Array`/`RawValue`/`RawArray`.
    SharedBuffer,
}

/// Why bytes could not be turned back into a [`Value`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not a value tree this module wrote (or nested deeper than [`MAX_DEPTH`]).
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    /// Well formed, but its tree would not fit in memory: each value takes
    /// `size_of::<Value>()` bytes however few bytes encode it (a `None` takes one).
    #[error("cannot allocate memory to decode a message of {len} bytes holding {values} values")]
    NoMemory {
        /// The message's size in bytes.
        len: usize,
        /// How many values it encodes.
        values: usize,
    },
}

/// Deepest nesting accepted from the wire; deeper input is rejected instead of overflowing the
/// stack. Decoding (this crate's serde walk, then the codec's) recurses once per level, and must
/// fit the 2 MiB stack of any Python thread in a debug build: 650 levels did not (SIGSEGV in a
/// thread's `recv()`). The encoder stops at [`ENCODE_DEPTH`], a little below, so whatever it
/// writes is accepted.
pub const MAX_DEPTH: usize = 512;

/// Deepest object nesting the encoder follows (`RecursionError` beyond, as CPython's pickler).
pub const ENCODE_DEPTH: usize = 500;

/// Serialize a value tree.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    // Serializing an in-memory tree to a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Messages up to this size are decoded without counting their values first: even if every
/// byte were a value, the tree would take at most `size_of::<Value>()` times this (a few tens of
/// MiB, doubled while a vector grows).
const COUNT_FROM: usize = 256 << 10;

/// Deserialize a value tree; any malformed input is an error, never a panic, and a tree that
/// would not fit in memory is [`WireError::NoMemory`], never an abort.
pub fn from_bytes(b: &[u8]) -> Result<Value, WireError> {
    // A cheap bound first: each container tag costs at least one byte, so input no longer than
    // the limit cannot nest deeper than it, and short input cannot hold many values.
    if b.len() > MAX_DEPTH.min(COUNT_FROM) {
        let Some(shape) = shape_of(b).filter(|s| s.depth <= MAX_DEPTH) else {
            return Err(WireError::Malformed(postcard::Error::DeserializeUnexpectedEnd));
        };
        if b.len() > COUNT_FROM {
            reserve_for(b.len(), shape.values)?;
        }
    }
    Ok(postcard::from_bytes(b)?)
}

/// Fail early, as [`crate::ipc::read_body`] does for a frame's length, when the tree of `values`
/// values cannot be allocated: a few bytes per value on the wire become `size_of::<Value>()`
/// in memory (CPython's pickle grows too, by a pointer per value), twice while the largest
/// vector doubles. The trial reservation is released at once: address space only.
fn reserve_for(len: usize, values: usize) -> Result<(), WireError> {
    let bytes = values.saturating_mul(2 * std::mem::size_of::<Value>());
    Vec::<u8>::new().try_reserve_exact(bytes).map_err(|_| WireError::NoMemory { len, values })
}

/// What [`shape_of`] learns without building the tree.
struct Shape {
    depth: usize,
    values: usize,
}

/// Walk the postcard encoding without building the tree: its nesting depth and number of
/// values, or `None` if the bytes are malformed (or nested past [`MAX_DEPTH`]).
fn shape_of(b: &[u8]) -> Option<Shape> {
    let mut r = Reader { b, pos: 0, values: 0 };
    let mut max = 0;
    r.value(0, &mut max)?;
    Some(Shape { depth: max, values: r.values })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    values: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }
    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..10 {
            let v = self.byte()?;
            out |= ((v & 0x7f) as u64) << (7 * i);
            if v & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos = self.pos.checked_add(n).filter(|&p| p <= self.b.len())?;
        Some(())
    }
    fn blob(&mut self) -> Option<()> {
        let n = self.varint()? as usize;
        self.skip(n)
    }
    fn seq(&mut self, depth: usize, max: &mut usize, pairs: bool) -> Option<()> {
        let n = self.varint()?;
        for _ in 0..n {
            self.value(depth + 1, max)?;
            if pairs {
                self.value(depth + 1, max)?;
            }
        }
        Some(())
    }
    fn value(&mut self, depth: usize, max: &mut usize) -> Option<()> {
        *max = (*max).max(depth);
        self.values += 1;
        if depth > MAX_DEPTH {
            return None;
        }
        match self.varint()? {
            0 => Some(()),
            1 => self.skip(1),
            2 => self.varint().map(drop),
            3 | 5 | 6 => self.blob(),
            4 => self.skip(8),
            7 | 8 => self.seq(depth, max, false),
            9 => self.seq(depth, max, true),
            10 => {
                self.blob()?;
                self.blob()
            }
            11 => {
                self.value(depth + 1, max)?;
                self.value(depth + 1, max)?;
                if self.byte()? == 1 {
                    self.value(depth + 1, max)?;
                }
                self.seq(depth, max, false)?;
                self.seq(depth, max, true)
            }
            12 => self.varint().map(drop),
            13 => {
                self.varint()?;
                let n = self.varint()?;
                for _ in 0..n {
                    self.varint()?;
                }
                let n = self.varint()?;
                for _ in 0..n {
                    self.varint()?;
                }
                Some(())
            }
            15 => {
                self.blob()?;
                self.varint()?;
                self.varint()?;
                self.value(depth + 1, max)
            }
            16 => {
                for _ in 0..4 {
                    self.value(depth + 1, max)?;
                }
                self.seq(depth, max, true)
            }
            14 => {
                self.blob()?;
                self.value(depth + 1, max)?;
                self.value(depth + 1, max)?;
                let n = self.varint()?;
                for _ in 0..n {
                    if self.byte()? == 1 {
                        self.varint()?;
                    }
                }
                self.seq(depth, max, true)?;
                let n = self.varint()?;
                for _ in 0..n {
                    if self.byte()? == 1 {
                        self.value(depth + 1, max)?;
                    }
                }
                for _ in 0..6 {
                    self.value(depth + 1, max)?;
                }
                Some(())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 9..20).prop_map(Value::BigInt),
            any::<f64>()
                .prop_filter("nan compares unequal", |f| !f.is_nan())
                .prop_map(Value::Float),
            ".*".prop_map(|s: String| Value::Str(s.into_bytes())),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            any::<u32>().prop_map(Value::Memo),
            ("[a-z_]{1,8}", "[a-z_.]{1,12}")
                .prop_map(|(m, q)| Value::Global { module: m, qualname: q }),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..4)
                    .prop_map(Value::Dict),
                (inner.clone(), inner.clone(), proptest::option::of(inner.clone())).prop_map(
                    |(func, args, state)| Value::Reduce(Box::new(Reduce {
                        func,
                        args,
                        state,
                        listitems: vec![],
                        dictitems: vec![]
                    }))
                ),
                (
                    proptest::collection::vec(any::<u32>(), 0..3),
                    proptest::collection::vec(any::<i64>(), 0..3)
                )
                    .prop_map(|(fds, extra)| Value::Handle {
                        kind: HandleKind::Queue,
                        fds,
                        extra
                    }),
                (
                    proptest::collection::vec(any::<u8>(), 0..40),
                    (inner.clone(), inner.clone()),
                    proptest::collection::vec(proptest::option::of(any::<u32>()), 0..3),
                    proptest::collection::vec((inner.clone(), inner.clone()), 0..3),
                    proptest::collection::vec(proptest::option::of(inner.clone()), 0..3),
                    proptest::collection::vec(inner.clone(), 6),
                )
                    .prop_map(
                        |(code, (globals, name), closure, names, cells, rest)| {
                            let [defaults, kwdefaults, qualname, module, doc, dict] =
                                <[Value; 6]>::try_from(rest).unwrap();
                            Value::Function(Box::new(Function {
                                code,
                                globals,
                                name,
                                closure,
                                names,
                                cells,
                                defaults,
                                kwdefaults,
                                qualname,
                                module,
                                doc,
                                dict,
                            }))
                        }
                    ),
                ("[a-z_.]{1,12}", any::<(u64, u64)>(), inner.clone()).prop_map(
                    |(qualname, token, by_value)| Value::MainGlobal(Box::new(MainGlobal {
                        qualname,
                        token,
                        by_value
                    }))
                ),
                (
                    proptest::collection::vec(inner.clone(), 4),
                    proptest::collection::vec((inner.clone(), inner.clone()), 0..3)
                )
                    .prop_map(|(parts, attrs)| {
                        let [metaclass, name, bases, namespace] =
                            <[Value; 4]>::try_from(parts).unwrap();
                        Value::Class(Box::new(Class { metaclass, name, bases, namespace, attrs }))
                    }),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip_preserves_every_value(v in arb_value()) {
            let bytes = to_bytes(&v);
            prop_assert_eq!(from_bytes(&bytes).unwrap(), v.clone());
            // The depth walker must agree that well-formed input is well formed.
            prop_assert!(shape_of(&bytes).is_some());
        }

        #[test]
        fn malformed_input_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = from_bytes(&bytes);
        }

        #[test]
        fn truncated_messages_are_rejected(v in arb_value(), cut in 0usize..64) {
            let bytes = to_bytes(&v);
            if cut < bytes.len() {
                prop_assert!(from_bytes(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn deeply_nested_input_is_rejected_without_overflowing() {
        // 100k nested one-element tuples: tag 7, length 1, ...
        let mut b = Vec::new();
        for _ in 0..100_000 {
            b.extend_from_slice(&[7, 1]);
        }
        b.push(0);
        assert!(from_bytes(&b).is_err());
    }

    #[test]
    fn nesting_at_the_limit_is_accepted() {
        let mut v = Value::None;
        for _ in 0..MAX_DEPTH {
            v = Value::Tuple(vec![v]);
        }
        assert_eq!(from_bytes(&to_bytes(&v)).unwrap(), v);
    }
}
