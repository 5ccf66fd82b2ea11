# concurrent.futures.ProcessPoolExecutor over procpy's pool engine (multiprocessing.pool):
# each worker has its own connection, so a dead worker is noticed through its exit sentinel
# at once, and the executor breaks (BrokenProcessPool) as CPython's does. The public API,
# argument checks and messages are CPython 3.11's.
__author__ = 'Brian Quinlan (brian@sweetapp.com)'

import itertools
import os
import threading
import weakref
from concurrent.futures import _base
from functools import partial
import multiprocessing as mp
from multiprocessing import pool as _pool

_global_shutdown = False
_executors = weakref.WeakSet()


def _python_exit():
    global _global_shutdown
    _global_shutdown = True
    for ex in list(_executors):
        try:
            ex.shutdown(wait=True)
        except Exception:
            pass


threading._register_atexit(_python_exit) if hasattr(threading, '_register_atexit') else None

# Controls how many more calls than processes will be queued in the call queue
# (kept for API compatibility: procpy hands a call to a worker only when it is idle).
EXTRA_QUEUED_CALLS = 1

_MAX_WINDOWS_WORKERS = 63 - 2


class _RemoteTraceback(Exception):
    def __init__(self, tb):
        self.tb = tb

    def __str__(self):
        return self.tb


class _ExceptionWithTraceback:
    def __init__(self, exc, tb):
        import traceback
        tb = ''.join(traceback.format_exception(type(exc), exc, tb))
        self.exc = exc
        # Traceback object needs to be garbage-collected as its frames
        # contain references to all the objects in the exception scope
        self.exc.__traceback__ = None
        self.tb = '\n"""\n%s"""' % tb

    def __reduce__(self):
        return _rebuild_exc, (self.exc, self.tb)


def _rebuild_exc(exc, tb):
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class BrokenProcessPool(_base.BrokenExecutor):
    """
    Raised when a process in a ProcessPoolExecutor terminated abruptly
    while a future was in the running state.
    """


def _get_chunks(*iterables, chunksize):
    """ Iterates over zip()ed iterables in chunks. """
    it = zip(*iterables)
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


def _process_chunk(fn, chunk):
    """ Processes a chunk of an iterable passed to map. """
    return [fn(*args) for args in chunk]


def _call(fn, args, kwargs):
    '''Runs in the worker: exceptions travel with their traceback, as in CPython.'''
    try:
        return True, fn(*args, **kwargs)
    except BaseException as e:
        return False, _ExceptionWithTraceback(e, e.__traceback__)


def _init_worker(initializer, initargs):
    try:
        initializer(*initargs)
    except BaseException:
        _base.LOGGER.critical('Exception in initializer:', exc_info=True)
        # The parent sees this worker exit and marks the pool broken, as CPython does.
        os._exit(1)


class _Item(object):
    '''What the pool engine sets: the future of one submitted call.'''
    __slots__ = ('future', '_job', '_cache')

    def __init__(self, future, cache):
        self.future = future
        self._job = id(self)
        self._cache = cache
        cache[self._job] = self

    def _start(self):
        return self.future.set_running_or_notify_cancel()

    def _set(self, i, outcome):
        self._cache.pop(self._job, None)
        ok, value = outcome
        if ok:
            ok, value = value
        if self.future.done():
            return
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)

    def _abort(self, exc):
        self._cache.pop(self._job, None)
        if not self.future.done():
            if self.future.cancelled():
                return
            if self.future._state == _base.PENDING:
                self.future.set_running_or_notify_cancel()
            self.future.set_exception(exc)


class _CoreOwner(object):
    '''The attributes the pool engine reads from its owner.'''
    _wrap_exception = 'futures'
    _pool_workers = False

    def __init__(self, ctx, processes, initializer, initargs, maxtasks, cache):
        self._ctx = ctx
        self._processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._maxtasksperchild = maxtasks
        self._cache = cache

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)


def _weak_on_lost(executor):
    '''The core's on_lost callback without a reference to the executor: the executor holds
    the core, and that cycle would keep both, with every worker's descriptors, until the cycle
    collector happened to run.'''
    ref = weakref.ref(executor)

    def on_lost(name, pid, exitcode):
        ex = ref()
        if ex is None:
            return BrokenProcessPool('A child process terminated abruptly, the process pool '
                                     'is not usable anymore')
        return ex._on_worker_lost(name, pid, exitcode)
    return on_lost


class ProcessPoolExecutor(_base.Executor):
    def __init__(self, max_workers=None, mp_context=None,
                 initializer=None, initargs=(), *, max_tasks_per_child=None):
        """Initializes a new ProcessPoolExecutor instance.

        Args:
            max_workers: The maximum number of processes that can be used to
                execute the given calls. If None or not given then as many
                worker processes will be created as the machine has processors.
            mp_context: A multiprocessing context to launch the workers.
            initializer: A callable used to initialize worker processes.
            initargs: A tuple of arguments to pass to the initializer.
            max_tasks_per_child: The maximum number of tasks a worker process
                can complete before it will exit and be replaced with a fresh
                worker process.
        """
        self._core = None
        self._max_workers_given = max_workers
        if max_workers is None:
            self._max_workers = os.cpu_count() or 1
        else:
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            self._max_workers = max_workers

        if mp_context is None:
            if max_tasks_per_child is not None:
                mp_context = mp.get_context("spawn")
            else:
                mp_context = mp.get_context()
        self._mp_context = mp_context

        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._initializer = initializer
        self._initargs = initargs

        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            elif max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if self._mp_context.get_start_method(allow_none=False) == "fork":
                # https://github.com/python/cpython/issues/90622
                raise ValueError("max_tasks_per_child is incompatible with"
                                 " the 'fork' multiprocessing start method;"
                                 " supply a different mp_context.")
        self._max_tasks_per_child = max_tasks_per_child

        self._shutdown_thread = False
        self._shutdown_lock = threading.Lock()
        self._broken = False
        self._cache = {}

    def _start(self):
        '''Workers start with the first submit, as in CPython.'''
        if self._core is not None:
            return
        init = None
        initargs = ()
        cluster = _pool._cluster_routed()
        if cluster:
            # procpy --cluster: the calls run on the cluster's workers. A failing initializer
            # is reported by the worker and breaks the executor, as a local worker's exit does.
            init, initargs = self._initializer, self._initargs
        elif self._initializer is not None:
            init, initargs = _init_worker, (self._initializer, self._initargs)
        owner = _CoreOwner(self._mp_context, self._max_workers, init, initargs,
                           self._max_tasks_per_child, self._cache)
        if cluster:
            from multiprocessing.cluster import _ClusterCore
            # max_workers given: at most that many calls (+1, CPython's call queue) are out
            # at once; None: the whole cluster may work on the calls.
            owner._cluster_processes = self._max_workers_given
            self._core = _ClusterCore(owner, on_lost=_weak_on_lost(self))
        else:
            self._core = _pool._ProcessCore(owner, on_lost=_weak_on_lost(self))
        _executors.add(self)

    @property
    def _processes(self):
        '''pid -> worker Process, as CPython's attribute.'''
        if self._core is None:
            return {}
        return {w.process.pid: w.process for w in list(self._core.workers)}

    def _on_worker_lost(self, name, pid, exitcode):
        '''Called by the pool engine when a worker dies: the whole executor breaks.'''
        with self._shutdown_lock:
            self._broken = ('A child process terminated abruptly, the process pool is not '
                            'usable anymore')
        bpe = BrokenProcessPool(
            "A process in the process pool was terminated abruptly while the future was "
            "running or pending.")
        how = ('killed by signal %d' % -exitcode if exitcode is not None and exitcode < 0
               else 'exit code %s' % exitcode)
        bpe.__cause__ = _RemoteTraceback('\n"""\nworker %s (pid %s) died: %s\n"""'
                                         % (name, pid, how))
        for item in list(self._cache.values()):
            item._abort(bpe)
        return bpe

    def submit(self, fn, /, *args, **kwargs):
        with self._shutdown_lock:
            if self._broken:
                raise BrokenProcessPool(self._broken)
            if self._shutdown_thread:
                raise RuntimeError('cannot schedule new futures after shutdown')
            if _global_shutdown:
                raise RuntimeError('cannot schedule new futures after '
                                   'interpreter shutdown')
            self._start()
            f = _base.Future()
            item = _Item(f, self._cache)
        self._core.submit([(item, 0, _call, (fn, args, kwargs), {})])
        return f
    submit.__doc__ = _base.Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Returns an iterator equivalent to map(fn, iter).

        Args:
            fn: A callable that will take as many arguments as there are
                passed iterables.
            timeout: The maximum number of seconds to wait. If None, then there
                is no limit on the wait time.
            chunksize: If greater than one, the iterables will be chopped into
                chunks of size chunksize and submitted to the process pool.
                If set to one, the items in the list will be sent one at a time.

        Returns:
            An iterator equivalent to: map(func, *iterables) but the calls may
            be evaluated out-of-order.

        Raises:
            TimeoutError: If the entire result iterator could not be generated
                before the given timeout.
            Exception: If fn(*args) raises for any values.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")

        results = super().map(partial(_process_chunk, fn),
                              _get_chunks(*iterables, chunksize=chunksize),
                              timeout=timeout)
        return _chain_from_iterable_of_lists(results)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            self._shutdown_thread = True
        core = self._core
        if core is None:
            return
        if cancel_futures:
            # Calls no worker has taken yet are cancelled, as in CPython.
            for item in core.take_pending():
                item.future.cancel()
                self._cache.pop(item._job, None)
        if self._broken:
            core.terminate()
        else:
            core.close()
        if wait:
            core.join()
        _executors.discard(self)
    shutdown.__doc__ = _base.Executor.shutdown.__doc__


def _chain_from_iterable_of_lists(iterable):
    """
    Specialized implementation of itertools.chain.from_iterable.
    Each item in *iterable* should be a list.  This function is
    careful not to keep references to yielded objects.
    """
    for element in iterable:
        element.reverse()
        while element:
            yield element.pop()
