"""SimpleQueue: put/get across processes in both directions, FIFO per
producer, empty() (put writes synchronously, so it is exact), several
producers (sorted), close() then get/put -> OSError('handle is closed')."""
import multiprocessing
import sys
from _check import attempt


def echo_upper(sq_in, sq_out):
    while True:
        item = sq_in.get()
        if item is None:
            break
        sq_out.put(item.upper())
    sq_out.put('<end>')


def producer(sq, tag, n):
    for i in range(n):
        sq.put((tag, i))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    sq = multiprocessing.SimpleQueue()
    print('fresh empty:', sq.empty())
    sq.put('local')
    print('after put empty:', sq.empty())
    print('get:', sq.get())
    print('after get empty:', sq.empty())

    sq_in = multiprocessing.SimpleQueue()
    sq_out = multiprocessing.SimpleQueue()
    p = multiprocessing.Process(target=echo_upper, args=(sq_in, sq_out))
    p.start()
    for w in ['alpha', 'beta', 'gamma', 'ünïcode']:
        sq_in.put(w)
    sq_in.put(None)
    print('echoed:', [sq_out.get() for _ in range(5)])
    p.join()
    print('exitcode:', p.exitcode)

    procs = [multiprocessing.Process(target=producer, args=(sq, t, 4)) for t in 'ab']
    for p in procs:
        p.start()
    got = [sq.get() for _ in range(8)]
    for p in procs:
        p.join()
    print('all:', sorted(got))
    for t in 'ab':
        print('order from', t, [i for (tag, i) in got if tag == t])
    print('empty after draining:', sq.empty())

    sq.close()
    attempt('get after close', sq.get)
    attempt('put after close', lambda: sq.put(1))
