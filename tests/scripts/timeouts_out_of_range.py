"""Timeouts no clock can hold (infinity, NaN, centuries) given to poll, Queue.get/put,
connection.wait, Lock.acquire and Event.wait: the exception CPython raises for each (its
nanosecond clock: OverflowError/ValueError; its sem_timedwait: OSError EINVAL), never a crash;
-infinity is 'now'."""
import sys
import threading

import multiprocessing as mp
import multiprocessing.connection


def show(label, f):
    try:
        r = f()
    except Exception as e:
        print('%s -> %s: %s' % (label, type(e).__name__, e))
    else:
        print('%s -> %r' % (label, r))


def main():
    a, b = mp.Pipe()
    q = mp.Queue()
    full = mp.Queue(1)
    full.put(1)
    lock = mp.Lock()
    lock.acquire()
    event = mp.Event()
    for v in (float('inf'), float('nan'), 1e10, 1e18, 1e7, 2147483.6471):
        show('poll(%r)' % v, lambda: a.poll(v))
        show('Queue.get(timeout=%r)' % v, lambda: q.get(timeout=v))
        show('wait(timeout=%r)' % v, lambda: mp.connection.wait([a], v))
    for v in (float('inf'), float('nan'), float('-inf'), -1e18):
        show('Lock.acquire(timeout=%r)' % v, lambda: lock.acquire(timeout=v))
        show('Event.wait(%r)' % v, lambda: event.wait(v))
    for v in (float('inf'), float('nan')):
        show('Queue.put(timeout=%r) when full' % v, lambda: full.put(2, timeout=v))
    for v in (float('-inf'), -1e18):
        show('poll(%r)' % v, lambda: a.poll(v))
        show('wait(timeout=%r)' % v, lambda: mp.connection.wait([a], v))
    # Long timeouts that end early because the awaited thing happens: a helper thread does it
    # (before or during the wait: same result). 2147483.647 s is the longest poll() takes;
    # the semaphore waits take any.
    def soon(f):
        t = threading.Thread(target=f)
        t.start()
        return t
    for label, act, wait in (
        ('poll(2147483.647)', lambda: b.send_bytes(b'x'), lambda: a.poll(2147483.647)),
        ('wait(timeout=2147483.647)', lambda: None, lambda: len(mp.connection.wait([a], 2147483.647))),
        ('Queue.get(timeout=2147483.647)', lambda: q.put('item'), lambda: q.get(timeout=2147483.647)),
        ('Lock.acquire(timeout=1e7)', lock.release, lambda: lock.acquire(timeout=1e7)),
        ('Queue.put(timeout=1e7) when full', full.get, lambda: full.put(3, timeout=1e7)),
    ):
        t = soon(act)
        show(label, wait)
        t.join()
    a.recv_bytes()
    full.get(timeout=5)
    full.put(2)
    # Still usable afterwards.
    b.send('ok')
    print('then:', a.recv(), full.get(timeout=5), lock.acquire(False) is False)


if __name__ == '__main__':
    mp.set_start_method(sys.argv[1] if len(sys.argv) > 1 else 'fork')
    main()
