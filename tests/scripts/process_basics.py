"""Process lifecycle basics: args/kwargs, names, is_alive, exitcode, pid,
sentinel, nested naming. Children report back through a Queue; only the
parent prints."""
import multiprocessing
import os
import sys


def report(q, *args, **kwargs):
    me = multiprocessing.current_process()
    q.put(('report', me.name, args, sorted(kwargs.items()),
           me.pid == os.getpid(), me.ident == os.getpid()))


def wait_for_go(q_in, q_out):
    q_out.put('ready')
    q_out.put(('got', q_in.get()))


def spawn_grandchild(q):
    me = multiprocessing.current_process()
    g = multiprocessing.Process(target=report, args=(q, 'grand'))
    q.put(('grandchild name before start', g.name))
    g.start()
    g.join()
    q.put(('grandchild exitcode', g.exitcode, me.name))


def worker(q, i):
    q.put((i, i * i, multiprocessing.current_process().name))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q = multiprocessing.Queue()

    # default name, state before start
    p = multiprocessing.Process(target=report, args=(q, 1, 'two', None),
                                kwargs={'b': 2, 'a': [1]})
    print('name:', p.name)
    print('daemon default:', p.daemon)
    print('alive before start:', p.is_alive())
    print('exitcode before start:', p.exitcode)
    print('pid before start:', p.pid)
    print('start returns:', p.start())
    print('pid is int:', isinstance(p.pid, int), p.pid > 0, p.pid != os.getpid())
    print('ident == pid:', p.ident == p.pid)
    print('sentinel is int:', isinstance(p.sentinel, int))
    print('child reported:', q.get(timeout=10))
    print('join returns:', p.join())
    print('alive after join:', p.is_alive())
    print('exitcode after join:', p.exitcode)

    # explicit name, name setter
    p = multiprocessing.Process(target=report, args=(q,), name='worker-x')
    print('explicit name:', p.name)
    p.name = 'renamed'
    print('renamed:', p.name)
    p.start()
    print('child reported:', q.get(timeout=10))
    p.join()
    print('exitcode:', p.exitcode)

    # no target: run() does nothing
    p = multiprocessing.Process()
    p.start()
    p.join()
    print('no target exitcode:', p.exitcode)

    # is_alive while child is blocked; join with timeout on a live child
    q_in = multiprocessing.Queue()
    q_out = multiprocessing.Queue()
    p = multiprocessing.Process(target=wait_for_go, args=(q_in, q_out))
    p.start()
    print('blocked child says:', q_out.get(timeout=10))
    print('alive while blocked:', p.is_alive())
    p.join(0.05)
    print('exitcode after join(timeout) on live child:', p.exitcode)
    q_in.put('go')
    print('blocked child then says:', q_out.get(timeout=10))
    p.join()
    print('alive after release:', p.is_alive(), 'exitcode:', p.exitcode)

    # several children at once; results sorted
    procs = [multiprocessing.Process(target=worker, args=(q, i)) for i in range(4)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=10) for _ in procs)
    for p in procs:
        p.join()
    print('workers:', results)
    print('worker exitcodes:', [p.exitcode for p in procs])

    # nested: a child starting its own child gets a 'Parent:N' style name
    p = multiprocessing.Process(target=spawn_grandchild, args=(q,))
    pname = p.name
    p.start()
    # grandchild and child put concurrently: order by tag, not arrival
    msgs = {m[0]: m[1:] for m in (q.get(timeout=10) for _ in range(3))}
    p.join()
    print('nested parent name:', pname)
    for tag in sorted(msgs):
        print('nested:', tag, msgs[tag])
    print('nested exitcode:', p.exitcode)
