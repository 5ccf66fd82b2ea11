"""Truncated, garbage and odd frames written raw to a Pipe (duplex and simplex), read with
recv / recv_bytes / recv_bytes_into: the exception (or value) CPython gives for each, and the
channel still usable after a whole frame that did not decode."""
import os
import struct
import sys

import multiprocessing as mp


def show(label, f):
    try:
        r = f()
    except Exception as e:
        # Decoder messages differ between pickle and procpy's codec: only their type is compared.
        detail = str(e) if isinstance(e, (OSError, EOFError, ValueError)) else ''
        print('  %s -> %s %s' % (label, type(e).__name__, detail))
    else:
        print('  %s -> %r' % (label, r))


def call(conn, how):
    if how == 'recv_bytes_into':
        buf = bytearray(64)
        return lambda: (conn.recv_bytes_into(buf), bytes(buf[:4]))
    if how == 'recv_bytes(8)':
        return lambda: conn.recv_bytes(8)
    return getattr(conn, how)


def case(label, raw, how, duplex, close=True):
    a, b = mp.Pipe(duplex)
    os.write(b.fileno(), raw)
    if close:
        b.close()
    show(label, call(a, how))
    if how == 'recv_bytes(8)':
        print('    closed after:', a.closed, '/ readable after:', a.readable if not a.closed else '-')
        if not a.closed:
            show('then recv', a.recv)
    a.close()
    if not close:
        b.close()


LONG = struct.pack('!i', -1)
CASES = [
    ('nothing', b''),
    ('half a header', b'\x00\x00'),
    ('a header, then end of file', struct.pack('!i', 10)),
    ('3 of 10 bytes', struct.pack('!i', 10) + b'abc'),
    ('half a long header', LONG + b'\x00\x00\x00'),
    ('a long header, then end of file', LONG + struct.pack('!Q', 100)),
    ('a long header and 5 of 100 bytes', LONG + struct.pack('!Q', 100) + b'12345'),
    ('negative length -2', struct.pack('!i', -2)),
    ('negative length -2**31', struct.pack('!i', -2 ** 31)),
    ('an empty message', struct.pack('!i', 0)),
    ('garbage', struct.pack('!i', 4) + b'\xff\xff\xff\xff'),
    ('16 bytes', struct.pack('!i', 16) + b'0123456789abcdef'),
]


def main():
    for how in ('recv', 'recv_bytes', 'recv_bytes_into', 'recv_bytes(8)'):
        for duplex in (True, False):
            print(how, 'duplex' if duplex else 'simplex')
            for label, raw in CASES:
                case(label, raw, how, duplex)

    # A whole frame that does not decode leaves the stream at the next frame.
    for duplex in (True, False):
        a, b = mp.Pipe(duplex)
        os.write(b.fileno(), struct.pack('!i', 4) + b'\xff\xff\xff\xff')
        os.write(b.fileno(), struct.pack('!i', 0))
        b.send({'still': 'usable'})
        show('garbage frame', a.recv)
        show('empty frame', a.recv)
        show('next frame', a.recv)

    # A message longer than recv_bytes_into's buffer: BufferTooShort carries all of it.
    a, b = mp.Pipe()
    b.send_bytes(b'x' * 100)
    try:
        a.recv_bytes_into(bytearray(10))
    except mp.BufferTooShort as e:
        print('BufferTooShort', len(e.args[0]))
    b.send_bytes(b'after')
    print('after BufferTooShort:', a.recv_bytes())

    # offset + size beyond any buffer (their sum overflowed a machine word in procpy).
    for offset, size in ((1, sys.maxsize), (sys.maxsize, sys.maxsize), (2, 1)):
        show('send_bytes(b"xy", %d, %d)' % (offset, size), lambda: b.send_bytes(b'xy', offset, size))
    b.send_bytes(b'xy', 1, 1)
    print('then:', a.recv_bytes())


if __name__ == '__main__':
    mp.set_start_method(sys.argv[1] if len(sys.argv) > 1 else 'fork')
    main()
