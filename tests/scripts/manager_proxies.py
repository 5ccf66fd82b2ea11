"""Manager proxies travelling: as Process arguments, through a multiprocessing Queue and a
Pipe, as Pool task arguments (map and apply_async), inside another proxy's call (a managed
list stored in a managed dict, read back and changed there and by a child), an AutoProxy
(manager Queue) in a child, proxies used from several threads at once, the manager's own
Pool (map, apply_async AsyncResult proxy, imap Iterator proxy), iterating a DictProxy, and a
proxy's deepcopy (the referent's value)."""
import copy
import multiprocessing
import re
import sys
import threading

from _check import attempt


def masked(text):
    return re.sub(r'0x[0-9a-f]+', '0x?', text)


def append_from_queue(q, done):
    lst = q.get()
    lst.append('via queue')
    done.put(type(lst).__name__)


def append_from_pipe(conn):
    lst = conn.recv()
    lst.append('via pipe')
    conn.send(len(lst))
    conn.close()


def pool_task(args):
    d, i = args
    d[i] = -i
    return i


def pool_apply(lst, x):
    lst.append(x)
    return len(lst) > 0


def nested_child(outer):
    inner = outer['inner']
    inner.append('child')
    outer['seen'] = type(inner).__name__


def autoproxy_child(q, out):
    out.put(('child got', q.get()))
    q.put('from child')


def square(x):
    return x * x


def threads_use(d, n, k):
    for i in range(n):
        d['%d-%d' % (k, i)] = i


def main(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Manager() as m:
        lst = m.list()

        # through a multiprocessing.Queue
        q, done = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=append_from_queue, args=(q, done))
        p.start()
        q.put(lst)
        print('child saw:', done.get(timeout=30))
        p.join()

        # through a Pipe
        a, b = ctx.Pipe()
        p = ctx.Process(target=append_from_pipe, args=(b,))
        p.start()
        a.send(lst)
        print('child length:', a.recv())
        p.join()
        print('list:', lst._getvalue(), p.exitcode)

        # as Pool task arguments
        d = m.dict()
        with ctx.Pool(2) as pool:
            print('map:', pool.map(pool_task, [(d, i) for i in range(6)]))
            print('apply_async:', pool.apply_async(pool_apply, (lst, 'pool')).get(30))
        print('pool dict:', sorted(d.items()))
        print('list:', sorted(lst._getvalue()))

        # nested: a managed list inside a managed dict
        outer = m.dict()
        outer['inner'] = m.list(['parent'])
        inner = outer['inner']
        print('nested type:', type(inner).__name__, masked(repr(inner)))
        inner.append('parent again')
        p = ctx.Process(target=nested_child, args=(outer,))
        p.start()
        p.join()
        print('nested:', outer['inner']._getvalue(), outer['seen'], p.exitcode)
        print('nested str:', str(outer['inner']))
        # the dict now holds the only reference to the list: it must stay usable
        del inner
        outer['inner'].append('still there')
        print('nested after del:', outer['inner'][:])
        outer['lists'] = [m.list([i]) for i in range(3)]
        print('list of proxies:', [x[0] for x in outer['lists']])

        # an AutoProxy (a manager Queue) used by a child
        mq, out = m.Queue(), ctx.Queue()
        mq.put('from parent')
        p = ctx.Process(target=autoproxy_child, args=(mq, out))
        p.start()
        print(out.get(timeout=30))
        p.join()
        print('parent got:', mq.get(timeout=30))

        # several threads, each with its own connection
        td = m.dict()
        ts = [threading.Thread(target=threads_use, args=(td, 20, k)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print('threads:', len(td), sorted(td.values())[:5])

        # the manager's own Pool
        mp_pool = m.Pool(2)
        print('pool proxy:', masked(repr(mp_pool)))
        print('manager pool map:', mp_pool.map(square, range(5)))
        r = mp_pool.apply_async(square, (7,))
        print('async result proxy:', masked(repr(r)))
        print('async:', r.get(30), r.ready(), r.successful())
        it = mp_pool.imap(square, range(4))
        print('iterator proxy:', masked(repr(it)), list(it))
        mp_pool.close()
        mp_pool.join()

        # iterating a DictProxy returns an Iterator proxy
        d3 = m.dict({'x': 1, 'y': 2})
        it = iter(d3)
        print('dict iterator:', masked(repr(it)), sorted(it))
        attempt('next on exhausted iterator', lambda: next(it))
        print('deepcopy:', copy.deepcopy(d3), type(copy.deepcopy(d3)).__name__)
    print('done')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
