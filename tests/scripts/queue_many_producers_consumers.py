"""Four producers and three consumers share one bounded Queue(maxsize=50): every item arrives
exactly once (no loss, no duplicate), blocked puts resume as consumers drain, and the queue ends
empty."""
import multiprocessing
import sys

P, C, N = 4, 3, 600


def produce(q, base, n):
    for i in range(n):
        q.put(base + i)


def consume(q, out, n):
    out.put([q.get(timeout=30) for _ in range(n)])


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q, out = multiprocessing.Queue(maxsize=50), multiprocessing.Queue()
    producers = [multiprocessing.Process(target=produce, args=(q, k * 100000, N)) for k in range(P)]
    consumers = [multiprocessing.Process(target=consume, args=(q, out, P * N // C)) for _ in range(C)]
    for p in producers + consumers:
        p.start()
    got = []
    for _ in range(C):
        got += out.get(timeout=60)
    for p in producers + consumers:
        p.join()
    want = sorted(k * 100000 + i for k in range(P) for i in range(N))
    print('received:', len(got), 'distinct:', len(set(got)), 'exact:', sorted(got) == want)
    print('queue empty at the end:', q.empty(), q.qsize())
    print('exitcodes:', [p.exitcode for p in producers + consumers])
