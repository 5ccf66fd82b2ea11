"""The cluster pool's benchmark: starts a redis-server of its own (127.0.0.1, a free port, no
persistence) and one `procpy worker --processes 2`, then runs cluster_pool.py under procpy on
the cluster (`--cluster URL`) and locally, alternating, and prints medians side by side.

    python3 tests/bench/cluster.py PROCPY [--runs N] [--scale S]

Standard library only (like compare.py). Timings are printed, never asserted; docs/performance.md
("Cluster") quotes a run of a release build."""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = 'procpy-bench-cluster-key'

# workload: (label, 'time' or 'rate')
WORKLOADS = {
    'map_items_per_s': ('Pool.map trivial fn, 100k items, default chunksize, items/s', 'rate'),
    'apply_async_1000_s': ('1,000 apply_async then all get, s', 'time'),
    'round_trip_us': ('one task round trip (median), us', 'time'),
    'per_task_us': ('map with chunksize=1, us per task', 'time'),
    'cpu_serial_ms': ('CPU-bound 8 chunks serial, ms', 'time'),
    'cpu_pool_ms': ('CPU-bound 8 chunks Pool(2), ms', 'time'),
    'cpu_speedup': ('Pool(2) speedup over serial', 'rate'),
}


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def answers(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2) as s:
            s.sendall(b'PING\r\n')
            return s.recv(16).startswith(b'+PONG')
    except OSError:
        return False


def start_redis(workdir):
    if not shutil.which('redis-server'):
        sys.exit('the cluster benchmark needs redis-server: apt-get install -y redis-server')
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1',
                                 '--save', '', '--appendonly', 'no', '--dir', workdir,
                                 '--logfile', os.path.join(workdir, 'redis.log')],
                                cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if answers(port):
                return proc, port
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    sys.exit('redis-server did not start')


def stop(proc, group=False):
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_one(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        sys.stderr.write('%s failed (status %s):\n%s' % (' '.join(cmd), proc.returncode, proc.stderr[-2000:]))
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('procpy', help='the procpy binary to measure')
    ap.add_argument('--runs', type=int, default=3, help='runs of each (median reported)')
    ap.add_argument('--scale', type=float, default=1.0, help='shrink or grow every workload')
    args = ap.parse_args()
    exe = os.path.abspath(args.procpy)
    script = os.path.join(HERE, 'cluster_pool.py')
    workdir = tempfile.mkdtemp(prefix='procpy-redis-bench-')
    redis, port = start_redis(workdir)
    url = 'redis://127.0.0.1:%d/0' % port
    env = dict(os.environ, PROCPY_CLUSTER_KEY=KEY)
    env.pop('PROCPY_CLUSTER', None)
    worker = subprocess.Popen([exe, 'worker', url, '--processes', '2', '--name', 'bench'],
                              cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                              start_new_session=True)
    results = {'local': {}, 'cluster': {}}
    try:
        for _ in range(args.runs):
            for name, cmd in (('local', [exe, script, str(args.scale)]),
                              ('cluster', [exe, '--cluster', url, script, str(args.scale)])):
                out = run_one(cmd, env)
                for k, v in (out or {}).items():
                    results[name].setdefault(k, []).append(v)
    finally:
        stop(worker, group=True)
        stop(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    rows = [('workload (median of %d)' % args.runs, 'local', 'cluster', 'cluster/local')]
    for key, (label, _) in WORKLOADS.items():
        loc, clu = med['local'].get(key), med['cluster'].get(key)
        rows.append((label, '%.2f' % loc if loc is not None else '-',
                     '%.2f' % clu if clu is not None else '-',
                     '%.2f' % (clu / loc) if loc and clu is not None else '-'))
    if 'per_task_us' in med['local'] and 'per_task_us' in med['cluster']:
        rows.append(('broker overhead per task (cluster minus local), us', '', '%.2f' % (
            med['cluster']['per_task_us'] - med['local']['per_task_us']), ''))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print('  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print('load average at the end: %.2f; build: %s' % (os.getloadavg()[0], exe))
    if not med['cluster'] or not med['local']:
        sys.exit(1)


if __name__ == '__main__':
    main()
