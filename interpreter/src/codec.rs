//! Python objects to and from the wire model ([`crate::wire::Value`]).
//!
//! Hot types (None, bool, int, float, str, bytes, tuple, list, dict) have fast paths; everything
//! else goes through `__reduce_ex__(4)` exactly as pickle would, so user classes with
//! `__reduce__`, `__getstate__`/`__setstate__` or copyreg registrations just work. Functions,
//! classes and modules travel by reference (module + qualname) when the receiver can find them
//! by name; a function it cannot (a lambda, a closure, a function defined inside another) travels
//! by value instead, like cloudpickle ships it, as a [`wire::Function`].
//!
//! A function or class of `__main__` is a case of its own: the sender finds it, but a receiver
//! may not (a spawn or forkserver child re-runs the main script as `__mp_main__`, so what the
//! `if __name__ == '__main__':` block defined is missing there; a fork child lacks what was
//! defined after the fork; a prompt, `-c` or stdin main is never re-run). Such an object travels
//! as a [`wire::MainGlobal`]: name, token and the object by value. The receiver prefers what it
//! already has (by token, then its own `__main__.qualname`, as pickle's by-reference lookup
//! would find it, so "an initializer sets a global the task reads" keeps working) and builds the
//! by-value copy only when it has nothing; a by-value function's globals are the receiver's
//! `__main__` dict. What a receiver surely has (an unconditional top-level `def`/`class` of a
//! main script, existing at the first fork) still goes as a plain [`Value::Global`], at no cost.
//! Native handles (connection ends, queues)
//! travel as [`Value::Handle`] with their descriptors beside the bytes, but only while a child is
//! being started: elsewhere they are refused with CPython's message.

use crate::wire::{self, Class, Function, HandleKind, Reduce, Value};
use malachite_bigint::BigInt;
use num_traits::ToPrimitive;
use rustpython_vm::builtins::{
    PyBaseExceptionRef, PyBytes, PyDict, PyFloat, PyInt, PyList, PyStr, PyTuple, PyType,
};
use rustpython_vm::common::wtf8::Wtf8;
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyResult, VirtualMachine};
use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// What a native handle is made of on the wire: its kind, its descriptors, its extra values.
pub(crate) type HandleParts = (HandleKind, Vec<RawFd>, Vec<i64>);

/// The native handle types an encoding can carry (connection ends, queues, ...), supplied by the
/// module that defines them: the codec names none of them, so a new kind of handle touches only
/// that module and [`wire::HandleKind`].
pub(crate) struct HandleTable {
    /// `obj`'s kind, descriptors and extra values if it is a native handle.
    pub as_handle: fn(&PyObject) -> Option<HandleParts>,
    /// Rebuild a handle of a kind from the descriptors that came with it (duplicated, not
    /// taken) and its extra values; a message that does not fit is an `UnpicklingError`.
    pub rebuild: fn(&VirtualMachine, HandleKind, &[RawFd], &[i64]) -> PyResult,
}

/// Installed once per process by [`crate::boot::builder`], before any interpreter runs code.
/// Process-wide rather than in [`Handles`]: a channel that refuses handles must still recognise
/// them to refuse them with CPython's message.
static HANDLE_TABLE: OnceLock<&'static HandleTable> = OnceLock::new();

/// Install the table of native handle types (the first one installed stays).
pub(crate) fn set_handle_table(table: &'static HandleTable) {
    let _ = HANDLE_TABLE.set(table);
}

/// `obj`'s handle description if it is a native handle (none before a table is installed).
fn as_handle(obj: &PyObject) -> Option<(HandleKind, Vec<RawFd>, Vec<i64>)> {
    HANDLE_TABLE.get().and_then(|t| (t.as_handle)(obj))
}

/// A token naming a `__main__` object across processes: (origin, serial).
type Token = (u64, u64);

/// An object the registry names: weakly where it can, so what the program dropped is freed.
enum Held {
    Weak(rustpython_vm::PyRef<rustpython_vm::builtins::PyWeak>),
    Strong(PyObjectRef),
}

impl Held {
    fn new(vm: &VirtualMachine, obj: &PyObject) -> Held {
        match obj.downgrade(None, vm) {
            Ok(w) => Held::Weak(w),
            Err(_) => Held::Strong(obj.to_owned()),
        }
    }

    fn get(&self) -> Option<PyObjectRef> {
        match self {
            Held::Weak(w) => w.upgrade(),
            Held::Strong(o) => Some(o.clone()),
        }
    }
}

/// The `__main__` objects this process sent or received as [`wire::MainGlobal`], by token and
/// by id, held weakly: an entry whose object died is dead (a token is never reused; an id is
/// checked against the live object, so a reused id names nothing), rebuilt if its token comes
/// again, and pruned as the maps grow.
struct Registry {
    /// The process that made `origin`: a fork child makes its own, so serials never collide.
    pid: u32,
    origin: u64,
    next: u64,
    by_token: HashMap<Token, Held>,
    /// The token, and whether the object is a by-value copy built here.
    by_id: HashMap<usize, (Token, bool)>,
    /// The copies built here last, kept alive: a worker drops the function of each task, and
    /// the next task of the same function should not have to build it again.
    recent: std::collections::VecDeque<PyObjectRef>,
    /// Prune dead entries when `by_token` grows past this.
    prune_at: usize,
}

const RECENT_BUILT: usize = 64;
const PRUNE_MIN: usize = 256;

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Never held while Python code runs; a panic elsewhere cannot leave the maps half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

fn registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = lock(&REGISTRY);
    let pid = std::process::id();
    let r = g.get_or_insert_with(|| Registry {
        pid,
        origin: new_origin(),
        next: 0,
        by_token: HashMap::new(),
        by_id: HashMap::new(),
        recent: std::collections::VecDeque::new(),
        prune_at: PRUNE_MIN,
    });
    if r.pid != pid {
        r.pid = pid;
        r.origin = new_origin();
        r.next = 0;
    }
    f(r)
}

impl Registry {
    /// The live object `t` names.
    fn object(&self, t: Token) -> Option<PyObjectRef> {
        self.by_token.get(&t)?.get()
    }

    /// `obj`'s entry (token, built here), if it is live.
    fn entry(&self, obj: &PyObject) -> Option<((Token, bool), PyObjectRef)> {
        let e = *self.by_id.get(&obj.get_id())?;
        let o = self.object(e.0).filter(|o| o.is(obj))?;
        Some((e, o))
    }

    /// Record `t` -> `obj`; returns what must be dropped with the lock released.
    fn insert(
        &mut self,
        vm: &VirtualMachine,
        t: Token,
        obj: &PyObject,
        built: bool,
    ) -> Vec<PyObjectRef> {
        let mut drop_later = Vec::new();
        self.by_id.insert(obj.get_id(), (t, built));
        if let Some(old) = self.by_token.insert(t, Held::new(vm, obj)) {
            drop_later.extend(old.get());
        }
        if built {
            self.recent.push_back(obj.to_owned());
            if self.recent.len() > RECENT_BUILT {
                drop_later.extend(self.recent.pop_front());
            }
        }
        if self.by_token.len() > self.prune_at {
            let mut live = HashMap::new();
            self.by_token.retain(|t, h| match h.get() {
                Some(o) => {
                    live.insert(*t, o.get_id());
                    drop_later.push(o);
                    true
                }
                None => false,
            });
            self.by_id.retain(|id, (t, _)| live.get(t) == Some(id));
            self.prune_at = (2 * self.by_token.len()).max(PRUNE_MIN);
        }
        drop_later
    }
}

/// Number of live-or-unpruned entries (for tests: it must stay bounded).
pub(crate) fn registry_size() -> usize {
    lock(&REGISTRY).as_ref().map_or(0, |r| r.by_token.len().max(r.by_id.len()))
}

/// `obj`'s token if it travelled as a `__main__` global before.
fn registry_token(obj: &PyObject) -> Option<Token> {
    let found = lock(&REGISTRY).as_ref()?.entry(obj);
    found.map(|((t, _), _)| t)
}

/// Whether `obj` is a by-value copy this process built (not its own object).
fn registry_built(obj: &PyObject) -> bool {
    let found = lock(&REGISTRY).as_ref().and_then(|r| r.entry(obj));
    found.is_some_and(|((_, built), _)| built)
}

/// `obj`'s token, made the first time (or again, once its old entry died).
fn registry_assign(vm: &VirtualMachine, obj: &PyObject) -> Token {
    let (t, drop_later) = registry(|r| {
        if let Some(((t, _), o)) = r.entry(obj) {
            return (t, vec![o]);
        }
        let t = (r.origin, r.next);
        r.next += 1;
        (t, r.insert(vm, t, obj, false))
    });
    drop(drop_later);
    t
}

fn registry_get(t: Token) -> Option<PyObjectRef> {
    let g = lock(&REGISTRY);
    g.as_ref()?.object(t)
}

/// Remember what `t` names here; if another thread got there first, its object wins.
fn registry_insert(vm: &VirtualMachine, t: Token, obj: PyObjectRef) -> PyObjectRef {
    let (obj, drop_later) = registry(|r| {
        if let Some(o) = r.object(t) {
            return (o, Vec::new());
        }
        let d = r.insert(vm, t, &obj, true);
        (obj, d)
    });
    drop(drop_later);
    obj
}

/// Names bound by unconditional top-level `def`/`class` statements of one main script.
static MAIN_DEFS: Mutex<Option<(String, Arc<HashSet<String>>)>> = Mutex::new(None);

/// The functions and classes of `__main__` when this process first forked, kept alive (so an
/// id cannot be reused); `None` before any fork.
static FORK_SNAPSHOT: Mutex<Option<HashMap<String, PyObjectRef>>> = Mutex::new(None);

/// Called (by the fork start method) before each fork: the first one takes the snapshot a
/// fork child's `__main__` is known to hold.
pub(crate) fn note_fork(vm: &VirtualMachine) {
    if lock(&FORK_SNAPSHOT).is_some() {
        return;
    }
    let mut snap = HashMap::new();
    if let Some(dict) = main_dict(vm, "__main__") {
        for (k, v) in dict.items_vec() {
            let t = &vm.ctx.types;
            if let Some(k) = k.downcast_ref::<PyStr>() {
                if v.class().is(t.function_type) || v.downcast_ref::<PyType>().is_some() {
                    snap.insert(k.to_string_lossy().into_owned(), v);
                }
            }
        }
    }
    *lock(&FORK_SNAPSHOT) = Some(snap);
    // Decided without a snapshot: decide again. (Dropped with the lock released.)
    let old = lock(&PLAIN).take();
    drop(old);
}

/// `__main__` functions and classes found to need no by-value form ([`main_may_lack`] said
/// no), by id, kept alive so an id is not reused: the decision takes several attribute
/// look-ups, and a top-level task function is encoded again with every task.
static PLAIN: Mutex<Option<HashMap<usize, PyObjectRef>>> = Mutex::new(None);

fn known_plain(obj: &PyObject) -> bool {
    lock(&PLAIN).as_ref().is_some_and(|p| p.contains_key(&obj.get_id()))
}

/// Entries a cache keyed by object identity keeps at most: past it, it starts again (each
/// entry keeps its object alive, and a program may make such objects without end).
const IDENTITY_CACHE_MAX: usize = 1024;

fn note_plain(obj: &PyObject) {
    let mut g = lock(&PLAIN);
    let plain = g.get_or_insert_with(HashMap::new);
    let old =
        if plain.len() >= IDENTITY_CACHE_MAX { std::mem::take(plain) } else { HashMap::new() };
    plain.insert(obj.get_id(), obj.to_owned());
    drop(g);
    drop(old);
}

/// `sys.modules[name].__dict__`.
fn main_dict(vm: &VirtualMachine, name: &str) -> Option<rustpython_vm::PyRef<PyDict>> {
    let main = vm.sys_module.get_attr("modules", vm).ok()?.get_item(name, vm).ok()?;
    main.dict()
}

/// The names an unconditional top-level `def` or `class` of the script at `path` binds: what a
/// spawn or forkserver child has after running it as `__mp_main__`. Parsed once per process;
/// a script that cannot be read or parsed binds nothing (everything then goes by value too).
fn main_defs(vm: &VirtualMachine, path: &str) -> Arc<HashSet<String>> {
    if let Some((p, set)) = lock(&MAIN_DEFS).as_ref() {
        if p == path {
            return set.clone();
        }
    }
    let parse = || -> PyResult<HashSet<String>> {
        let source = std::fs::read_to_string(path).map_err(|e| vm.new_os_error(e.to_string()))?;
        let tree = vm.import("ast", 0)?.get_attr("parse", vm)?.call((source, path), vm)?;
        let body: Vec<PyObjectRef> = tree.get_attr("body", vm)?.try_to_value(vm)?;
        let mut out = HashSet::new();
        for node in body {
            let kind = node.class().name().to_string();
            if matches!(kind.as_str(), "FunctionDef" | "AsyncFunctionDef" | "ClassDef") {
                out.insert(node.get_attr("name", vm)?.str(vm)?.to_string_lossy().into_owned());
            }
        }
        Ok(out)
    };
    let set = Arc::new(parse().unwrap_or_default());
    *lock(&MAIN_DEFS) = Some((path.to_owned(), set.clone()));
    set
}

/// Whether a spawn or forkserver child runs the parent's main again (as `__mp_main__`), given
/// the main's `__spec__.name` and `__file__`: CPython 3.11's rules, which
/// `multiprocessing.spawn` applies through `_procpy.children_rerun_main`. A main run by name
/// is re-run unless it is a package's or directory's `__main__`; one with a path unless it is
/// IPython's launch script; one with neither (`-c`, stdin, the prompt) never.
pub(crate) fn children_rerun_main(spec_name: Option<&str>, path: Option<&str>) -> bool {
    match (spec_name, path) {
        (Some(n), _) => n != "__main__" && !n.ends_with(".__main__"),
        (None, Some(p)) => {
            std::path::Path::new(p).file_stem().is_none_or(|s| s != std::ffi::OsStr::new("ipython"))
        }
        (None, None) => false,
    }
}

/// Whether some receiver may lack `module.qualname`, a function or class the sender finds in
/// its main module: yes unless the main script defines it unconditionally at top level (so
/// every re-run of the script does too) and, once this process has forked, it already existed
/// then.
fn main_may_lack(vm: &VirtualMachine, module: &str, qualname: &str) -> bool {
    let head = qualname.split('.').next().unwrap_or(qualname);
    let Ok(main) = vm.sys_module.get_attr("modules", vm).and_then(|m| m.get_item(module, vm))
    else {
        return true;
    };
    let file = match main.get_attr("__file__", vm).map(|f| f.downcast::<PyStr>()) {
        Ok(Ok(f)) => f.to_string_lossy().into_owned(),
        _ => return true,
    };
    let spec_name = main
        .get_attr("__spec__", vm)
        .ok()
        .filter(|s| !vm.is_none(s))
        .and_then(|s| s.get_attr("name", vm).ok())
        .and_then(|n| n.downcast::<PyStr>().ok())
        .map(|n| n.to_string_lossy().into_owned());
    if !children_rerun_main(spec_name.as_deref(), Some(&file)) {
        return true;
    }
    if !main_defs(vm, &file).contains(head) {
        return true;
    }
    let Ok(current) = main.get_attr(&*vm.ctx.new_str(head), vm) else { return true };
    match lock(&FORK_SNAPSHOT).as_ref() {
        Some(snap) => !snap.get(head).is_some_and(|o| o.is(&current)),
        None => false,
    }
}

/// What a by-value `__main__` function filled into this process's `__main__` dict, by name:
/// the receiver's own names are never replaced, but what a sender shipped before is, by what
/// it ships now (it may have redefined a helper since).
static FILLED: Mutex<Option<HashMap<Vec<u8>, PyObjectRef>>> = Mutex::new(None);

/// Set `k` in the `__main__` dict `globals` to the shipped `x` unless the name is this
/// process's own (there already, and not put there by [`fill_main_name`] itself).
fn fill_main_name(
    vm: &VirtualMachine,
    globals: &rustpython_vm::PyRef<PyDict>,
    k: &PyObjectRef,
    x: PyObjectRef,
) -> PyResult<()> {
    let Some(name) = k.downcast_ref::<PyStr>().map(|s| s.as_wtf8().as_bytes().to_vec()) else {
        return Ok(());
    };
    if let Some(current) = globals.get_item_opt(&**k, vm)? {
        let ours =
            lock(&FILLED).as_ref().and_then(|f| f.get(&name)).is_some_and(|o| o.is(&current));
        if !ours {
            return Ok(());
        }
    }
    globals.set_item(&**k, x.clone(), vm)?;
    let old = lock(&FILLED).get_or_insert_with(HashMap::new).insert(name, x);
    drop(old);
    Ok(())
}

/// The receiver's own `__main__.qualname`, if it is a function (`is_class`: a class) of that
/// qualname: what pickle's by-reference lookup would give.
fn find_in_main(vm: &VirtualMachine, qualname: &str, is_class: bool) -> Option<PyObjectRef> {
    let mut obj = vm.sys_module.get_attr("modules", vm).ok()?.get_item("__main__", vm).ok()?;
    for part in qualname.split('.') {
        let name = vm.ctx.new_str(part);
        obj = obj.get_attr(&*name, vm).ok()?;
    }
    let kind_ok = if is_class {
        obj.downcast_ref::<PyType>().is_some()
    } else {
        obj.class().is(vm.ctx.types.function_type)
    };
    let q = obj.get_attr("__qualname__", vm).ok()?.downcast::<PyStr>().ok()?;
    // A copy received by value for another token (a name an earlier function filled in) is
    // not this process's own: the sender has redefined it since.
    let own = !registry_built(&obj);
    (kind_ok && own && q.as_wtf8().as_bytes() == qualname.as_bytes()).then_some(obj)
}

/// Which native handles an encoding may carry; their descriptors are collected beside the bytes.
pub enum Handles<'a> {
    /// None: the channel cannot carry descriptors.
    Refuse,
    /// Connection ends only (a message on a Unix socket or queue). Queues are refused with
    /// CPython's "only through inheritance" message.
    Connections(&'a mut Vec<RawFd>),
    /// Everything: a child is being started.
    All(&'a mut Vec<RawFd>),
}

/// Encode `obj` to bytes; `handles` says which native handles may travel with them.
pub fn dumps(vm: &VirtualMachine, obj: &PyObject, handles: Handles<'_>) -> PyResult<Vec<u8>> {
    let mut enc = Encoder {
        vm,
        memo: HashMap::new(),
        keep: Vec::new(),
        next: 0,
        path: Vec::new(),
        err_path: None,
        handles,
        globals_ref: HashMap::new(),
        in_class: 0,
    };
    match enc.enc(obj) {
        Ok(v) => Ok(wire::to_bytes(&v)),
        Err(e) => Err(with_path(vm, e, enc.err_path.as_deref().unwrap_or(""))),
    }
}

/// Decode bytes made by [`dumps`]. `fds` are the descriptors that travelled with them.
pub fn loads(vm: &VirtualMachine, data: &[u8], fds: &[RawFd]) -> PyResult {
    let v = wire::from_bytes(data).map_err(|e| match e {
        wire::WireError::NoMemory { .. } => vm.new_memory_error(e.to_string()),
        _ => unpickling_error(vm, e.to_string()),
    })?;
    let mut dec = Decoder { vm, memo: Vec::new(), fds };
    dec.dec(&v, 0)
}

fn pickle_exc(vm: &VirtualMachine, name: &'static str) -> rustpython_vm::builtins::PyTypeRef {
    vm.import("pickle", 0)
        .and_then(|m| m.get_attr(name, vm))
        .ok()
        .and_then(|t| t.downcast::<PyType>().ok())
        .unwrap_or_else(|| vm.ctx.exceptions.value_error.to_owned())
}

/// A `pickle.UnpicklingError` with `msg`.
pub fn unpickling_error(vm: &VirtualMachine, msg: String) -> PyBaseExceptionRef {
    vm.new_exception_msg(pickle_exc(vm, "UnpicklingError"), msg.into())
}

fn pickling_error(vm: &VirtualMachine, msg: String) -> PyBaseExceptionRef {
    vm.new_exception_msg(pickle_exc(vm, "PicklingError"), msg.into())
}

/// Re-raise `e` with the same type and " (found at PATH)" appended, so the user sees where in
/// their argument the unencodable object sits.
fn with_path(vm: &VirtualMachine, e: PyBaseExceptionRef, path: &str) -> PyBaseExceptionRef {
    if path.is_empty() {
        return e;
    }
    let msg = e.as_object().str(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let cls = e.class().to_owned();
    match cls.as_object().call((format!("{msg} (found at {path})"),), vm) {
        Ok(new) => match new.downcast::<rustpython_vm::builtins::PyBaseException>() {
            Ok(new) => new,
            Err(_) => e,
        },
        Err(_) => e,
    }
}

struct Encoder<'a> {
    vm: &'a VirtualMachine,
    memo: HashMap<usize, u32>,
    /// Keeps every memoized object alive so that no id is reused while encoding.
    keep: Vec<PyObjectRef>,
    next: u32,
    path: Vec<Seg>,
    err_path: Option<String>,
    handles: Handles<'a>,
    /// For functions sent by value: id of the sender's `__globals__` -> the fresh dict that
    /// stands for it in this message, so functions that shared globals share them on arrival.
    globals_ref: HashMap<usize, PyObjectRef>,
    /// How many classes by value are being encoded around the current object.
    in_class: u32,
}

/// One step of the path to the object being encoded, rendered (`[1]['a']`) only if encoding
/// fails: formatting every index and every dict key's repr up front cost more than encoding a
/// small message.
pub(crate) enum Seg {
    Index(usize),
    /// A dict key itself, then the value under it.
    Key(PyObjectRef),
    Value(PyObjectRef),
    Text(String),
}

impl From<String> for Seg {
    fn from(s: String) -> Seg {
        Seg::Text(s)
    }
}

impl Seg {
    fn render(&self, vm: &VirtualMachine) -> String {
        let key = |k: &PyObjectRef| {
            k.repr(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into())
        };
        match self {
            Seg::Index(i) => format!("[{i}]"),
            Seg::Key(k) => format!("[{}] (key)", key(k)),
            Seg::Value(k) => format!("[{}]", key(k)),
            Seg::Text(s) => s.clone(),
        }
    }
}

/// Module attributes a by-value function's globals keep (relative imports and `__name__` checks
/// inside the function still work), as cloudpickle keeps them.
const MODULE_ATTRS: [&str; 4] = ["__package__", "__name__", "__path__", "__file__"];

impl Encoder<'_> {
    fn memoize(&mut self, obj: &PyObject) {
        self.memo.insert(obj.get_id(), self.next);
        self.keep.push(obj.to_owned());
        self.next += 1;
    }

    fn fail(&mut self, e: PyBaseExceptionRef) -> PyBaseExceptionRef {
        if self.err_path.is_none() {
            let vm = self.vm;
            self.err_path = Some(self.path.iter().map(|seg| seg.render(vm)).collect());
        }
        e
    }

    fn child(&mut self, seg: impl Into<Seg>, obj: &PyObject) -> PyResult<Value> {
        self.path.push(seg.into());
        let r = self.enc(obj);
        self.path.pop();
        r
    }

    fn enc(&mut self, obj: &PyObject) -> PyResult<Value> {
        let vm = self.vm;
        if self.path.len() > wire::ENCODE_DEPTH {
            let e = vm.new_recursion_error(
                "maximum recursion depth exceeded while encoding an object".to_owned(),
            );
            return Err(self.fail(e));
        }
        let cls = obj.class();
        let t = &vm.ctx.types;
        if vm.is_none(obj) {
            return Ok(Value::None);
        }
        if cls.is(t.bool_type) {
            return Ok(Value::Bool(obj.is(vm.ctx.true_value.as_object())));
        }
        if cls.is(t.int_type) {
            let i = obj.downcast_ref::<PyInt>().expect("int").as_bigint();
            return Ok(match i.to_i64() {
                Some(v) => Value::Int(v),
                None => Value::BigInt(i.to_signed_bytes_le()),
            });
        }
        if cls.is(t.float_type) {
            return Ok(Value::Float(obj.downcast_ref::<PyFloat>().expect("float").to_f64()));
        }
        if cls.is(t.str_type) {
            return Ok(Value::Str(
                obj.downcast_ref::<PyStr>().expect("str").as_wtf8().as_bytes().to_vec(),
            ));
        }
        if cls.is(t.bytes_type) {
            return Ok(Value::Bytes(
                obj.downcast_ref::<PyBytes>().expect("bytes").as_bytes().to_vec(),
            ));
        }
        if let Some(&m) = self.memo.get(&obj.get_id()) {
            return Ok(Value::Memo(m));
        }
        if cls.is(t.tuple_type) {
            self.memoize(obj);
            let items: Vec<PyObjectRef> =
                obj.downcast_ref::<PyTuple>().expect("tuple").as_slice().to_vec();
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                out.push(self.child(Seg::Index(i), it)?);
            }
            return Ok(Value::Tuple(out));
        }
        if cls.is(t.list_type) {
            self.memoize(obj);
            // Copy the element refs out so no lock is held while encoding them.
            let items: Vec<PyObjectRef> =
                obj.downcast_ref::<PyList>().expect("list").borrow_vec().to_vec();
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                out.push(self.child(Seg::Index(i), it)?);
            }
            return Ok(Value::List(out));
        }
        if cls.is(t.dict_type) {
            self.memoize(obj);
            let items = obj.downcast_ref::<PyDict>().expect("dict").items_vec();
            let mut out = Vec::with_capacity(items.len());
            for (k, v) in items.iter() {
                let kv = self.child(Seg::Key(k.clone()), k)?;
                let vv = self.child(Seg::Value(k.clone()), v)?;
                out.push((kv, vv));
            }
            return Ok(Value::Dict(out));
        }
        if cls.is(t.builtin_function_or_method_type) {
            // A builtin bound to an object (`d.get`, `", ".join`, `dict.fromkeys`) is that
            // object's attribute, as pickle sends it: `getattr(obj, name)`.
            if let Ok(owner) = obj.get_attr("__self__", vm) {
                if !vm.is_none(&owner) && !owner.fast_isinstance(t.module_type) {
                    return self.reduce(obj);
                }
            }
        }
        if cls.is(t.function_type)
            || cls.is(t.builtin_function_or_method_type)
            || obj.downcast_ref::<PyType>().is_some()
        {
            return self.global(obj, None);
        }
        if let Some((kind, handle_fds, extra)) = as_handle(obj) {
            return self.handle(obj, kind, handle_fds, extra);
        }
        if self.in_class > 0 && cls.is(t.mappingproxy_type) {
            // Inside a class by value only (a dataclass field's `metadata`), as cloudpickle
            // does: pickle refuses a mappingproxy, and so does the codec elsewhere.
            let copy = vm.ctx.new_dict();
            let items: Vec<PyObjectRef> = vm.call_method(obj, "items", ())?.try_to_value(vm)?;
            for p in items {
                let (k, v) = pair(vm, &p)?;
                copy.set_item(&*k, v, vm)?;
            }
            let args: PyObjectRef = vm.new_tuple((copy,)).into();
            self.memoize(obj);
            // Not found as builtins.mappingproxy (its __module__ and __qualname__) but here:
            let func = Value::Global {
                module: "types".to_owned(),
                qualname: "MappingProxyType".to_owned(),
            };
            let args = self.child(Seg::Text(".__reduce__()[1]".to_owned()), &args)?;
            return Ok(Value::Reduce(Box::new(Reduce {
                func,
                args,
                state: None,
                listitems: Vec::new(),
                dictitems: Vec::new(),
            })));
        }
        if obj.fast_isinstance(t.module_type) {
            if let Some(name) = importable_module_name(vm, obj) {
                return Ok(Value::Global { module: name, qualname: String::new() });
            }
        }
        self.reduce(obj)
    }

    fn handle(
        &mut self,
        obj: &PyObject,
        kind: HandleKind,
        handle_fds: Vec<RawFd>,
        extra: Vec<i64>,
    ) -> PyResult<Value> {
        // Memoized like containers: two references to one queue must arrive as one object
        // (one feeder thread), or the order of their items would be lost.
        self.memoize(obj);
        let fds = match (&mut self.handles, kind) {
            (Handles::All(fds), _) | (Handles::Connections(fds), HandleKind::Connection) => fds,
            (_, HandleKind::Queue | HandleKind::SemLock | HandleKind::SharedBuffer) => {
                let name = obj.class().name().to_string();
                let e = self.vm.new_runtime_error(format!(
                    "{name} objects should only be shared between processes through inheritance"
                ));
                return Err(self.fail(e));
            }
            (Handles::Refuse, HandleKind::Connection) => {
                let e = self.vm.new_runtime_error(
                    "a Connection can travel only as a Process argument, through a Queue, or through a duplex Pipe (Pipe(duplex=False) cannot carry it)".to_owned(),
                );
                return Err(self.fail(e));
            }
        };
        let mut idx = Vec::with_capacity(handle_fds.len());
        for fd in handle_fds {
            idx.push(fds.len() as u32);
            fds.push(fd);
        }
        Ok(Value::Handle { kind, fds: idx, extra })
    }

    /// A module-level function/class/builtin, found by reference; `name` overrides the qualname
    /// (used when `__reduce__` returned a string). A Python function that cannot be found by
    /// reference goes by value instead; anything else that cannot raises as pickle does.
    fn global(&mut self, obj: &PyObject, name: Option<String>) -> PyResult<Value> {
        let vm = self.vm;
        let by_value_ok = obj.class().is(vm.ctx.types.function_type);
        let qualname = match name {
            Some(n) => n,
            None => match obj.get_attr("__qualname__", vm).and_then(|q| q.str(vm)) {
                Ok(q) => q.to_string_lossy().into_owned(),
                Err(_) => obj
                    .get_attr("__name__", vm)
                    .and_then(|q| q.str(vm))?
                    .to_string_lossy()
                    .into_owned(),
            },
        };
        let module = match obj.get_attr("__module__", vm) {
            Ok(m) if !vm.is_none(&m) => m.str(vm)?.to_string_lossy().into_owned(),
            _ => "builtins".to_owned(),
        };
        if qualname.contains("<locals>") || qualname.contains("<lambda>") {
            if by_value_ok {
                return self.function(obj);
            }
            if qualname.contains("<locals>") {
                let e = vm.new_attribute_error(format!("Can't pickle local object '{qualname}'"));
                return Err(self.fail(e));
            }
        }
        let is_main = (module == "__main__" || module == "__mp_main__")
            && (by_value_ok || obj.downcast_ref::<PyType>().is_some());
        // A known plain one is never in the registry: skip both look-ups.
        let plain = is_main && known_plain(obj);
        if is_main && !plain {
            if let Some(token) = registry_token(obj) {
                return self.main_global(obj, qualname, token);
            }
        }
        let repr = || obj.repr(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match resolve_global(vm, &module, &qualname) {
            Ok(found) if found.is(obj) => {
                if is_main && !plain {
                    if main_may_lack(vm, &module, &qualname) {
                        let token = registry_assign(vm, obj);
                        return self.main_global(obj, qualname, token);
                    }
                    note_plain(obj);
                }
                Ok(Value::Global { module, qualname })
            }
            _ if by_value_ok => self.function(obj),
            Ok(_) => {
                let e = pickling_error(
                    vm,
                    format!(
                        "Can't pickle {}: it's not the same object as {module}.{qualname}",
                        repr()
                    ),
                );
                Err(self.fail(e))
            }
            Err(_) => {
                let e = pickling_error(
                    vm,
                    format!(
                        "Can't pickle {}: attribute lookup {qualname} on {module} failed",
                        repr()
                    ),
                );
                Err(self.fail(e))
            }
        }
    }

    /// A function by value ([`wire::Function`]). Fields are written in the order the decoder
    /// reads them, so the memo indexes both ends hand out agree.
    fn function(&mut self, f: &PyObject) -> PyResult<Value> {
        let r = self.function_inner(f);
        r.map_err(|e| self.fail(e))
    }

    fn function_inner(&mut self, f: &PyObject) -> PyResult<Value> {
        self.memoize(f);
        self.function_body(f, false)
    }

    /// A `__main__` function or class as a [`wire::MainGlobal`]: the object takes the next memo
    /// index, and its by-value form is a memo scope released after it (see the wire type).
    fn main_global(&mut self, obj: &PyObject, qualname: String, token: Token) -> PyResult<Value> {
        self.memoize(obj);
        let at = self.next - 1;
        let saved = self.globals_ref.clone();
        let by_value = if obj.class().is(self.vm.ctx.types.function_type) {
            self.function_body(obj, true)
        } else {
            self.in_class += 1;
            let r = self.class_body(obj);
            self.in_class -= 1;
            r
        };
        self.memo.retain(|_, m| *m <= at);
        self.next = at + 1;
        self.globals_ref = saved;
        let by_value = by_value.map_err(|e| self.fail(e))?;
        Ok(Value::MainGlobal(Box::new(wire::MainGlobal { qualname, token, by_value })))
    }

    /// A class by value ([`wire::Class`]), its parts in the order the decoder reads them.
    fn class_body(&mut self, cls: &PyObject) -> PyResult<Value> {
        let vm = self.vm;
        let metaclass = self.child(Seg::Text(".__class__".to_owned()), cls.class().as_object())?;
        let name_obj = cls.get_attr("__name__", vm)?;
        let name = self.child(Seg::Text(".__name__".to_owned()), &name_obj)?;
        let bases_obj = cls.get_attr("__bases__", vm)?;
        let bases = self.child(Seg::Text(".__bases__".to_owned()), &bases_obj)?;
        let cls_dict = cls.get_attr("__dict__", vm)?;
        let items: Vec<PyObjectRef> = vm.call_method(&cls_dict, "items", ())?.try_to_value(vm)?;
        let ns = vm.ctx.new_dict();
        ns.set_item("__qualname__", cls.get_attr("__qualname__", vm)?, vm)?;
        // Slots become member descriptors in the class dict: made again from `__slots__`.
        let mut slots = HashSet::new();
        if let Ok(s) = cls_dict.get_item("__slots__", vm) {
            let names: Vec<PyObjectRef> = match s.downcast_ref::<PyStr>() {
                Some(_) => vec![s.clone()],
                None => s.try_to_value(vm)?,
            };
            for n in names {
                slots.insert(n.str(vm)?.to_string_lossy().into_owned());
            }
        }
        let mut rest = Vec::new();
        for p in items {
            let (k, v) = pair(vm, &p)?;
            let key = match k.downcast_ref::<PyStr>() {
                Some(s) => s.to_string_lossy().into_owned(),
                None => String::new(),
            };
            match key.as_str() {
                "__module__" | "__qualname__" | "__doc__" | "__slots__" => {
                    ns.set_item(&*k, v, vm)?
                }
                // Made by the class statement itself (or by ABCMeta, for `_abc_impl`).
                "__dict__" | "__weakref__" | "_abc_impl" => {}
                s if slots.contains(s) => {}
                _ => rest.push((k, v)),
            }
        }
        let namespace = self.child(Seg::Text(".__dict__".to_owned()), ns.as_object())?;
        let mut attrs = Vec::with_capacity(rest.len());
        for (k, v) in rest {
            let kv = self.child(Seg::Key(k.clone()), &k)?;
            self.path.push(Seg::Value(k.clone()));
            let vv = self.class_attr(&v);
            self.path.pop();
            attrs.push((kv, vv?));
        }
        Ok(Value::Class(Box::new(Class { metaclass, name, bases, namespace, attrs })))
    }

    /// A class `__dict__` value: static and class methods and properties (which pickle cannot
    /// send) as the call that makes them again.
    fn class_attr(&mut self, v: &PyObjectRef) -> PyResult<Value> {
        let vm = self.vm;
        let t = &vm.ctx.types;
        let cls = v.class().to_owned();
        let args: PyObjectRef = if cls.is(t.staticmethod_type) || cls.is(t.classmethod_type) {
            vm.new_tuple((v.get_attr("__func__", vm)?,)).into()
        } else if cls.is(t.property_type) {
            let part = |n: &'static str| v.get_attr(n, vm);
            vm.new_tuple((part("fget")?, part("fset")?, part("fdel")?, part("__doc__")?)).into()
        } else {
            return self.enc(v);
        };
        if let Some(&m) = self.memo.get(&v.get_id()) {
            return Ok(Value::Memo(m));
        }
        self.call_again(v, cls.as_object(), &args)
    }

    /// `obj` as the call `func(*args)` that makes it again (memoized like a reduce).
    fn call_again(&mut self, obj: &PyObject, func: &PyObject, args: &PyObject) -> PyResult<Value> {
        self.memoize(obj);
        let func = self.child(Seg::Text(".__reduce__()[0]".to_owned()), func)?;
        let args = self.child(Seg::Text(".__reduce__()[1]".to_owned()), args)?;
        Ok(Value::Reduce(Box::new(Reduce {
            func,
            args,
            state: None,
            listitems: Vec::new(),
            dictitems: Vec::new(),
        })))
    }

    /// The parts of a function by value (the function itself already memoized). `cached`: a
    /// `__main__` function, sent again with every task, whose marshalled code is kept.
    fn function_body(&mut self, f: &PyObject, cached: bool) -> PyResult<Value> {
        let vm = self.vm;
        let code_obj = f.get_attr("__code__", vm)?;
        let code = if cached {
            let hit = lock(&MARSHALLED).as_ref().and_then(|m| m.get(&code_obj.get_id()).cloned());
            match hit {
                Some((_, bytes)) => bytes.to_vec(),
                None => {
                    let bytes = marshal(vm, &code_obj)?;
                    let mut g = lock(&MARSHALLED);
                    let cache = g.get_or_insert_with(HashMap::new);
                    let old = if cache.len() >= IDENTITY_CACHE_MAX {
                        std::mem::take(cache)
                    } else {
                        HashMap::new()
                    };
                    cache.insert(code_obj.get_id(), (code_obj.clone(), bytes.clone().into()));
                    drop(g);
                    drop(old);
                    bytes
                }
            }
        } else {
            marshal(vm, &code_obj)?
        };
        let sender_globals = f
            .get_attr("__globals__", vm)?
            .downcast::<PyDict>()
            .map_err(|_| pickling_error(vm, "function __globals__ is not a dict".to_owned()))?;

        // Phase 1: what the function is created from.
        let base = match self.globals_ref.get(&sender_globals.get_id()) {
            Some(b) => b.clone(),
            None => {
                let b = vm.ctx.new_dict();
                for k in MODULE_ATTRS {
                    if let Some(v) = sender_globals.get_item_opt(k, vm)? {
                        b.set_item(k, v, vm)?;
                    }
                }
                let b: PyObjectRef = b.into();
                self.globals_ref.insert(sender_globals.get_id(), b.clone());
                b
            }
        };
        let globals = self.child(Seg::Text(".__globals__".to_owned()), &base)?;
        let name_obj = f.get_attr("__name__", vm)?;
        let name = self.child(Seg::Text(".__name__".to_owned()), &name_obj)?;
        let cells: Vec<PyObjectRef> = match f.get_attr("__closure__", vm)? {
            c if vm.is_none(&c) => Vec::new(),
            c => c.try_to_value(vm)?,
        };
        let mut closure = Vec::with_capacity(cells.len());
        let mut new_cells = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            match self.memo.get(&cell.get_id()) {
                Some(&m) => closure.push(Some(m)),
                None => {
                    self.memoize(cell);
                    closure.push(None);
                    new_cells.push((i, cell));
                }
            }
        }

        // Phase 2: everything that may refer back to the function.
        let mut names = Vec::new();
        for n in code_global_names(vm, &code_obj)? {
            if let Some(v) = sender_globals.get_item_opt(&*n, vm)? {
                let seg = format!(
                    ".__globals__[{}]",
                    n.as_object()
                        .repr(vm)
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                );
                names.push((Value::Str(n.as_wtf8().as_bytes().to_vec()), self.child(seg, &v)?));
            }
        }
        let mut contents = Vec::with_capacity(new_cells.len());
        for (i, cell) in new_cells {
            match cell.get_attr("cell_contents", vm) {
                Ok(v) => {
                    contents.push(Some(self.child(format!(".__closure__[{i}].cell_contents"), &v)?))
                }
                // An empty cell: a free variable not yet assigned in the enclosing function.
                Err(e) if e.fast_isinstance(vm.ctx.exceptions.value_error) => contents.push(None),
                Err(e) => return Err(e),
            }
        }
        let mut attrs = Vec::with_capacity(5);
        for name in ["__defaults__", "__kwdefaults__", "__qualname__", "__module__", "__doc__"] {
            let v = f.get_attr(name, vm)?;
            attrs.push(self.child(format!(".{name}"), &v)?);
        }
        let [defaults, kwdefaults, qualname, module, doc] =
            <[Value; 5]>::try_from(attrs).expect("five attributes");
        let dict = match f.dict() {
            Some(d) if d.__len__() > 0 => {
                self.child(Seg::Text(".__dict__".to_owned()), d.as_object())?
            }
            _ => Value::None,
        };
        Ok(Value::Function(Box::new(Function {
            code,
            globals,
            name,
            closure,
            names,
            cells: contents,
            defaults,
            kwdefaults,
            qualname,
            module,
            doc,
            dict,
        })))
    }

    fn reduce(&mut self, obj: &PyObject) -> PyResult<Value> {
        let vm = self.vm;
        if let Some(name) = dataclass_sentinel(vm, obj) {
            return Ok(Value::Global { module: "dataclasses".to_owned(), qualname: name });
        }
        let reduced = match extra_reducer(vm, obj)? {
            Some(f) => f.call((obj.to_owned(),), vm),
            None => vm.call_method(obj, "__reduce_ex__", (4,)),
        };
        let rv = match reduced {
            Ok(rv) => rv,
            Err(e) => {
                let e = cpython_type_name_in_message(vm, obj, e);
                return Err(self.fail(e));
            }
        };
        if let Some(s) = rv.downcast_ref::<PyStr>() {
            return self.global(obj, Some(s.to_string_lossy().into_owned()));
        }
        let Some(parts) = rv.downcast_ref::<PyTuple>().map(|t| t.as_slice().to_vec()) else {
            let e = pickling_error(vm, "__reduce__ must return a string or tuple".to_owned());
            return Err(self.fail(e));
        };
        if !(2..=6).contains(&parts.len()) {
            let e = pickling_error(
                vm,
                "tuple returned by __reduce__ must contain 2 through 6 elements".to_owned(),
            );
            return Err(self.fail(e));
        }
        if parts.len() == 6 && !vm.is_none(&parts[5]) {
            let e = pickling_error(vm, "state setters in __reduce__ are not supported".to_owned());
            return Err(self.fail(e));
        }
        self.memoize(obj);
        let func = self.child(Seg::Text(".__reduce__()[0]".to_owned()), &parts[0])?;
        let args = self.child(Seg::Text(".__reduce__()[1]".to_owned()), &parts[1])?;
        let state = match parts.get(2) {
            Some(s) if !vm.is_none(s) => {
                Some(self.child(Seg::Text(".__getstate__()".to_owned()), s)?)
            }
            _ => None,
        };
        let mut listitems = Vec::new();
        if let Some(it) = parts.get(3).filter(|o| !vm.is_none(o)) {
            let items: Vec<PyObjectRef> = it.try_to_value(vm)?;
            for (i, x) in items.iter().enumerate() {
                listitems.push(self.child(Seg::Index(i), x)?);
            }
        }
        let mut dictitems = Vec::new();
        if let Some(it) = parts.get(4).filter(|o| !vm.is_none(o)) {
            let items: Vec<PyObjectRef> = it.try_to_value(vm)?;
            for p in items.iter() {
                let (k, x) = pair(vm, p)?;
                let (k, x) = (&k, &x);
                dictitems.push((
                    self.child(Seg::Key(k.clone()), k)?,
                    self.child(Seg::Value(k.clone()), x)?,
                ));
            }
        }
        Ok(Value::Reduce(Box::new(Reduce { func, args, state, listitems, dictitems })))
    }
}

/// The name of `obj` in `dataclasses` if it is one of its sentinels (`MISSING`, `KW_ONLY`, the
/// field kinds `_FIELD`...), which that module compares by identity: a copy would make a class
/// sent by value lose its fields (as cloudpickle, they go by reference).
fn dataclass_sentinel(vm: &VirtualMachine, obj: &PyObject) -> Option<String> {
    let cls = obj.class();
    if !matches!(&*cls.name(), "_FIELD_BASE" | "_MISSING_TYPE" | "_KW_ONLY_TYPE") {
        return None;
    }
    let module = vm.sys_module.get_attr("modules", vm).ok()?.get_item("dataclasses", vm).ok()?;
    ["_FIELD", "_FIELD_CLASSVAR", "_FIELD_INITVAR", "MISSING", "KW_ONLY"]
        .into_iter()
        .find(|n| module.get_attr(*n, vm).is_ok_and(|v| v.is(obj)))
        .map(str::to_owned)
}

thread_local! {
    /// Set while [`marshal_loads`] runs: a panic there is expected and reported as an exception.
    static QUIET_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `marshal.loads(data)`. RustPython's panics on some malformed code objects (e.g. "not
/// implemented: frozenset constant"); that is `Err(why)` here, the default panic message kept
/// off stderr, so a crafted message or .pyc raises instead of killing the process.
pub(crate) fn marshal_loads(vm: &VirtualMachine, data: &[u8]) -> Result<PyResult, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANIC.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let loads = match vm.import("marshal", 0).and_then(|m| m.get_attr("loads", vm)) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let data = vm.ctx.new_bytes(data.to_vec());
    QUIET_PANIC.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loads.call((data,), vm)));
    QUIET_PANIC.with(|q| q.set(false));
    r.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder failed".to_owned())
    })
}

/// `marshal.dumps(code)` of `__main__` functions' code objects, by id (each kept alive, so an
/// id cannot be reused), at most [`IDENTITY_CACHE_MAX`] of them.
type MarshalCache = HashMap<usize, (PyObjectRef, Arc<[u8]>)>;
static MARSHALLED: Mutex<Option<MarshalCache>> = Mutex::new(None);

fn marshal(vm: &VirtualMachine, code: &PyObject) -> PyResult<Vec<u8>> {
    let marshalled =
        vm.import("marshal", 0)?.get_attr("dumps", vm)?.call((code.to_owned(),), vm)?;
    match marshalled.downcast_ref::<PyBytes>() {
        Some(b) => Ok(b.as_bytes().to_vec()),
        None => Err(pickling_error(vm, "marshal.dumps did not return bytes".to_owned())),
    }
}

/// The names a code object may look up as globals: `co_names` of it and of the code objects
/// nested in its constants, in first-seen order. Attribute names are among them too; only those
/// that exist in the function's globals are sent.
fn code_global_names(
    vm: &VirtualMachine,
    code: &PyObject,
) -> PyResult<Vec<rustpython_vm::PyRef<PyStr>>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![code.to_owned()];
    while let Some(c) = stack.pop() {
        let names: Vec<PyObjectRef> = c.get_attr("co_names", vm)?.try_to_value(vm)?;
        for n in names {
            if let Ok(n) = n.downcast::<PyStr>() {
                // The receiver supplies its own builtins.
                if n.as_wtf8().as_bytes() != b"__builtins__"
                    && seen.insert(n.as_wtf8().as_bytes().to_vec())
                {
                    out.push(n);
                }
            }
        }
        let consts: Vec<PyObjectRef> = c.get_attr("co_consts", vm)?.try_to_value(vm)?;
        // Pushed in reverse so nested code is walked in source order.
        stack.extend(consts.into_iter().rev().filter(|k| k.class().is(vm.ctx.types.code_type)));
    }
    Ok(out)
}

/// The name a module is importable under: its `__name__`, when `sys.modules` maps that name to
/// this very module.
fn importable_module_name(vm: &VirtualMachine, module: &PyObject) -> Option<String> {
    let name = module.get_attr("__name__", vm).ok()?.downcast::<PyStr>().ok()?;
    let modules = vm.sys_module.get_attr("modules", vm).ok()?;
    let found = modules.get_item(&*name, vm).ok()?;
    found.is(module).then(|| name.to_string_lossy().into_owned())
}

/// Import `module` and walk the dotted `qualname` inside it (an empty one: the module itself).
pub fn resolve_global(vm: &VirtualMachine, module: &str, qualname: &str) -> PyResult {
    let module_name = vm.ctx.new_str(module);
    let mut obj = vm.import(&*module_name, 0)?;
    // `import a.b` returns `a`; fetch the submodule itself from sys.modules.
    if module.contains('.') {
        let modules = vm.sys_module.get_attr("modules", vm)?;
        obj = modules.get_item(module, vm)?;
    }
    for part in qualname.split('.').filter(|_| !qualname.is_empty()) {
        let name = vm.ctx.new_str(part);
        obj = obj.get_attr(&*name, vm)?;
    }
    Ok(obj)
}

struct Decoder<'a> {
    vm: &'a VirtualMachine,
    memo: Vec<Option<PyObjectRef>>,
    fds: &'a [RawFd],
}

impl Decoder<'_> {
    fn reserve(&mut self) -> usize {
        self.memo.push(None);
        self.memo.len() - 1
    }

    fn dec(&mut self, v: &Value, depth: usize) -> PyResult {
        let vm = self.vm;
        let d = depth + 1;
        Ok(match v {
            Value::None => vm.ctx.none(),
            Value::Bool(b) => vm.ctx.new_bool(*b).into(),
            Value::Int(i) => vm.ctx.new_int(*i).into(),
            Value::BigInt(b) => vm.ctx.new_bigint(&BigInt::from_signed_bytes_le(b)).into(),
            Value::Float(f) => vm.ctx.new_float(*f).into(),
            Value::Str(b) => match std::str::from_utf8(b) {
                Ok(s) => vm.ctx.new_str(s).into(),
                Err(_) => match Wtf8::from_bytes(b) {
                    Some(w) => vm.ctx.new_str(w.to_owned()).into(),
                    None => return Err(unpickling_error(vm, "malformed message: invalid string".into())),
                },
            },
            Value::Bytes(b) => vm.ctx.new_bytes(b.clone()).into(),
            Value::Tuple(items) => {
                let idx = self.reserve();
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    out.push(self.dec(it, d)?);
                }
                let t: PyObjectRef = vm.ctx.new_tuple(out).into();
                self.memo[idx] = Some(t.clone());
                t
            }
            Value::List(items) => {
                let l = vm.ctx.new_list(Vec::with_capacity(items.len()));
                self.memo.push(Some(l.clone().into()));
                for it in items {
                    let x = self.dec(it, d)?;
                    l.borrow_vec_mut().push(x);
                }
                l.into()
            }
            Value::Dict(items) => {
                let dict = vm.ctx.new_dict();
                self.memo.push(Some(dict.clone().into()));
                for (k, x) in items {
                    let k = self.dec(k, d)?;
                    let x = self.dec(x, d)?;
                    dict.set_item(&*k, x, vm)?;
                }
                dict.into()
            }
            Value::Global { module, qualname } => resolve_global(vm, module, qualname).map_err(|e| {
                // A module that fails to import says why; only a missing name is reworded.
                if e.fast_isinstance(vm.ctx.exceptions.attribute_error) {
                    vm.new_attribute_error(format!("Can't get attribute '{qualname}' on module '{module}'"))
                } else {
                    e
                }
            })?,
            Value::Memo(i) => match self.memo.get(*i as usize) {
                Some(Some(o)) => o.clone(),
                Some(None) => return Err(unpickling_error(vm, "recursive reference to an object still being built (a tuple that contains itself)".into())),
                None => return Err(unpickling_error(vm, format!("malformed message: memo {i} not defined"))),
            },
            Value::Handle { kind, fds, extra } => {
                let mut raw = Vec::with_capacity(fds.len());
                for i in fds {
                    match self.fds.get(*i as usize) {
                        Some(fd) => raw.push(*fd),
                        None => return Err(unpickling_error(vm, "malformed message: handle without its descriptor".into())),
                    }
                }
                let Some(table) = HANDLE_TABLE.get() else {
                    return Err(unpickling_error(vm, "malformed message: no handle types in this process".into()));
                };
                let h = (table.rebuild)(vm, *kind, &raw, extra)?;
                self.memo.push(Some(h.clone()));
                h
            }
            Value::Reduce(r) => self.reduce(r, d)?,
            Value::Function(f) => {
                let idx = self.reserve();
                self.function_at(f, d, idx, false)?
            }
            Value::MainGlobal(m) => self.main_global(m, d)?,
            Value::Class(_) => {
                return Err(unpickling_error(
                    vm,
                    "malformed message: a class by value outside a __main__ global".into(),
                ))
            }
        })
    }

    /// A `__main__` function or class: the one known by token, else the receiver's own, else
    /// the by-value copy, built once per token.
    fn main_global(&mut self, m: &wire::MainGlobal, d: usize) -> PyResult {
        let vm = self.vm;
        let idx = self.reserve();
        let is_class =
            match &m.by_value {
                Value::Function(_) => false,
                Value::Class(_) => true,
                _ => return Err(unpickling_error(
                    vm,
                    "malformed message: a __main__ global that is neither a function nor a class"
                        .into(),
                )),
            };
        let obj = match registry_get(m.token) {
            Some(o) => o,
            None => match find_in_main(vm, &m.qualname, is_class) {
                Some(o) => o,
                None => {
                    let o = match &m.by_value {
                        Value::Function(f) => self.function_at(f, d, idx, true)?,
                        Value::Class(c) => self.class_at(c, d, idx).map_err(|e| {
                            let msg = e
                                .as_object()
                                .str(vm)
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            let kind = e.class().name().to_string();
                            unpickling_error(
                                vm,
                                format!(
                                    "cannot make class {} of __main__ by value here ({kind}: \
                                     {msg}); define it at the top level of the main script",
                                    m.qualname
                                ),
                            )
                        })?,
                        _ => unreachable!("checked above"),
                    };
                    registry_insert(vm, m.token, o)
                }
            },
        };
        // The by-value form's memo scope ends here, whether it was read or skipped.
        self.memo.truncate(idx + 1);
        self.memo[idx] = Some(obj.clone());
        Ok(obj)
    }

    /// Rebuild a class sent by value, in the order [`Encoder::class_body`] wrote it.
    fn class_at(&mut self, c: &Class, d: usize, idx: usize) -> PyResult {
        let vm = self.vm;
        let malformed = |what: &str| unpickling_error(vm, format!("malformed message: {what}"));
        let meta = self.dec(&c.metaclass, d)?;
        let name = self.dec(&c.name, d)?;
        let bases = self.dec(&c.bases, d)?;
        let ns = self.dec(&c.namespace, d)?;
        if ns.downcast_ref::<PyDict>().is_none() {
            return Err(malformed("class namespace is not a dict"));
        }
        let cls = meta.call((name, bases, ns), vm)?;
        if cls.downcast_ref::<PyType>().is_none() {
            return Err(malformed("class by value did not make a class"));
        }
        self.memo[idx] = Some(cls.clone());
        for (k, x) in &c.attrs {
            let k = self
                .dec(k, d)?
                .downcast::<PyStr>()
                .map_err(|_| malformed("class attribute name is not a str"))?;
            let x = self.dec(x, d)?;
            cls.set_attr(&k, x, vm)?;
        }
        Ok(cls)
    }

    /// Rebuild a function sent by value, in the order [`Encoder::function`] wrote it, at memo
    /// index `idx`. `main`: a `__main__` function, whose globals are this process's `__main__`
    /// dict, where the names it ships fill only what is missing.
    fn function_at(&mut self, fv: &Function, d: usize, idx: usize, main: bool) -> PyResult {
        let vm = self.vm;
        let malformed = |what: &str| unpickling_error(vm, format!("malformed message: {what}"));
        let code = match marshal_loads(vm, &fv.code) {
            Ok(r) => r?,
            Err(why) => return Err(malformed(&format!("bad marshal data ({why})"))),
        };
        if !code.class().is(vm.ctx.types.code_type) {
            return Err(malformed("function code is not a code object"));
        }
        let shipped = self
            .dec(&fv.globals, d)?
            .downcast::<PyDict>()
            .map_err(|_| malformed("function globals are not a dict"))?;
        let main_globals = if main { main_dict(vm, "__main__") } else { None };
        let globals = main_globals.clone().unwrap_or(shipped);
        // Builtins resolve through the globals' `__builtins__`, read when the function is made.
        if globals.get_item_opt("__builtins__", vm)?.is_none() {
            globals.set_item("__builtins__", vm.builtins.clone().into(), vm)?;
        }
        let name = self.dec(&fv.name, d)?;
        let mut cells = Vec::with_capacity(fv.closure.len());
        let mut new_cells = Vec::new();
        for c in &fv.closure {
            let cell = match c {
                None => {
                    let cell = vm.ctx.types.cell_type.as_object().call((), vm)?;
                    self.memo.push(Some(cell.clone()));
                    new_cells.push(cell.clone());
                    cell
                }
                Some(i) => match self.memo.get(*i as usize) {
                    Some(Some(o)) if o.class().is(vm.ctx.types.cell_type) => o.clone(),
                    _ => return Err(malformed("closure cell not defined")),
                },
            };
            cells.push(cell);
        }
        let closure: PyObjectRef =
            if cells.is_empty() { vm.ctx.none() } else { vm.ctx.new_tuple(cells).into() };
        let func = vm
            .ctx
            .types
            .function_type
            .as_object()
            .call((code, globals.clone(), name, vm.ctx.none(), closure), vm)?;
        self.memo[idx] = Some(func.clone());

        // Phase 2: the parts that may refer back to the function.
        for (k, x) in &fv.names {
            let k = self.dec(k, d)?;
            let x = self.dec(x, d)?;
            if main_globals.is_some() {
                fill_main_name(vm, &globals, &k, x)?;
                continue;
            }
            globals.set_item(&*k, x, vm)?;
        }
        if fv.cells.len() != new_cells.len() {
            return Err(malformed("closure cell contents do not match the cells"));
        }
        for (cell, contents) in new_cells.iter().zip(&fv.cells) {
            if let Some(c) = contents {
                let x = self.dec(c, d)?;
                cell.set_attr("cell_contents", x, vm)?;
            }
        }
        for (attr, v) in [("__defaults__", &fv.defaults), ("__kwdefaults__", &fv.kwdefaults)] {
            let x = self.dec(v, d)?;
            if !vm.is_none(&x) {
                func.set_attr(attr, x, vm)?;
            }
        }
        for (attr, v) in
            [("__qualname__", &fv.qualname), ("__module__", &fv.module), ("__doc__", &fv.doc)]
        {
            let x = self.dec(v, d)?;
            func.set_attr(attr, x, vm)?;
        }
        let dict = self.dec(&fv.dict, d)?;
        if !vm.is_none(&dict) {
            let items = dict
                .downcast::<PyDict>()
                .map_err(|_| malformed("function __dict__ is not a dict"))?
                .items_vec();
            let fdict = func.dict().ok_or_else(|| malformed("function without __dict__"))?;
            for (k, x) in items {
                fdict.set_item(&*k, x, vm)?;
            }
        }
        Ok(func)
    }

    fn reduce(&mut self, r: &Reduce, d: usize) -> PyResult {
        let vm = self.vm;
        let idx = self.reserve();
        let func = self.dec(&r.func, d)?;
        let args = self.dec(&r.args, d)?;
        let args: Vec<PyObjectRef> = match args.downcast_ref::<PyTuple>() {
            Some(t) => t.as_slice().to_vec(),
            None => {
                return Err(unpickling_error(
                    vm,
                    "malformed message: reduce arguments are not a tuple".into(),
                ))
            }
        };
        let obj = func.call(args, vm)?;
        self.memo[idx] = Some(obj.clone());
        if let Some(state) = &r.state {
            let state = self.dec(state, d)?;
            set_state(vm, &obj, state)?;
        }
        if !r.listitems.is_empty() {
            for it in &r.listitems {
                let x = self.dec(it, d)?;
                vm.call_method(&obj, "append", (x,))?;
            }
        }
        for (k, x) in &r.dictitems {
            let k = self.dec(k, d)?;
            let x = self.dec(x, d)?;
            obj.set_item(&*k, x, vm)?;
        }
        Ok(obj)
    }
}

/// pickle's BUILD: `__setstate__` if present, else `(dict, slots)` or a dict applied as attributes.
fn set_state(vm: &VirtualMachine, obj: &PyObjectRef, state: PyObjectRef) -> PyResult<()> {
    if let Ok(setstate) = obj.get_attr("__setstate__", vm) {
        setstate.call((state,), vm)?;
        return Ok(());
    }
    let (dict_state, slot_state) = match state.downcast_ref::<PyTuple>() {
        Some(t) if t.len() == 2 => (t.as_slice()[0].clone(), Some(t.as_slice()[1].clone())),
        _ => (state, None),
    };
    if !vm.is_none(&dict_state) {
        let items: Vec<PyObjectRef> = vm.call_method(&dict_state, "items", ())?.try_to_value(vm)?;
        let items = items.iter().map(|p| pair(vm, p)).collect::<PyResult<Vec<_>>>()?;
        // Like pickle's BUILD: straight into __dict__, bypassing any custom __setattr__.
        let inst_dict = obj.dict();
        for (k, v) in items {
            let name = k
                .downcast::<PyStr>()
                .map_err(|_| vm.new_type_error("state keys must be strings".to_owned()))?;
            match &inst_dict {
                Some(d) => d.set_item(&*name, v, vm)?,
                None => obj.set_attr(&name, v, vm)?,
            }
        }
    }
    if let Some(slots) = slot_state.filter(|s| !vm.is_none(s)) {
        let items: Vec<PyObjectRef> = vm.call_method(&slots, "items", ())?.try_to_value(vm)?;
        for p in items {
            let (k, v) = pair(vm, &p)?;
            let name = k
                .downcast::<PyStr>()
                .map_err(|_| vm.new_type_error("slot names must be strings".to_owned()))?;
            obj.set_attr(&name, v, vm)?;
        }
    }
    Ok(())
}

/// A 2-sequence as a pair.
fn pair(vm: &VirtualMachine, p: &PyObject) -> PyResult<(PyObjectRef, PyObjectRef)> {
    let v: Vec<PyObjectRef> = p.to_owned().try_to_value(vm)?;
    match <[PyObjectRef; 2]>::try_from(v) {
        Ok([a, b]) => Ok((a, b)),
        Err(_) => Err(vm.new_value_error("expected a (key, value) pair")),
    }
}

/// RustPython names native types without their module ("cannot pickle 'lock' object"); CPython
/// says "'_thread.lock'". Say it CPython's way so scripts that print the message match.
fn cpython_type_name_in_message(
    vm: &VirtualMachine,
    obj: &PyObject,
    e: PyBaseExceptionRef,
) -> PyBaseExceptionRef {
    if !e.fast_isinstance(vm.ctx.exceptions.type_error) {
        return e;
    }
    let msg = e.as_object().str(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let cls = obj.class();
    let name = cls.name().to_string();
    let module = cls
        .as_object()
        .get_attr("__module__", vm)
        .ok()
        .and_then(|m| m.str(vm).ok())
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_default();
    if msg != format!("cannot pickle '{name}' object") || module.is_empty() || module == "builtins"
    {
        return e;
    }
    vm.new_type_error(format!("cannot pickle '{module}.{name}' object"))
}

/// A reducer registered for `type(obj)` in `_procpy._reducers` (CPython's ForkingPickler
/// table, e.g. managers send dict views as lists): it applies to multiprocessing's traffic
/// only, unlike copyreg's, which would change `pickle` too.
fn extra_reducer(vm: &VirtualMachine, obj: &PyObject) -> PyResult<Option<PyObjectRef>> {
    let module = vm.import("_procpy", 0)?;
    let table = module.get_attr("_reducers", vm)?;
    let Some(table) = table.downcast_ref::<PyDict>() else { return Ok(None) };
    if table.__len__() == 0 {
        return Ok(None);
    }
    table.get_item_opt(obj.class().as_object(), vm)
}
