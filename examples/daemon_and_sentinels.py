"""Lesson: a daemon process (killed automatically when the main program
exits, and not allowed to start children of its own), plus waiting for the
first of several children to finish with multiprocessing.connection.wait()
on their sentinels. To make "first" deterministic only one worker is
allowed to finish; the parent then releases the others through a queue.

Usage: procpy daemon_and_sentinels.py [fork|spawn|forkserver]"""
import multiprocessing
import sys
from multiprocessing.connection import wait


def heartbeat(conn):
    conn.send('daemon started')
    conn.recv()             # never answered: the daemon is killed at exit


def worker(n, release_q):
    if n != 0:
        release_q.get()     # only worker 0 may finish on its own


if __name__ == '__main__':
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1])

    a, b = multiprocessing.Pipe()
    d = multiprocessing.Process(target=heartbeat, args=(b,), daemon=True)
    d.start()
    print(a.recv(), '- daemon:', d.daemon)

    release_q = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=worker, args=(n, release_q), name='worker-%d' % n)
               for n in range(3)]
    for w in workers:
        w.start()
    by_sentinel = {w.sentinel: w for w in workers}

    ready = wait(list(by_sentinel))
    print('first to finish:', [by_sentinel[s].name for s in ready])

    for _ in workers[1:]:
        release_q.put('go')
    finished = set(by_sentinel[s].name for s in ready)
    while len(finished) < len(workers):
        for s in wait([s for s, w in by_sentinel.items() if w.name not in finished]):
            finished.add(by_sentinel[s].name)
    print('all finished:', sorted(finished))
    for w in workers:
        w.join()
    print('exitcodes:', [w.exitcode for w in workers])
    print('daemon still alive before exit:', d.is_alive())
    print('main ends; the daemon is terminated automatically')
