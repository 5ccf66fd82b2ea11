"""concurrent.futures.ProcessPoolExecutor(mp_context=get_context(method)):
submit/result, map (order, chunksize, several iterables, timeout not hit and
hit), worker exceptions (same type/args, future.exception(), _RemoteTraceback
cause), as_completed, wait() with ALL_COMPLETED / FIRST_COMPLETED /
FIRST_EXCEPTION / timeout, Future state methods, done callbacks, result and
exception timeouts. Tasks that must stay unfinished block on a Pipe that the
initializer hands to every worker, so done/not_done sets are deterministic."""
import concurrent.futures as cf
import multiprocessing
import re
import sys
import threading

_conn = None


class AppError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.code = code


def init(conn):
    global _conn
    _conn = conn


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail(*args):
    raise ValueError(*args)


def fail_app():
    raise AppError('app failed', 17)


def fail_on(x, bad):
    if x == bad:
        raise KeyError(x)
    return x


def held(tag):
    """Tell the parent we are running, then wait for its go-ahead."""
    _conn.send(('running', tag))
    return (tag, _conn.recv())


def no_addr(s):
    return re.sub(r'0x[0-9a-fA-F]+', '0x...', str(s))


def outcome(fn):
    try:
        return 'ok %r' % (fn(),)
    except Exception as e:
        return '%s%r' % (type(e).__name__, e.args)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    ctx = multiprocessing.get_context(sys.argv[1])
    parent_conn, child_conn = multiprocessing.Pipe()

    with cf.ProcessPoolExecutor(max_workers=2, mp_context=ctx,
                                initializer=init, initargs=(child_conn,)) as ex:
        f = ex.submit(square, 12)
        print('submit/result:', f.result(timeout=10))
        print('submit kwargs:', ex.submit(add, 1, b=2, c=3).result(10))
        print('state after result: done', f.done(), 'running', f.running(),
              'cancelled', f.cancelled(), 'exception', f.exception())
        print('cancel() on a finished future:', f.cancel())
        print('repr:', no_addr(repr(f)))

        print('map:', list(ex.map(square, range(10))))
        print('map chunksize=3:', list(ex.map(square, range(10), chunksize=3)))
        print('map two iterables (shortest wins):', list(ex.map(add, [1, 2, 3], [10, 20])))
        print('map timeout not hit:', list(ex.map(square, [1, 2, 3], timeout=10)))
        print('map empty:', list(ex.map(square, [])))
        print('map builtin:', list(ex.map(len, ['a', 'bb', ''])))
        results = ex.map(fail_on, range(5), [3] * 5)
        got = []
        try:
            for r in results:
                got.append(r)
        except KeyError as e:
            got.append('KeyError%r' % (e.args,))
        print('map failing item: yields', got)

        # exceptions keep their type, args and attributes
        f = ex.submit(fail, 'bad', 3)
        print('result() raises:', outcome(f.result))
        e = f.exception()
        print('exception():', type(e).__name__, e.args,
              'cause', type(e.__cause__).__module__ + '.' + type(e.__cause__).__name__,
              'has traceback', 'Traceback (most recent call last)' in str(e.__cause__),
              'names function', 'fail' in str(e.__cause__))
        print('repr:', no_addr(repr(f)))
        f = ex.submit(fail_app)
        e = f.exception(timeout=10)
        print('custom exception:', type(e) is AppError, e.args, e.code)
        print('KeyError:', outcome(ex.submit(fail_on, 1, 1).result))
        print('done/running/cancelled after failure:', f.done(), f.running(), f.cancelled())

        # as_completed: every future, in completion order (printed sorted)
        fs = [ex.submit(square, i) for i in range(8)]
        print('as_completed sorted:', sorted(f.result() for f in cf.as_completed(fs, timeout=10)))
        print('as_completed of finished futures:',
              sorted(f.result() for f in cf.as_completed(fs)))

        # wait()
        fs = [ex.submit(square, i) for i in range(5)]
        done, not_done = cf.wait(fs, timeout=10, return_when=cf.ALL_COMPLETED)
        print('wait ALL_COMPLETED: done', len(done), 'not_done', len(not_done),
              'results', sorted(f.result() for f in done))
        print('wait return type:', type(cf.wait(fs)).__name__, cf.wait(fs)._fields)

        blocked = ex.submit(held, 'A')
        print('held task reports:', parent_conn.recv())
        print('running() while held:', blocked.running(), 'done()', blocked.done(),
              'cancel()', blocked.cancel())
        print('result(timeout=0.2):', outcome(lambda: blocked.result(timeout=0.2)))
        try:
            blocked.exception(timeout=0.05)
        except Exception as e:
            print('exception(timeout) raises:', type(e).__name__,
                  'is builtin TimeoutError:', type(e) is TimeoutError,
                  'is cf.TimeoutError:', type(e) is cf.TimeoutError)
        quick = ex.submit(square, 5)
        done, not_done = cf.wait([blocked, quick], timeout=10, return_when=cf.FIRST_COMPLETED)
        print('wait FIRST_COMPLETED: done', [f.result() for f in done],
              'not_done is the held one', not_done == {blocked})
        failing = ex.submit(fail, 'first exception')
        done, not_done = cf.wait([blocked, failing], timeout=10,
                                 return_when=cf.FIRST_EXCEPTION)
        print('wait FIRST_EXCEPTION: done', [outcome(f.result) for f in done],
              'not_done is the held one', not_done == {blocked})
        done, not_done = cf.wait([blocked], timeout=0.2)
        print('wait timeout: done', len(done), 'not_done', len(not_done))
        print('as_completed timeout:',
              outcome(lambda: [f.result() for f in cf.as_completed([quick, blocked], timeout=0.2)]))

        # done callbacks: after completion (in another thread) and on a finished future
        called = threading.Event()
        seen = []

        def callback(fut):
            seen.append(('callback', fut is blocked, fut.result()))
            called.set()

        blocked.add_done_callback(callback)
        parent_conn.send('go')
        print('released:', blocked.result(timeout=10))
        print('callback ran:', called.wait(10), seen)
        seen.clear()
        quick.add_done_callback(lambda fut: seen.append(('immediate', fut.result())))
        print('callback on a finished future runs at once:', seen)

        # map(timeout=...) hit: the only item is held; the timeout counts from the map() call
        it = ex.map(held, ['B'], timeout=0.3)
        print('held map item reports:', parent_conn.recv())
        print('map timeout hit:', outcome(lambda: next(it)))
        parent_conn.send('go')

        done, not_done = cf.wait([quick, failing], return_when=cf.FIRST_EXCEPTION)
        print('FIRST_EXCEPTION with an exception already there:', len(done), len(not_done))
        done, not_done = cf.wait([quick], return_when=cf.FIRST_EXCEPTION)
        print('FIRST_EXCEPTION without exceptions waits for all:', len(done), len(not_done))
    print('after with: submit ->', outcome(lambda: ex.submit(square, 1)))
    print('done')
