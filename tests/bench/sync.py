"""Synchronization and shared-state micro-benchmarks, one JSON line of results. Run under
python3 or procpy:
    <interpreter> sync.py [scale] [start-method]
scale (default 1.0) shrinks or grows every workload; the start method defaults to fork.
Process start-up is outside the timed region of the shared-Value workload (children wait on
an Event before counting), and so is the manager's start-up in the manager dict workload."""
import json
import multiprocessing as mp
import sys
import time


def count(v, n, go):
    go.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    method = sys.argv[2] if len(sys.argv) > 2 else 'fork'
    ctx = mp.get_context(method)
    out = {}

    # (i) uncontended Lock acquire+release pairs
    lock = ctx.Lock()
    n = max(10_000, int(1_000_000 * scale))
    t = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    out['lock_pair_us'] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    out['lock_with_us'] = (time.perf_counter() - t) / n * 1e6

    # (ii) four processes each incrementing one shared Value 10,000 times under its lock
    n = max(1000, int(10_000 * scale))
    v = ctx.Value('i', 0)
    go = ctx.Event()
    procs = [ctx.Process(target=count, args=(v, n, go)) for _ in range(4)]
    for p in procs:
        p.start()
    t = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    out['value_4x_increments_ms'] = (time.perf_counter() - t) * 1e3
    assert v.value == 4 * n, v.value

    # (iii) uncontended RLock pairs, Event.is_set
    rlock, ev = ctx.RLock(), ctx.Event()
    n = max(10_000, int(200_000 * scale))
    t = time.perf_counter()
    for _ in range(n):
        rlock.acquire()
        rlock.release()
    out['rlock_pair_us'] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        ev.is_set()
    out['event_is_set_us'] = (time.perf_counter() - t) / n * 1e6

    # (iv) manager dict round trips from the parent: d[k] = v and d[k], each one request to
    # the manager's server process and its answer (server start-up is outside the timing)
    with ctx.Manager() as m:
        d = m.dict()
        d['warm'] = 0
        n = max(500, int(20_000 * scale))
        t = time.perf_counter()
        for i in range(n):
            d['k'] = i
        out['manager_dict_set_us'] = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for i in range(n):
            d['k']
        out['manager_dict_get_us'] = (time.perf_counter() - t) / n * 1e6
        assert d['k'] == n - 1
    print(json.dumps(out))


if __name__ == '__main__':
    main()
