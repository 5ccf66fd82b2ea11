"""procpy's benchmark suite: every workload script runs under CPython 3.11 (`python3`), procpy
and, when installed, the peer `rustpython` 0.5.0 (its bundled pure-Python multiprocessing),
alternating runs in one invocation; it prints medians and ratios to CPython and can regenerate
docs/performance.md's generated section and the SVG chart beside it.

    python3 tests/bench/compare.py PROCPY [--runs N] [--scale S] [--write-docs [DIR]] [script.py ...]

Or `cargo bench --bench suite -- [--runs N] [--scale S] [--write-docs]`, which builds procpy
in release mode and passes its path. Each script prints one JSON line of {workload: number}.
The peer is looked up as $PROCPY_BENCH_RUSTPYTHON or `rustpython` on PATH, and skipped when absent
(install: `cargo install rustpython --version 0.5.0 --locked`).

Standard library only: the suite must run on a bare python3."""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BENCHES = ['boot', 'ipc_basics.py', 'pool.py', 'threads.py', 'sync.py']

# workload: (label, 'time' (lower is better) or 'rate' (higher is better), target, issue).
# A target is a bound on procpy/CPython ('<= x' for times, '>= x' for rates); targets on an
# absolute procpy number (a speedup) say 'abs'.
WORKLOADS = {
    'boot_ms': ('bare start: -c pass, ms (evidence)', 'time', None, 6),
    'raw_fork_ms': ('os.fork+_exit+waitpid, ms (evidence)', 'time', None, 6),
    'start_join_ms_fork': ('fork start+join, ms', 'time', ('<=', 0.5), 6),
    'start_join_ms_forkserver': ('forkserver start+join, ms', 'time', ('<=', 0.5), 6),
    'start_join_ms_spawn': ('spawn start+join, ms', 'time', ('<=', 1.0), 6),
    'queue_msgs_per_s': ('Queue child->parent, msgs/s', 'rate', ('>=', 2.0), 6),
    'pipe_round_trip_us': ('Pipe round trip, us', 'time', ('<=', 0.5), 6),
    'pipe_bulk_mib_per_s': ('Pipe 64 x 4 MiB send_bytes, MiB/s', 'rate', ('>=', 2.0), 6),
    'map_identity_us_per_item': ('Pool(2).map identity, us/item', 'time', ('<=', 1.0), 3),
    'apply_async_get_us_per_task': ('apply_async().get() one by one, us', 'time', ('<=', 0.5), 3),
    'cpu_serial_ms': ('CPU-bound 8 chunks serial, ms', 'time', None, 3),
    'cpu_pool2_ms': ('CPU-bound 8 chunks Pool(2), ms', 'time', None, 3),
    'cpu_pool2_speedup': ('Pool(2) speedup over serial', 'rate', ('abs>=', 1.9), 3),
    'threads2_serial_ms': ('CPU-bound x2 serial, ms', 'time', None, 6),
    'threads2_ms': ('CPU-bound in 2 threads, ms', 'time', None, 6),
    'threads2_speedup': ('2 threads speedup over serial', 'rate', None, 6),
    'lock_pair_us': ('Lock acquire+release, us', 'time', ('<=', 1.0), 4),
    'lock_with_us': ('with Lock: pass, us', 'time', None, 4),
    'value_4x_increments_ms': ('4 procs x 10k Value += 1 under lock, ms', 'time', ('<=', 1.0), 4),
    'rlock_pair_us': ('RLock acquire+release, us', 'time', None, 4),
    'event_is_set_us': ('Event.is_set, us', 'time', None, 4),
    'manager_dict_set_us': ('Manager dict set round trip, us', 'time', ('<=', 1.0), 4),
    'manager_dict_get_us': ('Manager dict get round trip, us', 'time', ('<=', 1.0), 4),
}

BEGIN = '<!-- benchmark suite: generated from here -->'
END = '<!-- benchmark suite: generated up to here -->'


def run_one(exe, script, scale):
    """One run of one script; its last stdout line is the JSON result (None if it failed).
    The pseudo-script 'boot' times the interpreter starting and exiting (`-c pass`): what every
    spawned child pays before it can run anything."""
    if script == 'boot':
        import time
        times = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([exe, '-c', 'pass'], check=True)
            times.append((time.perf_counter() - t) * 1e3)
        return {'boot_ms': statistics.median(times)}
    proc = subprocess.run([exe, os.path.join(HERE, script), str(scale)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.stderr.write('%s %s failed (status %s):\n%s' % (exe, script, proc.returncode, proc.stderr[-2000:]))
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(peers, scripts, runs, scale):
    """{peer: {workload: [values...]}}, runs alternating between peers."""
    results = {name: {} for name, _ in peers}
    for script in scripts:
        for _ in range(runs):
            for name, exe in peers:
                out = run_one(exe, script, scale)
                for key, value in (out or {}).items():
                    results[name].setdefault(key, []).append(value)
    return results


def ratio(p, c):
    return p / c if c else float('nan')


def verdict(key, p, c):
    """'met', 'not met' or '' (no target)."""
    spec = WORKLOADS.get(key, (key, 'time', None, None))[2]
    if spec is None or p is None or c is None:
        return ''
    op, bound = spec
    value = p if op.startswith('abs') else ratio(p, c)
    ok = value <= bound if op.endswith('<=') else value >= bound
    return 'met' if ok else 'NOT met'


def target_text(key):
    spec = WORKLOADS.get(key, (key, 'time', None, None))[2]
    if spec is None:
        return ''
    op, bound = spec
    return ('speedup >= %g' % bound) if op.startswith('abs') else ('ratio %s %g' % (op, bound))


def table(results, peers, runs):
    """Markdown table rows: one per workload, medians and ratios to CPython."""
    names = [n for n, _ in peers]
    head = ['workload (median of %d)' % runs] + names + ['%s/CPython' % n for n in names[1:]] + ['target', '']
    rows = [head, ['---'] + ['---:'] * (len(head) - 3) + ['---', '---']]
    medians = {}
    # Workloads a script reports that the table does not know yet still get a row.
    for key in results['CPython']:
        WORKLOADS.setdefault(key, (key, 'rate' if key.endswith(('_per_s', '_speedup')) else 'time', None, None))
    for key in WORKLOADS:
        if key not in results['CPython']:
            continue
        med = {n: statistics.median(results[n][key]) if results[n].get(key) else None for n in names}
        medians[key] = med
        c = med['CPython']
        row = [WORKLOADS[key][0]]
        row += ['%.2f' % med[n] if med[n] is not None else '–' for n in names]
        row += ['%.2f' % ratio(med[n], c) if med[n] is not None else '–' for n in names[1:]]
        row += [target_text(key), verdict(key, med['procpy'], c)]
        rows.append(row)
    return rows, medians


def speed_vs_cpython(key, value, c):
    """How many times CPython's speed (bars grow to the right when faster)."""
    kind = WORKLOADS[key][1]
    if key.endswith('_speedup'):
        return value / c
    return c / value if kind == 'time' else value / c


def svg_chart(medians, names):
    """A horizontal bar chart: each workload's speed relative to CPython (1 = CPython's),
    log scale, one bar per interpreter. Plain SVG written here: twenty rectangles do not need
    a plotting library, and the suite must run on a bare python3."""
    import math
    keys = [k for k in medians if WORKLOADS[k][2] is not None]
    others = names[1:]
    colours = {'procpy': '#2b7bba', 'rustpython': '#d9822b'}
    bar_h, gap, left, width = 14, 10, 300, 420
    group_h = bar_h * len(others) + gap
    height = 60 + group_h * len(keys)
    lo, hi = math.log10(1 / 30), math.log10(30)

    def x(v):
        v = min(max(v, 10 ** lo), 10 ** hi)
        return left + (math.log10(v) - lo) / (hi - lo) * width

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">'
           % (left + width + 80, height),
           '<text x="10" y="18" font-size="14">Speed relative to CPython 3.11 (log scale; right of the line is faster; red: target)</text>']
    for i, key in enumerate(keys):
        y0 = 40 + i * group_h
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y0 + bar_h, WORKLOADS[key][0].replace('&', '&amp;')))
        op, bound = WORKLOADS[key][2]
        if not op.startswith('abs'):
            # The target as a speed: a time ratio <= r means at least 1/r times CPython's speed.
            goal = 1 / bound if WORKLOADS[key][1] == 'time' else bound
            out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c0392b" stroke-width="2"><title>target</title></line>'
                       % (x(goal), y0 - 2, x(goal), y0 + group_h - gap + 2))
        for j, name in enumerate(others):
            v = medians[key].get(name)
            if v is None:
                continue
            s = speed_vs_cpython(key, v, medians[key]['CPython'])
            y = y0 + j * bar_h
            x1, x2 = sorted((x(1), x(s)))
            out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %s: %.2fx</title></rect>'
                       % (x1, y, max(x2 - x1, 1), bar_h - 2, colours.get(name, '#888'), name, key, s))
            out.append('<text x="%.1f" y="%d" font-size="10">%.2fx</text>' % (max(x(s), x(1)) + 4, y + bar_h - 4, s))
    out.append('<line x1="%.1f" y1="30" x2="%.1f" y2="%d" stroke="black"/>' % (x(1), x(1), height - 10))
    for j, name in enumerate(others):
        out.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>'
                   % (left + width - 80, 24 + j * 14 - 10, colours.get(name, '#888'), left + width - 66, 24 + j * 14 - 1, name))
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def write_docs(docs_dir, rows, medians, names, runs, scale, load):
    svg = os.path.join(docs_dir, 'performance-ratios.svg')
    with open(svg, 'w') as f:
        f.write(svg_chart(medians, names))
    md = '\n'.join('| ' + ' | '.join(r) + ' |' for r in rows)
    block = '\n'.join([
        BEGIN,
        '',
        '## Latest suite run — %s' % datetime.date.today().isoformat(),
        '',
        'Command: `python3 tests/bench/compare.py PROCPY --runs %d --scale %g --write-docs`; '
        'load average at the start: %s; peers: %s.' % (runs, scale, load, ', '.join(names)),
        '',
        md,
        '',
        '![speed relative to CPython](performance-ratios.svg)',
        '',
        END,
    ])
    path = os.path.join(docs_dir, 'performance.md')
    text = open(path).read() if os.path.exists(path) else '# Performance\n'
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(text)
    return path, svg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('procpy', help='the procpy binary to measure')
    ap.add_argument('scripts', nargs='*', help='workload scripts (default: all)')
    ap.add_argument('--runs', type=int, default=5, help='runs per interpreter (median reported)')
    ap.add_argument('--scale', type=float, default=1.0, help='shrink or grow every workload')
    ap.add_argument('--write-docs', nargs='?', const=os.path.join(ROOT, 'docs'), metavar='DIR',
                    help='regenerate DIR/performance.md (generated section) and DIR/performance-ratios.svg')
    args = ap.parse_intermixed_args()
    runs, scale = args.runs, args.scale
    peers = [('CPython', 'python3'), ('procpy', os.path.abspath(args.procpy))]
    peer = os.environ.get('PROCPY_BENCH_RUSTPYTHON') or shutil.which('rustpython')
    if peer:
        peers.append(('rustpython', peer))
    else:
        print('(rustpython not found: the peer column is skipped; '
              '`cargo install rustpython --version 0.5.0 --locked` adds it)')
    load = '%.2f' % os.getloadavg()[0]
    results = measure(peers, args.scripts or BENCHES, runs, scale)
    rows, medians = table(results, peers, runs)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        if r[0] == '---':
            continue
        print('  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if args.write_docs:
        for p in write_docs(args.write_docs, rows, medians, [n for n, _ in peers], runs, scale, load):
            print('wrote', p)
    missing = [k for k in medians if medians[k]['procpy'] is None]
    if missing:
        print('procpy produced no result for: %s' % ', '.join(missing))
        sys.exit(1)


if __name__ == '__main__':
    main()
