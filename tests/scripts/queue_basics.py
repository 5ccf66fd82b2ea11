"""multiprocessing.Queue basics: FIFO order per producer, both directions,
qsize/empty/full on quiet queues, many producers (sorted), a large payload
read before join (the documented join-deadlock pitfall avoided), close()."""
import multiprocessing
import sys


def producer(q, tag, n):
    for i in range(n):
        q.put((tag, i))


def doubler(q_in, q_out):
    while True:
        item = q_in.get()
        if item is None:
            break
        q_out.put(item * 2)
    q_out.put('doubler done')


def big_sender(q, size):
    q.put(bytes(range(256)) * (size // 256))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q = multiprocessing.Queue()
    print('fresh: qsize', q.qsize(), 'empty', q.empty(), 'full', q.full())

    # single producer: order is preserved
    p = multiprocessing.Process(target=producer, args=(q, 'A', 5))
    p.start()
    print('in order:', [q.get(timeout=10) for _ in range(5)])
    p.join()
    print('drained: qsize', q.qsize(), 'empty', q.empty())

    # parent -> child -> parent
    q_in = multiprocessing.Queue()
    q_out = multiprocessing.Queue()
    p = multiprocessing.Process(target=doubler, args=(q_in, q_out))
    p.start()
    for x in [1, 'ab', [3], (4,)]:
        q_in.put(x)
    q_in.put(None)
    print('doubled:', [q_out.get(timeout=10) for _ in range(5)])
    p.join()
    print('doubler exitcode:', p.exitcode)

    # qsize counts puts synchronously (the feeder thread is irrelevant)
    q2 = multiprocessing.Queue()
    for i in range(3):
        q2.put(i)
    print('qsize after 3 puts:', q2.qsize())
    print('got:', [q2.get(timeout=10) for _ in range(3)], 'qsize', q2.qsize())

    # several producers: interleaving is undefined, per-producer order is not
    procs = [multiprocessing.Process(target=producer, args=(q, t, 3)) for t in 'xyz']
    for p in procs:
        p.start()
    got = [q.get(timeout=10) for _ in range(9)]
    for p in procs:
        p.join()
    print('all items:', sorted(got))
    for t in 'xyz':
        print('order from', t, [i for (tag, i) in got if tag == t])

    # large payload: get() before join()
    size = 1 << 20
    p = multiprocessing.Process(target=big_sender, args=(q, size))
    p.start()
    data = q.get(timeout=10)
    p.join()
    print('big payload:', len(data), sum(data) % 65521, p.exitcode)

    # close(): further put/get raise ValueError (message contains an address)
    q3 = multiprocessing.Queue()
    q3.put('last')
    print('before close:', q3.get(timeout=10))
    q3.close()
    q3.join_thread()
    for name, call in [('put', lambda: q3.put(1)), ('get', lambda: q3.get(timeout=0.01))]:
        try:
            call()
        except Exception as e:
            print('after close', name, '->', type(e).__name__)
