"""Lesson: threading.Thread and multiprocessing.Process share the same API
(target/args, start, join). A CPU-bound countdown run in two threads is
serialised by the GIL, in two processes it can use two cores. Timings go to
stderr; stdout only has deterministic lines.

Usage: procpy countdown_threads_vs_processes.py [fork|spawn|forkserver]"""
import multiprocessing
import sys
import threading
import time

COUNT = 1_000_000


def countdown(n):
    while n > 0:
        n -= 1


def run_two(kind):
    workers = [kind(target=countdown, args=(COUNT,)) for _ in range(2)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


if __name__ == '__main__':
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1])
    t = run_two(threading.Thread)
    print('threads done')
    sys.stderr.write('threads: %.3fs\n' % t)
    t = run_two(multiprocessing.Process)
    print('processes done')
    sys.stderr.write('processes: %.3fs\n' % t)
