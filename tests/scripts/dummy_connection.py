"""multiprocessing.dummy.connection: Listener/Client between threads (the Listener's address is
its backlog queue), send/recv both ways, poll() with and without data, Pipe(), families, and
the listener closed by its with block."""
import sys
import threading
from multiprocessing.dummy import connection


def client(address, out):
    c = connection.Client(address)
    c.send(('hello', 1))
    out.append(('client got', c.recv()))
    c.send_bytes(b'bytes too')
    c.close()


def main():
    print('families:', connection.families)
    with connection.Listener() as l:
        print('address type:', type(l.address).__name__)
        out = []
        t = threading.Thread(target=client, args=(l.address, out))
        t.start()
        c = l.accept()
        print('server got:', c.recv())
        print('poll before send:', c.poll())
        c.send(['reply'])
        t.join()
        print('poll after client sent:', c.poll(), c.poll(0.5))
        print('server got bytes:', c.recv_bytes())
        print('client side:', out)
        with c:
            pass
    print('closed address:', l.address)
    a, b = connection.Pipe()
    a.send(1)
    print('pipe:', b.recv(), b.poll(), b.poll(0.01))
    b.send('back')
    print('pipe back:', a.recv())


if __name__ == '__main__':
    main()
