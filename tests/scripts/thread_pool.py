"""multiprocessing.pool.ThreadPool and multiprocessing.dummy.Pool: the Pool
API over threads of this process (map/apply_async/imap/imap_unordered/
starmap, initializer, callbacks), results and arguments that could never be
pickled (lambdas, locks, generators) pass through untouched, worker
exceptions re-raised as the very same object without a RemoteTraceback
cause, shared memory with the parent, repr/state, errors after close()."""
import multiprocessing
import multiprocessing.dummy
import multiprocessing.pool
import os
import sys
import threading

from _check import attempt

_local = threading.local()
_shared = []
_shared_lock = threading.Lock()
THE_ERROR = ValueError('shared instance', 7)


def square(x):
    return x * x


def add(a, b):
    return a + b


def init(tag):
    _local.tag = tag


def read_tag(_):
    return getattr(_local, 'tag', None)


def make_adder(n):
    return lambda x: x + n


def make_lock(_=None):
    return threading.Lock()


def use_lock(lock):
    with lock:
        return 'used %s' % type(lock).__name__


def record(x):
    with _shared_lock:
        _shared.append(x)
    return x


def raise_it():
    raise THE_ERROR


def fail_on_two(x):
    if x == 2:
        raise KeyError(x)
    return x


def where(_):
    t = threading.current_thread()
    return (os.getpid() == PARENT_PID, t is not threading.main_thread(), t.daemon,
            multiprocessing.current_process().name)


PARENT_PID = os.getpid()


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    for label, factory in [('ThreadPool', multiprocessing.pool.ThreadPool),
                           ('dummy.Pool', multiprocessing.dummy.Pool)]:
        print('==', label)
        with factory(3) as p:
            print('type:', type(p).__name__, repr(p))
            print('map:', p.map(square, range(10)))
            print('map chunksize=4:', p.map(square, range(10), chunksize=4))
            print('apply_async:', p.apply_async(add, (2, 3)).get(10), p.apply(add, ('a', 'b')))
            print('starmap:', p.starmap(add, [(1, 2), (3, 4)]))
            print('imap:', list(p.imap(square, range(6))))
            print('imap_unordered sorted:', sorted(p.imap_unordered(square, range(6))))
            got = []
            r = p.map_async(square, [4, 5], callback=got.append)
            print('map_async:', r.get(10), 'callback got:', got)
            print('runs in:', sorted(set(p.map(where, range(6)))))

            # nothing is pickled: lambdas, locks and generators pass both ways
            f = p.apply(make_adder, (10,))
            print('lambda result called:', f(5))
            lock = p.apply(make_lock)
            print('lock result:', type(lock).__name__, lock.acquire(False), lock.locked())
            lock.release()
            print('lock argument:', p.apply(use_lock, (threading.Lock(),)))
            gen = p.apply(iter, ([1, 2, 3],))
            print('iterator result:', list(gen))
            print('map of generator args:', p.map(list, [(i for i in range(2)), iter('ab')]))

            # threads share the parent's memory
            del _shared[:]
            p.map(record, range(5))
            print('shared list filled by the workers:', sorted(_shared))

            # exceptions: the same object, no RemoteTraceback cause
            try:
                p.apply(raise_it)
            except ValueError as e:
                print('same exception object:', e is THE_ERROR, e.args,
                      'cause:', e.__cause__)
            errs = []
            r = p.apply_async(raise_it, error_callback=errs.append)
            attempt('apply_async get', lambda: r.get(10))
            print('error_callback got the same object:', errs[0] is THE_ERROR)
            attempt('map failing', lambda: p.map(fail_on_two, range(4)))
            outcomes = []
            it = p.imap(fail_on_two, range(4))
            while True:
                try:
                    outcomes.append(next(it))
                except StopIteration:
                    break
                except KeyError as e:
                    outcomes.append('KeyError%r' % (e.args,))
            print('imap outcomes:', outcomes)

        with factory(2, init, ('tagged',)) as p:
            print('initializer (thread-local):', sorted(set(p.map(read_tag, range(6)))))
        with factory(processes=1, initializer=init, initargs=('kw',)) as p:
            print('initializer kwargs:', p.apply(read_tag, (0,)))

        # Only this pool's threads count: the pools above were terminated (not joined), so
        # whether their threads are gone yet is a matter of timing.
        before = set(threading.enumerate())
        p = factory(2)
        print('work:', p.map(square, [7]))
        attempt('join while running', p.join)
        p.close()
        print(repr(p))
        attempt('apply after close', lambda: p.apply(square, (1,)))
        attempt('map after close', lambda: p.map(square, [1]))
        attempt('imap after close', lambda: p.imap(square, [1]))
        p.join()
        left = [t for t in threading.enumerate() if t not in before]
        print('joined; threads of this pool left over:', left != [])
        p = factory(1)
        p.terminate()
        p.join()
        print('terminate+join:', repr(p))

    attempt('ThreadPool(0)', lambda: multiprocessing.pool.ThreadPool(0))
    attempt('dummy.Pool(-1)', lambda: multiprocessing.dummy.Pool(-1))
    print('done')
