//! Python objects to and from the wire model ([`crate::wire::Value`]).
//!
//! Hot types (None, bool, int, float, str, bytes, tuple, list, dict) have fast paths; everything
//! else goes through `__reduce_ex__(4)` exactly as pickle would, so user classes with
//! `__reduce__`, `__getstate__`/`__setstate__` or copyreg registrations just work. Functions and
//! classes travel by reference (module + qualname). Native handles (connection ends, queues)
//! travel as [`Value::Handle`] with their descriptors beside the bytes, but only while a child is
//! being started: elsewhere they are refused with CPython's message.

use crate::native;
use crate::wire::{self, HandleKind, Reduce, Value};
use malachite_bigint::BigInt;
use num_traits::ToPrimitive;
use rustpython_vm::builtins::{
    PyBaseExceptionRef, PyBytes, PyDict, PyFloat, PyInt, PyList, PyStr, PyTuple, PyType,
};
use rustpython_vm::common::wtf8::Wtf8;
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyResult, VirtualMachine};
use std::collections::HashMap;
use std::os::fd::RawFd;

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
    let mut enc = Encoder { vm, memo: HashMap::new(), keep: Vec::new(), next: 0, path: Vec::new(), err_path: None, handles };
    match enc.enc(obj) {
        Ok(v) => Ok(wire::to_bytes(&v)),
        Err(e) => Err(with_path(vm, e, enc.err_path.as_deref().unwrap_or(""))),
    }
}

/// Decode bytes made by [`dumps`]. `fds` are the descriptors that travelled with them.
pub fn loads(vm: &VirtualMachine, data: &[u8], fds: &[RawFd]) -> PyResult {
    let v = wire::from_bytes(data).map_err(|e| unpickling_error(vm, e.to_string()))?;
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
    path: Vec<String>,
    err_path: Option<String>,
    handles: Handles<'a>,
}

impl Encoder<'_> {
    fn memoize(&mut self, obj: &PyObject) {
        self.memo.insert(obj.get_id(), self.next);
        self.keep.push(obj.to_owned());
        self.next += 1;
    }

    fn fail(&mut self, e: PyBaseExceptionRef) -> PyBaseExceptionRef {
        if self.err_path.is_none() {
            self.err_path = Some(self.path.concat());
        }
        e
    }

    fn child(&mut self, seg: String, obj: &PyObject) -> PyResult<Value> {
        self.path.push(seg);
        let r = self.enc(obj);
        self.path.pop();
        r
    }

    fn enc(&mut self, obj: &PyObject) -> PyResult<Value> {
        let vm = self.vm;
        if self.path.len() > wire::MAX_DEPTH / 2 {
            let e = vm.new_recursion_error("maximum recursion depth exceeded while encoding an object".to_owned());
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
            return Ok(Value::Str(obj.downcast_ref::<PyStr>().expect("str").as_wtf8().as_bytes().to_vec()));
        }
        if cls.is(t.bytes_type) {
            return Ok(Value::Bytes(obj.downcast_ref::<PyBytes>().expect("bytes").as_bytes().to_vec()));
        }
        if let Some(&m) = self.memo.get(&obj.get_id()) {
            return Ok(Value::Memo(m));
        }
        if cls.is(t.tuple_type) {
            self.memoize(obj);
            let items: Vec<PyObjectRef> = obj.downcast_ref::<PyTuple>().expect("tuple").as_slice().to_vec();
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                out.push(self.child(format!("[{i}]"), it)?);
            }
            return Ok(Value::Tuple(out));
        }
        if cls.is(t.list_type) {
            self.memoize(obj);
            // Copy the element refs out so no lock is held while encoding them.
            let items: Vec<PyObjectRef> = obj.downcast_ref::<PyList>().expect("list").borrow_vec().to_vec();
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                out.push(self.child(format!("[{i}]"), it)?);
            }
            return Ok(Value::List(out));
        }
        if cls.is(t.dict_type) {
            self.memoize(obj);
            let items = obj.downcast_ref::<PyDict>().expect("dict").items_vec();
            let mut out = Vec::with_capacity(items.len());
            for (k, v) in items.iter() {
                let key_repr = k.repr(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into());
                let kv = self.child(format!("[{key_repr}] (key)"), k)?;
                let vv = self.child(format!("[{key_repr}]"), v)?;
                out.push((kv, vv));
            }
            return Ok(Value::Dict(out));
        }
        if cls.is(t.function_type) || cls.is(t.builtin_function_or_method_type) || obj.downcast_ref::<PyType>().is_some() {
            return self.global(obj, None);
        }
        if let Some((kind, handle_fds, extra)) = native::as_handle(obj) {
            return self.handle(obj, kind, handle_fds, extra);
        }
        self.reduce(obj)
    }

    fn handle(&mut self, obj: &PyObject, kind: HandleKind, handle_fds: Vec<RawFd>, extra: Vec<i64>) -> PyResult<Value> {
        // Memoized like containers: two references to one queue must arrive as one object
        // (one feeder thread), or the order of their items would be lost.
        self.memoize(obj);
        let fds = match (&mut self.handles, kind) {
            (Handles::All(fds), _) | (Handles::Connections(fds), HandleKind::Connection) => fds,
            (_, HandleKind::Queue) => {
                let e = self.vm.new_runtime_error("Queue objects should only be shared between processes through inheritance".to_owned());
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
    /// (used when `__reduce__` returned a string).
    fn global(&mut self, obj: &PyObject, name: Option<String>) -> PyResult<Value> {
        let vm = self.vm;
        let qualname = match name {
            Some(n) => n,
            None => match obj.get_attr("__qualname__", vm).and_then(|q| q.str(vm)) {
                Ok(q) => q.to_string_lossy().into_owned(),
                Err(_) => obj.get_attr("__name__", vm).and_then(|q| q.str(vm))?.to_string_lossy().into_owned(),
            },
        };
        let module = match obj.get_attr("__module__", vm) {
            Ok(m) if !vm.is_none(&m) => m.str(vm)?.to_string_lossy().into_owned(),
            _ => "builtins".to_owned(),
        };
        if qualname.contains("<locals>") {
            let e = vm.new_attribute_error(format!("Can't pickle local object '{qualname}'"));
            return Err(self.fail(e));
        }
        let repr = || obj.repr(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match resolve_global(vm, &module, &qualname) {
            Ok(found) if found.is(obj) => Ok(Value::Global { module, qualname }),
            Ok(_) => {
                let e = pickling_error(vm, format!("Can't pickle {}: it's not the same object as {module}.{qualname}", repr()));
                Err(self.fail(e))
            }
            Err(_) => {
                let e = pickling_error(vm, format!("Can't pickle {}: attribute lookup {qualname} on {module} failed", repr()));
                Err(self.fail(e))
            }
        }
    }

    fn reduce(&mut self, obj: &PyObject) -> PyResult<Value> {
        let vm = self.vm;
        let rv = match vm.call_method(obj, "__reduce_ex__", (4,)) {
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
            let e = pickling_error(vm, "tuple returned by __reduce__ must contain 2 through 6 elements".to_owned());
            return Err(self.fail(e));
        }
        if parts.len() == 6 && !vm.is_none(&parts[5]) {
            let e = pickling_error(vm, "state setters in __reduce__ are not supported".to_owned());
            return Err(self.fail(e));
        }
        self.memoize(obj);
        let func = self.child(".__reduce__()[0]".into(), &parts[0])?;
        let args = self.child(".__reduce__()[1]".into(), &parts[1])?;
        let state = match parts.get(2) {
            Some(s) if !vm.is_none(s) => Some(self.child(".__getstate__()".into(), s)?),
            _ => None,
        };
        let mut listitems = Vec::new();
        if let Some(it) = parts.get(3).filter(|o| !vm.is_none(o)) {
            let items: Vec<PyObjectRef> = it.try_to_value(vm)?;
            for (i, x) in items.iter().enumerate() {
                listitems.push(self.child(format!("[{i}]"), x)?);
            }
        }
        let mut dictitems = Vec::new();
        if let Some(it) = parts.get(4).filter(|o| !vm.is_none(o)) {
            let items: Vec<PyObjectRef> = it.try_to_value(vm)?;
            for p in items.iter() {
                let (k, x) = pair(vm, p)?;
                let (k, x) = (&k, &x);
                let kr = k.repr(vm).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                dictitems.push((self.child(format!("[{kr}] (key)"), k)?, self.child(format!("[{kr}]"), x)?));
            }
        }
        Ok(Value::Reduce(Box::new(Reduce { func, args, state, listitems, dictitems })))
    }
}

/// Import `module` and walk the dotted `qualname` inside it.
pub fn resolve_global(vm: &VirtualMachine, module: &str, qualname: &str) -> PyResult {
    let module_name = vm.ctx.new_str(module);
    let mut obj = vm.import(&*module_name, 0)?;
    // `import a.b` returns `a`; fetch the submodule itself from sys.modules.
    if module.contains('.') {
        let modules = vm.sys_module.get_attr("modules", vm)?;
        obj = modules.get_item(module, vm)?;
    }
    for part in qualname.split('.') {
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
                let h = native::rebuild_handle(vm, *kind, &raw, extra)?;
                self.memo.push(Some(h.clone()));
                h
            }
            Value::Reduce(r) => self.reduce(r, d)?,
        })
    }

    fn reduce(&mut self, r: &Reduce, d: usize) -> PyResult {
        let vm = self.vm;
        let idx = self.reserve();
        let func = self.dec(&r.func, d)?;
        let args = self.dec(&r.args, d)?;
        let args: Vec<PyObjectRef> = match args.downcast_ref::<PyTuple>() {
            Some(t) => t.as_slice().to_vec(),
            None => return Err(unpickling_error(vm, "malformed message: reduce arguments are not a tuple".into())),
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
            let name = k.downcast::<PyStr>().map_err(|_| vm.new_type_error("state keys must be strings".to_owned()))?;
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
            let name = k.downcast::<PyStr>().map_err(|_| vm.new_type_error("slot names must be strings".to_owned()))?;
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
fn cpython_type_name_in_message(vm: &VirtualMachine, obj: &PyObject, e: PyBaseExceptionRef) -> PyBaseExceptionRef {
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
    if msg != format!("cannot pickle '{name}' object") || module.is_empty() || module == "builtins" {
        return e;
    }
    vm.new_type_error(format!("cannot pickle '{module}.{name}' object"))
}
