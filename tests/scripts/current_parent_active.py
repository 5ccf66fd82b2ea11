"""current_process(), parent_process(), active_children(), cpu_count() and
authkey, seen from the parent, a child and a grandchild."""
import multiprocessing
import os
import sys


def child_info(q, parent_pid, parent_authkey):
    me = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    q.put(('child', me.name, me.pid == os.getpid(), me.is_alive(), me.daemon,
           parent is not None and parent.name, parent is not None and parent.pid == parent_pid,
           parent is not None and parent.is_alive(),
           len(multiprocessing.active_children()),
           isinstance(me.authkey, bytes), len(me.authkey),
           bytes(me.authkey) == parent_authkey))


def grandparent(q):
    a, b = multiprocessing.Pipe()
    g = multiprocessing.Process(target=grandchild, args=(q, os.getpid(), b))
    g.start()
    a.recv()
    q.put(('middle', 'active children while grandchild blocked',
           len(multiprocessing.active_children())))
    a.send('go')
    g.join()
    q.put(('middle', 'active children after join', len(multiprocessing.active_children())))


def grandchild(q, middle_pid, conn):
    parent = multiprocessing.parent_process()
    q.put(('grandchild', multiprocessing.current_process().name,
           parent.name, parent.pid == middle_pid))
    conn.send('ready')
    conn.recv()


def block(conn):
    conn.send('ready')
    conn.recv()


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    me = multiprocessing.current_process()
    print('parent: name', me.name)
    print('parent: current_process() is current_process():', me is multiprocessing.current_process())
    print('parent: pid is os.getpid():', me.pid == os.getpid(), 'ident too:', me.ident == os.getpid())
    print('parent: is_alive', me.is_alive(), 'daemon', me.daemon)
    print('parent: parent_process()', multiprocessing.parent_process())
    print('parent: active_children', multiprocessing.active_children())
    n = multiprocessing.cpu_count()
    print('cpu_count is int >= 1:', isinstance(n, int) and n >= 1)
    print('authkey: isinstance bytes', isinstance(me.authkey, bytes), 'len', len(me.authkey))

    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=child_info, args=(q, os.getpid(), bytes(me.authkey)))
    p.start()
    print(q.get(timeout=10))
    p.join()

    p = multiprocessing.Process(target=child_info, args=(q, os.getpid(), bytes(me.authkey)),
                                name='custom')
    p.start()
    print(q.get(timeout=10))
    p.join()

    # grandchild: 'Parent:N' naming and parent_process() one level up
    p = multiprocessing.Process(target=grandparent, args=(q,))
    p.start()
    msgs = sorted(q.get(timeout=10) for _ in range(3))
    p.join()
    print('middle name was', p.name)
    for m in msgs:
        print(m)

    # active_children while children are blocked, and after they finish
    conns, procs = [], []
    for i in range(3):
        a, b = multiprocessing.Pipe()
        procs.append(multiprocessing.Process(target=block, args=(b,)))
        conns.append(a)
    print('active before start:', len(multiprocessing.active_children()))
    for p in procs:
        p.start()
    print('ready:', [c.recv() for c in conns])
    active = multiprocessing.active_children()
    print('active while blocked:', len(active), 'same names:',
          sorted(x.name for x in active) == sorted(x.name for x in procs))
    conns[0].send('go')
    procs[0].join()
    print('active after one joined:', len(multiprocessing.active_children()))
    for c in conns[1:]:
        c.send('go')
    for p in procs[1:]:
        p.join()
    print('active after all joined:', len(multiprocessing.active_children()))
