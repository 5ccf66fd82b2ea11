# Synchronization primitives. Lock, RLock, Semaphore and BoundedSemaphore ARE the native
# `_procpy.SemLock` (state in shared memory, futex waits): acquire/release/__enter__/__exit__
# are native calls. Condition, Event and Barrier are built from them as CPython builds its own.
__all__ = [
    'Lock', 'RLock', 'Semaphore', 'BoundedSemaphore', 'Condition', 'Event', 'Barrier'
]

import sys
import threading
import time

import _procpy

from . import context
from . import process

RECURSIVE_MUTEX, SEMAPHORE = 0, 1
SEM_VALUE_MAX = _procpy.SemLock.SEM_VALUE_MAX


def _rebuild_semlock(cls, raw):
    return cls._from_raw(raw)


class SemLock(_procpy.SemLock):
    '''Base of the lock and semaphore types: a native process-shared semaphore.'''

    def __new__(cls, kind, value, maxvalue, *, ctx=None):
        return _procpy.SemLock.__new__(cls, kind, value, maxvalue)

    def __init__(self, *args, **kwargs):
        pass

    def __reduce__(self):
        # Only as part of starting a child (Process args, Pool initargs), as CPython.
        context.assert_spawning(self)
        return _rebuild_semlock, (type(self), self._raw())


def _holder_name():
    name = process.current_process().name
    thread = threading.current_thread().name
    if thread != 'MainThread':
        name += '|' + thread
    return name


class Semaphore(SemLock):

    def __new__(cls, value=1, *, ctx=None):
        return SemLock.__new__(cls, SEMAPHORE, value, SEM_VALUE_MAX)

    def get_value(self):
        return self._get_value()

    def __repr__(self):
        return '<%s(value=%s)>' % (type(self).__name__, self._get_value())


class BoundedSemaphore(Semaphore):

    def __new__(cls, value=1, *, ctx=None):
        return SemLock.__new__(cls, SEMAPHORE, value, value)

    def __repr__(self):
        return '<%s(value=%s, maxvalue=%s)>' % (type(self).__name__, self._get_value(), self.maxvalue)


class Lock(SemLock):

    def __new__(cls, *, ctx=None):
        return SemLock.__new__(cls, SEMAPHORE, 1, 1)

    def __repr__(self):
        if self._is_mine():
            name = _holder_name()
        elif self._get_value() == 1:
            name = 'None'
        elif self._count() > 0:
            name = 'SomeOtherThread'
        else:
            name = 'SomeOtherProcess'
        return '<%s(owner=%s)>' % (type(self).__name__, name)


class RLock(SemLock):

    def __new__(cls, *, ctx=None):
        return SemLock.__new__(cls, RECURSIVE_MUTEX, 1, 1)

    def __repr__(self):
        if self._is_mine():
            name, count = _holder_name(), self._count()
        elif self._get_value() == 1:
            name, count = 'None', 0
        elif self._count() > 0:
            name, count = 'SomeOtherThread', 'nonzero'
        else:
            name, count = 'SomeOtherProcess', 'nonzero'
        return '<%s(%s, %s)>' % (type(self).__name__, name, count)


class Condition(object):
    '''A condition variable over a multiprocessing Lock/RLock. Waiters sleep on a semaphore;
    two counting semaphores let notify() know how many sleep and wait until the ones it woke
    have left, so a notify never wakes a later waiter (the scheme CPython uses).'''

    def __init__(self, lock=None, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        self._lock = lock or ctx.RLock()
        self._sleeping_count = ctx.Semaphore(0)
        self._woken_count = ctx.Semaphore(0)
        self._wait_semaphore = ctx.Semaphore(0)
        self._make_methods()

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore)

    def __setstate__(self, state):
        (self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore) = state
        self._make_methods()

    def _make_methods(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __repr__(self):
        waiters = self._sleeping_count._get_value() - self._woken_count._get_value()
        return '<%s(%s, %s)>' % (type(self).__name__, self._lock, waiters)

    def wait(self, timeout=None):
        assert self._lock._semlock._is_mine(), 'must acquire() condition before using wait()'
        self._sleeping_count.release()
        # Release every level of a recursive lock, and take them all back afterwards.
        depth = self._lock._semlock._count()
        for _ in range(depth):
            self._lock.release()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            for _ in range(depth):
                self._lock.acquire()

    def notify(self, n=1):
        assert self._lock._semlock._is_mine(), 'lock is not owned'
        assert not self._wait_semaphore.acquire(False), \
            'notify: Should not have been able to acquire _wait_semaphore'
        # Waiters that timed out since the last notify are no longer sleeping.
        while self._woken_count.acquire(False):
            gone = self._sleeping_count.acquire(False)
            assert gone, 'notify: Bug in sleeping_count.acquire - res should not be False'
        woken = 0
        while woken < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            woken += 1
        if woken:
            for _ in range(woken):
                self._woken_count.acquire()
            # A waiter that timed out meanwhile left its wake-up unused: take it back.
            while self._wait_semaphore.acquire(False):
                pass

    def notify_all(self):
        self.notify(n=sys.maxsize)

    def wait_for(self, predicate, timeout=None):
        from .util import wait_for
        return wait_for(self, predicate, timeout)


class Event(object):

    def __init__(self, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        self._cond = ctx.Condition(ctx.Lock())
        self._flag = ctx.Semaphore(0)

    def is_set(self):
        with self._cond:
            if self._flag.acquire(False):
                self._flag.release()
                return True
            return False

    def set(self):
        with self._cond:
            self._flag.acquire(False)
            self._flag.release()
            self._cond.notify_all()

    def clear(self):
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout=None):
        with self._cond:
            if self._flag.acquire(False):
                self._flag.release()
            else:
                self._cond.wait(timeout)
            if self._flag.acquire(False):
                self._flag.release()
                return True
            return False

    def __repr__(self):
        return '<%s at %#x %s>' % (type(self).__qualname__, id(self), 'set' if self.is_set() else 'unset')


class Barrier(threading.Barrier):
    '''threading.Barrier's algorithm over a multiprocessing Condition, with its state and
    count in shared memory.'''

    def __init__(self, parties, action=None, timeout=None, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        shared = _procpy.SharedBuffer(8)
        self.__setstate__((parties, action, timeout, ctx.Condition(), shared))
        self._state = 0
        self._count = 0

    def __setstate__(self, state):
        (self._parties, self._action, self._timeout, self._cond, self._shared) = state
        self._array = memoryview(self._shared).cast('i')

    def __getstate__(self):
        return (self._parties, self._action, self._timeout, self._cond, self._shared)

    @property
    def _state(self):
        return self._array[0]

    @_state.setter
    def _state(self, value):
        self._array[0] = value

    @property
    def _count(self):
        return self._array[1]

    @_count.setter
    def _count(self, value):
        self._array[1] = value
