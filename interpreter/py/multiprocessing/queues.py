# Queues are native (`_procpy.QueueBase`): a SOCK_SEQPACKET pair shared by every process, a
# per-process feeder thread in Rust, and item counts in shared memory.
__all__ = ['Queue', 'SimpleQueue', 'JoinableQueue']

import _procpy
from queue import Empty, Full  # noqa: F401 (CPython's module has them; loky imports Full)

from . import util  # registers the exit flush of queue feeders


# CPython's feeder-thread stop marker; loky imports it by name.
_sentinel = object()


class Queue(_procpy.QueueBase):
    def __new__(cls, maxsize=0, *, ctx=None):
        return _procpy.QueueBase.__new__(cls, maxsize, 0)

    def __init__(self, maxsize=0, *, ctx=None):
        pass


class JoinableQueue(Queue):
    def __new__(cls, maxsize=0, *, ctx=None):
        return _procpy.QueueBase.__new__(cls, maxsize, 1)

    def task_done(self):
        self._task_done()

    def join(self):
        self._join()


class SimpleQueue(_procpy.QueueBase):
    def __new__(cls, *, ctx=None):
        return _procpy.QueueBase.__new__(cls, 0, 2)

    def __init__(self, *, ctx=None):
        pass

    def get(self):
        return _procpy.QueueBase.get(self)

    def put(self, obj):
        _procpy.QueueBase.put(self, obj)
