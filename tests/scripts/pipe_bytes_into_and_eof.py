"""Raw byte messages on Connections: recv_bytes_into (bytearray, offset,
memoryview), BufferTooShort on a too-short buffer, its ValueErrors,
recv_bytes(maxlength) too small -> OSError('bad message length') (the
connection is not used again afterwards: CPython leaves it desynchronised), empty
messages, a 1 MiB message from a child, and all queued messages delivered
before EOFError once the writer has closed."""
import multiprocessing
import sys


def byte_writer(conn, chunks):
    for c in chunks:
        conn.send_bytes(c)
    conn.close()


def big_writer(conn, n):
    conn.send_bytes(bytes(range(256)) * (n // 256))
    conn.close()


def attempt(label, fn):
    try:
        res = fn()
    except multiprocessing.BufferTooShort as e:
        print('%s: %s isinstance ProcessError=%s' % (
            label, type(e).__name__, isinstance(e, multiprocessing.ProcessError)))
    except Exception as e:
        print('%s: %s: %s' % (label, type(e).__name__, e))
    else:
        print('%s: ok %r' % (label, res))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    a, b = multiprocessing.Pipe()
    buf = bytearray(10)
    a.send_bytes(b'hello')
    print('recv_bytes_into returns:', b.recv_bytes_into(buf), bytes(buf))
    a.send_bytes(b'XY')
    print('with offset 7:', b.recv_bytes_into(buf, 7), bytes(buf))
    a.send_bytes(b'0123456789')
    print('exact fit:', b.recv_bytes_into(buf), bytes(buf))
    mv = memoryview(bytearray(4))
    a.send_bytes(b'mv!')
    print('into memoryview:', b.recv_bytes_into(mv), mv.tobytes())

    a.send_bytes(b'this message is too long')
    attempt('too-short buffer', lambda: b.recv_bytes_into(bytearray(4)))
    a.send_bytes(b'abc')
    attempt('offset leaves too little room', lambda: b.recv_bytes_into(bytearray(4), 2))
    # the too-long message was consumed; the connection stays usable
    a.send_bytes(b'next')
    attempt('next message still readable', b.recv_bytes)
    attempt('negative offset', lambda: b.recv_bytes_into(bytearray(4), -1))
    attempt('offset too large', lambda: b.recv_bytes_into(bytearray(4), 5))
    attempt('negative maxlength', lambda: b.recv_bytes(-1))

    a.send_bytes(b'')
    attempt('empty message', b.recv_bytes)
    a.send_bytes(b'')
    attempt('empty message into buffer', lambda: b.recv_bytes_into(bytearray(2)))

    a.send_bytes(b'12345')
    attempt('recv_bytes(maxlength=5) fits', lambda: b.recv_bytes(5))
    a.send_bytes(b'123456')
    attempt('recv_bytes(maxlength=5) too long', lambda: b.recv_bytes(5))
    a.close()

    # bytes and pickled objects share the wire format: send() then recv_bytes()
    a, b = multiprocessing.Pipe()
    a.send_bytes(b'raw')
    a.send('obj')
    print('recv() of a pickled message:', b.recv_bytes() == b'raw', b.recv())
    a.close()
    b.close()

    # every message before the writer's close arrives, then EOFError
    r, w = multiprocessing.Pipe(duplex=False)
    chunks = [b'one', b'', b'three', bytes(range(256))]
    p = multiprocessing.Process(target=byte_writer, args=(w, chunks))
    p.start()
    w.close()
    got = []
    try:
        while True:
            got.append(r.recv_bytes())
    except EOFError:
        print('EOF after', len(got), 'messages; equal to sent:', got == chunks)
    p.join()
    attempt('recv_bytes again after EOF', r.recv_bytes)
    attempt('poll after EOF (readable: EOF)', r.poll)
    r.close()

    # 1 MiB message: read it before joining the writer
    r, w = multiprocessing.Pipe(duplex=False)
    p = multiprocessing.Process(target=big_writer, args=(w, 1 << 20))
    p.start()
    w.close()
    data = r.recv_bytes()
    p.join()
    print('big message:', len(data), data[:4], data[-4:], sum(data) % 65521, 'exitcode', p.exitcode)
