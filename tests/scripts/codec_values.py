"""Round-trips every kind of picklable value parent -> child -> parent,
once through a Pipe and once through a pair of Queues, and prints the repr
and type of what came back plus identity checks (shared references,
self-references, functions/classes/builtins by reference, __getstate__ /
__setstate__ and __reduce__ hooks, exceptions with args)."""
import multiprocessing
import sys


def double(x):
    return 2 * x


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __repr__(self):
        return 'Point(%r, %r)' % (self.x, self.y)


class Stateful:
    """Drops its cache when pickled and counts unpicklings."""

    def __init__(self, value):
        self.value = value
        self.cache = {'expensive': True}
        self.hops = 0

    def __getstate__(self):
        state = self.__dict__.copy()
        del state['cache']
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.cache = None
        self.hops += 1

    def __repr__(self):
        return 'Stateful(value=%r, cache=%r, hops=%r)' % (self.value, self.cache, self.hops)


def make_reduced(a, b):
    return Reduced(a, b, rebuilt=True)


class Reduced:
    def __init__(self, a, b, rebuilt=False):
        self.a = a
        self.b = b
        self.rebuilt = rebuilt

    def __reduce__(self):
        return (make_reduced, (self.a, self.b))

    def __repr__(self):
        return 'Reduced(%r, %r, rebuilt=%r)' % (self.a, self.b, self.rebuilt)


class MyError(Exception):
    pass


def values():
    a = ['shared']
    selfref = [1, 2]
    selfref.append(selfref)
    selfdict = {'k': 'v'}
    selfdict['me'] = selfdict
    nan = float('nan')
    return [
        ('None', None),
        ('True', True),
        ('False', False),
        ('zero', 0),
        ('small int', -5),
        ('big int', 2 ** 100),
        ('big negative int', -(2 ** 64) - 1),
        ('huge int', 10 ** 60 + 7),
        ('float', 0.1),
        ('negative zero', -0.0),
        ('float max', 1.7976931348623157e308),
        ('tiny float', 5e-324),
        ('inf', float('inf')),
        ('-inf', float('-inf')),
        ('nan', nan),
        ('complex', complex(1.5, -2)),
        ('empty str', ''),
        ('ascii str', 'hello'),
        ('non-ascii str', 'héllo wörld ✓ 日本語 🐍'),
        ('str with NUL and newline', 'a\x00b\nc'),
        ('empty bytes', b''),
        ('bytes', bytes(range(0, 256, 17))),
        ('bytearray', bytearray(b'mutable\xff')),
        ('empty tuple', ()),
        ('nested tuple', (1, (2, (3, ())), 'x')),
        ('list', [1, 'a', None, [2.5, [b'z']]]),
        ('dict (insertion order)', {'b': 1, 'a': 2, 3: 'c', (4, 5): [6], None: True}),
        ('set of ints', {3, 1, 2, 2 ** 70}),
        ('frozenset of ints', frozenset({10, 20, 30})),
        ('range', range(1, 20, 3)),
        ('slice', slice(1, None, -2)),
        ('Ellipsis', ...),
        ('NotImplemented', NotImplemented),
        ('function', double),
        ('class', Point),
        ('builtin function', len),
        ('builtin type', dict),
        ('instance', Point(1, [2])),
        ('getstate/setstate', Stateful(42)),
        ('__reduce__', Reduced('a', 2)),
        ('exception', ValueError('bad value', 42)),
        ('exception no args', KeyError()),
        ('custom exception', MyError('custom', {'x': 1})),
        ('OSError subclass', FileNotFoundError(2, 'No such file or directory')),
        ('shared refs', [a, a]),
        ('self-referential list', selfref),
        ('self-referential dict', selfdict),
        ('nan in a list twice', [nan, nan]),
    ]


def checks(label, orig, back):
    out = []
    if label == 'function':
        out.append('is double: %s, call: %r' % (back is double, back(21)))
    elif label == 'class':
        out.append('is Point: %s' % (back is Point))
    elif label == 'builtin function':
        out.append('is len: %s' % (back is len))
    elif label == 'builtin type':
        out.append('is dict: %s' % (back is dict))
    elif label in ('None', 'True', 'False', 'Ellipsis', 'NotImplemented'):
        out.append('same singleton: %s' % (back is orig))
    elif label == 'instance':
        out.append('type is Point: %s' % (type(back) is Point))
    elif label == 'shared refs':
        out.append('x[0] is x[1]: %s' % (back[0] is back[1]))
    elif label == 'self-referential list':
        out.append('x[2] is x: %s' % (back[2] is back))
    elif label == 'self-referential dict':
        out.append("x['me'] is x: %s" % (back['me'] is back))
    elif label == 'nan in a list twice':
        out.append('x[0] != x[0]: %s' % (back[0] != back[0]))
    elif isinstance(orig, BaseException):
        out.append('args: %r, type: %s' % (back.args, type(back).__name__))
    if label not in ('None', 'nan', 'nan in a list twice', 'self-referential list',
                     'self-referential dict', 'getstate/setstate', '__reduce__',
                     'instance') and not isinstance(orig, BaseException):
        out.append('equal: %s' % (back == orig))
    return out


def pipe_echo(conn):
    while True:
        msg = conn.recv()
        if msg[0] == 'stop':
            break
        conn.send(msg[1])
    conn.close()


def queue_echo(q_in, q_out):
    while True:
        msg = q_in.get()
        if msg[0] == 'stop':
            break
        q_out.put(msg[1])


def report_args(q, *args, **kwargs):
    q.put((args, sorted(kwargs.items())))


def stable_repr(x, _seen=()):
    # no addresses (functions) and no hash-table iteration order (sets)
    if id(x) in _seen:
        return '[...]'
    if isinstance(x, (set, frozenset)):
        return '%s(%r)' % (type(x).__name__, sorted(x))
    if callable(x) and hasattr(x, '__qualname__') and not isinstance(x, BaseException):
        return '<%s %s>' % (type(x).__name__, x.__qualname__)
    if isinstance(x, tuple):
        inner = ', '.join(stable_repr(i, _seen + (id(x),)) for i in x)
        return '(' + inner + (',)' if len(x) == 1 else ')')
    if isinstance(x, list):
        return '[' + ', '.join(stable_repr(i, _seen + (id(x),)) for i in x) + ']'
    return repr(x)


def show(channel, label, orig, back):
    # RustPython calls Ellipsis's type 'EllipsisType' (CPython 3.11: 'ellipsis'); not ours to change.
    tname = 'ellipsis' if back is Ellipsis else type(back).__name__
    print('%s | %s | %s | %s' % (channel, label, tname, stable_repr(back)))
    for line in checks(label, orig, back):
        print('%s | %s |   %s' % (channel, label, line))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=pipe_echo, args=(child_conn,))
    p.start()
    for label, v in values():
        parent_conn.send(('item', v))
        show('pipe', label, v, parent_conn.recv())
    parent_conn.send(('stop',))
    p.join()
    print('pipe echo exitcode:', p.exitcode)

    q_in = multiprocessing.Queue()
    q_out = multiprocessing.Queue()
    p = multiprocessing.Process(target=queue_echo, args=(q_in, q_out))
    p.start()
    for label, v in values():
        q_in.put(('item', v))
        show('queue', label, v, q_out.get(timeout=10))
    q_in.put(('stop',))
    p.join()
    print('queue echo exitcode:', p.exitcode)

    # values as Process arguments (pickled under spawn/forkserver, inherited
    # under fork), sent back through a Queue
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=report_args,
                                args=(q, Point(3, 4), double, [1, {2: 'two'}], 2 ** 80),
                                kwargs={'r': Reduced('k', 9), 's': 'ß'})
    p.start()
    print('via Process args:', stable_repr(q.get(timeout=10)))
    p.join()
