# Corrections to RustPython 0.5.0 behaviour that differs from CPython 3.11 where real
# libraries trip on it, applied at every interpreter boot (`apply`, called from boot.rs).
# Each fix names the RustPython behaviour it corrects; each has a differential test in
# tests/scripts/ (named in the fix's comment). Keep this light: it runs at every start.

import sys


def apply():
    _fix_native_id()
    _fix_thread_end()
    _fix_length_hint()
    _fix_multiprocessing_module()
    _fix_frozen_source()


def _fix_length_hint():
    # RustPython's operator.length_hint converts `default` to a Rust usize, so a negative
    # default (tqdm's `length_hint(it, -1)`) raises OverflowError; CPython takes any ssize_t.
    # Its other messages differ too (a str hint: "'str' object cannot be interpreted as an
    # integer"), so the whole function is replaced, as CPython's PyObject_LengthHint.
    # Test: tests/scripts/fixes_length_hint.py.
    # `operator` copies `_operator`'s names when it is first imported, so patching `_operator`
    # here is enough (and spares every start the import of `operator`); patch a copy already
    # made too.
    import _operator

    def length_hint(obj, default=0):
        """Return an estimate of the number of items in obj (see CPython's operator docs)."""
        if not isinstance(default, int):
            raise TypeError(
                f"'{type(default).__name__}' object cannot be interpreted as an integer"
            )
        if not -sys.maxsize - 1 <= default <= sys.maxsize:
            raise OverflowError("Python int too large to convert to C ssize_t")
        default = int(default)  # a plain int, as CPython returns (True -> 1)
        if hasattr(type(obj), "__len__"):
            try:
                return len(obj)
            except TypeError:
                pass
        hint = getattr(type(obj), "__length_hint__", None)
        if hint is None:
            return default
        try:
            val = hint(obj)
        except TypeError:
            return default
        if val is NotImplemented:
            return default
        if not isinstance(val, int):
            raise TypeError(f"__length_hint__ must be an integer, not {type(val).__name__}")
        if val < 0:
            raise ValueError("__length_hint__() should return >= 0")
        return int(val)

    length_hint.__module__ = "_operator"
    _operator.length_hint = length_hint
    if "operator" in sys.modules:
        sys.modules["operator"].length_hint = length_hint


def _fix_multiprocessing_module():
    # RustPython's own `_multiprocessing` has a SemLock over POSIX named semaphores that takes
    # its five arguments positionally only (joblib passes name= and unlink= by keyword), and
    # its locks are not procpy's (the codec cannot send them). Libraries that reach for
    # `_multiprocessing` (joblib, loky) get procpy's SemLock, which takes CPython's
    # `SemLock(kind, value, maxvalue, name, unlink)`. Test: tests/scripts/fixes_semlock.py.
    import _procpy

    mod = type(sys)("_multiprocessing")
    mod.SemLock = _procpy.SemLock
    mod.sem_unlink = _procpy.sem_unlink
    mod.flags = {"HAVE_SEM_OPEN": 1, "HAVE_SEM_TIMEDWAIT": 1}
    sys.modules["_multiprocessing"] = mod


def _fix_frozen_source():
    # RustPython's FrozenImporter.get_source returns None, so tracebacks through procpy's
    # frozen modules (multiprocessing.pool, ...) show no source line; their text is kept in
    # the binary (`_procpy.frozen_source`), and linecache asks the module's loader for it.
    # Test: tests/all/libraries.rs, remote_traceback_shows_frozen_source_lines.
    import _frozen_importlib
    import _procpy

    importer = _frozen_importlib.FrozenImporter
    frozen_get_source = importer.get_source

    def get_source(cls, fullname):
        source = _procpy.frozen_source(fullname)
        if source is not None:
            return source
        return frozen_get_source(fullname)

    importer.get_source = classmethod(get_source)


def _fix_native_id():
    # RustPython's `_thread` has no `get_native_id`, so `threading` has no `get_native_id()`
    # and threads no `native_id` (CPython 3.8+ on Linux has both: the kernel's thread id).
    # Before `threading` is first imported, which decides on it then.
    # Test: tests/scripts/fixes_native_id.py.
    import _thread
    import _procpy

    if not hasattr(_thread, "get_native_id"):
        _thread.get_native_id = _procpy.get_native_id


def _fix_thread_end():
    # RustPython's thread runner drops the function it ran (for threading, the bound
    # `Thread._bootstrap`, so the Thread object) and its arguments only after the thread's
    # frame slot is gone. When that was the last reference, Python code run by the
    # deallocation (the WeakSet callback of `threading._dangling`, a `__del__`) has no frame
    # slot: a debug build panics ("push_thread_frame called without initialized thread slot")
    # and a release build runs the frame untracked. So the runner is handed a closure that
    # lets go of the function and arguments itself, while the thread still runs Python.
    # `threading` takes `_thread.start_joinable_thread` when first imported, after this.
    # Test: tests/all/libraries.rs, threads_freed_on_their_own_thread_do_not_panic.
    import _thread

    joinable = _thread.start_joinable_thread
    new_thread = _thread.start_new_thread

    def letting_go(function, args=(), kwargs=None):
        box = [(function, args, kwargs or {})]

        def run():
            call = box.pop()
            try:
                return call[0](*call[1], **call[2])
            finally:
                del call  # frees the Thread here when nothing else holds it

        # What "Exception ignored in thread started by" names.
        run.__qualname__ = getattr(function, "__qualname__", run.__qualname__)
        run.__module__ = getattr(function, "__module__", run.__module__)
        return run

    def start_joinable_thread(function, handle=None, daemon=True):
        return joinable(letting_go(function), handle=handle, daemon=daemon)

    def start_new_thread(function, args, kwargs=None):
        # Wrong arguments go to the native call, which says what is wrong, as before.
        if not callable(function) or not isinstance(args, tuple) or not (
                kwargs is None or isinstance(kwargs, dict)):
            return new_thread(function, args, *(() if kwargs is None else (kwargs,)))
        return new_thread(letting_go(function, args, kwargs), ())

    start_joinable_thread.__doc__ = joinable.__doc__
    start_new_thread.__doc__ = new_thread.__doc__
    _thread.start_joinable_thread = start_joinable_thread
    _thread.start_new_thread = start_new_thread
    if hasattr(_thread, "start_new"):
        _thread.start_new = start_new_thread
