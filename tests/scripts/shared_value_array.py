"""Value, Array, RawValue, RawArray and multiprocessing.sharedctypes: every
typecode, reprs of the wrappers and values, get_lock/get_obj, lock=False /
a given lock / a bad lock, indexing, negative indices, slices and slice
assignment, len and iteration, char arrays' value/raw, ctypes-style
conversions and their errors (integers wrap to the type's width), and memory
really shared: children write, the parent reads without any message."""
import multiprocessing
import multiprocessing.sharedctypes as sharedctypes
import sys

from _check import attempt


def child_writes(v, arr, raw, s, done):
    v.value = 123
    for i in range(len(arr)):
        arr[i] = arr[i] * 10
    raw[0] = 2.5
    s.value = b'from child'
    done.set()


def add_under_lock(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    for code, init in [('b', -3), ('B', 250), ('h', -300), ('H', 60000), ('i', -7), ('I', 7),
                       ('l', -2 ** 40), ('L', 2 ** 40), ('q', -2 ** 62), ('Q', 2 ** 63),
                       ('f', 1.5), ('d', 0.1), ('c', b'x'), ('u', 'y')]:
        v = multiprocessing.Value(code, init)
        print(code, v, v.value, repr(v.get_obj()), multiprocessing.RawValue(code))

    v = multiprocessing.Value('i')
    print('default:', v.value, type(v).__name__, type(v.get_lock()).__name__)
    v.value = 2 ** 32 + 5
    print('wraps:', v.value)
    v.value = -1
    u = multiprocessing.Value('I', -1)
    print('unsigned -1:', u.value)
    b = multiprocessing.Value('b', 200)
    print('byte 200:', b.value)
    attempt('float into int', lambda: setattr(v, 'value', 1.5))
    attempt('str into double', lambda: setattr(multiprocessing.Value('d'), 'value', 'x'))
    attempt('two bytes into char', lambda: multiprocessing.Value('c', b'ab'))
    attempt('bytes into wchar', lambda: multiprocessing.Value('u', b'a'))
    d = multiprocessing.Value('d', 3)
    print('int into double:', d.value)
    f = multiprocessing.Value('f', 0.1)
    print('float32:', f.value)
    c = multiprocessing.Value('c', 65)
    print('char from int:', c.value)

    raw = multiprocessing.Value('i', 5, lock=False)
    print('lock=False:', raw, raw.value)
    lk = multiprocessing.Lock()
    given = multiprocessing.Value('i', 1, lock=lk)
    print('given lock:', given.get_lock() is lk, given)
    attempt('bad lock', lambda: multiprocessing.Value('i', 1, lock='no'))
    with given:
        print('with wrapper holds lock:', lk)
    print('acquire/release:', given.acquire(), given.release())

    arr = multiprocessing.Array('i', [1, 2, 3, 4, 5])
    print('array:', len(arr), arr[0], arr[-1], arr[1:3], arr[:], list(arr), arr[::2])
    arr[0] = 10
    arr[1:3] = [20, 30]
    print('assigned:', arr[:])
    attempt('slice size', lambda: arr.__setitem__(slice(0, 2), [1]))
    attempt('index 5', lambda: arr[5])
    attempt('set index -6', lambda: arr.__setitem__(-6, 0))
    attempt('set str', lambda: arr.__setitem__(0, 'x'))
    print('zeros:', multiprocessing.Array('d', 3)[:], multiprocessing.RawArray('h', 2)[:])
    print('from range:', multiprocessing.RawArray('q', range(4))[:])
    print('sum:', sum(arr), 10 in list(arr), type(arr).__name__)

    s = multiprocessing.Array('c', b'hello')
    print('chars:', type(s).__name__, s.value, s.raw, s[0], s[1:3], len(s))
    s.value = b'hi'
    print('value hi:', s.value, s.raw)
    attempt('value too long', lambda: setattr(s, 'value', b'toolong'))
    s5 = multiprocessing.Array('c', 5)
    print('Array(c, 5):', s5.raw, s5.value)
    w = multiprocessing.RawArray('u', 'abc')
    print('wchars:', w[:], w[1], len(w))

    # Children write; the parent reads the same memory.
    v = multiprocessing.Value('i', 0)
    arr = multiprocessing.Array('d', [1.0, 2.0, 3.0])
    rv = multiprocessing.RawArray('d', 1)
    s = multiprocessing.Array('c', 16)
    done = multiprocessing.Event()
    p = multiprocessing.Process(target=child_writes, args=(v, arr, rv, s, done))
    p.start()
    print('child done:', done.wait(10))
    print('seen by parent:', v.value, arr[:], rv[:], s.value)
    p.join()

    total = multiprocessing.Value('i', 0)
    procs = [multiprocessing.Process(target=add_under_lock, args=(total, 1500)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print('4 x 1500 under get_lock():', total.value)

    import ctypes
    cd = multiprocessing.Value(ctypes.c_double, 2.5)
    ca = multiprocessing.Array(ctypes.c_short, [1, -1])
    print('ctypes types:', cd, cd.value, ca[:], multiprocessing.RawValue(ctypes.c_ubyte, 3))

    cp = sharedctypes.copy(multiprocessing.RawArray('i', [7, 8]))
    print('copy:', cp[:])
    sync = sharedctypes.synchronized(multiprocessing.RawValue('i', 9))
    print('synchronized:', sync, sync.value)
    a, c2 = multiprocessing.Pipe()
    attempt('send Value', lambda: a.send(multiprocessing.Value('i')))
