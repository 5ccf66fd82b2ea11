"""What only procpy's pool sends (CPython's pickle refuses these): lambdas, closures, and
functions and classes defined under the main guard. Run by tests/all/cluster.rs under procpy
(local pool) and `procpy --cluster URL`; the two stdouts must be identical."""
import multiprocessing

import cluster_helper


def top_level(x):
    return x + 1


if __name__ == '__main__':
    offset = 100

    def in_guard(x):
        return x * 3

    def closure(x):
        return x + offset

    class Guarded:
        def __init__(self, v):
            self.v = v

        def double(self):
            return Guarded(self.v * 2)

        def __repr__(self):
            return 'Guarded(%r)' % (self.v,)

    def use_guarded(g):
        return g.double()

    with multiprocessing.Pool(2) as pool:
        print('lambda:', pool.map(lambda x: x * x, range(5)))
        print('closure:', pool.map(closure, range(3)))
        print('guard function:', pool.map(in_guard, range(3)))
        print('guard class instances:', pool.map(use_guarded, [Guarded(1), Guarded('a')]))
        print('lambda calling the helper module:',
              pool.map(lambda w: cluster_helper.shout(w) * 2, ['hi']))
        print('top level with a lambda key:', sorted(pool.map(top_level, [3, 1, 2]), key=lambda v: -v))
        print('apply_async lambda:', pool.apply_async(lambda a, b: a - b, (10, 4)).get(timeout=60))
