# CPython 3.11's `multiprocessing.reduction` API. procpy's own traffic (queues, pipes, Process
# arguments) goes through its codec, not pickle; the reducer table below is shared with it
# (`_procpy._reducers`, consulted before `__reduce_ex__`), so `ForkingPickler.register(cls, f)`
# makes objects of `cls` travel through procpy's queues and pipes as well as through
# `ForkingPickler.dumps`, whose bytes are ordinary pickle bytes.
from abc import ABCMeta
import copyreg
import functools
import io
import os
import pickle
import socket
import sys
import weakref

import _procpy

from . import context

__all__ = ['send_handle', 'recv_handle', 'ForkingPickler', 'register', 'dump']

HAVE_SEND_HANDLE = True


class ForkingPickler(pickle.Pickler):
    '''Pickler subclass used by multiprocessing.'''
    # The codec's table itself: one registration serves both.
    _extra_reducers = _procpy._reducers
    _copyreg_dispatch_table = copyreg.dispatch_table

    def __init__(self, *args, **kwds):
        super().__init__(*args, **kwds)
        self.dispatch_table = self._copyreg_dispatch_table.copy()
        self.dispatch_table.update(_pickle_only_reducers)
        self.dispatch_table.update(self._extra_reducers)

    @classmethod
    def register(cls, type, reduce):
        '''Register a reduce function for a type.'''
        cls._extra_reducers[type] = reduce

    @classmethod
    def dumps(cls, obj, protocol=None):
        buf = io.BytesIO()
        cls(buf, protocol).dump(obj)
        return buf.getbuffer()

    loads = pickle.loads


register = ForkingPickler.register


def dump(obj, file, protocol=None):
    '''Replacement for pickle.dump() using ForkingPickler.'''
    ForkingPickler(file, protocol).dump(obj)


# Descriptor passing over Unix sockets (SCM_RIGHTS).

def sendfds(sock, fds):
    '''Send an array of fds over an AF_UNIX socket.'''
    import array
    fds = array.array('i', fds)
    # One byte per descriptor, its count mod 256: recvfds checks it.
    msg = bytes([len(fds) % 256])
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


def recvfds(sock, size):
    '''Receive an array of fds over an AF_UNIX socket.'''
    import array
    a = array.array('i')
    bytes_size = a.itemsize * size
    msg, ancdata, flags, addr = sock.recvmsg(1, socket.CMSG_SPACE(bytes_size))
    if not msg and not ancdata:
        raise EOFError
    try:
        if len(ancdata) != 1:
            raise RuntimeError('received %d items of ancdata' % len(ancdata))
        cmsg_level, cmsg_type, cmsg_data = ancdata[0]
        if not (cmsg_level == socket.SOL_SOCKET and cmsg_type == socket.SCM_RIGHTS):
            raise RuntimeError('Invalid data received')
        if len(cmsg_data) % a.itemsize != 0:
            raise ValueError
        a.frombytes(cmsg_data)
        if len(a) % 256 != msg[0]:
            raise AssertionError(
                'Len is {0:n} but msg[0] is {1!r}'.format(len(a), msg[0]))
        return list(a)
    except (ValueError, IndexError):
        pass
    raise RuntimeError('Invalid data received')


def send_handle(conn, handle, destination_pid):
    '''Send a handle over a local connection.'''
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        sendfds(s, [handle])


def recv_handle(conn):
    '''Receive a handle over a local connection.'''
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        return recvfds(s, 1)[0]


class DupFd(object):
    '''A duplicate of a descriptor that travels to another process (as a Process argument,
    through a Queue or a duplex Pipe); `detach()` there returns the receiver's own copy.'''

    def __init__(self, fd):
        # A Connection adopts any descriptor and is a handle procpy's codec sends as a
        # descriptor: the carrier for this one.
        self._carrier = _procpy.Connection(os.dup(fd))

    def detach(self):
        '''Get the fd. This should only be called once.'''
        carrier, self._carrier = self._carrier, None
        if carrier is None:
            raise ValueError('DupFd.detach() was already called')
        fd = os.dup(carrier.fileno())
        carrier.close()
        return fd

    def __reduce__(self):
        if self._carrier is None:
            raise ValueError('DupFd.detach() was already called')
        return _rebuild_dupfd, (self._carrier,)


def _rebuild_dupfd(carrier):
    obj = DupFd.__new__(DupFd)
    obj._carrier = carrier
    return obj


# Reducers CPython's ForkingPickler registers for every pickle it makes. Methods and partials
# already travel through procpy's codec (by reference or by value), so these serve pickle only.
_pickle_only_reducers = {}

def _reduce_method(m):
    if m.__self__ is None:
        return getattr, (m.__class__, m.__func__.__name__)
    return getattr, (m.__self__, m.__func__.__name__)


class _C:
    def f(self):
        pass


_pickle_only_reducers[type(_C().f)] = _reduce_method


def _reduce_method_descriptor(m):
    return getattr, (m.__objclass__, m.__name__)


_pickle_only_reducers[type(list.append)] = _reduce_method_descriptor
_pickle_only_reducers[type(int.__add__)] = _reduce_method_descriptor


def _reduce_partial(p):
    return _rebuild_partial, (p.func, p.args, p.keywords or {})


def _rebuild_partial(func, args, keywords):
    return functools.partial(func, *args, **keywords)


_pickle_only_reducers[functools.partial] = _reduce_partial


# id(socket) -> (weak reference to it, the DupFd of its last reduction). procpy's channels copy
# a carried descriptor only once the whole message is encoded, so the carrier must outlive the
# reducer's return value: it is kept while its socket lives. No weakref callbacks (RustPython
# 0.5 can panic running one in an ending thread): dead entries are dropped on the next call.
_socket_carriers = {}


def _reduce_socket(s):
    for key, (r, _) in list(_socket_carriers.items()):
        if r() is None:
            _socket_carriers.pop(key, None)
    df = DupFd(s.fileno())
    _socket_carriers[id(s)] = (weakref.ref(s), df)
    return _rebuild_socket, (df, s.family, s.type, s.proto)


def _rebuild_socket(df, family, type, proto):
    fd = df.detach()
    return socket.socket(family, type, proto, fileno=fd)


register(socket.socket, _reduce_socket)


class AbstractReducer(metaclass=ABCMeta):
    '''Abstract base class for use in implementing a Reduction class suitable for use in
    replacing the standard reduction mechanism used in multiprocessing.'''
    ForkingPickler = ForkingPickler
    register = register
    dump = dump
    send_handle = send_handle
    recv_handle = recv_handle
    sendfds = sendfds
    recvfds = recvfds
    DupFd = DupFd
    _reduce_method = _reduce_method
    _reduce_method_descriptor = _reduce_method_descriptor
    _rebuild_partial = _rebuild_partial
    _reduce_socket = _reduce_socket
    _rebuild_socket = _rebuild_socket

    def __init__(self, *args):
        _pickle_only_reducers[type(_C().f)] = _reduce_method
        _pickle_only_reducers[type(list.append)] = _reduce_method_descriptor
        _pickle_only_reducers[type(int.__add__)] = _reduce_method_descriptor
        _pickle_only_reducers[functools.partial] = _reduce_partial
        register(socket.socket, _reduce_socket)
