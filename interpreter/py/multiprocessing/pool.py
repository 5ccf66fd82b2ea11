# Process pools with CPython 3.11's API and semantics, over a different engine.
#
# CPython feeds every worker from one shared pipe, so the parent never knows which worker holds
# which task: a worker that dies mid-task leaves its result pending forever (bpo-22393). Here
# each worker has its own duplex connection and the parent hands a task only to an idle worker.
# One manager thread waits on every worker's connection and exit sentinel at once: it collects
# results, hands the next task to the worker that just finished, and when a sentinel fires it
# knows exactly which task died with the worker, fails that task with WorkerLostError, and
# starts a replacement. Callers hand tasks straight to an idle worker from their own thread,
# so a lone apply_async costs two process hops and one thread wake-up.
__all__ = ['Pool', 'ThreadPool']

import collections
import itertools
import os
import threading
# Pool-internal threads are raw `_thread` threads: a threading.Thread object freed as its own
# thread ends makes RustPython 0.5 panic (a weakref callback runs without a thread frame).
import _thread
import traceback
import types
import _signal

import _procpy

from . import util
from .context import ProcessError, TimeoutError

RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

job_counter = itertools.count()

# procpy --trace (fixed for the life of the process): tasks then carry their index, and
# workers record a span per task.
_tracing = _procpy.trace_enabled()
if _tracing:
    import _procpy_trace as _trace

# How often a blocked wait in the main thread wakes to let signal handlers (Ctrl-C) run:
# RustPython does not interrupt a lock wait for a signal.
_SIGNAL_POLL = 0.05


def mapstar(args):
    return list(map(*args))


def starmapstar(args):
    return list(itertools.starmap(args[0], args[1]))


#
# Exceptions travelling back from workers
#

class RemoteTraceback(Exception):
    def __init__(self, tb):
        self.tb = tb

    def __str__(self):
        return self.tb


class ExceptionWithTraceback:
    def __init__(self, exc, tb):
        tb = ''.join(traceback.format_exception(type(exc), exc, tb))
        self.exc = exc
        self.tb = '\n"""\n%s"""' % tb

    def __reduce__(self):
        return rebuild_exc, (self.exc, self.tb)


def rebuild_exc(exc, tb):
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class MaybeEncodingError(Exception):
    """Wraps possible unpickleable errors, so they can be
    safely sent through the socket."""

    def __init__(self, exc, value):
        self.exc = repr(exc)
        self.value = repr(value)
        super(MaybeEncodingError, self).__init__(self.exc, self.value)

    def __str__(self):
        return "Error sending result: '%s'. Reason: '%s'" % (self.value, self.exc)

    def __repr__(self):
        return "<%s: %s>" % (self.__class__.__name__, self)


class WorkerLostError(ProcessError):
    """A pool worker died (killed, crashed, os._exit) while it ran this task."""

    def __init__(self, name, pid, exitcode):
        self.name, self.pid, self.exitcode = name, pid, exitcode
        if exitcode is not None and exitcode < 0:
            how = 'was killed by signal %d (%s)' % (-exitcode, _signal_name(-exitcode))
        else:
            how = 'exited with code %s' % exitcode
        super().__init__('pool worker %s (pid %s) %s while running this task; '
                         'the pool has replaced it' % (name, pid, how))

    def __reduce__(self):
        return type(self), (self.name, self.pid, self.exitcode)


class PoolTerminatedError(ProcessError):
    """The pool was terminated before the task finished (CPython's get() would hang)."""


def _signal_name(signum):
    for name, value in _signal.__dict__.items():
        if name[:3] == 'SIG' and '_' not in name and value == signum:
            return name
    return 'signal %d' % signum


# A waiter that expects an answer within microseconds polls for a short while before it
# sleeps: on virtual machines a sleeping thread takes tens of microseconds to wake, longer
# than a small task's whole round trip.
_SPIN_SECONDS = 0.0002


def _spin(poll, *args):
    if poll(*args):
        return True
    end = _now() + _SPIN_SECONDS
    while _now() < end:
        if poll(*args):
            return True
    return False


_routed = None


def _cluster_routed():
    '''procpy --cluster (or PROCPY_CLUSTER) is set: process pools run on the cluster.'''
    global _routed
    if _routed is None:
        try:
            import _procpy_cluster
        except ImportError:
            _routed = False
        else:
            try:
                _routed = bool(_procpy_cluster.settings().get('url'))
            except OSError:
                # An unreadable key file: creating the cluster pool reports it.
                _routed = True
    return _routed


def _interrupted(pool):
    '''Ctrl-C while the main thread waits for a result: a cluster job is cancelled at once
    (its queued tasks would otherwise keep remote workers busy).'''
    if getattr(getattr(pool, '_core', None), 'cancel_on_interrupt', False):
        pool.terminate()


def _helper_reraises_exception(ex):
    raise ex


def _deliver(result, i, outcome):
    '''Set a result; a failing user callback is reported, and never stops the pool.'''
    try:
        result._set(i, outcome)
    except Exception:
        import sys
        sys.stderr.write('Exception in a multiprocessing.pool result callback:\n')
        traceback.print_exc()


#
# The worker process
#

def worker(conn, initializer=None, initargs=(), maxtasks=None, wrap_exception=False):
    if (maxtasks is not None) and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError("Maxtasks {!r} is not valid".format(maxtasks))
    # Ctrl-C reaches the whole process group: the parent handles it and stops the pool.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    dumps, loads = _procpy.dumps, _procpy.loads
    recv, send, poll = conn.recv_bytes, conn.send_bytes, conn.poll
    completed = 0
    while maxtasks is None or completed < maxtasks:
        try:
            _spin(poll)
            data = recv()
        except (EOFError, OSError):
            break
        if not data:          # the pool's "exit now"
            break
        try:
            if _tracing:
                result = _traced_task(loads(data))
            else:
                func, args, kwds = loads(data)
                result = (True, func(*args, **kwds))
        except Exception as e:
            if wrap_exception:
                e = ExceptionWithTraceback(e, e.__traceback__)
            result = (False, e)
        try:
            out = dumps(result)
        except Exception as e:
            if wrap_exception == 'futures':
                # concurrent.futures reports the encoding error itself.
                out = dumps((True, (False, ExceptionWithTraceback(e, e.__traceback__))))
            else:
                out = dumps((False, MaybeEncodingError(e, result[1])))
        send(out)
        data = func = args = kwds = result = out = None
        completed += 1
    conn.close()


# What a worker whose main module could not be prepared sends instead of a result.
_STARTUP_FAILED = 'procpy-pool-worker-startup-failed'


def _report_startup_error(exc, conn, *args, **kwds):
    '''Called in a spawn/forkserver worker whose preparation raised (spawn._run_child).'''
    if not isinstance(exc, Exception):
        # SystemExit or KeyboardInterrupt re-raised in the parent would end it quietly or
        # pass for a Ctrl-C there: the parent gets an error naming it instead.
        cause = exc
        exc = RuntimeError('a pool worker could not start: preparing the main module raised '
                           '%s' % ''.join(traceback.format_exception_only(type(exc), exc)).strip())
        exc.__cause__ = cause
    try:
        data = _procpy.dumps((_STARTUP_FAILED, exc))
    except Exception:
        data = _procpy.dumps((_STARTUP_FAILED, RuntimeError(
            'a pool worker could not start: %s: %s' % (type(exc).__name__, exc))))
    try:
        conn.send_bytes(data)
    except OSError:
        pass


worker._startup_error_reporter = _report_startup_error


def _traced_task(task):
    '''Run a task inside a trace span named after the user's function, with the task (or
    chunk) index and the number of items it covers.'''
    func, args, kwds, index = task
    try:
        name, items = _task_label(func, args)
    except Exception:
        name, items = 'task', 1
    _trace.begin(name, 'task', {'index': index, 'items': items})
    try:
        return (True, func(*args, **kwds))
    finally:
        _trace.end(name, 'task')


def _is_futures(func, name):
    return getattr(func, '__name__', None) == name and \
        getattr(func, '__module__', None) == 'concurrent.futures.process'


def _task_label(func, args):
    items = 1
    if func is mapstar or func is starmapstar:
        func, chunk = args[0]
        items = len(chunk)
    # ProcessPoolExecutor: submit() runs _call(fn, args, kwargs); map() submits
    # partial(_process_chunk, fn) with a chunk.
    if _is_futures(func, '_call') and args:
        func, args = args[0], args[1] if len(args) > 1 else ()
    inner = getattr(func, 'func', None)
    if _is_futures(inner, '_process_chunk') and func.args:
        func = func.args[0]
        if args and hasattr(args[0], '__len__'):
            items = len(args[0])
    name = getattr(func, '__qualname__', None) or getattr(func, '__name__', None) \
        or type(func).__name__
    return name, items


#
# Results
#

class _Flag(object):
    '''A one-shot event whose wait() lets the main thread's signal handlers run.'''
    __slots__ = ('_lock', '_is_set')

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._is_set = False

    def is_set(self):
        return self._is_set

    def set(self):
        if not self._is_set:
            self._is_set = True
            self._lock.release()

    def wait(self, timeout=None):
        if self._is_set:
            return True
        return _wait_lock(self._lock, timeout, release=True)


def _wait_lock(lock, timeout, release=False):
    if timeout is not None and timeout <= 0:
        got = lock.acquire(False)
    else:
        deadline = None if timeout is None else _now() + timeout
        while True:
            step = _SIGNAL_POLL
            if deadline is not None:
                step = min(step, deadline - _now())
                if step <= 0:
                    got = lock.acquire(False)
                    break
            if lock.acquire(True, step):
                got = True
                break
    if got and release:
        lock.release()
    return got


from time import monotonic as _now


class _Progress(object):
    '''`procpy --progress`: a progress line on stderr (a terminal only) for a map or imap job
    that runs longer than a second; tasks are chunks, as the workers see them.'''
    __slots__ = ('_label', '_total', '_done', '_start', '_bar')

    def __init__(self, label, total):
        self._label, self._total, self._done = label, total, 0
        self._start = _now()
        self._bar = None

    @staticmethod
    def maybe(label, total=None):
        if not _procpy.progress_enabled():
            return None
        try:
            import sys
            if not sys.stderr.isatty():
                return None
        except (AttributeError, ValueError):
            return None
        return _Progress(label, total)

    def step(self):
        self._done += 1
        if self._bar is None:
            if _now() - self._start < 1.0:
                return
            import _procpy_progress
            self._bar = _procpy_progress.Progress(self._total, self._label, self._done, _now() - self._start)
        self._bar.set(self._done)

    def set_total(self, total):
        self._total = total
        if self._bar is not None:
            self._bar.set_total(total)

    def finish(self):
        if self._bar is not None:
            self._bar.set(self._done)
            self._bar.finish()


class ApplyResult(object):

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._event = _Flag()
        self._job = next(job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._cache[self._job] = self

    def ready(self):
        return self._event.is_set()

    def successful(self):
        if not self.ready():
            raise ValueError("{0!r} not ready".format(self))
        return self._success

    _direct = None      # (pool core, worker) once dispatched
    _settled = False    # the outcome is fixed (its callbacks may still be running)

    def wait(self, timeout=None):
        if self._event.is_set():
            return
        direct = self._direct
        if direct is not None and self._callback is None and self._error_callback is None:
            deadline = None if timeout is None else _now() + timeout
            if direct[0].wait_direct(self, direct[1], deadline):
                return
            if deadline is not None:
                timeout = max(0, deadline - _now())
        try:
            self._event.wait(timeout)
        except KeyboardInterrupt:
            _interrupted(self._pool)
            raise

    def get(self, timeout=None):
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        exc = self._value
        del self
        try:
            raise exc
        finally:
            # As CPython's Future.result: the error's traceback holds this frame, which must not
            # hold the error (directly or through self._value); that cycle would keep the
            # caller's frame, and any pool in it, until the cycle collector runs.
            del exc

    def _set(self, i, obj):
        self._settled = True
        self._success, self._value = obj
        try:
            if self._callback and self._success:
                self._callback(self._value)
            if self._error_callback and not self._success:
                self._error_callback(self._value)
        finally:
            # A raising callback is reported by the caller; the result is ready regardless.
            self._event.set()
            self._cache.pop(self._job, None)
            self._pool = None
            self._direct = None

    def _abort(self, exc):
        # A callback that terminates the pool must not overwrite its own result.
        if not self._settled and not self._event.is_set():
            self._set(0, (False, exc))

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):

    def __init__(self, pool, chunksize, length, callback, error_callback):
        ApplyResult.__init__(self, pool, callback, error_callback=error_callback)
        self._lock = threading.Lock()
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._event.set()
            del self._cache[self._job]
        else:
            self._number_left = length // chunksize + bool(length % chunksize)
        self._progress = _Progress.maybe('map', self._number_left) if self._number_left else None

    def _set(self, i, success_result):
        success, result = success_result
        with self._lock:
            if self._number_left == 0:
                return
            self._number_left -= 1
            if self._progress is not None:
                self._progress.step()
                if self._number_left == 0:
                    self._progress.finish()
            if success and self._success:
                self._value[i * self._chunksize:(i + 1) * self._chunksize] = result
            elif not success and self._success:
                # only store first exception
                self._success = False
                self._value = result
            done = self._number_left == 0
        if done:
            # Ready only once every chunk is back, as in CPython.
            try:
                if self._success:
                    if self._callback:
                        self._callback(self._value)
                elif self._error_callback:
                    self._error_callback(self._value)
            finally:
                self._cache.pop(self._job, None)
                self._event.set()
                self._pool = None

    def _abort(self, exc):
        if not hasattr(self, '_number_left'):
            # Construction failed (e.g. a chunksize of the wrong type): nothing to report.
            self._cache.pop(self._job, None)
            return
        with self._lock:
            if self._number_left == 0:
                return
            self._number_left = 1
        self._set(0, (False, exc))


class IMapIterator(object):

    def __init__(self, pool):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(job_counter)
        self._cache = pool._cache
        self._items = collections.deque()
        self._index = 0
        self._length = None
        self._unsorted = {}
        self._cache[self._job] = self
        self._progress = _Progress.maybe('imap')

    def __iter__(self):
        return self

    def next(self, timeout=None):
        with self._cond:
            try:
                item = self._items.popleft()
            except IndexError:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration from None
                try:
                    self._wait(timeout)
                except KeyboardInterrupt:
                    _interrupted(self._pool)
                    raise
                try:
                    item = self._items.popleft()
                except IndexError:
                    if self._index == self._length:
                        self._pool = None
                        raise StopIteration from None
                    raise TimeoutError from None

        success, value = item
        if success:
            return value
        try:
            raise value
        finally:
            del value, item     # no cycle through this frame (see ApplyResult.get)

    __next__ = next

    def _wait(self, timeout):
        # Condition.wait in slices, so Ctrl-C reaches a main thread blocked here.
        deadline = None if timeout is None else _now() + timeout
        while not self._items and self._index != self._length:
            step = _SIGNAL_POLL
            if deadline is not None:
                step = min(step, deadline - _now())
                if step <= 0:
                    return
            self._cond.wait(step)

    def _set(self, i, obj):
        if self._progress is not None:
            self._progress.step()
        with self._cond:
            if self._index == i:
                self._items.append(obj)
                self._index += 1
                while self._index in self._unsorted:
                    obj = self._unsorted.pop(self._index)
                    self._items.append(obj)
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[i] = obj

            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None
                if self._progress is not None:
                    self._progress.finish()

    def _set_length(self, length):
        if self._progress is not None:
            self._progress.set_total(length)
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify()
                self._cache.pop(self._job, None)
                self._pool = None
                if self._progress is not None:
                    self._progress.finish()

    def _abort(self, exc):
        with self._cond:
            if self._length is not None and self._index >= self._length:
                return
            self._items.append((False, exc))
            self._index += 1
            self._length = self._index
            self._cond.notify()
            self._cache.pop(self._job, None)
            self._pool = None


class IMapUnorderedIterator(IMapIterator):

    def _set(self, i, obj):
        with self._cond:
            self._items.append(obj)
            self._index += 1
            self._cond.notify()
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None
                if self._progress is not None:
                    self._progress.finish()


#
# The pool front: CPython's API, shared by process and thread pools
#

class Pool(object):
    '''
    Class which supports an async version of applying functions to arguments.
    '''
    _wrap_exception = True

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None):
        # Attributes __del__ and __repr__ use, set before anything can fail.
        self._state = RUN
        self._cache = {}
        self._core = None
        from . import context as _context
        self._ctx = context or _context._default_context.get_context()
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        self._processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._maxtasksperchild = maxtasksperchild
        self._core = self._make_core()

    @property
    def _pool(self):
        '''The worker Process (or thread) objects, as in CPython.'''
        if self._core is None:
            return []
        return [getattr(w, 'process', w) for w in self._core.workers]

    def _make_core(self):
        if _cluster_routed():
            # procpy --cluster: every process pool runs on the cluster's workers.
            from .cluster import _ClusterCore
            return _ClusterCore(self)
        return _ProcessCore(self)

    def _repopulate_pool(self):
        '''CPython's private "start workers until the pool has its full size". Nothing to do
        here: procpy's manager thread starts a replacement as each worker exits.'''

    def __reduce__(self):
        raise NotImplementedError(
            'pool objects cannot be passed between processes or pickled')

    def __repr__(self):
        cls = self.__class__
        return (f'<{cls.__module__}.{cls.__qualname__} '
                f'state={self._state} '
                f'pool_size={len(self._pool)}>')

    def __del__(self):
        # Like CPython 3.8+: a running pool that is garbage collected stops its workers.
        core = getattr(self, '_core', None)
        if core is not None and self._state == RUN:
            import warnings
            warnings.warn(f"unclosed running multiprocessing pool {self!r}",
                          ResourceWarning, source=self)
            self._state = TERMINATE
            core.stop_soon()

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def map(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, mapstar, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, starmapstar, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        return self._map_async(func, iterable, starmapstar, chunksize,
                               callback, error_callback)

    def _guarded_task_generation(self, result, func, iterable):
        '''Tasks (result, index, func, args, kwds); an exception raised by the iterable
        becomes the last task's result.'''
        try:
            i = -1
            for i, x in enumerate(iterable):
                yield (result, i, func, (x,), {})
        except Exception as e:
            yield (result, i + 1, _helper_reraises_exception, (e,), {})

    def imap(self, func, iterable, chunksize=1):
        return self._imap(IMapIterator, func, iterable, chunksize, "{0:n}")

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, "{0!r}")

    def _imap(self, iterator_class, func, iterable, chunksize, fmt):
        # CPython words the chunksize error differently for imap and imap_unordered.
        self._check_running()
        if chunksize != 1 and chunksize < 1:
            raise ValueError(("Chunksize must be 1+, not " + fmt).format(chunksize))
        result = iterator_class(self)
        if chunksize == 1:
            tasks = self._guarded_task_generation(result, func, iterable)
        else:
            task_batches = Pool._get_tasks(func, iterable, chunksize)
            tasks = self._guarded_task_generation(result, mapstar, task_batches)
        self._core.feed(tasks, result._set_length)
        if chunksize == 1:
            return result
        return (item for chunk in result for item in chunk)

    def apply_async(self, func, args=(), kwds={}, callback=None,
                    error_callback=None):
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        self._core.submit([(result, 0, func, args, kwds)])
        return result

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None):
        return self._map_async(func, iterable, mapstar, chunksize, callback,
                               error_callback)

    def _map_async(self, func, iterable, mapper, chunksize=None, callback=None,
                   error_callback=None):
        self._check_running()
        if not hasattr(iterable, '__len__'):
            iterable = list(iterable)

        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0

        task_batches = Pool._get_tasks(func, iterable, chunksize)
        result = MapResult(self, chunksize, len(iterable), callback,
                           error_callback=error_callback)
        self._core.submit(list(self._guarded_task_generation(result, mapper, task_batches)))
        return result

    @staticmethod
    def _get_tasks(func, it, size):
        it = iter(it)
        while 1:
            x = tuple(itertools.islice(it, size))
            if not x:
                return
            yield (func, x)

    def close(self):
        util.debug('closing pool')
        if self._state == RUN:
            self._state = CLOSE
            self._core.close()

    def terminate(self):
        util.debug('terminating pool')
        self._state = TERMINATE
        if self._core is not None:
            self._core.terminate()

    def join(self):
        util.debug('joining pool')
        if self._state == RUN:
            raise ValueError("Pool is still running")
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._core.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


class _Worker(object):
    __slots__ = ('process', 'conn', 'sentinel', 'task', 'sent', 'retired', 'dead',
                 'owner', 'reading')

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        # A stand-in Process without one (CPython's tests use such fakes) is never watched.
        self.sentinel = getattr(process, 'sentinel', None)
        self.task = None        # the task it is running: (result, index, func, args, kwds)
        self.sent = 0           # tasks handed to it (maxtasksperchild)
        self.retired = False    # has its last task: it exits after that
        self.dead = False
        self.owner = None       # a thread waiting in get() that reads this worker's result
        self.reading = False    # the manager is reading a result from it


_live_cores = set()


def _terminate_at_exit():
    '''Called by util._exit_function before daemonic children are terminated.'''
    pid = os.getpid()
    for core in list(_live_cores):
        if core.owner_pid != pid:
            continue        # inherited through fork: its manager thread is not here
        try:
            core.terminate()
        except Exception:
            pass


class _ProcessCore(object):
    '''Workers, the tasks waiting for one, and the manager thread (see the top of the file).'''
    _terminated = False

    def __init__(self, pool, on_lost=None):
        # on_lost(name, pid, exitcode): a worker died unexpectedly; instead of replacing it
        # the pool breaks (ProcessPoolExecutor's BrokenProcessPool). Returns the exception
        # for the task it was running.
        self._on_lost = on_lost
        self.owner_pid = os.getpid()
        self._ctx = pool._ctx
        self._size = pool._processes
        self._initializer = pool._initializer
        self._initargs = pool._initargs
        self._maxtasks = pool._maxtasksperchild
        self._wrap = pool._wrap_exception
        self._process_factory = pool.Process
        # Pool workers are daemonic `*PoolWorker-N`s; ProcessPoolExecutor's are plain
        # processes (CPython's), so a task may start processes of its own.
        self._pool_workers = getattr(pool, '_pool_workers', True)
        self._cache = pool._cache
        self._lock = threading.Lock()
        self.state = RUN
        self.workers = []
        self._idle = []
        self._pending = collections.deque()
        self._feeders = 0
        self._failed = []
        self._wake_r, self._wake_w = os.pipe()
        # Closed when the core is freed (nothing can wake it then), whichever thread frees it.
        self._wake_fds = _procpy.Descriptors([self._wake_r, self._wake_w])
        self._manager_done = threading.Lock()
        self._manager_done.acquire()
        self._manager = None
        # A worker that could not prepare the main module is replaced, like any other, unless
        # that keeps happening: after _startup_limit failures in a row with no result in
        # between, workers evidently cannot start, and the pool stops starting them and fails
        # its work with _startup_error (CPython respawns them for ever).
        self._startup_error = None
        self._startup_failures = 0
        self._startup_limit = max(self._size, 3)
        self._version = 0           # bumped whenever the set of workers to watch changes
        self._watch_version = -1
        try:
            for _ in range(self._size):
                self._add_worker(self._new_worker())
        except Exception:
            self.terminate()
            raise
        self._manager = _thread.start_new_thread(self._manage, ())
        _live_cores.add(self)

    # -- workers

    def _new_worker(self):
        ours, theirs = _procpy.pipe(True)
        try:
            w = self._process_factory(
                self._ctx, target=worker,
                args=(theirs, self._initializer, self._initargs, self._maxtasks, self._wrap))
            if self._pool_workers:
                w.name = w.name.replace('Process', 'PoolWorker')
                w.daemon = True
            else:
                # Not daemonic, yet it must die with the pool's owner like the others.
                w._watch_parent = True
            w.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _Worker(w, ours)

    def _add_worker(self, w):
        self.workers.append(w)
        self._idle.append(w)
        self._version += 1

    # -- handing out tasks

    def submit(self, tasks):
        with self._lock:
            if self.state == TERMINATE:
                raise ValueError("Pool not running")
            self._pending.extend(tasks)
            self._dispatch_locked()
            failed = self._take_failed()
        self._report(failed)

    def feed(self, tasks, set_length):
        '''Tasks from a lazy iterable (imap): consumed by a thread of their own, so a slow or
        blocking iterable never stalls the pool.'''
        with self._lock:
            self._feeders += 1

        def run():
            n = 0
            try:
                for task in tasks:
                    with self._lock:
                        if self.state == TERMINATE:
                            return
                        self._pending.append(task)
                        self._dispatch_locked()
                        failed = self._take_failed()
                    self._report(failed)
                    n = task[1] + 1
                set_length(n)
            finally:
                with self._lock:
                    self._feeders -= 1
                self._wake()

        _thread.start_new_thread(run, ())

    def _dispatch_locked(self):
        if self._startup_error is not None and all(w.dead for w in self.workers):
            # No worker can start: fail what waits rather than hang (CPython loops forever).
            while self._pending:
                result, i = self._pending.popleft()[:2]
                self._failed.append((result, i, (False, self._startup_error)))
            return
        while self._pending and self._idle:
            task = self._pending.popleft()
            result, i, func, args, kwds = task
            start = getattr(result, '_start', None)
            if start is not None and not start():
                continue        # a cancelled future
            if func is _helper_reraises_exception:
                self._failed.append((result, i, (False, args[0])))
                continue
            try:
                data = _procpy.dumps((func, args, kwds, i) if _tracing else (func, args, kwds))
            except Exception as e:
                self._failed.append((result, i, (False, e)))
                continue
            w = self._idle.pop()
            try:
                w.conn.send_bytes(data)
            except OSError:
                # It died before taking the task: the task was not run; its sentinel tells
                # the manager, which replaces it.
                w.dead = True
                self._version += 1
                self._pending.appendleft(task)
                continue
            w.task = task       # (result, index, ...): re-queued if the worker cannot start
            if type(result) is ApplyResult:
                result._direct = (self, w)
            w.sent += 1
            if self._maxtasks is not None and w.sent >= self._maxtasks:
                w.retired = True

    def take_pending(self):
        '''Remove and return the results of tasks no worker has taken yet.'''
        with self._lock:
            tasks, self._pending = list(self._pending), collections.deque()
        return [t[0] for t in tasks]

    def _take_failed(self):
        failed, self._failed = self._failed, []
        return failed

    @staticmethod
    def _report(failed):
        for result, i, outcome in failed:
            _deliver(result, i, outcome)

    def _wake(self):
        try:
            os.write(self._wake_w, b'x')
        except OSError:
            pass

    # -- the manager thread

    def _manage(self):
        if _tracing:
            _trace.thread_name('pool manager')
        try:
            self._manage_loop()
        finally:
            self._manager_done.release()

    def _manage_loop(self):
        while True:
            with self._lock:
                if self.state == TERMINATE:
                    return
                if self.state == CLOSE and not self._pending and not self._feeders \
                        and all(w.task is None for w in self.workers):
                    break
                if self._watch_version != self._version:
                    # Rebuilt only when workers come, go or die: this loop is the hot path.
                    watch = {self._wake_r: None}
                    for w in self.workers:
                        if w.sentinel is not None:
                            watch[w.sentinel] = w
                        if not w.dead and w.owner is None:
                            watch[w.conn] = w
                    watch_list = list(watch)
                    self._watch_version = self._version
            for obj in _procpy.wait(watch_list):
                w = watch[obj]
                if w is None:
                    os.read(self._wake_r, 4096)
                elif obj is w.conn:
                    with self._lock:
                        mine = not w.dead and w.owner is None
                        w.reading = mine
                    if mine:
                        try:
                            # The readiness may be stale: a get() that owned the connection
                            # meanwhile may have read that answer itself.
                            if w.conn.poll(0):
                                self._on_result(w, dispatch=True)
                        finally:
                            w.reading = False
                elif w in self.workers and w.owner is None:
                    self._on_exit(w)
        # Closed and all work done: let the workers exit, then reap them.
        for w in list(self.workers):
            try:
                w.conn.send_bytes(b'')
            except OSError:
                pass
        for w in list(self.workers):
            w.process.join()
            w.conn.close()
        _live_cores.discard(self)

    def _on_result(self, w, dispatch):
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            with self._lock:
                w.dead = True       # the sentinel follows
                self._version += 1
            return
        try:
            outcome = _procpy.loads(data)
        except Exception as e:
            outcome = (False, e)
        if type(outcome) is tuple and len(outcome) == 2 and outcome[0] == _STARTUP_FAILED:
            # ProcessPoolExecutor keeps CPython's answer: its exit breaks the pool.
            if self._on_lost is None:
                self._on_startup_failure(w, outcome[1])
            return
        with self._lock:
            self._startup_failures = 0      # a worker prepared: start-up can succeed
            task, w.task = w.task, None
            if dispatch and not w.retired and not w.dead:
                self._idle.append(w)
                self._dispatch_locked()
            failed = self._take_failed()
        if task is not None:
            _deliver(task[0], task[1], outcome)
        self._report(failed)

    def _on_startup_failure(self, w, exc):
        with self._lock:
            self._startup_failures += 1
            if self._startup_failures >= self._startup_limit:
                self._startup_error = exc
            w.dead = True       # its sentinel follows; _on_exit replaces it
            self._version += 1
            if w in self._idle:
                self._idle.remove(w)
            lost, w.task = w.task, None
            if lost is not None:
                self._pending.appendleft(lost)      # it never ran the task: another will
            self._dispatch_locked()
            failed = self._take_failed()
        self._report(failed)

    def wait_direct(self, result, w, deadline):
        '''get() of a lone apply_async: the waiting thread reads the worker's answer itself,
        saving the hop through the manager thread (one thread wake-up, about half the round
        trip). Returns False when it could not, and the caller waits for the manager.'''
        with self._lock:
            if w.task is None or w.task[0] is not result or w.owner is not None \
                    or w.reading or w.dead:
                return False
            w.owner = _thread.get_ident()
            self._version += 1
        # No wake-up for the manager here: if the answer arrives while it still watches this
        # connection, it sees the owner, leaves the answer to us and stops watching.
        try:
            watch = [w.conn, w.sentinel]
            _spin(_procpy.wait, watch, 0)
            while True:
                step = _SIGNAL_POLL
                if deadline is not None:
                    step = min(step, deadline - _now())
                    if step <= 0:
                        return True
                ready = _procpy.wait(watch, step)
                if w.sentinel in ready and w.conn not in ready:
                    return False    # it died: the manager reports it
                if w.conn in ready:
                    self._on_result(w, dispatch=True)
                    return not w.dead
        finally:
            with self._lock:
                w.owner = None
                self._version += 1
            self._wake()

    def _on_exit(self, w):
        with self._lock:
            w.dead = True
            self._version += 1
            if w in self._idle:
                self._idle.remove(w)
        # Results it sent before it died still count (and so does a start-up failure).
        try:
            if w.conn.poll(0):
                self._on_result(w, dispatch=False)
        except OSError:
            pass
        w.process.join()
        w.conn.close()
        exitcode = w.process.exitcode
        broken = self._on_lost is not None and (w.task is not None or not w.retired) \
            and self.state != TERMINATE
        if broken:
            with self._lock:
                self.workers.remove(w)
                self._version += 1
                lost, w.task = w.task, None
                self.state = TERMINATE
            exc = self._on_lost(w.process.name, w.process.pid, exitcode)
            if lost is not None:
                _deliver(lost[0], lost[1], (False, exc))
            for other in list(self.workers):
                try:
                    other.process.terminate()
                except Exception:
                    pass
            return
        with self._lock:
            self.workers.remove(w)
            self._version += 1
            lost, w.task = w.task, None
            replace = self.state == RUN or (
                self.state == CLOSE and (self._pending or self._feeders or lost
                                         or any(x.task for x in self.workers)))
            replace = replace and not util.is_exiting() and self._startup_error is None
            if not replace:
                # What waits must not wait for a worker that will not come.
                self._dispatch_locked()
                failed = self._take_failed()
        if lost is not None:
            _deliver(lost[0], lost[1],
                     (False, WorkerLostError(w.process.name, w.process.pid, exitcode)))
        if not replace:
            self._report(failed)
        else:
            try:
                new = self._new_worker()
            except Exception as e:
                util.debug('cannot replace pool worker: %r' % e)
                new = None
                if not self.workers:
                    # Nobody left to run what is queued: fail it rather than hang.
                    for result in self.take_pending():
                        result._abort(e)
            with self._lock:
                if new is not None:
                    if self.state == TERMINATE:
                        new.process.terminate()
                        self.workers.append(new)
                        self._version += 1
                    else:
                        self._add_worker(new)
                        self._dispatch_locked()
                failed = self._take_failed()
            self._report(failed)

    # -- stopping

    def close(self):
        with self._lock:
            if self.state == RUN:
                self.state = CLOSE
        self._wake()

    def stop_soon(self):
        '''From __del__: no waiting here; the manager's last loop is enough.'''
        with self._lock:
            self.state = TERMINATE
        self._wake()
        for w in list(self.workers):
            try:
                w.process.terminate()
            except Exception:
                pass

    def terminate(self):
        with self._lock:
            already = self._terminated
            self._terminated = True
            self.state = TERMINATE
            self._pending.clear()
        self._wake()
        if self._manager is not None and self._manager != _thread.get_ident():
            _wait_lock(self._manager_done, None, release=True)
        for w in list(self.workers):
            try:
                w.process.terminate()
            except Exception:
                pass
        for w in list(self.workers):
            try:
                w.process.join()
                w.conn.close()
            except Exception:
                pass
        _live_cores.discard(self)
        if not already:
            for result in list(self._cache.values()):
                result._abort(PoolTerminatedError(
                    'the pool was terminated before this task finished'))

    def join(self):
        if self._manager is not None and self._manager != _thread.get_ident():
            _wait_lock(self._manager_done, None, release=True)
        for w in list(self.workers):
            w.process.join()


#
# Thread pools: the same front over threads; nothing is encoded
#

class ThreadPool(Pool):
    _wrap_exception = False

    @staticmethod
    def Process(ctx, *args, **kwds):
        from .dummy import DummyProcess
        return DummyProcess(*args, **kwds)

    def __init__(self, processes=None, initializer=None, initargs=()):
        Pool.__init__(self, processes, initializer, initargs)

    def _make_core(self):
        return _ThreadCore(self)


class _ThreadCore(object):
    def __init__(self, pool):
        import queue
        self._queue = queue.SimpleQueue()
        self._cache = pool._cache
        self.state = RUN
        self._lock = threading.Lock()
        self._feeders = 0
        self.workers = []
        # Threads running a task: after terminate(), join() leaves them to finish it.
        self._busy = busy = set()
        queue_get = self._queue.get

        def worker(initializer, initargs):
            # Named `worker` so threads are called 'Thread-N (worker)', as in CPython.
            me = threading.current_thread()
            if _tracing:
                _trace.thread_name(me.name)
            if initializer is not None:
                initializer(*initargs)
            while True:
                busy.discard(me)
                task = queue_get()
                if task is None:
                    return
                busy.add(me)
                result, i, func, args, kwds = task
                try:
                    if _tracing:
                        outcome = _traced_task((func, args, kwds, i))
                    else:
                        outcome = (True, func(*args, **kwds))
                except Exception as e:
                    outcome = (False, e)
                _deliver(result, i, outcome)
                task = result = func = args = kwds = outcome = None

        for _ in range(pool._processes):
            t = pool.Process(None, target=worker,
                             args=(pool._initializer, pool._initargs))
            t.name = t.name.replace('Process', 'PoolWorker')
            t.daemon = True
            t.start()
            self.workers.append(t)

    def submit(self, tasks):
        for task in tasks:
            self._queue.put(task)

    def feed(self, tasks, set_length):
        with self._lock:
            self._feeders += 1

        def run():
            n = 0
            try:
                for task in tasks:
                    if self.state == TERMINATE:
                        return
                    self._queue.put(task)
                    n = task[1] + 1
                set_length(n)
            finally:
                with self._lock:
                    self._feeders -= 1
                    if self._feeders == 0 and self.state == CLOSE:
                        self._stop_workers()

        _thread.start_new_thread(run, ())

    def _stop_workers(self):
        for _ in self.workers:
            self._queue.put(None)

    def close(self):
        with self._lock:
            self.state = CLOSE
            if self._feeders == 0:
                self._stop_workers()

    stop_soon = close

    def terminate(self):
        # Threads cannot be killed: drop what has not started, let running tasks finish.
        with self._lock:
            self.state = TERMINATE
        try:
            while True:
                task = self._queue.get_nowait()
                if task is not None:
                    task[0]._abort(PoolTerminatedError(
                        'the pool was terminated before this task started'))
        except Exception:
            pass
        self._stop_workers()
        self.join()

    def join(self):
        me = threading.current_thread()
        for t in self.workers:
            # terminate() from a result callback runs in a worker thread: not itself.
            while t is not me and t.is_alive():
                # A thread cannot be stopped: once terminated, one still running a task is
                # left to finish it on its own (the pool's threads are daemons), as CPython's
                # terminate() leaves them, instead of waiting as long as the task runs.
                if self.state == TERMINATE and t in self._busy:
                    break
                t.join(_SIGNAL_POLL)
