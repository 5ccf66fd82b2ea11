"""__main__ functions and classes, where CPython can send them: top-level ones (by reference
under every start method: the worker's own object, its own module globals), and under fork
main-block ones defined before the pool (the worker's forked object of that name, even after
the parent redefines it) and objects a worker sends back (the parent's own)."""
import multiprocessing
import sys

LEVEL = 'module'


def set_level(v):
    global LEVEL
    LEVEL = v


def level(_):
    return LEVEL


def echo(x):
    return x


def give_top(_):
    return level, Shape


class Shape:
    def __init__(self, n):
        self.n = n

    def area(self):
        return self.n * self.n


def describe(s):
    return type(s).__name__, s.area(), isinstance(s, Shape)


if __name__ == '__main__':
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    LEVEL = 'parent, changed'
    with ctx.Pool(1, initializer=set_level, initargs=('worker',)) as pool:
        print('levels', pool.map(level, range(3)))
        print('shapes', pool.map(describe, [Shape(2), Shape(3)]))
        f, cls = pool.apply(give_top, (0,))
        print('back', f is level, cls is Shape)
        r = pool.apply(echo, (Shape(4),))
        print('echo', type(r) is Shape, r.area())
    q = ctx.Queue()
    p = ctx.Process(target=q.put, args=((level, Shape, Shape(5)),))
    p.start()
    got = q.get(timeout=60)
    p.join()
    print('queue', got[0] is level, got[1] is Shape, type(got[2]) is Shape, got[2].area())
    if method == 'fork':
        def twice(x):
            return 2 * x

        class Box:
            def __init__(self, v):
                self.v = v

        def unbox(b):
            return type(b).__name__, b.v

        with ctx.Pool(1) as pool:
            print('main block', pool.map(twice, range(3)), pool.apply(unbox, (Box(7),)))
            back = pool.apply(echo, (twice,))
            print('main block back', back is twice)

            def twice(x):
                return 3 * x
            # Sent by reference as CPython sends it: the worker's (forked) twice.
            print('redefined', pool.map(twice, range(3)))
