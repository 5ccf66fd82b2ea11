"""JoinableQueue: consumers call task_done(), the producer's join() returns
once every item is done; join() on a queue with no unfinished tasks returns
at once; task_done() too many times -> ValueError('task_done() called too
many times')."""
import multiprocessing
import sys
from _check import attempt


def consumer(jq, results):
    while True:
        item = jq.get()
        try:
            if item is None:
                break
            results.put((item, item ** 2))
        finally:
            jq.task_done()


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    jq = multiprocessing.JoinableQueue()
    attempt('join() with nothing unfinished', jq.join)
    attempt('task_done() on fresh queue', jq.task_done)

    jq.put('x')
    attempt('get', lambda: jq.get(timeout=10))
    attempt('task_done() once', jq.task_done)
    attempt('task_done() again', jq.task_done)
    attempt('join()', jq.join)

    # one consumer: join() returns only after every item was processed
    results = multiprocessing.Queue()
    p = multiprocessing.Process(target=consumer, args=(jq, results))
    p.start()
    for i in range(10):
        jq.put(i)
    jq.join()
    print('after join, results waiting:', results.qsize())
    print('results:', sorted(results.get(timeout=10) for _ in range(10)))
    jq.put(None)
    jq.join()
    p.join()
    print('consumer exitcode:', p.exitcode)

    # several consumers
    consumers = [multiprocessing.Process(target=consumer, args=(jq, results))
                 for _ in range(3)]
    for c in consumers:
        c.start()
    for i in range(20):
        jq.put(i)
    jq.join()
    print('after join, results waiting:', results.qsize())
    print('sum of squares:', sum(r[1] for r in (results.get(timeout=10) for _ in range(20))))
    for c in consumers:
        jq.put(None)
    jq.join()
    for c in consumers:
        c.join()
    print('consumer exitcodes:', [c.exitcode for c in consumers])
    attempt('task_done() after all joined', jq.task_done)
    print('empty at end:', jq.empty(), 'qsize', jq.qsize())
