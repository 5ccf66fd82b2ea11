# Exit-time housekeeping and logging helpers.
import atexit
import itertools
import os
import sys
import weakref
import _thread

import _procpy

__all__ = [
    'sub_debug', 'debug', 'info', 'sub_warning', 'get_logger',
    'log_to_stderr', 'get_temp_dir', 'register_after_fork',
    'is_exiting', 'Finalize', 'ForkAwareThreadLock', 'ForkAwareLocal',
    'close_all_fds_except', 'SUBDEBUG', 'SUBWARNING',
]

SUBDEBUG = 5
DEBUG = 10
INFO = 20
SUBWARNING = 25

LOGGER_NAME = 'multiprocessing'
_logger = None
_log_to_stderr = False
_exiting = False


def sub_debug(msg, *args):
    if _logger:
        _logger.log(SUBDEBUG, msg, *args)


def debug(msg, *args):
    if _logger:
        _logger.log(DEBUG, msg, *args)


def info(msg, *args):
    if _logger:
        _logger.log(INFO, msg, *args)


def sub_warning(msg, *args):
    if _logger:
        _logger.log(SUBWARNING, msg, *args)


def get_logger():
    global _logger
    import logging
    if not _logger:
        _logger = logging.getLogger(LOGGER_NAME)
        _logger.propagate = 0
    return _logger


def log_to_stderr(level=None):
    global _log_to_stderr
    import logging
    _log_to_stderr = True
    logger = get_logger()
    formatter = logging.Formatter('[%(levelname)s/%(processName)s] %(message)s')
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    return logger


def _flush_std_streams():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (AttributeError, ValueError):
            pass


def _close_stdin():
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        import os
        # An explicit encoding: a default one would import `locale`, which costs RustPython
        # ~15 ms in every forked child.
        sys.stdin = open(os.devnull, encoding='utf-8')
    except (OSError, ValueError):
        pass


#
# Finalizers: callbacks run when an object is garbage collected, or at exit by priority.
#

_finalizer_registry = {}
_finalizer_counter = itertools.count()


class Finalize(object):
    '''Calls `callback(*args, **kwargs)` once: when `obj` is collected, when called, or at
    exit if `exitpriority` is not None (higher priorities first).'''

    def __init__(self, obj, callback, args=(), kwargs=None, exitpriority=None):
        if (exitpriority is not None) and not isinstance(exitpriority, int):
            raise TypeError(
                "Exitpriority ({0!r}) must be None or int, not {1!s}".format(
                    exitpriority, type(exitpriority)))
        if obj is not None:
            self._weakref = weakref.ref(obj, self)
        elif exitpriority is None:
            raise ValueError("Without object, exitpriority cannot be None")
        self._callback = callback
        self._args = args
        self._kwargs = kwargs or {}
        self._key = (exitpriority, next(_finalizer_counter))
        self._pid = os.getpid()
        _finalizer_registry[self._key] = self

    def __call__(self, wr=None):
        '''Run the callback unless it already ran or was cancelled.'''
        try:
            del _finalizer_registry[self._key]
        except KeyError:
            sub_debug('finalizer no longer registered')
            return None
        if self._pid != os.getpid():
            # A forked copy: the resource belongs to the parent.
            sub_debug('finalizer ignored because different process')
            res = None
        else:
            sub_debug('finalizer calling %s with args %s and kwargs %s',
                      self._callback, self._args, self._kwargs)
            res = self._callback(*self._args, **self._kwargs)
        self._weakref = self._callback = self._args = \
            self._kwargs = self._key = None
        return res

    def cancel(self):
        '''Cancel the finalizer without running it.'''
        try:
            del _finalizer_registry[self._key]
        except KeyError:
            pass
        else:
            self._weakref = self._callback = self._args = \
                self._kwargs = self._key = None

    def still_active(self):
        return self._key in _finalizer_registry

    def __repr__(self):
        try:
            obj = self._weakref()
        except (AttributeError, TypeError):
            obj = None
        if obj is None:
            return '<%s object, dead>' % self.__class__.__name__
        x = '<%s object, callback=%s' % (
            self.__class__.__name__, getattr(self._callback, '__name__', self._callback))
        if self._args:
            x += ', args=' + str(self._args)
        if self._kwargs:
            x += ', kwargs=' + str(self._kwargs)
        if self._key[0] is not None:
            x += ', exitpriority=' + str(self._key[0])
        return x + '>'


def _run_finalizers(minpriority=None):
    '''Run finalizers with priority >= minpriority (all with a priority if None), highest
    first, newest first within a priority.'''
    if _finalizer_registry is None:
        return
    if minpriority is None:
        f = lambda p: p[0] is not None
    else:
        f = lambda p: p[0] is not None and p[0] >= minpriority
    keys = [key for key in list(_finalizer_registry) if f(key)]
    keys.sort(reverse=True)
    for key in keys:
        finalizer = _finalizer_registry.get(key)
        if finalizer is not None:
            sub_debug('calling %s', finalizer)
            try:
                finalizer()
            except Exception:
                import traceback
                traceback.print_exc()
    if minpriority is None:
        _finalizer_registry.clear()


#
# After-fork hooks and fork-aware helpers (managers use them).
#

_afterfork_registry = weakref.WeakValueDictionary()
_afterfork_counter = itertools.count()


def register_after_fork(obj, func):
    '''Call `func(obj)` in every child started by fork (while obj is alive).'''
    _afterfork_registry[(next(_afterfork_counter), id(obj), func)] = obj


def _run_after_forkers():
    items = list(_afterfork_registry.items())
    items.sort()
    for (index, ident, func), obj in items:
        try:
            func(obj)
        except Exception as e:
            info('after forker raised exception %s', e)


class ForkAwareThreadLock(object):
    '''A threading lock that a forked child gets fresh (the parent's may be held).'''

    def __init__(self):
        self._lock = _thread.allocate_lock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release
        register_after_fork(self, ForkAwareThreadLock._at_fork_reinit)

    def _at_fork_reinit(self):
        self._lock = _thread.allocate_lock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)


class ForkAwareLocal(_thread._local):
    '''Thread-local data that a forked child starts without.'''

    def __init__(self):
        register_after_fork(self, lambda obj: obj.__dict__.clear())

    def __reduce__(self):
        return type(self), ()


#
# Temporary directory and socket addresses (Listener, managers).
#

abstract_sockets_supported = sys.platform == 'linux'


def is_abstract_socket_namespace(address):
    if not address:
        return False
    if isinstance(address, bytes):
        return address[0] == 0
    elif isinstance(address, str):
        return address[0] == "\0"
    raise TypeError(f'address type of {address!r} unrecognized')


def close_all_fds_except(fds):
    '''Close every descriptor of this process but those in `fds`.'''
    fds = sorted(set(fds) | {-1})
    fds.append(os.sysconf('SC_OPEN_MAX') if hasattr(os, 'sysconf') else 1 << 20)
    for i in range(len(fds) - 1):
        os.closerange(fds[i] + 1, fds[i + 1])


def get_temp_dir():
    '''A private directory for this process tree's sockets, removed at exit.'''
    from . import process
    tempdir = process.current_process()._config.get('tempdir')
    if tempdir is None:
        import shutil
        import tempfile
        tempdir = tempfile.mkdtemp(prefix='pymp-')
        info('created temp directory %s', tempdir)
        Finalize(None, shutil.rmtree, args=(tempdir, True), exitpriority=-100)
        process.current_process()._config['tempdir'] = tempdir
    return tempdir


def wait_for(cond, predicate, timeout=None):
    '''`Condition.wait_for` over any object with `wait(timeout)`: a multiprocessing Condition
    or a manager's ConditionProxy (whose predicate runs in the caller).'''
    import time
    result = predicate()
    if result:
        return result
    endtime = None if timeout is None else time.monotonic() + timeout
    waittime = None
    while not result:
        if endtime is not None:
            waittime = endtime - time.monotonic()
            if waittime <= 0:
                break
        cond.wait(waittime)
        result = predicate()
    return result


def _exit_function():
    '''At exit: run finalizers, terminate daemonic children, join the others, flush queue
    feeders.'''
    global _exiting
    if _exiting:
        return
    _exiting = True
    from . import process
    _run_finalizers(0)
    # Pools first (CPython's pool finalizer has priority 15): their managers must not
    # replace the workers terminated below.
    pool = sys.modules.get('multiprocessing.pool')
    if pool is not None:
        pool._terminate_at_exit()
    for p in process.active_children():
        if p.daemon:
            info('calling terminate() for daemon %s', p.name)
            p._popen.terminate()
    for p in process.active_children():
        info('calling join() for process %s', p.name)
        p.join()
    _run_finalizers()
    _procpy._flush_queues()


def _cleanup_tests():
    '''What CPython's test suite calls when its multiprocessing tests end: forget finished
    children and run the finalizers (temporary directories). procpy's resource tracker and
    fork server end by themselves when this process does.'''
    from . import process
    process._cleanup()
    _run_finalizers()
    import gc
    gc.collect()


def is_exiting():
    return _exiting


#
# Starting helper programs (loky's resource tracker uses these, as CPython's does).
#

def _args_from_interpreter_flags():
    import subprocess
    return subprocess._args_from_interpreter_flags()


def spawnv_passfds(path, args, passfds):
    '''Start `path` with `args`, passing only `passfds` (and 0-2); returns its pid, which the
    caller reaps.'''
    import subprocess
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    proc = subprocess.Popen(list(args), executable=path, close_fds=True,
                            pass_fds=sorted(map(int, passfds)))
    # The caller waits for the pid itself: keep subprocess from reaping it behind its back.
    proc._child_created = False
    return proc.pid


atexit.register(_exit_function)
