"""Condition, Event and Barrier across processes: Event set/clear/wait with
and without timeouts and a child released by the parent's set(); Condition
wait/notify/notify_all/wait_for with a shared value, timeouts, the misuse
AssertionErrors and the repr; Barrier indices, the action run exactly once,
parties/n_waiting/broken, timeouts, abort() and reset() raising
BrokenBarrierError, and the 'only through inheritance' errors."""
import functools
import multiprocessing
import sys
import threading

from _check import attempt


def wait_event(ev, q):
    q.put(('waiting', ev.wait(10)))


def wait_for_value(cond, shared, target, q):
    with cond:
        ok = cond.wait_for(lambda: shared.value >= target, timeout=10)
        q.put((target, ok, shared.value >= target))


def plain_wait(cond, ready, q):
    with cond:
        ready.release()
        q.put(cond.wait(10))


def barrier_party(barrier, q):
    q.put(barrier.wait(10))


def barrier_broken(barrier, q):
    try:
        barrier.wait(10)
        q.put('passed')
    except threading.BrokenBarrierError:
        q.put('BrokenBarrierError')


def action(q):
    q.put('action')


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    ev = multiprocessing.Event()
    print('is_set:', ev.is_set(), 'wait(0.05):', ev.wait(0.05))
    ev.set()
    print('after set:', ev.is_set(), ev.wait(), ev.wait(0))
    ev.clear()
    print('after clear:', ev.is_set(), ev.wait(0.01))
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=wait_event, args=(ev, q)) for _ in range(3)]
    for p in procs:
        p.start()
    ev.set()
    print('children released:', sorted(q.get(timeout=10) for _ in procs))
    for p in procs:
        p.join()

    cond = multiprocessing.Condition()
    print(cond)
    attempt('notify without lock', cond.notify)
    attempt('wait without lock', cond.wait)
    with cond:
        print('wait(0.05) times out:', cond.wait(0.05))
        print('wait_for false predicate:', cond.wait_for(lambda: False, timeout=0.05))
        print('wait_for true predicate:', cond.wait_for(lambda: 42))
        cond.notify()   # nobody waiting: no-op
        cond.notify_all()

    # Children wait for a shared value to reach their target; the parent raises it step by step.
    shared = multiprocessing.Value('i', 0)
    procs = [multiprocessing.Process(target=wait_for_value, args=(cond, shared, t, q)) for t in (1, 2, 3)]
    for p in procs:
        p.start()
    results = []
    for step in (1, 2, 3):
        with cond:
            shared.value = step
            cond.notify_all()
        results.append(q.get(timeout=10))
    print('wait_for results:', sorted(results))
    for p in procs:
        p.join()

    # notify(1) wakes exactly one of two sleepers; notify_all the other.
    ready = multiprocessing.Semaphore(0)
    procs = [multiprocessing.Process(target=plain_wait, args=(cond, ready, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=10)
    with cond:   # both are now inside wait(): they released the lock to sleep
        cond.notify(1)
    first = q.get(timeout=10)
    print('one woken:', first, 'other still waiting:', q.empty())
    with cond:
        cond.notify_all()
    print('second woken:', q.get(timeout=10))
    for p in procs:
        p.join()
    print('condition with Lock:', multiprocessing.Condition(multiprocessing.Lock()))

    b = multiprocessing.Barrier(4, action=lambda: None)
    print('parties:', b.parties, 'n_waiting:', b.n_waiting, 'broken:', b.broken)
    b = multiprocessing.Barrier(4, action=None)
    procs = [multiprocessing.Process(target=barrier_party, args=(b, q)) for _ in range(3)]
    for p in procs:
        p.start()
    mine = b.wait(10)
    print('indices:', sorted([mine] + [q.get(timeout=10) for _ in procs]))
    for p in procs:
        p.join()
    # Reusable: a second round.
    procs = [multiprocessing.Process(target=barrier_party, args=(b, q)) for _ in range(3)]
    for p in procs:
        p.start()
    mine = b.wait(10)
    print('second round:', sorted([mine] + [q.get(timeout=10) for _ in procs]))
    for p in procs:
        p.join()

    # The action runs once per round, in one of the parties.
    aq = multiprocessing.Queue()
    b2 = multiprocessing.Barrier(3, action=functools.partial(action, aq))
    procs = [multiprocessing.Process(target=barrier_party, args=(b2, q)) for _ in range(3)]
    for p in procs:
        p.start()
    print('three children pass:', sorted(q.get(timeout=10) for _ in procs))
    for p in procs:
        p.join()
    print('action ran:', aq.get(timeout=10), 'then nothing more:', aq.empty())

    # Timeout breaks the barrier for everyone.
    b3 = multiprocessing.Barrier(3)
    attempt('wait(0.05) alone', lambda: b3.wait(0.05))
    print('broken:', b3.broken)
    attempt('wait on broken', lambda: b3.wait(1))
    b3.reset()
    print('after reset broken:', b3.broken)

    # abort() releases a waiting child with BrokenBarrierError.
    b4 = multiprocessing.Barrier(2)
    p = multiprocessing.Process(target=barrier_broken, args=(b4, q))
    p.start()
    while b4.n_waiting < 1:
        pass
    b4.abort()
    print('child saw:', q.get(timeout=10))
    p.join()

    # procpy's codec adds where in the object the culprit was found: compare the message only.
    a, c = multiprocessing.Pipe()
    for obj in (cond, ev, b):
        try:
            a.send(obj)
        except RuntimeError as e:
            print('send', type(obj).__name__, str(e).split(' (found at')[0])
