"""Run benchmark scripts under CPython (python3) and procpy, alternating, and print medians
and ratios (procpy / CPython). Usage:
    python3 compare.py PROCPY_BINARY [runs] [scale] [script.py ...]
Every script prints one JSON line of {workload: number}; by default all of BENCHES run."""
import json
import os
import statistics
import subprocess
import sys

BENCHES = ['ipc_basics.py', 'pool.py']

here = os.path.dirname(os.path.abspath(__file__))
procpy = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
scale = sys.argv[3] if len(sys.argv) > 3 else '1.0'
scripts = sys.argv[4:] or BENCHES
for script in scripts:
    results = {'cpython': [], 'procpy': []}
    for _ in range(runs):
        for name, exe in (('cpython', 'python3'), ('procpy', procpy)):
            out = subprocess.run([exe, os.path.join(here, script), scale],
                                 check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print('== %s' % script)
    print('%-28s %12s %12s %8s' % ('workload (median of %d)' % runs, 'CPython', 'procpy', 'ratio'))
    for key in results['cpython'][0]:
        c = statistics.median(r[key] for r in results['cpython'])
        p = statistics.median(r[key] for r in results['procpy'])
        print('%-28s %12.2f %12.2f %8.2f' % (key, c, p, p / c))
