"""Every public submodule of CPython 3.11's multiprocessing imports and has its `__all__`
names; heap.BufferWrapper memory shared with a child (as an argument and through a Queue);
reduction.register(cls, reducer) making objects of cls travel through a Queue and a Pipe;
ForkingPickler.dumps/loads round trips (registered reducer, partial, bound method);
reduction.DupFd and send_handle/recv_handle with a pipe's descriptor; SharedMemoryManager
with SharedMemory and ShareableList (segments gone after shutdown, ValueError before start,
list_segments through the server); the CPython-private names code reaches for
(`Connection._handle`, `Pool._pool`/`_repopulate_pool`, `resource_tracker._CLEANUP_FUNCS`,
`shared_memory._USE_POSIX`, `ShareableList._get_packing_format`, `forkserver._forkserver`,
`process._dangling`)."""
import functools
import importlib
import multiprocessing
import os
import struct
import sys

from _check import attempt


def gone(label, fn):
    '''The exception type only: its message names a random segment.'''
    try:
        fn()
    except Exception as e:
        print(label, type(e).__name__)
    else:
        print(label, 'still there')

# Not `spawn`: procpy's has no `__all__` yet (the suite's _TestImportStar lists it).
MODULES = ['connection', 'context', 'dummy', 'dummy.connection', 'forkserver', 'heap',
           'managers', 'pool', 'popen_fork', 'popen_forkserver', 'popen_spawn_posix',
           'process', 'queues', 'reduction', 'resource_sharer', 'resource_tracker',
           'shared_memory', 'sharedctypes', 'synchronize', 'util']


class Point(object):
    '''Refuses ordinary pickling: only the registered reducer makes it travel.'''

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __reduce__(self):
        raise TypeError('Point pickles only through its registered reducer')


def _rebuild_point(x, y):
    p = Point.__new__(Point)
    p.x, p.y = x, y
    p.via = 'reducer'
    return p


def _reduce_point(p):
    return _rebuild_point, (p.x, p.y)


def point_child(q, conn):
    p = q.get(timeout=30)
    q2 = conn.recv()
    conn.send(('child got', p.x, p.y, p.via, q2.x, q2.via))


def heap_child(wrapper, q_in, q_out):
    mv = wrapper.create_memoryview().cast('i')
    mv[0] += 5
    w2 = q_in.get(timeout=30)
    mv2 = w2.create_memoryview()
    mv2[:3] = b'abc'
    q_out.put(('child', mv[0], len(mv2)))


def dupfd_child(df, conn):
    fd = df.detach()
    os.write(fd, b'through DupFd')
    os.close(fd)
    conn.send('written')


def send_handle_child(conn):
    # The child's own pipe: its read end goes to the parent.
    from multiprocessing import reduction
    r, w = os.pipe()
    os.write(w, b'through send_handle')
    os.close(w)
    reduction.send_handle(conn, r, os.getppid())
    os.close(r)


def smm_child(name, q):
    from multiprocessing.shared_memory import ShareableList
    sl = ShareableList(name=name)
    sl[0] = sl[0] * 10
    q.put(list(sl))
    sl.shm.close()


def square(x):
    return x * x


def main(method):
    ctx = multiprocessing.get_context(method)
    multiprocessing.set_start_method(method)

    print('-- imports')
    for name in MODULES:
        mod = importlib.import_module('multiprocessing.' + name)
        missing = [a for a in getattr(mod, '__all__', ()) if not hasattr(mod, a)]
        print(name, 'has __all__' if hasattr(mod, '__all__') else 'no __all__', missing)
    from multiprocessing import heap, reduction, resource_sharer, managers, shared_memory
    from multiprocessing import popen_fork, popen_spawn_posix, popen_forkserver
    print('Popen classes', all(isinstance(m.Popen, type)
                               for m in (popen_fork, popen_spawn_posix, popen_forkserver)))
    print('context.reducer is reduction', multiprocessing.context._default_context.reducer
          is reduction)
    print('HAVE_SEND_HANDLE', reduction.HAVE_SEND_HANDLE)
    print('AbstractReducer', reduction.AbstractReducer.ForkingPickler is reduction.ForkingPickler)
    print('resource_sharer.stop', resource_sharer.stop(timeout=1))

    print('-- heap')
    w = heap.BufferWrapper(struct.calcsize('i'))
    mv = w.create_memoryview()
    print('view', len(mv), type(mv).__name__)
    mv.cast('i')[0] = 37
    w2 = heap.BufferWrapper(10)
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=heap_child, args=(w, q_in, q_out))
    p.start()
    q_in.put(w2)
    print(q_out.get(timeout=30))
    p.join()
    print('parent sees', mv.cast('i')[0], bytes(w2.create_memoryview()[:3]))
    h = heap.Heap()
    blocks = [h.malloc(n) for n in (1, 100, 5000)]
    print('malloc sizes', [stop - start for (_, start, stop) in blocks],
          'arenas', len(h._arenas) > 0)
    for b in blocks:
        h.free(b)
    print('frees', h._n_frees, 'mallocs', h._n_mallocs)
    attempt('BufferWrapper(-1)', lambda: heap.BufferWrapper(-1))

    print('-- reduction')
    reduction.register(Point, _reduce_point)
    data = reduction.ForkingPickler.dumps(Point(1, 2))
    print('dumps type', type(data).__name__)
    back = reduction.ForkingPickler.loads(data)
    print('loads', back.x, back.y, back.via)
    part = reduction.ForkingPickler.loads(
        reduction.ForkingPickler.dumps(functools.partial(square, 7)))
    print('partial', part())
    meth = reduction.ForkingPickler.loads(reduction.ForkingPickler.dumps([3, 1, 2].index))
    print('bound method', meth(2))
    import io
    buf = io.BytesIO()
    reduction.dump({'a': Point(5, 6)}, buf)
    print('dump', reduction.ForkingPickler.loads(buf.getvalue())['a'].via)
    attempt('plain pickle refuses', lambda: __import__('pickle').dumps(Point(0, 0)))
    q = ctx.Queue()
    a, b = ctx.Pipe()
    p = ctx.Process(target=point_child, args=(q, b))
    p.start()
    q.put(Point(3, 4))
    a.send(Point(8, 9))
    print(a.recv())
    p.join()

    print('-- DupFd and send_handle')
    r, wfd = os.pipe()
    a, b = ctx.Pipe()
    p = ctx.Process(target=dupfd_child, args=(reduction.DupFd(wfd), b))
    p.start()
    print(a.recv())
    p.join()
    os.close(wfd)
    print(os.read(r, 100))
    os.close(r)
    a, b = ctx.Pipe()
    p = ctx.Process(target=send_handle_child, args=(b,))
    p.start()
    fd = reduction.recv_handle(a)
    p.join()
    print(os.read(fd, 100))
    os.close(fd)

    print('-- SharedMemoryManager')
    smm = managers.SharedMemoryManager()
    attempt('before start', lambda: smm.SharedMemory(size=9))
    smm.start()
    shm = smm.SharedMemory(size=64)
    shm.buf[:5] = b'hello'
    sl = smm.ShareableList([1, 'two', 3.0])
    print('sizes', shm.size >= 64, len(sl), sl._get_packing_format(1), sl.format)
    again = shared_memory.SharedMemory(name=shm.name)
    print('attached', bytes(again.buf[:5]))
    again.close()
    q = ctx.Queue()
    p = ctx.Process(target=smm_child, args=(sl.shm.name, q))
    p.start()
    print('child list', q.get(timeout=30))
    p.join()
    print('parent list', list(sl))
    conn = smm._Client(smm.address, authkey=smm._authkey)
    names = managers.dispatch(conn, None, 'list_segments')
    conn.close()
    print('tracked', sorted(names) == sorted([shm.name, sl.shm.name]))
    held = [shm.name, sl.shm.name]
    shm.close()
    sl.shm.close()
    smm.shutdown()
    for name in held:
        gone('after shutdown', lambda: shared_memory.SharedMemory(name=name))
    with managers.SharedMemoryManager() as smm2:
        sl2 = smm2.ShareableList('abc')
        print('with', list(sl2))
        held = sl2.shm.name
        sl2.shm.close()
    gone('after with', lambda: shared_memory.ShareableList(name=held))

    print('-- private names')
    a, b = ctx.Pipe()
    print('Connection._handle', a._handle == a.fileno())
    a.close()
    b.close()
    from multiprocessing import resource_tracker, process, forkserver
    print('_CLEANUP_FUNCS has shared_memory', 'shared_memory' in resource_tracker._CLEANUP_FUNCS)
    print('_USE_POSIX', shared_memory._USE_POSIX)
    print('_forkserver has ensure_running', callable(forkserver._forkserver.ensure_running))
    p = ctx.Process(target=square, args=(2,))
    p.start()
    print('_dangling has it', p in process._dangling)
    p.join()
    with ctx.Pool(2) as pool:
        print('Pool._pool', len(pool._pool))
        pool._repopulate_pool()
        print('after _repopulate_pool', len(pool._pool), pool.map(square, [1, 2, 3]))


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
