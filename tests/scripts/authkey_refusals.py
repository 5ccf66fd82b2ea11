"""Wrong and missing authkeys on Listener/Client and on a manager: AuthenticationError (or the
assertion CPython 3.11 makes) on the side that checks, and nothing the unauthenticated peer
sent is ever decoded (decoding the marker below would print DECODED)."""
import os
import struct
import sys
import threading

import multiprocessing as mp
from multiprocessing.connection import Listener, Client
from multiprocessing.managers import BaseManager


class Marker:
    """Decoding this prints DECODED: it must never happen on a checking side."""

    def __reduce__(self):
        return (print, ('DECODED',))


def run_pair(label, listener_key, client_key, client_does, server_does='accept'):
    """A Listener in this thread, a client in another; print what each side saw, in order."""
    seen = {}
    # The client keeps its end open until the server is done, so the server's writes never
    # meet a closed peer (which would make the outcome a race).
    server_done = threading.Event()
    with Listener(family='AF_UNIX', authkey=listener_key) as l:
        def client():
            try:
                c = Client(l.address, authkey=client_key)
            except Exception as e:
                seen['client'] = 'Client(): %s: %s' % (type(e).__name__, e)
                return
            try:
                seen['client'] = client_does(c)
            except Exception as e:
                seen['client'] = '%s' % type(e).__name__
            server_done.wait()
            c.close()

        t = threading.Thread(target=client)
        t.start()
        try:
            c = l.accept()
        except Exception as e:
            seen['server'] = 'accept(): %s: %s' % (type(e).__name__, e)
        else:
            if server_does == 'send':
                c.send_bytes(b'not a challenge')
            try:
                seen['server'] = 'then recv: %r' % (c.recv(),)
            except Exception as e:
                seen['server'] = 'then recv: %s' % type(e).__name__
            c.close()
        server_done.set()
        t.join()
    print(label)
    print('  server:', seen['server'])
    print('  client:', seen['client'])


def send_marker_then_recv(c):
    c.send(Marker())
    return 'recv after sending: %r' % (c.recv(),)


def send_big_digest(c):
    c.send_bytes(b'x' * 1000)
    return 'sent 1000 bytes'


def send_huge_header(c):
    os.write(c.fileno(), struct.pack('!i', -1) + struct.pack('!Q', 1 << 40))
    return 'sent a 2**40 header'


class MyManager(BaseManager):
    pass


_store = {'x': 1}


def get_store():
    return _store


MyManager.register('get_store', callable=get_store)


def main(method):
    ctx = mp.get_context(method)
    run_pair('listener with a key, client without', b'key', None, send_marker_then_recv)
    run_pair('listener without a key, client with one', None, b'key', lambda c: 'connected', 'send')
    run_pair('wrong key', b'key', b'other', lambda c: 'connected')
    run_pair('a 1000-byte digest', b'key', None, send_big_digest)
    run_pair('a 2**40 header as the digest', b'key', None, send_huge_header)

    m = MyManager(address=('127.0.0.1', 0), authkey=b'right', ctx=ctx)
    m.start()
    addr = m.address
    for label, key in (('wrong authkey', b'wrong'), ('default authkey', None)):
        other = MyManager(address=addr, authkey=key)
        try:
            other.connect()
            print('manager,', label, ': connected')
        except Exception as e:
            print('manager,', label, ':', type(e).__name__, e)
    c = Client(addr)
    c.send(Marker())
    try:
        print('manager, no authkey, raw client:', c.recv())
    except Exception as e:
        print('manager, no authkey, raw client:', type(e).__name__)
    c.close()
    right = MyManager(address=addr, authkey=b'right')
    right.connect()
    print('manager, right authkey:', right.get_store().get('x'))
    m.shutdown()


if __name__ == '__main__':
    method = sys.argv[1] if len(sys.argv) > 1 else 'fork'
    mp.set_start_method(method)
    main(method)
