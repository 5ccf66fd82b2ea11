"""IPC micro-benchmarks, one JSON line of results. Run under python3 or procpy:
    <interpreter> ipc_basics.py [scale]
scale (default 1.0) shrinks or grows every workload."""
import json
import os
import multiprocessing as mp
import sys
import time


def nothing():
    pass


def producer(q, n):
    for i in range(n):
        q.put(i)


def echo(conn, n):
    for _ in range(n):
        conn.send(conn.recv())


def bulk_sink(conn, n):
    total = 0
    for _ in range(n):
        total += len(conn.recv_bytes())
    conn.send(total)


def start_join(method, n):
    ctx = mp.get_context(method)
    ctx.Process(target=nothing).start()  # warm up (the fork server starts here)
    t = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=nothing)
        p.start()
        p.join()
    return (time.perf_counter() - t) / n * 1e3


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    ctx = mp.get_context('fork')
    out = {}
    # The floor under fork start+join: the OS fork of this interpreter, an immediate _exit and
    # the parent's waitpid, with no multiprocessing at all.
    n = max(5, int(100 * scale))
    t = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    out['raw_fork_ms'] = (time.perf_counter() - t) / n * 1e3
    for method in ('fork', 'forkserver', 'spawn'):
        out['start_join_ms_' + method] = start_join(method, max(2, int(20 * scale)))

    n = max(100, int(50000 * scale))
    q = ctx.Queue()
    p = ctx.Process(target=producer, args=(q, n))
    t = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get()
    out['queue_msgs_per_s'] = n / (time.perf_counter() - t)
    p.join()

    n = max(100, int(20000 * scale))
    a, b = ctx.Pipe()
    p = ctx.Process(target=echo, args=(b, n))
    p.start()
    t = time.perf_counter()
    for i in range(n):
        a.send(i)
        a.recv()
    out['pipe_round_trip_us'] = (time.perf_counter() - t) / n * 1e6
    p.join()

    n = max(4, int(64 * scale))
    blob = b'x' * (4 << 20)
    a, b = ctx.Pipe()
    p = ctx.Process(target=bulk_sink, args=(b, n))
    p.start()
    t = time.perf_counter()
    for _ in range(n):
        a.send_bytes(blob)
    assert a.recv() == n * len(blob)
    out['pipe_bulk_mib_per_s'] = n * 4 / (time.perf_counter() - t)
    p.join()
    print(json.dumps(out))


if __name__ == '__main__':
    main()
