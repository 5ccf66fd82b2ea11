"""Every kind of callable CPython's pickle can send works as a pool task: builtins bound to an
object (`d.get`, `str.format` of an instance, `", ".join`, `dict.fromkeys`), method
descriptors, operator getters, partials, bound methods of instances, class and static methods.
(procpy first sent bound builtins by name and failed: found by review.)"""
import functools
import operator
import sys
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return x * self.k

    @classmethod
    def make(cls, k):
        return cls(k).k

    @staticmethod
    def neg(x):
        return -x


def main(method):
    mp.set_start_method(method)
    d = {'a': 1, 'b': 2}
    tests = [
        ('dict.get bound', d.get, ['a', 'z']),
        ('str.format bound', 'x-{}'.format, [1, 2]),
        ('str.join bound', ', '.join, [['a', 'b']]),
        ('list.count bound', [1, 1, 2].count, [1, 2]),
        ('bytes.hex bound', b'ab'.hex, []),
        ('dict.fromkeys', dict.fromkeys, [('x', 'y')]),
        ('int.from_bytes', functools.partial(int.from_bytes, byteorder='big'), [b'\x01\x00']),
        ('list.__getitem__ bound', [10, 20].__getitem__, [0, 1]),
        ('int.__add__ bound', (5).__add__, [1]),
        ('method descriptor', str.upper, ['a']),
        ('itemgetter', operator.itemgetter(0), [(1, 2)]),
        ('attrgetter', operator.attrgetter('real'), [3]),
        ('methodcaller', operator.methodcaller('split', ','), ['a,b']),
        ('partial with keywords', functools.partial(int, base=2), ['101']),
        ('a type', complex, [1]),
        ('bound method of an instance', Scaler(3).scale, [1, 2]),
        ('classmethod', Scaler.make, [4]),
        ('staticmethod', Scaler.neg, [5]),
    ]
    with mp.Pool(1) as p:
        for name, f, xs in tests:
            if not xs:
                print(name, p.apply(f))
                continue
            print(name, p.map(f, xs))
    q = mp.Queue()
    q.put(d.get)
    print('through a Queue:', q.get(timeout=30)('b'))
    with ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        print('executor:', list(ex.map(d.get, ['a', 'b'])), ex.submit(', '.join, ['p', 'q']).result())


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
