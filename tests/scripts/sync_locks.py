"""Lock, RLock, Semaphore, BoundedSemaphore across processes: acquire/release
results, timeouts, reprs (owner None / MainProcess / SomeOtherThread /
SomeOtherProcess), exact errors (over-release, RLock owner check), a lock
held by a child, a Lock released by another process, counters incremented
under a lock by four processes ending exact, locks as Pool initargs, and the
'only through inheritance' error when a lock is sent over a Pipe."""
import multiprocessing
import sys
import threading

from _check import attempt


def hold_until_told(lock, held, go):
    lock.acquire()
    held.set()
    go.wait(10)
    lock.release()


def release_it(lock):
    lock.release()


def add_many(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value += 1


def init_pool(lock):
    global pool_lock
    pool_lock = lock


def locked_square(x):
    with pool_lock:
        return x * x


def sem_worker(sem, inside, peak, q):
    with sem:
        with inside.get_lock():
            inside.value += 1
            if inside.value > peak.value:
                peak.value = inside.value
        q.put('in')
        with inside.get_lock():
            inside.value -= 1


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    lock = multiprocessing.Lock()
    print(type(lock).__name__, lock)
    print('acquire:', lock.acquire())
    print('repr held:', lock)
    print('acquire(False):', lock.acquire(False))
    print('acquire(timeout=0.05):', lock.acquire(timeout=0.05))
    print('acquire(True, 0):', lock.acquire(True, 0))
    seen = []
    t = threading.Thread(target=lambda: seen.append(repr(lock)))
    t.start(); t.join()
    print('from another thread:', seen[0])
    lock.release()
    attempt('release unlocked', lock.release)
    with lock:
        print('with:', lock)
    print('after with:', lock)

    def in_thread():
        with lock:
            seen.append(repr(lock))
    t = threading.Thread(target=in_thread, name='Worker')
    t.start(); t.join()
    print('held in a named thread:', seen[-1])

    r = multiprocessing.RLock()
    print(type(r).__name__, r)
    print('rlock acquire x3:', r.acquire(), r.acquire(), r.acquire(timeout=1))
    print('repr:', r)
    r.release(); r.release()
    print('after two releases:', r)
    out = []
    t = threading.Thread(target=lambda: out.append((r.acquire(timeout=0.05), repr(r))))
    t.start(); t.join()
    print('other thread:', out[0])
    t = threading.Thread(target=lambda: attempt('release from other thread', r.release))
    t.start(); t.join()
    r.release()
    attempt('release unowned rlock', r.release)

    s = multiprocessing.Semaphore(2)
    print(type(s).__name__, s, s.get_value())
    print('acquire x3:', s.acquire(), s.acquire(), s.acquire(False))
    s.release(); s.release(); s.release()
    print('released x3 (no bound):', s, s.get_value())
    b = multiprocessing.BoundedSemaphore(2)
    print(b)
    b.acquire(); b.release()
    attempt('bounded over-release', b.release)
    attempt('Semaphore(-1)', lambda: multiprocessing.Semaphore(-1))
    z = multiprocessing.Semaphore(0)
    print('Semaphore(0) acquire(timeout=0.05):', z.acquire(timeout=0.05))

    # A lock held by a child: the parent sees SomeOtherProcess and cannot take it.
    held, go = multiprocessing.Event(), multiprocessing.Event()
    p = multiprocessing.Process(target=hold_until_told, args=(lock, held, go))
    p.start()
    print('child holds:', held.wait(10))
    print('parent repr:', lock)
    print('parent acquire(timeout=0.1):', lock.acquire(timeout=0.1))
    go.set()
    print('after the child releases:', lock.acquire(timeout=10))
    p.join()
    print('child exit:', p.exitcode)

    # A Lock (not an RLock) may be released by another process.
    p = multiprocessing.Process(target=release_it, args=(lock,))
    p.start(); p.join()
    print('released by a child:', lock, p.exitcode)

    # Four processes, 2000 increments each, under one lock: exact.
    counter = multiprocessing.Value('i', 0, lock=False)
    procs = [multiprocessing.Process(target=add_many, args=(lock, counter, 2000)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print('counter:', counter.value, [p.exitcode for p in procs])

    # A Semaphore(2) lets at most two children in at once.
    sem = multiprocessing.Semaphore(2)
    inside, peak = multiprocessing.Value('i', 0), multiprocessing.Value('i', 0)
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=sem_worker, args=(sem, inside, peak, q)) for _ in range(5)]
    for p in procs:
        p.start()
    print('entered:', [q.get(timeout=10) for _ in procs].count('in'))
    for p in procs:
        p.join()
    print('peak <= 2:', peak.value <= 2, 'value back to', sem.get_value())

    # Locks travel to pool workers as initargs.
    with multiprocessing.Pool(2, initializer=init_pool, initargs=(lock,)) as pool:
        print('pool with lock:', pool.map(locked_square, range(6)))

    # ... but not through a Pipe (nor pickle), as CPython.
    a, c = multiprocessing.Pipe()
    for obj in (multiprocessing.Lock(), multiprocessing.RLock(), multiprocessing.Semaphore(),
                multiprocessing.BoundedSemaphore()):
        attempt('send ' + type(obj).__name__, lambda: a.send(obj))
    a.send('still works')
    print(c.recv())
    import pickle
    attempt('pickle Lock', lambda: pickle.dumps(multiprocessing.Lock()))
