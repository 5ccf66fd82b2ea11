"""The cluster pool's workloads, one JSON line of results. Run by cluster.py under procpy twice
per run: with `--cluster URL` (the pool's tasks go to `procpy worker` processes through Redis)
and without (procpy's local pool), so every number has its local counterpart from the same run.
    procpy [--cluster URL] cluster_pool.py [scale]
Pool start-up (and on the cluster, the job's worker processes) is outside every timed region."""
import json
import multiprocessing as mp
import statistics
import sys
import time


def identity(x):
    return x


def spin(n):
    """CPU-bound pure Python (the same function as pool.py's)."""
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    out = {}
    with mp.Pool(2) as pool:
        pool.map(identity, range(100), chunksize=1)  # warm up: both worker processes serve

        # (i) map of a trivial function over 100,000 items, default chunksize
        n = max(1000, int(100_000 * scale))
        items = list(range(n))
        t = time.perf_counter()
        res = pool.map(identity, items)
        out['map_items_per_s'] = n / (time.perf_counter() - t)
        assert res == items

        # (ii) 1,000 tiny tasks submitted with apply_async, then all gotten
        n = max(50, int(1000 * scale))
        t = time.perf_counter()
        rs = [pool.apply_async(identity, (i,)) for i in range(n)]
        assert [r.get() for r in rs] == list(range(n))
        out['apply_async_1000_s'] = (time.perf_counter() - t) * 1000 / n

        # (iii) one task's round trip: submit, run, result back (median)
        times = []
        for i in range(max(20, int(300 * scale))):
            t = time.perf_counter()
            assert pool.apply_async(identity, (i,)).get() == i
            times.append(time.perf_counter() - t)
        out['round_trip_us'] = statistics.median(times) * 1e6

        # (iv) per-task cost with one task per message (chunksize=1): the broker's share is the
        # difference between the cluster's and the local pool's numbers
        n = max(200, int(5000 * scale))
        t = time.perf_counter()
        assert pool.map(identity, range(n), chunksize=1) == list(range(n))
        out['per_task_us'] = (time.perf_counter() - t) / n * 1e6

        # (v) the CPU-bound 8-chunk workload: speedup over serial
        chunk = max(1000, int(1_000_000 * scale))
        chunks = [chunk] * 8
        t = time.perf_counter()
        serial = [spin(c) for c in chunks]
        serial_s = time.perf_counter() - t
        t = time.perf_counter()
        parallel = pool.map(spin, chunks, chunksize=1)
        parallel_s = time.perf_counter() - t
        assert parallel == serial
        out['cpu_serial_ms'] = serial_s * 1e3
        out['cpu_pool_ms'] = parallel_s * 1e3
        out['cpu_speedup'] = serial_s / parallel_s
    print(json.dumps(out))


if __name__ == '__main__':
    main()
