"""multiprocessing.Pool basics: apply/apply_async, map (chunksize, empty
input), starmap/starmap_async, imap (ordered, chunksize), imap_unordered
(printed sorted), map_async and apply_async callbacks (run in the parent),
the context manager, close()+join(), results of many types, builtins and
module-level functions as tasks."""
import multiprocessing
import sys


def square(x):
    return x * x


def add(a, b):
    return a + b


def kw(a, b=0, *, c=0):
    return (a, b, c)


def nothing():
    return None


def kinds(i):
    return [None, (i, 'a', (2.5,)), {'k': i, 'nested': [1, {2: 3}]},
            2 ** 100 + i, b'\x00\xff' * 3, 'h\u00e9llo', [1.5, -0.0],
            frozenset([i]), True][i]


def big_list(n):
    return list(range(n))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    pool = multiprocessing.Pool(2)
    print('apply:', pool.apply(square, (7,)))
    print('apply kwds:', pool.apply(kw, (1,), {'b': 2, 'c': 3}))
    print('apply no args:', pool.apply(nothing))
    r = pool.apply_async(add, (2, 3))
    print('apply_async get:', r.get(timeout=10))
    print('map:', pool.map(square, range(10)))
    print('map chunksize=3:', pool.map(square, range(10), chunksize=3))
    print('map chunksize=100:', pool.map(square, range(5), 100))
    print('map empty list:', pool.map(square, []))
    print('map over a generator:', pool.map(square, (i for i in range(4))))
    print('map builtin len:', pool.map(len, ['', 'a', 'ab', [1, 2, 3], b'xyzw']))
    print('map builtin abs:', pool.map(abs, [-3, 4, -5.5]))
    print('starmap:', pool.starmap(add, [(1, 2), (3, 4), ('a', 'b'), ([1], [2])]))
    print('starmap chunksize=2:', pool.starmap(pow, [(2, 10), (3, 3), (5, 0)], 2))
    r = pool.starmap_async(add, [(10, 1), (20, 2)])
    print('starmap_async:', r.get(timeout=10))
    print('imap:', list(pool.imap(square, range(8))))
    print('imap chunksize=3:', list(pool.imap(square, range(8), chunksize=3)))
    it = pool.imap(square, [5, 6, 7])
    print('imap next():', next(it), it.next(timeout=10), next(it))
    try:
        next(it)
    except StopIteration:
        print('imap exhausted: StopIteration')
    print('imap_unordered sorted:', sorted(pool.imap_unordered(square, range(8))))
    print('imap_unordered chunksize=2 sorted:',
          sorted(pool.imap_unordered(square, range(9), chunksize=2)))
    print('imap empty:', list(pool.imap(square, [])), list(pool.imap_unordered(square, [])))

    got = []
    r = pool.map_async(square, [1, 2, 3], callback=got.append)
    print('map_async get:', r.get(timeout=10))
    r.wait(10)
    print('map_async callback got:', got)

    got = []
    r = pool.starmap_async(add, [(1, 1)], callback=got.append)
    r.get(timeout=10)
    print('starmap_async callback got:', got)

    got, errs = [], []
    r = pool.apply_async(square, (9,), callback=got.append, error_callback=errs.append)
    print('apply_async with callbacks:', r.get(timeout=10))
    print('callback got:', got, 'error_callback got:', errs)

    results = [pool.apply_async(kinds, (i,)) for i in range(9)]
    for r in results:
        v = r.get(timeout=10)
        print('result kind:', type(v).__name__, repr(v))
    print('tuple from map:', pool.map(kw, [1, 2]))
    print('large result:', sum(pool.apply(big_list, (200000,))))
    many = [pool.apply_async(square, (i,)) for i in range(200)]
    print('200 apply_async:', sum(r.get(timeout=10) for r in many))

    pool.close()
    pool.join()
    print('close+join done')

    with multiprocessing.Pool(processes=None) as p:
        print('Pool(processes=None) works:', p.map(square, [1, 2, 3]))

    with multiprocessing.Pool(processes=2) as p:
        print('context manager returns the pool:', isinstance(p, multiprocessing.pool.Pool))
        print('inside with:', p.apply(add, ('x', 'y')))

    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(1) as p:
        print('ctx.Pool(1):', p.map(square, range(4)))
    with multiprocessing.pool.Pool(2, context=ctx) as p:
        print('pool.Pool(context=ctx):', p.starmap(add, [(1, 2)]))
    print('done')
