"""Lesson: the process pool. pi is the integral of 4/(1+x^2) over [0, 1];
the midpoint sum over N slices is split into two halves, each computed in a
pool worker with apply_async(), which returns an AsyncResult at once so
both halves run at the same time. get() waits for each half; the parent
adds them. The pool is used as a context manager, which calls terminate()
on exit, so the results are collected inside the with block.

Usage: procpy pi_async_results.py [fork|spawn|forkserver]"""
import math
import multiprocessing
import sys

N = 200_000


def partial_pi(start, stop, n):
    """Midpoint sum of 4/(1+x^2) * dx over slices start..stop-1 of n."""
    dx = 1.0 / n
    total = 0.0
    for i in range(start, stop):
        x = (i + 0.5) * dx
        total += 4.0 / (1.0 + x * x)
    return total * dx


if __name__ == '__main__':
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1])
    with multiprocessing.Pool(processes=2) as pool:
        first = pool.apply_async(partial_pi, (0, N // 2, N))
        second = pool.apply_async(partial_pi, (N // 2, N, N))
        print('AsyncResults returned at once:', type(first).__name__, type(second).__name__)
        halves = [first.get(timeout=60), second.get(timeout=60)]
    pi = sum(halves)
    print('first half :', round(halves[0], 10))
    print('second half:', round(halves[1], 10))
    print('pi ~', round(pi, 10))
    print('error below 1e-9:', abs(pi - math.pi) < 1e-9)
