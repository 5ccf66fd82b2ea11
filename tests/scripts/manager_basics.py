"""multiprocessing.Manager(): every SyncManager type used from the parent and changed by
children (dict, list, Namespace, Value, Array, Queue, JoinableQueue, Event, Lock, RLock,
Semaphore, BoundedSemaphore, Condition, Barrier), results printed sorted; exceptions raised
through proxies keep their type and message; manager state errors; proxy reprs (address
masked) and str()."""
import multiprocessing
import queue
import re
import sys
import threading

from _check import attempt


def masked(text):
    return re.sub(r'0x[0-9a-f]+', '0x?', text)


def fill(d, l, ns, i):
    d[i] = i * i
    l.append(i)
    setattr(ns, 'x%d' % i, i)


def add_under_lock(lock, v, n):
    for _ in range(n):
        with lock:
            v.value += 1


def array_writer(arr, i):
    arr[i] = i * 10


def producer(q, n, base):
    for i in range(n):
        q.put(base + i)


def joinable_consumer(jq, out):
    while True:
        item = jq.get()
        if item is None:
            jq.task_done()
            return
        out.append(item * 2)
        jq.task_done()


def event_waiter(ev, started, out, i):
    started.release()
    out.append((i, ev.wait(30)))


def barrier_party(b, out, i):
    out.append(b.wait(30) is not None)


def condition_waiter(cond, state, out, i):
    with cond:
        state.append(i)
        cond.notify_all()
        ok = cond.wait_for(lambda: state.count('go') > 0, 30)
        out.append((i, ok))


def semaphore_user(sem, lock, active, peak, done):
    with sem:
        with lock:
            active.value += 1
            peak.append(active.value)
        done.wait(0.05)
        with lock:
            active.value -= 1


def run_procs(ctx, target, argsets):
    ps = [ctx.Process(target=target, args=a) for a in argsets]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return [p.exitcode for p in ps]


def main(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Manager() as m:
        print('manager type:', type(m).__name__, 'started:', m._process.is_alive())
        print('address is', type(m.address).__name__)

        # dict
        d = m.dict({'a': 1})
        print('dict repr:', masked(repr(d)))
        print('dict str:', str(d))
        d['b'] = 2
        d.update(c=3)
        print('dict len/contains/get:', len(d), 'a' in d, 'z' in d, d.get('z', 'dflt'))
        print('dict keys/values/items:', sorted(d.keys()), sorted(d.values()), sorted(d.items()))
        print('dict iter:', sorted(d))
        print('dict copy:', type(d.copy()).__name__, sorted(d.copy().items()))
        print('setdefault:', d.setdefault('e', 5), d.setdefault('a', 99))
        print('pop:', d.pop('e'), d.pop('zz', 'none'))
        attempt('dict missing key', lambda: d['zz'])
        attempt('dict pop missing', lambda: d.pop('zz'))
        del d['c']
        attempt('dict del missing', lambda: d.__delitem__('c'))
        print('getvalue:', d._getvalue() == {'a': 1, 'b': 2}, type(d._getvalue()).__name__)
        e = m.dict()
        attempt('popitem empty', e.popitem)
        e['k'] = 'v'
        print('popitem:', e.popitem(), len(e))
        d.clear()
        print('cleared:', len(d))

        # list
        l = m.list([3, 1, 2])
        print('list repr:', masked(repr(l)), 'str:', str(l))
        l.append(4)
        l.extend([5, 6])
        l.insert(0, 0)
        print('list:', l[:], l[1], l[-1], len(l), 5 in l, 42 in l)
        print('count/index:', l.count(1), l.index(4))
        attempt('list index out of range', lambda: l[100])
        l.remove(0)
        print('pop:', l.pop(), l.pop(0))
        l.sort()
        print('sorted:', l._getvalue())
        l.reverse()
        print('reversed:', l._getvalue())
        l[0] = 'first'
        del l[1]
        print('set/del item:', l._getvalue())
        l2 = l
        l += [7, 8]
        print('iadd keeps the proxy:', l is l2, l._getvalue())
        l3 = m.list([1, 2])
        l3 *= 2
        print('imul:', l3._getvalue(), 'add:', l3 + [9], 'mul:', l3 * 2)
        attempt('pop empty list', lambda: m.list().pop())

        # Namespace
        ns = m.Namespace(a=1, b='two')
        ns.c = [3]
        print('namespace:', ns.a, ns.b, ns.c, str(ns))
        del ns.b
        attempt('namespace missing attribute', lambda: ns.b)
        print('namespace repr:', masked(repr(ns)))

        # Value / Array
        v = m.Value('i', 7)
        print('value:', v.value, v.get(), masked(repr(v)), str(v))
        v.value = 8
        v.set(v.get() + 1)
        print('value after set:', v.value)
        arr = m.Array('i', [0, 0, 0, 0])
        print('array:', len(arr), arr[0], list(arr[:]), str(arr))
        attempt('array bad type', lambda: arr.__setitem__(0, 'x'))

        # children change dict, list and namespace
        d2, l4, ns2 = m.dict(), m.list(), m.Namespace()
        print('exit codes:', run_procs(ctx, fill, [(d2, l4, ns2, i) for i in range(4)]))
        print('children dict:', sorted(d2.items()))
        print('children list:', sorted(l4))
        print('children namespace:', str(ns2))

        # a Lock guards read-modify-write of a Value by four processes
        lock, counter = m.Lock(), m.Value('i', 0)
        print('exit codes:', run_procs(ctx, add_under_lock, [(lock, counter, 25)] * 4))
        print('counter:', counter.value)
        print('array exit codes:', run_procs(ctx, array_writer, [(arr, i) for i in range(4)]))
        print('array from children:', list(arr[:]))

        # Queue
        q = m.Queue()
        print('queue repr:', masked(repr(q)))
        print('queue empty:', q.empty(), q.qsize())
        attempt('get_nowait on empty', q.get_nowait)
        attempt('get with timeout', lambda: q.get(timeout=0.05))
        print('exit codes:', run_procs(ctx, producer, [(q, 5, 100 * k) for k in range(3)]))
        got = []
        while not q.empty():
            got.append(q.get())
        print('queue items:', sorted(got))
        bq = m.Queue(1)
        bq.put('x')
        attempt('put_nowait on full', lambda: bq.put_nowait('y'))
        print('full:', bq.full())

        # JoinableQueue
        jq, out = m.JoinableQueue(), m.list()
        c = ctx.Process(target=joinable_consumer, args=(jq, out))
        c.start()
        for i in range(5):
            jq.put(i)
        jq.put(None)
        jq.join()
        c.join()
        print('joinable:', sorted(out), c.exitcode)
        attempt('task_done too often', jq.task_done)

        # Event: children wait until the parent sets it
        ev, started, ev_out = m.Event(), m.Semaphore(0), m.list()
        print('event initially:', ev.is_set(), ev.wait(0.01))
        ps = [ctx.Process(target=event_waiter, args=(ev, started, ev_out, i)) for i in range(3)]
        for p in ps:
            p.start()
        for _ in ps:
            started.acquire()
        ev.set()
        for p in ps:
            p.join()
        print('event waiters:', sorted(ev_out), ev.is_set())
        ev.clear()
        print('cleared:', ev.is_set())

        # Lock / RLock semantics through proxies
        lk = m.Lock()
        print('lock:', lk.acquire(), lk.acquire(False), lk.acquire(True, 0.05))
        lk.release()
        attempt('release unlocked lock', lk.release)
        rl = m.RLock()
        print('rlock:', rl.acquire(), rl.acquire(), rl.release(), rl.release())
        attempt('release unowned rlock', rl.release)
        with rl:
            print('rlock in with')

        # Semaphore / BoundedSemaphore
        sem, guard = m.Semaphore(2), m.Lock()
        active, peak, done = m.Value('i', 0), m.list(), m.Event()
        run_procs(ctx, semaphore_user, [(sem, guard, active, peak, done)] * 4)
        print('semaphore peak <= 2:', max(peak) <= 2, len(peak))
        bs = m.BoundedSemaphore(1)
        print('bounded:', bs.acquire(), bs.acquire(False))
        bs.release()
        attempt('bounded over-release', bs.release)

        # Condition: children announce themselves, the parent waits for all, then says go
        cond, state, cout = m.Condition(), m.list(), m.list()
        ps = [ctx.Process(target=condition_waiter, args=(cond, state, cout, i)) for i in range(3)]
        for p in ps:
            p.start()
        with cond:
            print('all arrived:', cond.wait_for(lambda: len(state) == 3, 30))
            state.append('go')
            cond.notify_all()
        for p in ps:
            p.join()
        print('condition:', sorted(cout))
        with cond:
            print('wait timeout:', cond.wait(0.01))
        attempt('notify unowned', cond.notify)

        # Barrier
        b, bout = m.Barrier(3), m.list()
        print('barrier:', b.parties, b.n_waiting, b.broken)
        print('exit codes:', run_procs(ctx, barrier_party, [(b, bout, i) for i in range(3)]))
        print('barrier out:', list(bout))
        b2 = m.Barrier(2)
        attempt('barrier timeout', lambda: b2.wait(0.05))
        print('broken:', b2.broken)
        b2.reset()
        print('reset:', b2.broken)

    # state errors
    print('after with: state', m._state.value)
    attempt('start after shutdown', m.start)
    attempt('get_server after shutdown', m.get_server)
    attempt('enter after shutdown', lambda: m.__enter__())
    m2 = multiprocessing.managers.SyncManager(ctx=ctx)
    attempt('create before start', m2.dict)
    attempt('shutdown before start', lambda: m2.shutdown())
    attempt('bad initializer', lambda: m2.start(initializer=5))
    attempt('bad serializer', lambda: multiprocessing.managers.SyncManager(serializer='nope'))
    m2.start()
    attempt('start twice', m2.start)
    attempt('get_server after start', m2.get_server)
    print('objects:', m2._number_of_objects())
    x = m2.list([1])
    print('objects with a list:', m2._number_of_objects())
    del x
    print('objects after del:', m2._number_of_objects())
    m2.shutdown()
    print('shut down:', m2._state.value, m2._process.exitcode)
    m2.shutdown()  # a second call does nothing
    print('done')


if __name__ == '__main__':
    import multiprocessing.managers
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
