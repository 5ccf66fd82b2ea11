"""Sharing state between processes: a counter in shared memory (multiprocessing.Value),
incremented by four processes. `v.value += 1` is a read, an add and a write: two processes can
read the same old value and one increment is lost. Holding the value's lock around the
read-modify-write makes the total exact. A Barrier lines the workers up so they really run at
the same time, and an Event tells the parent they are all past it."""
import multiprocessing

N = 20_000
WORKERS = 4


def add(counter, use_lock, start, all_started):
    if start.wait() == 0:        # Barrier.wait returns a distinct index to each party
        all_started.set()
    for _ in range(N):
        if use_lock:
            with counter.get_lock():
                counter.value += 1
        else:
            counter.value += 1   # unprotected read-modify-write: updates can be lost


def run(use_lock):
    counter = multiprocessing.Value('i', 0)
    start = multiprocessing.Barrier(WORKERS)
    all_started = multiprocessing.Event()
    workers = [multiprocessing.Process(target=add, args=(counter, use_lock, start, all_started))
               for _ in range(WORKERS)]
    for w in workers:
        w.start()
    all_started.wait()
    for w in workers:
        w.join()
    return counter.value


if __name__ == '__main__':
    expected = N * WORKERS
    with_lock = run(True)
    print('with the lock:    %d of %d (exact: %s)' % (with_lock, expected, with_lock == expected))
    without = run(False)
    # How many updates are lost varies from run to run (often many, sometimes none).
    print('without the lock: at most %d: %s' % (expected, without <= expected))
