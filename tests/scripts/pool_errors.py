"""multiprocessing.Pool errors: worker exceptions re-raised in the parent
(type, args, extra attributes, __cause__ RemoteTraceback), error_callback,
map/imap with a failing item, get(timeout) -> multiprocessing.TimeoutError on
a task held back by the parent (through a Pipe handed to the worker by the
initializer), successful() before ready, join() while running, everything
after close() -> 'Pool not running', bad Pool arguments, unpicklable
arguments and results (the pool keeps working afterwards)."""
import multiprocessing
import re
import sys
import threading

from _check import attempt


class CustomError(Exception):
    def __init__(self, msg, code, extra=None):
        super().__init__(msg, code, extra)
        self.code = code
        self.extra = extra


def square(x):
    return x * x


def fail_value(*args):
    raise ValueError('bad', 3)


def fail_custom():
    raise CustomError('custom failure', 42, extra={'k': [1, 2]})


def fail_key():
    return {}['missing']


def fail_on_three(x):
    if x == 3:
        raise ZeroDivisionError('item %d' % x)
    return x * 10


def identity(x):
    return x


def make_generator():
    return (i for i in range(3))


def generator_if_odd(i):
    return (i for i in range(3)) if i % 2 else i


_conn = None


def set_conn(conn):
    global _conn
    _conn = conn


def wait_for_parent():
    return 'released with %r' % (_conn.recv(),)


def no_addr(s):
    return re.sub(r'0x[0-9a-fA-F]+', '0x...', str(s))


def type_only(fn):
    try:
        return 'ok %r' % (fn(),)
    except Exception as exc:
        return type(exc).__name__


def attempt_type(label, fn):
    print(label + ':', type_only(fn))


def show_remote(label, fn):
    try:
        fn()
    except Exception as e:
        cause = e.__cause__
        print('%s: raised %s %r' % (label, type(e).__name__, e.args))
        print('  cause: %s.%s' % (type(cause).__module__, type(cause).__name__))
        print('  cause has traceback header:', 'Traceback (most recent call last)' in str(cause))
        return e
    else:
        print('%s: no exception' % label)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    pool = multiprocessing.Pool(2)

    attempt('join() while running', pool.join)

    # worker exceptions come back with their type and args
    e = show_remote('apply ValueError', lambda: pool.apply(fail_value, (1,)))
    print('  cause names the function:', 'fail_value' in str(e.__cause__))
    e = show_remote('apply_async CustomError', lambda: pool.apply_async(fail_custom).get(10))
    print('  custom attributes:', type(e) is CustomError, e.code, e.extra)
    print('  cause names the function:', 'fail_custom' in str(e.__cause__))
    e = show_remote('apply KeyError', lambda: pool.apply(fail_key))
    print('  str:', str(e), 'is KeyError:', isinstance(e, KeyError))

    # error_callback receives the exception (before get() returns)
    got, errs = [], []
    r = pool.apply_async(fail_value, callback=got.append, error_callback=errs.append)
    attempt('apply_async get', lambda: r.get(10))
    print('callback:', got, 'error_callback:', [(type(x).__name__, x.args) for x in errs])
    print('ready/successful after failure:', r.ready(), r.successful())
    errs = []
    r = pool.map_async(fail_on_three, range(5), error_callback=errs.append)
    attempt('map_async get', lambda: r.get(10))
    print('map_async error_callback:', [repr(x) for x in errs])

    # map with one failing element raises that exception
    attempt('map with a failing item', lambda: pool.map(fail_on_three, range(6)))
    attempt('map chunksize=2 failing', lambda: pool.map(fail_on_three, range(6), chunksize=2))
    attempt('starmap failing', lambda: pool.starmap(fail_value, [(1,), (2,)]))

    # imap (chunksize 1): results up to the failing item, the error, then the rest
    it = pool.imap(fail_on_three, range(6))
    outcomes = []
    while True:
        try:
            outcomes.append(next(it))
        except StopIteration:
            break
        except ZeroDivisionError as exc:
            outcomes.append('raised ZeroDivisionError(%r)' % str(exc))
    print('imap outcomes:', outcomes)
    # imap with chunksize=2: the failing chunk ends the iteration
    it = pool.imap(fail_on_three, range(6), chunksize=2)
    outcomes = []
    while True:
        try:
            outcomes.append(next(it))
        except StopIteration:
            outcomes.append('StopIteration')
            break
        except ZeroDivisionError as exc:
            outcomes.append('raised ZeroDivisionError(%r)' % str(exc))
    print('imap chunksize=2 outcomes:', outcomes)
    attempt('imap_unordered failing', lambda: sorted(pool.imap_unordered(fail_on_three, [3])))

    # unpicklable arguments: get() raises, the pool keeps working
    attempt_type('apply_async(lock) get', lambda: pool.apply_async(identity, (threading.Lock(),)).get(10))
    attempt_type('apply_async(generator) get',
                 lambda: pool.apply_async(identity, ((i for i in range(2)),)).get(10))
    attempt_type('map with a lock item', lambda: pool.map(identity, [1, threading.Lock()]))
    print('pool still works:', pool.map(square, range(4)))

    # unpicklable result: MaybeEncodingError, the pool keeps working
    attempt_type('generator result', lambda: pool.apply(make_generator))
    try:
        pool.apply(make_generator)
    except multiprocessing.pool.MaybeEncodingError as exc:
        print('MaybeEncodingError is an Exception:', isinstance(exc, Exception))
    attempt_type('map with a generator result', lambda: pool.map(generator_if_odd, [0, 1]))
    print('pool still works:', pool.apply(square, (12,)))

    pool.close()
    for name, call in [('apply', lambda: pool.apply(square, (1,))),
                       ('apply_async', lambda: pool.apply_async(square, (1,))),
                       ('map', lambda: pool.map(square, [1])),
                       ('map_async', lambda: pool.map_async(square, [1])),
                       ('imap', lambda: pool.imap(square, [1])),
                       ('imap_unordered', lambda: pool.imap_unordered(square, [1])),
                       ('starmap', lambda: pool.starmap(square, [(1,)])),
                       ('starmap_async', lambda: pool.starmap_async(square, [(1,)]))]:
        attempt(name + ' after close()', call)
    pool.join()
    attempt('join() again', pool.join)

    # get(timeout) on a task the parent holds back; successful() before ready
    parent_conn, child_conn = multiprocessing.Pipe()
    with multiprocessing.Pool(1, initializer=set_conn, initargs=(child_conn,)) as p:
        r = p.apply_async(wait_for_parent)
        try:
            r.get(timeout=0.2)
        except Exception as exc:
            print('get(timeout=0.2):', type(exc).__module__, type(exc).__name__, repr(exc))
            print('  is multiprocessing.TimeoutError:', type(exc) is multiprocessing.TimeoutError)
            print('  isinstance context.TimeoutError:',
                  isinstance(exc, multiprocessing.context.TimeoutError))
            print('  isinstance builtin TimeoutError:', isinstance(exc, TimeoutError))
        print('ready():', r.ready())
        print('wait(0.05):', r.wait(0.05))
        try:
            r.successful()
        except ValueError as exc:
            print('successful() before ready: ValueError:', no_addr(exc))
        m = p.map_async(square, [1])
        try:
            m.successful()
        except ValueError as exc:
            print('map_async successful() before ready: ValueError:', no_addr(exc))
        parent_conn.send('go')
        print('get after release:', r.get(timeout=10))
        print('successful():', r.successful(), 'map_async:', m.get(10))

    # bad Pool arguments
    attempt('Pool(0)', lambda: multiprocessing.Pool(0))
    attempt('Pool(-1)', lambda: multiprocessing.Pool(-1))
    print("Pool(processes='x'):", type_only(lambda: multiprocessing.Pool(processes='x')))
    attempt('maxtasksperchild=0', lambda: multiprocessing.Pool(1, maxtasksperchild=0))
    attempt('maxtasksperchild=-2', lambda: multiprocessing.Pool(1, maxtasksperchild=-2))
    attempt("maxtasksperchild='3'", lambda: multiprocessing.Pool(1, maxtasksperchild='3'))
    attempt('initializer=5', lambda: multiprocessing.Pool(1, initializer=5))
    print('done')
