"""The same CPU-bound pure-Python work serially and in 2 threads, one JSON line of results:
    <interpreter> threads.py [scale]
Under CPython's GIL the threads take about as long as the serial run; RustPython has no GIL, so
under procpy they run in parallel (procpy --emulate-gil would bring the GIL's effect back)."""
import json
import sys
import threading
import time


def spin(n):
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    chunk = max(1000, int(2_000_000 * scale))
    t = time.perf_counter()
    spin(chunk)
    spin(chunk)
    serial_s = time.perf_counter() - t
    threads = [threading.Thread(target=spin, args=(chunk,)) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    threaded_s = time.perf_counter() - t
    print(json.dumps({'threads2_serial_ms': serial_s * 1e3, 'threads2_ms': threaded_s * 1e3,
                      'threads2_speedup': serial_s / threaded_s}))


if __name__ == '__main__':
    main()
