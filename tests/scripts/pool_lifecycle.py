"""multiprocessing.Pool lifecycle: initializer/initargs (once per worker,
worker globals seen by tasks), maxtasksperchild recycling workers (counted
by distinct pids), worker names/classes/daemon flag per start method, the
Pool repr's state, close()/terminate()/join(), the context manager
terminating (even a blocked task) and leaving no active children, and the
AsyncResult API (ready/successful/wait/get twice) on a task the parent holds
back through a Pipe."""
import multiprocessing
import os
import sys

_setting = 'module default'
_init_calls = 0
_conn = None


def init(value, conn=None):
    global _setting, _init_calls, _conn
    _setting = value
    _init_calls += 1
    _conn = conn


def read_setting(_=None):
    return (_setting, _init_calls)


def my_pid(_=None):
    return os.getpid()


def worker_info(_=None):
    p = multiprocessing.current_process()
    prefix, _, number = p.name.rpartition('-')
    return (prefix, number.isdigit(), type(p).__name__, p.daemon,
            multiprocessing.parent_process() is not None,
            multiprocessing.parent_process().name)


def wait_for_parent():
    return _conn.recv()


def square(x):
    return x * x


if __name__ == '__main__':
    method = sys.argv[1]
    multiprocessing.set_start_method(method)

    # initializer runs once per worker, before any task; its globals are visible to tasks
    with multiprocessing.Pool(2, initializer=init, initargs=('from initializer',)) as p:
        print('initializer state seen by tasks:', sorted(set(p.map(read_setting, range(8)))))
    with multiprocessing.Pool(1, init, ('positional',)) as p:
        print('positional initializer:', p.apply(read_setting))

    # a global changed in the parent's __main__ block: inherited only by fork
    _setting = 'changed by the parent'
    with multiprocessing.Pool(1) as p:
        print('parent global seen by a worker:', p.apply(read_setting))

    # maxtasksperchild: a new worker (and a new initializer call) per N tasks
    with multiprocessing.Pool(1, maxtasksperchild=1) as p:
        pids = [p.apply(my_pid) for _ in range(4)]
        print('maxtasksperchild=1, 4 tasks: distinct pids', len(set(pids)))
    with multiprocessing.Pool(1, maxtasksperchild=2) as p:
        pids = [p.apply(my_pid) for _ in range(4)]
        print('maxtasksperchild=2, 4 tasks: distinct pids', len(set(pids)))
    with multiprocessing.Pool(1, init, ('recycled',), maxtasksperchild=1) as p:
        print('recycled workers each ran the initializer once:',
              [p.apply(read_setting) for _ in range(3)])
    with multiprocessing.Pool(1, maxtasksperchild=1) as p:
        pids = p.map(my_pid, range(4), chunksize=1)
        print('maxtasksperchild=1 map chunksize=1: distinct pids', len(set(pids)))
    with multiprocessing.Pool(1) as p:
        pids = [p.apply(my_pid) for _ in range(4)]
        print('no maxtasksperchild: distinct pids', len(set(pids)),
              'worker is not the parent:', pids[0] != os.getpid())

    # worker identity
    with multiprocessing.Pool(2) as p:
        print('worker info:', sorted(set(p.map(worker_info, range(6)))))

    # repr shows the state; close()+join() leaves no children
    p = multiprocessing.Pool(2)
    print(repr(p))
    print('work:', p.map(square, range(3)))
    p.close()
    print(repr(p))
    p.join()
    print('after close+join:', repr(p), 'active children', len(multiprocessing.active_children()))

    # terminate()+join()
    p = multiprocessing.Pool(2)
    print('work:', p.map(square, range(3)))
    p.terminate()
    print(repr(p))
    p.join()
    print('after terminate+join: active children', len(multiprocessing.active_children()))
    try:
        p.apply(square, (2,))
    except ValueError as e:
        print('apply after terminate: ValueError:', e)
    p.terminate()
    print('terminate() twice is harmless')

    # the context manager terminates, even with a task still blocked
    parent_conn, child_conn = multiprocessing.Pipe()
    with multiprocessing.Pool(2, initializer=init, initargs=('blocked', child_conn)) as p:
        r = p.apply_async(wait_for_parent)
        print('blocked task ready():', r.ready())
    print('after with (terminate):', repr(p), 'active children',
          len(multiprocessing.active_children()))

    # AsyncResult API
    parent_conn, child_conn = multiprocessing.Pipe()
    with multiprocessing.Pool(1, initializer=init, initargs=('api', child_conn)) as p:
        r = p.apply_async(wait_for_parent)
        print('ready() while held:', r.ready())
        print('wait(0.1) returns:', r.wait(0.1), 'ready():', r.ready())
        parent_conn.send({'answer': 42})
        print('wait() returns:', r.wait(), 'ready():', r.ready(), 'successful():', r.successful())
        print('get twice:', r.get(), r.get(timeout=0))
        m = p.map_async(square, range(5))
        print('map_async wait(10):', m.wait(10), 'ready', m.ready(), m.successful(), m.get())
        print('AsyncResult class:', type(r).__name__,
              type(r) is multiprocessing.pool.AsyncResult,
              isinstance(m, multiprocessing.pool.AsyncResult))
    print('done')
