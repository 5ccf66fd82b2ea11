"""procpy --demo gil: why processes beat threads under a GIL.

The same CPU-bound pure-Python job, split into N equal chunks, runs
  1. serially and in N threads under an emulated GIL (what CPython does),
  2. serially and in N threads without it (RustPython has no GIL),
  3. in N processes (each has its own interpreter),
and the demo prints wall times and speedups and draws a timeline of when each worker ran.

    procpy --demo gil [--workers N] [--size ITERATIONS] [--interval SECONDS] [--out DIR]
"""
# Only cheap imports at the top: under spawn and forkserver every child imports this module
# again (as `__mp_main__`), and RustPython's imports are slow.
import os
import sys
import threading

import multiprocessing as mp
import procpy_gil


def spin(n):
    """The CPU-bound job: integer arithmetic in a pure-Python loop."""
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def timed_chunk(n, index, q=None):
    start = procpy_gil.now()
    spin(n)
    span = (index, start, procpy_gil.now())
    if q is not None:
        q.put(span)
    return span


def run_serial(chunks):
    t0 = procpy_gil.now()
    spans = [timed_chunk(n, 0) for n in chunks]
    return procpy_gil.now() - t0, t0, spans


def run_threads(chunks, gil):
    spans, keys = [], {}

    def worker(i, n):
        keys[procpy_gil.thread_key()] = i
        spans.append(timed_chunk(n, i))

    threads = [threading.Thread(target=worker, args=(i, n)) for i, n in enumerate(chunks)]
    if gil:
        procpy_gil.record(True)
        procpy_gil.take_log()
    t0 = procpy_gil.now()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = procpy_gil.now() - t0
    if gil:
        procpy_gil.record(False)
        # When each thread really ran: the intervals it held the lock.
        spans = [(keys[k], a, b) for k, a, b in procpy_gil.take_log() if k in keys]
    return wall, t0, spans


def nothing():
    pass


def run_processes(chunks):
    # Warm up first: the fork server (the default start method) starts with the first child.
    warm = mp.Process(target=nothing)
    warm.start()
    warm.join()
    q = mp.SimpleQueue()
    procs = [mp.Process(target=timed_chunk, args=(n, i, q)) for i, n in enumerate(chunks)]
    t0 = procpy_gil.now()
    for p in procs:
        p.start()
    spans = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return procpy_gil.now() - t0, t0, spans


COLOURS = ['#2b7bba', '#d9822b', '#3a9c4a', '#b23a48', '#7d5ba6', '#8c6d31', '#1f9e9e', '#c2477f']


def svg_timeline(panels, workers):
    """One panel per run, one row per worker, time on a shared axis."""
    longest = max(wall for _, wall, _, _ in panels)
    left, width, row_h, top = 250, 600, 16, 40
    panel_h = row_h * workers + 34
    height = top + panel_h * len(panels) + 30
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">'
           % (left + width + 30, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="20" font-size="15">When each worker ran: %d chunks of the same CPU-bound job</text>' % workers]
    for p, (title, wall, t0, spans) in enumerate(panels):
        y0 = top + p * panel_h
        out.append('<text x="10" y="%d" font-weight="bold">%s</text>' % (y0 + 12, title))
        out.append('<text x="%d" y="%d" text-anchor="end">%.0f ms</text>' % (left + width, y0 + 12, wall * 1e3))
        rows = 1 if title.startswith('serial') else workers
        for r in range(rows):
            y = y0 + 18 + r * row_h
            label = 'main thread' if rows == 1 else ('worker %d' % (r + 1))
            out.append('<text x="%d" y="%d" text-anchor="end" fill="#555">%s</text>' % (left - 8, y + 11, label))
            out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#f0f0f0"/>' % (left, y, width, row_h - 3))
        for index, a, b in spans:
            x = left + (a - t0) / longest * width
            w = max((b - a) / longest * width, 0.5)
            row = 0 if rows == 1 else index
            out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>'
                       % (x, y0 + 18 + row * row_h, w, row_h - 3, COLOURS[index % len(COLOURS)]))
    y = height - 12
    out.append('<text x="%d" y="%d" fill="#555">0</text>' % (left, y))
    out.append('<text x="%d" y="%d" text-anchor="end" fill="#555">%.0f ms</text>' % (left + width, y, longest * 1e3))
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def main():
    import argparse
    import shutil
    import subprocess
    ap = argparse.ArgumentParser(prog='procpy --demo gil', description=__doc__.split('\n\n')[0])
    ap.add_argument('--workers', type=int, default=min(os.cpu_count() or 2, 8), help='threads / processes (default: CPUs, at most 8)')
    ap.add_argument('--size', type=int, default=2_000_000, help='loop iterations in all (default 2,000,000)')
    ap.add_argument('--interval', type=float, default=0.005, help='switch interval of the emulated GIL, seconds (default 0.005, as CPython)')
    ap.add_argument('--out', default='.', help='directory for gil-demo.svg and gil-demo.png (default: here)')
    args = ap.parse_args()
    if args.workers < 1 or args.size < args.workers:
        ap.error('--workers must be at least 1 and --size at least --workers')
    n = args.workers
    chunks = [args.size // n] * n
    sys.setswitchinterval(args.interval)

    results = []
    procpy_gil.enable()
    results.append(('serial, emulated GIL', *run_serial(chunks)))
    results.append(('%d threads, emulated GIL' % n, *run_threads(chunks, gil=True)))
    procpy_gil.disable()
    results.append(('serial, no GIL', *run_serial(chunks)))
    results.append(('%d threads, no GIL (RustPython)' % n, *run_threads(chunks, gil=False)))
    results.append(('%d processes' % n, *run_processes(chunks)))

    baseline = {'emulated GIL': results[0][1], 'other': results[2][1]}
    print('%-34s %10s %9s' % ('run (%d iterations, %d chunks)' % (args.size, n), 'wall ms', 'speedup'))
    for title, wall, _, _ in results:
        base = baseline['emulated GIL'] if 'emulated GIL' in title else baseline['other']
        print('%-34s %10.1f %8.2fx' % (title, wall * 1e3, base / wall))
    print('(speedups against the serial run of the same kind; the emulated GIL traces every line,')
    print(' so its runs are slower in absolute terms. On %d CPUs, the ideal speedup is %d.)' % (os.cpu_count() or 1, min(n, os.cpu_count() or 1)))
    print('lock hand-overs under the emulated GIL: %d' % procpy_gil.switches())

    os.makedirs(args.out, exist_ok=True)
    svg = os.path.join(args.out, 'gil-demo.svg')
    with open(svg, 'w') as f:
        f.write(svg_timeline(results, n))
    print('timeline: %s' % svg)
    conv = shutil.which('rsvg-convert')
    if conv:
        png = os.path.join(args.out, 'gil-demo.png')
        subprocess.run([conv, svg, '-o', png], check=True)
        print('timeline: %s' % png)
    else:
        print('(no PNG: rsvg-convert is not installed; the SVG opens in any browser)')


if __name__ == '__main__':
    main()
