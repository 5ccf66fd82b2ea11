"""Lesson: Pool.map for CPU-bound work. The same pure-Python function runs
over 8 equal chunks serially and then with Pool.map on two worker
processes; the results are identical, and with two free cores the pool
takes about half the time (threads would not help: the GIL serialises
them). stdout only has the deterministic lines; the timings and the
speedup go to stderr.

Usage: procpy pool_map_speedup.py [fork|spawn|forkserver]"""
import multiprocessing
import sys
import time

CHUNKS = 8
CHUNK_SIZE = 25_000


def count_primes(bounds):
    """Number of primes in [lo, hi) by trial division, plus their sum."""
    lo, hi = bounds
    count = total = 0
    for n in range(max(lo, 2), hi):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
            total += n
    return count, total


if __name__ == '__main__':
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1])
    chunks = [(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) for i in range(CHUNKS)]

    t = time.perf_counter()
    serial = [count_primes(c) for c in chunks]
    serial_s = time.perf_counter() - t

    with multiprocessing.Pool(2) as pool:
        pool.map(count_primes, [(0, 10)] * 2)  # warm up: workers started and importing
        t = time.perf_counter()
        parallel = pool.map(count_primes, chunks)
        parallel_s = time.perf_counter() - t

    print('primes below %d: %d' % (CHUNKS * CHUNK_SIZE, sum(c for c, _ in parallel)))
    print('checksum (sum of the primes):', sum(s for _, s in parallel))
    print('per chunk:', [c for c, _ in parallel])
    print('results match:', parallel == serial)
    sys.stderr.write('serial %.3fs, Pool(2).map %.3fs, speedup %.2fx\n'
                     % (serial_s, parallel_s, serial_s / parallel_s))
