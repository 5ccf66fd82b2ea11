# pebble: ProcessPool (its own workers over multiprocessing Process, Pipe and Lock),
# ThreadPool, per-task timeouts and the concurrent.thread decorator.
# Run as: <interpreter> pebble_pools.py <start-method>
import sys
import time
import multiprocessing
from concurrent.futures import TimeoutError

from pebble import ProcessPool, ThreadPool, concurrent


def square(x):
    return x * x


def fails(x):
    raise ValueError(f"bad {x}")


def sleeps(seconds):
    time.sleep(seconds)
    return seconds


@concurrent.thread
def in_a_thread(x):
    return x + 1


if __name__ == "__main__":
    # pebble's import already fixed the default context's method.
    multiprocessing.set_start_method(sys.argv[1], force=True)
    with ProcessPool(max_workers=2) as pool:
        print(list(pool.map(square, range(10)).result()))
        print(list(pool.map(square, range(7), chunksize=3).result()))
        try:
            pool.schedule(fails, args=(3,)).result()
        except ValueError as e:
            print("ValueError", e)
        # A task over its timeout is stopped (its worker replaced) and raises TimeoutError.
        try:
            pool.schedule(sleeps, args=(60,), timeout=0.5).result()
        except TimeoutError as e:
            print("TimeoutError", e.args)
        print(pool.schedule(square, args=(9,)).result())
    with ProcessPool(max_workers=1, max_tasks=2) as pool:
        print([pool.schedule(square, args=(i,)).result() for i in range(5)])
    with ThreadPool(max_workers=2) as pool:
        print(list(pool.map(square, range(5)).result()))
    print(in_a_thread(4).result())
