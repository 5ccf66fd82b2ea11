"""concurrent.futures.ProcessPoolExecutor, continued: shutdown(wait=True/False),
submit/map after shutdown, shutdown(cancel_futures=True) with queued futures,
initializer/initargs (and a failing initializer -> BrokenProcessPool),
max_tasks_per_child (rejected with a fork mp_context; its default context is
spawn whatever the start method), the default context following
set_start_method, BrokenProcessPool after a worker's os._exit(1) (pending
futures fail, later submits raise), unpicklable arguments/results, bad
constructor arguments."""
import concurrent.futures as cf
import multiprocessing
import os
import sys

_setting = 'module default'
_conn = None


def init(value, conn=None):
    global _setting, _conn
    _setting = value
    _conn = conn


def failing_init():
    raise RuntimeError('initializer failed on purpose')


def read_setting(_=None):
    return _setting


def square(x):
    return x * x


def my_pid(_=None):
    return os.getpid()


def process_class(_=None):
    return type(multiprocessing.current_process()).__name__


def held(tag):
    _conn.send(('running', tag))
    return (tag, _conn.recv())


def die():
    os._exit(1)


def identity(x):
    return x


def make_generator():
    return (i for i in range(2))


def outcome(fn):
    try:
        return 'ok %r' % (fn(),)
    except Exception as e:
        return '%s%r' % (type(e).__name__, e.args)


def type_only(fn):
    try:
        return 'ok %r' % (fn(),)
    except Exception as e:
        return type(e).__name__


if __name__ == '__main__':
    method = sys.argv[1]
    multiprocessing.set_start_method(method)
    ctx = multiprocessing.get_context(method)

    # bad arguments (nothing is started)
    print('max_workers=0:', outcome(lambda: cf.ProcessPoolExecutor(max_workers=0)))
    print('max_workers=-1:', outcome(lambda: cf.ProcessPoolExecutor(-1)))
    print("max_workers='x':", type_only(lambda: cf.ProcessPoolExecutor('x')))
    print('max_tasks_per_child=0:',
          outcome(lambda: cf.ProcessPoolExecutor(1, max_tasks_per_child=0)))
    print('initializer=5:', outcome(lambda: cf.ProcessPoolExecutor(1, initializer=5)))

    # the default context follows set_start_method
    with cf.ProcessPoolExecutor(max_workers=1) as ex:
        print('default context worker class:', ex.submit(process_class).result(10))
        print('map chunksize=0:', outcome(lambda: ex.map(square, [1], chunksize=0)))

    # initializer / initargs
    with cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=init,
                                initargs=('from initializer',)) as ex:
        print('initializer state:', sorted(set(ex.map(read_setting, range(6)))))
        print('submit(5) (not callable):', type_only(ex.submit(5).result))
        print('unpicklable argument:', type_only(ex.submit(identity, (i for i in [1])).result))
        print('unpicklable result:', type_only(ex.submit(make_generator).result))
        print('still works:', ex.submit(square, 9).result(10))

    # shutdown(wait=True): every submitted future is finished afterwards
    ex = cf.ProcessPoolExecutor(2, mp_context=ctx)
    fs = [ex.submit(square, i) for i in range(6)]
    ex.shutdown(wait=True)
    print('after shutdown(wait=True): all done', all(f.done() for f in fs),
          [f.result() for f in fs])
    print('submit after shutdown:', outcome(lambda: ex.submit(square, 1)))
    print('map after shutdown:', outcome(lambda: ex.map(square, [1])))
    ex.shutdown()
    print('shutdown() twice is harmless')

    # shutdown(wait=False): queued work still runs
    ex = cf.ProcessPoolExecutor(2, mp_context=ctx)
    fs = [ex.submit(square, i) for i in range(4)]
    ex.shutdown(wait=False)
    print('after shutdown(wait=False):', [f.result(timeout=10) for f in fs])
    print('submit after shutdown(wait=False):', outcome(lambda: ex.submit(square, 1)))

    # shutdown(cancel_futures=True): one worker held, later futures never start
    parent_conn, child_conn = multiprocessing.Pipe()
    ex = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=init,
                                initargs=('held', child_conn))
    first = ex.submit(held, 'first')
    print('held task reports:', parent_conn.recv())
    queued = [ex.submit(square, i) for i in range(8)]
    print('cancel() on the running future:', first.cancel())
    print('cancel() on the last queued future:', queued[-1].cancel(),
          'cancelled()', queued[-1].cancelled())
    ex.shutdown(wait=False, cancel_futures=True)
    parent_conn.send('go')
    print('held result:', first.result(timeout=10))
    for f in queued:  # each ends finished or cancelled (result() wakes up on cancel())
        try:
            f.result(timeout=10)
        except cf.CancelledError:
            pass
    flags = [f.cancelled() for f in queued]
    print('every queued future finished:', all(f.done() for f in queued))
    print('cancelled ones form a suffix:', flags == sorted(flags))
    print('the last four were cancelled:', all(flags[-4:]))
    print('the rest have results:',
          all(f.result() == i * i for i, f in enumerate(queued) if not f.cancelled()))
    print('result() of a cancelled future:', type_only(queued[-1].result))
    print('exception() of a cancelled future:', type_only(queued[-1].exception))
    print('CancelledError class:', cf.CancelledError.__module__, cf.CancelledError.__name__)
    # a quirk: futures cancelled by shutdown() stay in state CANCELLED (never
    # "notified"), so wait() does not count them as done
    done, not_done = cf.wait([queued[-2]], timeout=0.1)
    print('wait() on a future cancelled by shutdown: done', len(done), 'not_done', len(not_done))
    ex.shutdown(wait=True)

    # max_tasks_per_child
    if method == 'fork':
        print('max_tasks_per_child with a fork mp_context:',
              outcome(lambda: cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1)))
    else:
        with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
            pids = [ex.submit(my_pid).result(10) for _ in range(3)]
            print('max_tasks_per_child=1, 3 tasks one by one: distinct pids', len(set(pids)))
            pids = list(ex.map(my_pid, range(3)))
            print('max_tasks_per_child=1, map of 3: distinct pids', len(set(pids)))
        with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2) as ex:
            pids = [ex.submit(my_pid).result(10) for _ in range(4)]
            print('max_tasks_per_child=2, 4 tasks: distinct pids', len(set(pids)))
    with cf.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        print('max_tasks_per_child without mp_context uses:',
              ex.submit(process_class).result(10))

    # a worker dies: BrokenProcessPool for the running and the pending futures
    ex = cf.ProcessPoolExecutor(1, mp_context=ctx)
    f_die = ex.submit(die)
    f_after = ex.submit(square, 3)
    print('dying task:', outcome(f_die.result))
    print('task queued behind it:', outcome(lambda: f_after.result(timeout=10)))
    print('submit afterwards:', outcome(lambda: ex.submit(square, 1)))
    print('map afterwards:', outcome(lambda: ex.map(square, [1])))
    e = f_die.exception()
    print('BrokenProcessPool MRO:', [c.__name__ for c in type(e).__mro__])
    print('is cf.process.BrokenProcessPool:', type(e) is cf.process.BrokenProcessPool,
          'is a cf.BrokenExecutor:', isinstance(e, cf.BrokenExecutor))
    ex.shutdown()
    print('shutdown() of a broken pool works')

    # a failing initializer breaks the pool too
    ex = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=failing_init)
    f = ex.submit(square, 2)
    print('failing initializer:', type_only(lambda: f.result(timeout=10)))
    ex.shutdown()
    print('done')
