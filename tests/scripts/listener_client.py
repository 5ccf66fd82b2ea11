"""multiprocessing.connection.Listener / Client over AF_UNIX and AF_INET, with and without an
authkey, between this process and children (fork, spawn, forkserver)."""
import os
import sys

import multiprocessing as mp
from multiprocessing.connection import Listener, Client, address_type, families
from multiprocessing import AuthenticationError

from _check import attempt


def client(address, authkey, q):
    """Connect, talk, report what happened on the queue (children print nothing)."""
    try:
        c = Client(address, authkey=authkey)
    except Exception as e:
        q.put(('client error', type(e).__name__, str(e)))
        return
    c.send({'hello': [1, 2.5, 'three'], 'pid_is_int': isinstance(os.getpid(), int)})
    c.send_bytes(b'raw bytes')
    big = c.recv_bytes()
    q.put(('client got', c.recv(), len(big), big == bytes(range(256)) * 4096))
    c.close()


def talk(ctx, family, server_key, client_key):
    q = ctx.Queue()
    with Listener(family=family, authkey=server_key) as l:
        addr = l.address
        p = ctx.Process(target=client, args=(addr, client_key, q))
        p.start()
        try:
            c = l.accept()
        except AuthenticationError as e:
            print('  server:', type(e).__name__, e)
        else:
            print('  server got:', c.recv(), c.recv_bytes())
            c.send_bytes(bytes(range(256)) * 4096)
            c.send(('reply', family))
            print('  last_accepted type:', type(l.last_accepted).__name__)
            c.close()
        p.join()
        print('  child says:', q.get(timeout=30), 'exitcode', p.exitcode)
    return addr


def main(method):
    ctx = mp.get_context(method)
    print('families:', sorted(families))
    for a in [('localhost', 0), '/tmp/x', '\0abstract', '\\\\.\\pipe\\x']:
        print('address_type(%r) = %s' % (a, address_type(a)))
    attempt('address_type(42)', lambda: address_type(42))
    attempt('Listener(family=AF_PIPE)', lambda: Listener(family='AF_PIPE'))
    attempt('Listener(authkey=str)', lambda: Listener(authkey='key'))

    for family in ('AF_UNIX', 'AF_INET'):
        for server_key, client_key in ((None, None), (b'secret', b'secret'), (b'secret', b'wrong')):
            print('%s server_key=%r client_key=%r' % (family, server_key, client_key))
            addr = talk(ctx, family, server_key, client_key)
            if family == 'AF_UNIX':
                print('  socket file removed after close:', not os.path.exists(addr))
            else:
                print('  address:', type(addr).__name__, len(addr), addr[0])

    # An authkey of the wrong type is refused by the client after it connected.
    with Listener() as l:
        attempt('Client(authkey=str)', lambda: Client(l.address, authkey='key'))
        c = l.accept()
        attempt('recv from the refused client', c.recv)

    # Several clients one after another on one listener.
    with Listener(('127.0.0.1', 0), backlog=4) as l:
        conns = [Client(l.address) for _ in range(3)]
        for i, c in enumerate(conns):
            c.send(i)
        print('accepted in order:', [l.accept().recv() for _ in range(3)])
        for c in conns:
            c.close()

    l = Listener()
    l.close()
    l.close()
    attempt('accept after close', l.accept)
    attempt('Client to a closed listener', lambda: Client(l.address))


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
