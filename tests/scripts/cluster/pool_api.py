"""The Pool API a script moving to a cluster uses, printed deterministically: run by
tests/all/cluster.rs under python3, under procpy (local pool) and under `procpy --cluster URL`
(the same pool on cluster workers); the three stdouts must be identical. Uses only what a
cluster pool offers (no Pipes or locks handed to workers, no pids or worker names printed)."""
import multiprocessing
import multiprocessing.pool
import os

import cluster_helper

_setting = 'module default'
_init_calls = 0


def init(value):
    global _setting, _init_calls
    _setting = value
    _init_calls += 1


def read_setting(_=None):
    return (_setting, _init_calls)


def square(x):
    return x * x


def add(a, b):
    return a + b


def kw(a, b=0, *, c=0):
    return (a, b, c)


def fail_value(x):
    raise ValueError('bad', x)


class CustomError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.code = code


def fail_custom(x):
    raise CustomError('custom', x)


def fail_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x


def my_pid(_=None):
    return os.getpid()


class Point:
    """A class of the main module: instances travel by reference to it."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm1(self):
        return abs(self.x) + abs(self.y)

    def __repr__(self):
        return 'Point(%d, %d)' % (self.x, self.y)


def make_point(i):
    return Point(i, -i)


def point_norm(p):
    return p.norm1()


def show_exc(label, e):
    cause = e.__cause__
    print(label, type(e).__name__, e.args, getattr(e, 'code', None))
    print('  cause:', '%s.%s' % (type(cause).__module__, type(cause).__name__),
          'has traceback header:', 'Traceback (most recent call last)' in str(cause))
    # The remote traceback names the function and quotes its source line, as CPython's does
    # (on a cluster the worker has the source only from the shipped bundle).
    print('  cause names the function:', e.__traceback__ is not None and any(
        name in str(cause) for name in ('fail_value', 'fail_custom', 'fail_on_three')),
        'quotes the raise line:', 'raise ' in str(cause))


if __name__ == '__main__':
    pool = multiprocessing.Pool(2)
    print('apply:', pool.apply(square, (7,)))
    print('apply kwds:', pool.apply(kw, (1,), {'b': 2, 'c': 3}))
    r = pool.apply_async(add, (2, 3))
    print('apply_async get:', r.get(timeout=60), r.ready(), r.successful())
    print('map:', pool.map(square, range(10)))
    print('map chunksize=3:', pool.map(square, range(10), chunksize=3))
    print('map chunksize=100:', pool.map(square, range(5), 100))
    print('map empty:', pool.map(square, []))
    print('map generator:', pool.map(square, (i for i in range(4))))
    print('map builtin:', pool.map(len, ['', 'a', 'ab', [1, 2, 3]]))
    print('map 1000 sum:', sum(pool.map(square, range(1000))))
    print('starmap:', pool.starmap(add, [(1, 2), (3, 4), ('a', 'b'), ([1], [2])]))
    print('starmap_async:', pool.starmap_async(add, [(10, 1), (20, 2)]).get(timeout=60))
    print('imap:', list(pool.imap(square, range(8))))
    print('imap chunksize=3:', list(pool.imap(square, range(8), chunksize=3)))
    it = pool.imap(square, [5, 6, 7])
    print('imap next:', next(it), it.next(timeout=60), next(it))
    try:
        next(it)
    except StopIteration:
        print('imap exhausted: StopIteration')
    print('imap_unordered sorted:', sorted(pool.imap_unordered(square, range(8))))
    print('imap_unordered chunksize=2 sorted:',
          sorted(pool.imap_unordered(square, range(9), chunksize=2)))

    got = []
    r = pool.map_async(square, [1, 2, 3], callback=got.append)
    print('map_async:', r.get(timeout=60), 'callback got:', got)
    got = []
    r = pool.apply_async(square, (9,), callback=got.append)
    r.wait(60)
    print('apply_async callback got:', got)
    errs = []
    r = pool.apply_async(fail_value, (1,), error_callback=errs.append)
    r.wait(60)
    print('error_callback got:', [(type(e).__name__, e.args) for e in errs], r.successful())
    errs = []
    r = pool.map_async(fail_on_three, range(5), error_callback=errs.append)
    r.wait(60)
    print('map_async error_callback got:', [(type(e).__name__, e.args) for e in errs])

    try:
        pool.apply(fail_value, (5,))
    except ValueError as e:
        show_exc('apply raised:', e)
    try:
        pool.apply(fail_custom, (7,))
    except CustomError as e:
        show_exc('custom raised:', e)
    try:
        pool.map(fail_on_three, range(6))
    except KeyError as e:
        show_exc('map raised:', e)
    it = pool.imap(fail_on_three, range(6))
    out = []
    while True:
        try:
            out.append(next(it))
        except StopIteration:
            break
        except KeyError as e:
            out.append('KeyError%r' % (e.args,))
    print('imap around a failure:', out)

    print('main-module class by reference:', pool.map(make_point, range(3)),
          pool.map(point_norm, [Point(1, 2), Point(-3, 4)]))
    print('helper module:', pool.map(cluster_helper.shout, ['a', 'b']),
          pool.map(cluster_helper.boxed, [1, 2]))

    pool.close()
    try:
        pool.apply(square, (1,))
    except ValueError as e:
        print('after close:', e)
    pool.join()
    print('closed and joined')

    with multiprocessing.Pool(2) as p:
        print('with block:', p.map(square, [4, 5]))
    try:
        p.map(square, [1])
    except ValueError as e:
        print('after the with block:', e)

    p = multiprocessing.Pool(2)
    print('before terminate:', p.apply(add, (1, 1)))
    p.terminate()
    p.join()
    print('terminated and joined')

    with multiprocessing.Pool(2, initializer=init, initargs=('from initializer',)) as p:
        print('initializer state seen by tasks:', sorted(set(p.map(read_setting, range(8)))))
    with multiprocessing.Pool(1, init, ('positional',)) as p:
        print('positional initializer:', p.apply(read_setting))

    with multiprocessing.Pool(2, maxtasksperchild=1) as p:
        pids = p.map(my_pid, range(6), chunksize=1)
        print('maxtasksperchild=1: distinct processes for 6 tasks:', len(set(pids)))
    with multiprocessing.Pool(2, maxtasksperchild=3) as p:
        print('maxtasksperchild=3 results:', p.map(square, range(9), chunksize=1))
