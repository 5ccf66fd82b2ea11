"""Leak soak: start and stop children for a long time and check that nothing accumulates.

    <interpreter> tests/soak.py [--cycles N] [--methods fork,spawn,forkserver] [--kinds ...]
    python3 tests/soak.py --compare target/release/procpy [--cycles N] ...

Each kind runs under each start method: a few warm-up cycles (the fork server and resource
tracker start then), a reading, N cycles, a reading. A reading counts this process's
descriptors (/proc/self/fd), threads (/proc/self/task), zombie descendants (state Z), the
descriptors held by its live descendants (the fork server, the resource tracker) and the
/dev/shm segments the soak created that still exist. One JSON line per (method, kind).
--compare runs the same soak under python3 and the given procpy and prints a table.

Kinds (N = --cycles):
  process   N x Process(target=...).start(); join()   (the Process object is then dropped)
  pool      Pool(2, maxtasksperchild=1).map over N tasks, chunksize 1: N workers come and go
  pools     N/50 x Pool(2): map, close, join
  executor  N/50 x ProcessPoolExecutor(2): map, shutdown
  manager   N/200 x Manager(): a list proxy, shutdown
  queue     N/20 x Queue: a child puts a 64 KiB item and a small one, the parent gets both
  broken    N/50 x ProcessPoolExecutor(2) whose worker dies mid-task: BrokenProcessPool
  deaths    N/5 tasks of Pool(2) that each kill their worker: WorkerLostError, a replacement
            (procpy only: CPython's pool waits forever for such a task, bpo-22393)
  shm       N/20 x a SharedMemory segment: the parent creates it, a child writes, the parent
            reads and unlinks it
"""
import gc
import json
import os
import subprocess
import sys
import time

KINDS = ['process', 'pool', 'pools', 'executor', 'broken', 'deaths', 'manager', 'queue', 'shm']
METHODS = ['fork', 'spawn', 'forkserver']


def _noop():
    pass


def _square(x):
    return x * x


def _put_two(q):
    q.put(b'x' * 65536)
    q.put('small')


def _die(x):
    os._exit(3)


def _write_shm(name):
    from multiprocessing import shared_memory
    s = shared_memory.SharedMemory(name)
    s.buf[:5] = b'hello'
    s.close()


def _count(path):
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def _descendants():
    '''(pid, state) of this process's children, their children, and so on.'''
    parent_of, state = {}, {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(')') + 2:].split()
        parent_of[int(d)] = int(fields[1])
        state[int(d)] = fields[0]
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent_of.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    ours.discard(os.getpid())
    return [(pid, state[pid]) for pid in sorted(ours)]


def reading(shm_names):
    kids = _descendants()
    return {
        'fds': _count('/proc/self/fd'),
        'threads': _count('/proc/self/task'),
        'zombies': sum(1 for _, st in kids if st == 'Z'),
        'child_fds': sum(_count('/proc/%d/fd' % pid) for pid, st in kids if st != 'Z'),
        'shm_left': sum(1 for n in shm_names if os.path.exists('/dev/shm/' + n.lstrip('/'))),
    }


def run_kind(ctx, kind, n, shm_names):
    if kind == 'process':
        for _ in range(n):
            p = ctx.Process(target=_noop)
            p.start()
            p.join()
            assert p.exitcode == 0, p.exitcode
        return n
    if kind == 'pool':
        pool = ctx.Pool(2, maxtasksperchild=1)
        got = pool.map(_square, range(n), chunksize=1)
        pool.close()
        pool.join()
        assert got == [x * x for x in range(n)]
        return n
    if kind == 'pools':
        k = max(1, n // 50)
        for _ in range(k):
            pool = ctx.Pool(2)
            assert pool.map(_square, range(10)) == [x * x for x in range(10)]
            pool.close()
            pool.join()
        return k
    if kind == 'executor':
        from concurrent.futures import ProcessPoolExecutor
        k = max(1, n // 50)
        for _ in range(k):
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                assert list(ex.map(_square, range(10))) == [x * x for x in range(10)]
        return k
    if kind == 'broken':
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool
        k = max(1, n // 50)
        for _ in range(k):
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                try:
                    ex.submit(_die, 0).result()
                    raise AssertionError('a dying worker returned')
                except BrokenProcessPool:
                    pass
        return k
    if kind == 'deaths':
        from multiprocessing.pool import WorkerLostError
        k = max(1, n // 5)
        pool = ctx.Pool(2)
        for r in [pool.apply_async(_die, (i,)) for i in range(k)]:
            try:
                r.get()
                raise AssertionError('a dying worker returned')
            except WorkerLostError:
                pass
        pool.close()
        pool.join()
        return k
    if kind == 'manager':
        k = max(1, n // 200)
        for _ in range(k):
            with ctx.Manager() as m:
                lst = m.list([1])
                lst.append(2)
                assert list(lst) == [1, 2]
                del lst
        return k
    if kind == 'queue':
        k = max(1, n // 20)
        for _ in range(k):
            q = ctx.Queue()
            p = ctx.Process(target=_put_two, args=(q,))
            p.start()
            assert len(q.get()) == 65536
            assert q.get() == 'small'
            p.join()
            q.close()
            q.join_thread()
        return k
    if kind == 'shm':
        from multiprocessing import shared_memory
        k = max(1, n // 20)
        for _ in range(k):
            s = shared_memory.SharedMemory(create=True, size=4096)
            shm_names.append(s.name)
            p = ctx.Process(target=_write_shm, args=(s.name,))
            p.start()
            p.join()
            assert bytes(s.buf[:5]) == b'hello'
            s.close()
            s.unlink()
        return k
    raise SystemExit('unknown kind %r' % kind)


def soak(methods, kinds, n):
    import multiprocessing as mp
    for method in methods:
        ctx = mp.get_context(method)
        for kind in kinds:
            if kind == 'deaths' and sys.implementation.name != 'rustpython':
                continue    # CPython's pool would wait forever (bpo-22393)
            shm_names = []
            run_kind(ctx, kind, 2, shm_names)       # warm-up: server, tracker, imports
            before = reading(shm_names)
            t0 = time.monotonic()
            cycles = run_kind(ctx, kind, n, shm_names)
            secs = time.monotonic() - t0
            if kind in ('broken', 'deaths'):
                # These catch errors raised through the stdlib's try/finally and with blocks,
                # and RustPython 0.5 keeps such an error referenced from the frame it passed
                # through: error, traceback and the caller's frame (holding the executor or
                # pool) form a cycle that only the collector frees. CPython frees it at once.
                gc.collect()
            after = reading(shm_names)
            row = {'interpreter': 'procpy' if sys.implementation.name == 'rustpython'
                   else sys.implementation.name, 'method': method, 'kind': kind,
                   'cycles': cycles, 'secs': round(secs, 3),
                   'ms_per_cycle': round(1000 * secs / cycles, 3)}
            for key in before:
                row[key] = [before[key], after[key]]
            print(json.dumps(row), flush=True)


def compare(procpy, args):
    here = os.path.abspath(__file__)
    rows = {}
    for interp in ('python3', procpy):
        out = subprocess.run([interp, here] + args, stdout=subprocess.PIPE, check=True,
                             universal_newlines=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            rows.setdefault((r['method'], r['kind']), {})[
                'CPython' if interp == 'python3' else 'procpy'] = r
    print('| method | kind | cycles | interpreter | fds start→end | threads | zombies | '
          'descendants\' fds | /dev/shm left | ms/cycle |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for (method, kind), by in rows.items():
        for name in ('procpy', 'CPython'):
            r = by.get(name)
            if r is None:
                continue
            print('| %s | %s | %d | %s | %d→%d | %d→%d | %d→%d | %d→%d | %d | %.2f |' % (
                method, kind, r['cycles'], name, r['fds'][0], r['fds'][1],
                r['threads'][0], r['threads'][1], r['zombies'][0], r['zombies'][1],
                r['child_fds'][0], r['child_fds'][1], r['shm_left'][1],
                r['ms_per_cycle']))


def main(argv):
    n, methods, kinds, procpy = 1000, METHODS, KINDS, None
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == '--cycles':
            n = int(argv[i + 1])
        elif a == '--methods':
            methods = argv[i + 1].split(',')
        elif a == '--kinds':
            kinds = argv[i + 1].split(',')
        elif a == '--compare':
            procpy = argv[i + 1]
        else:
            raise SystemExit('unknown argument %r (see the docstring)' % a)
        if a != '--compare':
            rest += [a, argv[i + 1]]
        i += 2
    if procpy is not None:
        compare(procpy, rest)
    else:
        soak(methods, kinds, n)


if __name__ == '__main__':
    main(sys.argv[1:])
