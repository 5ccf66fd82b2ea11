"""multiprocessing.shared_memory.SharedMemory: create/attach by name, writes in one process
seen by another (child writes, parent reads and the other way round), SharedMemory as a
Process argument and through a Queue and a Pipe (it travels by name), .size is the exact
size asked for, repr/reduce/name shape (names are random: only their shape and equality are
printed), close() with a live slice → BufferError as CPython, close twice, unlink twice →
FileNotFoundError, and CPython's argument errors. Everything created is unlinked."""
import multiprocessing
import sys
from multiprocessing import shared_memory
from multiprocessing.shared_memory import SharedMemory
from _check import attempt


def child_write(shm, data, done):
    shm.buf[:len(data)] = data
    done.put(('child saw', bytes(shm.buf[10:14]), shm.size))
    shm.close()


def child_attach_by_name(name, q):
    other = SharedMemory(name)
    q.put((other.name == name, other.size, bytes(other.buf[:5])))
    other.buf[0] = 0x5A
    other.close()


def child_from_queue(q_in, q_out):
    shm = q_in.get(timeout=30)
    q_out.put((type(shm).__name__, bytes(shm.buf[:3])))
    shm.buf[3] = 0x21
    shm.close()


def child_from_pipe(conn):
    shm = conn.recv()
    conn.send(bytes(shm.buf[:4]))
    shm.close()
    conn.close()


def child_create(q, ack):
    shm = SharedMemory(create=True, size=16)
    shm.buf[:6] = b'from c'
    q.put(shm.name)
    ack.get(timeout=30)      # the parent has attached: the child may go
    shm.close()


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    print('module:', shared_memory.__name__, sorted(shared_memory.__all__))
    print('context manager:', hasattr(SharedMemory, '__enter__'))

    shm = SharedMemory(create=True, size=100)
    print('name shape:', shm.name.startswith('psm_'), len(shm.name), '/' in shm.name)
    print('size:', shm.size, len(shm.buf), type(shm.buf).__name__)
    print('zeroed:', bytes(shm.buf[:8]))
    print('repr:', repr(shm) == "SharedMemory(%r, size=100)" % shm.name)
    cls, args = shm.__reduce__()
    print('reduce:', cls is SharedMemory, args == (shm.name, False, 100))
    shm.buf[10:14] = b'abcd'

    # A Process argument: the child attaches by name and writes, the parent reads.
    done = multiprocessing.Queue()
    p = multiprocessing.Process(target=child_write, args=(shm, b'hello', done))
    p.start()
    print(done.get(timeout=30))
    p.join()
    print('exitcode:', p.exitcode, 'parent reads:', bytes(shm.buf[:5]))

    # By name only.
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=child_attach_by_name, args=(shm.name, q))
    p.start()
    print('attach by name:', q.get(timeout=30))
    p.join()
    print('after child wrote:', shm.buf[0])

    # Through a Queue and a Pipe.
    q_in, q_out = multiprocessing.Queue(), multiprocessing.Queue()
    p = multiprocessing.Process(target=child_from_queue, args=(q_in, q_out))
    p.start()
    q_in.put(shm)
    print('through a queue:', q_out.get(timeout=30))
    p.join()
    print('byte 3 now:', shm.buf[3])
    a, b = multiprocessing.Pipe()
    p = multiprocessing.Process(target=child_from_pipe, args=(b,))
    p.start()
    a.send(shm)
    print('through a pipe:', a.recv())
    p.join()

    # Attaching in the parent: same memory, size as created (not page-rounded).
    again = SharedMemory(shm.name)
    print('attached:', again.name == shm.name, again.size, bytes(again.buf[10:14]))
    again.buf[99] = 7
    print('seen by the first:', shm.buf[99])
    bigger = SharedMemory(shm.name, size=5000)
    print('size argument ignored when attaching:', bigger.size)
    bigger.close()
    again.close()

    # A segment created by a child outlives it while the parent uses it (same tree).
    q, ack = multiprocessing.Queue(), multiprocessing.Queue()
    p = multiprocessing.Process(target=child_create, args=(q, ack))
    p.start()
    name = q.get(timeout=30)
    theirs = SharedMemory(name)
    ack.put('go')
    p.join()
    print('created by a child:', bytes(theirs.buf[:6]), theirs.size)
    theirs.close()
    theirs.unlink()

    # close() with a slice alive: CPython's BufferError; the memory stays usable through it.
    view = shm.buf[10:14]
    attempt('close with a live slice', shm.close)
    print('buf after that:', shm.buf)
    print('slice still reads:', bytes(view))
    del view
    attempt('close again', shm.close)
    attempt('close a third time', shm.close)
    print('buf after close:', shm.buf)
    attempt('unlink', shm.unlink)
    try:
        shm.unlink()
    except FileNotFoundError as e:
        print('unlink twice:', type(e).__name__, 'errno:', e.errno, 'filename is the name:', e.filename == '/' + shm.name)
    try:
        SharedMemory(shm.name)
    except FileNotFoundError as e:
        print('attach after unlink:', type(e).__name__, e.errno, e.filename == '/' + shm.name)

    # Argument errors (CPython's types and messages).
    attempt('size 0', lambda: SharedMemory(create=True, size=0))
    attempt('create without size', lambda: SharedMemory(create=True))
    attempt('negative size', lambda: SharedMemory(create=True, size=-1))
    attempt('negative size attaching', lambda: SharedMemory('x', size=-3))
    attempt('no name, no create', lambda: SharedMemory())
    attempt('missing name', lambda: SharedMemory('procpy_no_such_segment_x'))
    attempt('slash inside', lambda: SharedMemory('procpy/bad'))
    attempt('name not a str', lambda: SharedMemory(5))
    fixed = SharedMemory('procpy_test_basics_fixed', create=True, size=10)
    attempt('create existing', lambda: SharedMemory('procpy_test_basics_fixed', create=True, size=10))
    print('fixed name:', fixed.name, fixed.size, repr(fixed))
    slash = SharedMemory('/procpy_test_basics_fixed')
    print('leading slash given:', slash.name, slash.size)
    slash.close()
    fixed.close()
    fixed.unlink()
    print('done')
