"""Pipe basics: duplex echo with a child, ordering, poll() with and without
timeout, Pipe(duplex=False) readable/writable flags and the read-only /
write-only errors, closed flag, recv/send on a closed connection ->
OSError('handle is closed'), recv after the peer closed -> EOFError,
context-manager close, send_bytes offset/size and their ValueErrors."""
import multiprocessing
import sys
from _check import attempt


def echo(conn):
    while True:
        msg = conn.recv()
        if msg == 'stop':
            conn.send('stopping')
            break
        conn.send(('echo', msg))
    conn.close()


def send_when_asked(conn):
    conn.recv()
    conn.send('answer')


def writer(w, n):
    for i in range(n):
        w.send(i)
    w.close()


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    a, b = multiprocessing.Pipe()
    print('duplex flags:', a.readable, a.writable, b.readable, b.writable)
    print('closed:', a.closed, b.closed)
    print('fileno is int:', isinstance(a.fileno(), int))
    p = multiprocessing.Process(target=echo, args=(b,))
    p.start()
    for m in [1, 'two', [3], {'four': 4}, None]:
        a.send(m)
    print('echoes:', [a.recv() for _ in range(5)])
    a.send('stop')
    print(a.recv())
    p.join()
    print('exitcode:', p.exitcode)

    # poll
    a, b = multiprocessing.Pipe()
    p = multiprocessing.Process(target=send_when_asked, args=(b,))
    p.start()
    print('poll() before asking:', a.poll())
    print('poll(0.05) before asking:', a.poll(0.05))
    a.send('please')
    print('poll(10) after asking:', a.poll(10))
    print('poll() with data still unread:', a.poll())
    print('recv:', a.recv())
    p.join()

    # simplex pipe: Pipe(duplex=False) returns (reader, writer)
    r, w = multiprocessing.Pipe(duplex=False)
    print('simplex flags r:', r.readable, r.writable, 'w:', w.readable, w.writable)
    attempt('send on read end', lambda: r.send(1))
    attempt('recv on write end', w.recv)
    attempt('send_bytes on read end', lambda: r.send_bytes(b'x'))
    attempt('recv_bytes on write end', w.recv_bytes)
    p = multiprocessing.Process(target=writer, args=(w, 5))
    p.start()
    w.close()            # drop the parent's copy so EOF can be seen
    items = []
    try:
        while True:
            items.append(r.recv())
    except EOFError as e:
        print('simplex got', items, 'then EOFError:', repr(str(e)))
    p.join()

    # closed connections
    a, b = multiprocessing.Pipe()
    a.close()
    print('closed after close():', a.closed, b.closed)
    attempt('recv on closed', a.recv)
    attempt('send on closed', lambda: a.send(1))
    attempt('poll on closed', a.poll)
    attempt('fileno on closed', a.fileno)
    attempt('close twice', a.close)
    attempt('recv after peer closed', b.recv)
    attempt('recv_bytes after peer closed', b.recv_bytes)
    b.close()

    with multiprocessing.Pipe()[0] as c:
        print('inside with, closed:', c.closed)
    print('after with, closed:', c.closed)

    # send_bytes(buf, offset, size)
    a, b = multiprocessing.Pipe()
    a.send_bytes(b'abcdef', 2)
    a.send_bytes(b'abcdef', 1, 3)
    a.send_bytes(bytearray(b'xyz'))
    a.send_bytes(memoryview(b'0123456789')[2:5])
    a.send_bytes(b'')
    print('send_bytes slices:', [b.recv_bytes() for _ in range(5)])
    attempt('offset negative', lambda: a.send_bytes(b'abc', -1))
    attempt('offset too big', lambda: a.send_bytes(b'abc', 4))
    attempt('size negative', lambda: a.send_bytes(b'abc', 0, -1))
    attempt('offset+size too big', lambda: a.send_bytes(b'abc', 1, 3))
    attempt('nothing was sent by the failed calls', b.poll)
