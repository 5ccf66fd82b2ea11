"""Queue timeouts and bounds: get(timeout)/get_nowait/get(block=False) on an
empty queue raise queue.Empty; put_nowait/put(timeout)/put(block=False) on a
full Queue(1) raise queue.Full; a bounded queue blocks a producer until the
consumer makes room; a blocked get() returns once a child is released."""
import multiprocessing
import queue
import sys


def put_after_go(conn, q):
    conn.recv()
    q.put('released value')


def bounded_producer(q, n, done_q):
    for i in range(n):
        q.put(i)           # blocks while the queue holds maxsize items
    done_q.put('producer finished')


def attempt(label, fn):
    try:
        res = fn()
    except Exception as e:
        print('%s: %s isinstance(queue.Empty)=%s isinstance(queue.Full)=%s' % (
            label, type(e).__name__, isinstance(e, queue.Empty), isinstance(e, queue.Full)))
    else:
        print('%s: ok %r' % (label, res))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    q = multiprocessing.Queue()
    attempt('get(timeout=0.01) on empty', lambda: q.get(timeout=0.01))
    attempt('get_nowait() on empty', q.get_nowait)
    attempt('get(block=False) on empty', lambda: q.get(block=False))
    attempt('get(False, 0.01) on empty', lambda: q.get(False, 0.01))

    one = multiprocessing.Queue(1)
    print('Queue(1) fresh: full', one.full(), 'empty', one.empty(), 'qsize', one.qsize())
    attempt('put_nowait into Queue(1)', lambda: one.put_nowait('first'))
    print('Queue(1) after put: full', one.full(), 'qsize', one.qsize())
    attempt('put_nowait on full', lambda: one.put_nowait('second'))
    attempt('put(timeout=0.01) on full', lambda: one.put('second', timeout=0.01))
    attempt('put(block=False) on full', lambda: one.put('second', block=False))
    attempt('get(timeout=10)', lambda: one.get(timeout=10))
    print('Queue(1) after get: full', one.full(), 'qsize', one.qsize())
    attempt('put_nowait after get', lambda: one.put_nowait('third'))
    attempt('get(timeout=10)', lambda: one.get(timeout=10))

    unbounded = multiprocessing.Queue(0)
    for i in range(100):
        unbounded.put_nowait(i)
    print('maxsize=0 is unbounded: full', unbounded.full(), 'qsize', unbounded.qsize())
    print('sum:', sum(unbounded.get(timeout=10) for _ in range(100)))

    # a get with timeout that only succeeds once the child is released
    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=put_after_go, args=(child_conn, q))
    p.start()
    attempt('get(timeout=0.05) before release', lambda: q.get(timeout=0.05))
    parent_conn.send('go')
    attempt('get(timeout=10) after release', lambda: q.get(timeout=10))
    p.join()

    # bounded queue: producer of 6 items into Queue(2) must wait for us
    bq = multiprocessing.Queue(2)
    done_q = multiprocessing.Queue()
    p = multiprocessing.Process(target=bounded_producer, args=(bq, 6, done_q))
    p.start()
    got = [bq.get(timeout=10) for _ in range(6)]
    print('bounded got:', got)
    print(done_q.get(timeout=10))
    p.join()
    print('producer exitcode:', p.exitcode)
    attempt('get_nowait on drained bounded queue', bq.get_nowait)
