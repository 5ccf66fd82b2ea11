"""procpy's emulated GIL, for teaching (RustPython itself has no GIL).

    procpy --emulate-gil script.py      # on for the whole run, in every process

or from a script: `import procpy_gil; procpy_gil.enable()`. With it on, Python threads take
turns on one lock, handed over every `sys.getswitchinterval()` seconds as under CPython, so N
CPU-bound threads take about N times as long as one; processes are unaffected (each has its own
lock, as each CPython process has its own GIL). `sys.setswitchinterval` sets the interval.
See the native half, `_procpy_gil`, for what "holding" means here."""
import sys

import _procpy_gil

_tracer = None
_orig_setswitchinterval = sys.setswitchinterval


def _setswitchinterval(interval):
    _orig_setswitchinterval(interval)
    _procpy_gil.set_interval(float(interval))


def _install(tracer):
    # Threads are traced from their first frame on; `threading` is imported only here.
    import threading
    threading.settrace(tracer)
    # The frames already running (the caller's) get line events from here on too.
    try:
        frame = sys._getframe(2)
    except ValueError:
        frame = None  # called from procpy's boot, before any Python frame
    while frame is not None:
        frame.f_trace = tracer
        frame = frame.f_back
    sys.settrace(tracer)


def enable():
    """Turn the emulated GIL on: this thread and every thread started afterwards take turns.
    (Threads already running when it is turned on are not traced.)"""
    global _tracer
    if _tracer is None:
        _tracer = _procpy_gil.tracer()
        sys.setswitchinterval = _setswitchinterval
    _procpy_gil.set_interval(sys.getswitchinterval())
    _install(_tracer)
    _procpy_gil.enable(True)


def disable():
    """Turn it off: the tracer goes too (it costs a call per line), threads run in parallel."""
    _procpy_gil.enable(False)
    _install(None)


def is_enabled():
    return _procpy_gil.enabled()


record = _procpy_gil.record
take_log = _procpy_gil.take_log
thread_key = _procpy_gil.thread_key
switches = _procpy_gil.switches
now = _procpy_gil.now
