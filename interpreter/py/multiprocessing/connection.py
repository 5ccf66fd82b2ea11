# Connections are native (`_procpy.Connection`): framed like CPython's (4-byte big-endian
# length), encoded with procpy's codec. Listener/Client put the same Connection on a Unix or
# TCP socket, with CPython's HMAC challenge-response handshake when an authkey is given.
__all__ = ['Client', 'Listener', 'Pipe', 'wait']

import os
import sys

import _procpy

from . import util
from .context import AuthenticationError, BufferTooShort

Connection = _procpy.Connection

BUFSIZE = 8192
# Seconds a handshake may take (as CPython).
CONNECTION_TIMEOUT = 20.

default_family = 'AF_UNIX'
families = ['AF_INET', 'AF_UNIX']


def Pipe(duplex=True):
    '''Returns pair of connection objects at either end of a pipe'''
    return _procpy.pipe(duplex)


def wait(object_list, timeout=None):
    '''Wait till an object in object_list is ready/readable.

    Returns list of those objects in object_list which are ready/readable.'''
    return _procpy.wait(object_list, timeout)


#
# Addresses
#

def arbitrary_address(family):
    '''Return an arbitrary free address for the given family'''
    if family == 'AF_INET':
        return ('localhost', 0)
    elif family == 'AF_UNIX':
        import tempfile
        return tempfile.mktemp(prefix='listener-', dir=util.get_temp_dir())
    else:
        raise ValueError('unrecognized family')


def _validate_family(family):
    '''Checks if the family is valid for the current environment.'''
    if family == 'AF_PIPE':
        raise ValueError('Family %s is not recognized.' % family)
    if family == 'AF_UNIX' and not hasattr(__import__('socket'), family):
        raise ValueError('Family %s is not recognized.' % family)


def address_type(address):
    '''Return the types of the address: 'AF_INET', 'AF_UNIX', or 'AF_PIPE'.'''
    if type(address) == tuple:
        return 'AF_INET'
    elif type(address) is str and address.startswith('\\\\'):
        return 'AF_PIPE'
    elif type(address) is str or util.is_abstract_socket_namespace(address):
        return 'AF_UNIX'
    else:
        raise ValueError('address type of %r unrecognized' % address)


#
# Listener / Client
#

class Listener(object):
    '''Returns a listener object.

    A wrapper for a bound socket which is 'listening' for connections, or for a
    Windows named pipe (not on this platform).'''

    def __init__(self, address=None, family=None, backlog=1, authkey=None):
        family = family or (address and address_type(address)) or default_family
        _validate_family(family)
        address = address or arbitrary_address(family)
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError('authkey should be a byte string')
        self._listener = SocketListener(address, family, backlog)
        self._authkey = authkey

    def accept(self):
        '''Accept a connection on the bound socket or named pipe of `self`.

        Returns a `Connection` object.'''
        listener = self._listener  # close() from another thread may clear it meanwhile
        if listener is None:
            raise OSError('listener is closed')
        c = listener.accept()
        if self._authkey:
            try:
                deliver_challenge(c, self._authkey)
                answer_challenge(c, self._authkey)
            except BaseException:
                # A refused peer gets nothing more than the refusal.
                c.close()
                raise
        return c

    def close(self):
        '''Close the bound socket or named pipe of `self`.'''
        listener = self._listener
        if listener is not None:
            self._listener = None
            listener.close()

    @property
    def address(self):
        return self._listener._address

    @property
    def last_accepted(self):
        return self._listener._last_accepted

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


def Client(address, family=None, authkey=None):
    '''Returns a connection to the address of a `Listener`'''
    family = family or address_type(address)
    _validate_family(family)
    c = SocketClient(address)
    if authkey is not None and not isinstance(authkey, bytes):
        c.close()
        raise TypeError('authkey should be a byte string')
    if authkey is not None:
        try:
            answer_challenge(c, authkey)
            deliver_challenge(c, authkey)
        except BaseException:
            c.close()
            raise
    return c


class SocketListener(object):
    '''A bound, listening socket whose accepted peers become Connections.'''

    def __init__(self, address, family, backlog=1):
        import socket
        self._socket = socket.socket(getattr(socket, family))
        try:
            if os.name == 'posix':
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.setblocking(True)
            self._socket.bind(address)
            self._socket.listen(backlog)
            self._address = self._socket.getsockname()
        except OSError:
            self._socket.close()
            raise
        self._family = family
        self._last_accepted = None
        if family == 'AF_UNIX' and not util.is_abstract_socket_namespace(address):
            # The socket file goes when the listener is closed (or at exit).
            self._unlink = util.Finalize(self, os.unlink, args=(address,), exitpriority=0)
        else:
            self._unlink = None

    def accept(self):
        s, self._last_accepted = self._socket.accept()
        s.setblocking(True)
        return Connection(s.detach())

    def close(self):
        import socket
        try:
            # Wake a thread blocked in accept() first (it fails with EINVAL): it holds
            # RustPython's socket lock, which close() needs, so close() would wait for ever.
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._socket.close()
        finally:
            unlink = self._unlink
            if unlink is not None:
                self._unlink = None
                unlink()


def SocketClient(address):
    '''Return a connection object connected to the socket given by `address`'''
    import socket
    family = address_type(address)
    with socket.socket(getattr(socket, family)) as s:
        s.setblocking(True)
        s.connect(address)
        return Connection(s.detach())


#
# Authentication: the peer proves it knows the key by returning an HMAC of a random message.
#

MESSAGE_LENGTH = 20

CHALLENGE = b'#CHALLENGE#'
WELCOME = b'#WELCOME#'
FAILURE = b'#FAILURE#'


def _digest(authkey, message):
    import hmac
    return hmac.new(authkey, message, 'md5').digest()


def _await_peer(connection, timeout):
    '''A server's bound on a peer that stays silent during the handshake (procpy's; CPython
    waits for ever, holding the thread).'''
    if timeout is not None and not connection.poll(timeout):
        raise AuthenticationError('no answer within %s seconds' % timeout)


def deliver_challenge(connection, authkey, timeout=None):
    if not isinstance(authkey, bytes):
        raise ValueError(
            "Authkey must be bytes, not {0!s}".format(type(authkey)))
    message = os.urandom(MESSAGE_LENGTH)
    connection.send_bytes(CHALLENGE + message)
    digest = _digest(authkey, message)
    _await_peer(connection, timeout)
    response = connection.recv_bytes(256)        # reject large message
    # Constant time (CPython 3.12 too): `==` would tell a timing attacker how much was right.
    import hmac
    if hmac.compare_digest(response, digest):
        connection.send_bytes(WELCOME)
    else:
        connection.send_bytes(FAILURE)
        raise AuthenticationError('digest received was wrong')


def answer_challenge(connection, authkey, timeout=None):
    if not isinstance(authkey, bytes):
        raise ValueError(
            "Authkey must be bytes, not {0!s}".format(type(authkey)))
    _await_peer(connection, timeout)
    message = connection.recv_bytes(256)         # reject large message
    assert message[:len(CHALLENGE)] == CHALLENGE, 'message = %r' % message
    message = message[len(CHALLENGE):]
    digest = _digest(authkey, message)
    connection.send_bytes(digest)
    _await_peer(connection, timeout)
    response = connection.recv_bytes(256)        # reject large message
    if response != WELCOME:
        raise AuthenticationError('digest sent was rejected')


#
# The 'xmlrpclib' serializer of managers: the same connections, messages marshalled as
# XML-RPC (only what XML-RPC can carry travels).
#

class ConnectionWrapper(object):
    def __init__(self, conn, dumps, loads):
        self._conn = conn
        self._dumps = dumps
        self._loads = loads
        for attr in ('fileno', 'close', 'poll', 'recv_bytes', 'send_bytes'):
            setattr(self, attr, getattr(conn, attr))

    def send(self, obj):
        self._conn.send_bytes(self._dumps(obj))

    def recv(self):
        return self._loads(self._conn.recv_bytes())


def _xml_dumps(obj):
    import xmlrpc.client
    return xmlrpc.client.dumps((obj,), None, None, None, 1).encode('utf-8')


def _xml_loads(s):
    import xmlrpc.client
    (obj,), method = xmlrpc.client.loads(s.decode('utf-8'))
    return obj


class XmlListener(Listener):
    def accept(self):
        return ConnectionWrapper(Listener.accept(self), _xml_dumps, _xml_loads)


def XmlClient(*args, **kwds):
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)
