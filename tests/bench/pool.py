"""Process-pool micro-benchmarks, one JSON line of results. Run under python3 or procpy:
    <interpreter> pool.py [scale] [start-method]
scale (default 1.0) shrinks or grows every workload; the start method defaults to fork.
Pool start-up is outside every timed region (each pool is warmed up first)."""
import json
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def spin(n):
    """CPU-bound pure Python: a sum of integer work over range(n)."""
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    method = sys.argv[2] if len(sys.argv) > 2 else 'fork'
    ctx = mp.get_context(method)
    out = {}

    with ctx.Pool(2) as pool:
        pool.map(identity, range(100))  # warm up: both workers started

        # (i) map of a trivial function over many items (default chunksize)
        n = max(1000, int(100_000 * scale))
        items = list(range(n))
        t = time.perf_counter()
        res = pool.map(identity, items)
        out['map_identity_us_per_item'] = (time.perf_counter() - t) / n * 1e6
        assert res == items

        # (ii) one task at a time: apply_async(...).get() round trips
        n = max(100, int(3000 * scale))
        t = time.perf_counter()
        for i in range(n):
            assert pool.apply_async(identity, (i,)).get() == i
        out['apply_async_get_us_per_task'] = (time.perf_counter() - t) / n * 1e6

        # (iii) CPU-bound work in 8 equal chunks: Pool(2).map vs serial
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
        out['cpu_pool2_ms'] = parallel_s * 1e3
        out['cpu_pool2_speedup'] = serial_s / parallel_s
    print(json.dumps(out))


if __name__ == '__main__':
    main()
