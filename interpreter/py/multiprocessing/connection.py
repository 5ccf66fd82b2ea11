# Connections are native (`_procpy.Connection`): framed like CPython's (4-byte big-endian
# length), encoded with procpy's codec.
__all__ = ['Client', 'Listener', 'Pipe', 'wait']

import _procpy

from .context import AuthenticationError, BufferTooShort

Connection = _procpy.Connection


def Pipe(duplex=True):
    '''Returns pair of connection objects at either end of a pipe'''
    return _procpy.pipe(duplex)


def wait(object_list, timeout=None):
    '''Wait till an object in object_list is ready/readable.

    Returns list of those objects in object_list which are ready/readable.'''
    return _procpy.wait(object_list, timeout)


def Listener(*args, **kwargs):
    raise NotImplementedError('multiprocessing.connection.Listener is not available in procpy yet')


def Client(*args, **kwargs):
    raise NotImplementedError('multiprocessing.connection.Client is not available in procpy yet')
