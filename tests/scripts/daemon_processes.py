"""Daemon flag: default inherited from the creating process, daemon=True /
.daemon = True, a daemonic process cannot start children (AssertionError
'daemonic processes are not allowed to have children'), a non-daemon child
can, and daemon children run and exit normally when joined."""
import multiprocessing
import sys


def leaf(q, tag):
    q.put(('leaf ran', tag))


def try_child(q, tag):
    me = multiprocessing.current_process()
    c = multiprocessing.Process(target=leaf, args=(q, tag + '/leaf'))
    info = (tag, 'me.daemon', me.daemon, 'new Process().daemon', c.daemon)
    try:
        c.start()
    except AssertionError as e:
        q.put(info + ('start ->', 'AssertionError: %s' % e))
    else:
        c.join()
        q.put(info + ('start ->', 'ok, exitcode %s' % c.exitcode))


def collect(q, n):
    return sorted((q.get(timeout=10) for _ in range(n)), key=repr)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q = multiprocessing.Queue()

    p = multiprocessing.Process(target=leaf, args=(q, 'x'))
    print('default daemon:', p.daemon)
    p.daemon = True
    print('after setting:', p.daemon)
    p.daemon = False
    print('after unsetting:', p.daemon)
    print('Process(daemon=True).daemon:', multiprocessing.Process(daemon=True).daemon)
    print('Process(daemon=False).daemon:', multiprocessing.Process(daemon=False).daemon)

    d = multiprocessing.Process(target=leaf, args=(q, 'daemon'), daemon=True)
    d.start()
    print(q.get(timeout=10))
    d.join()
    print('daemon child exitcode:', d.exitcode, 'daemon:', d.daemon)

    # daemonic child tries to start its own child
    d = multiprocessing.Process(target=try_child, args=(q, 'daemon child'), daemon=True)
    d.start()
    for m in collect(q, 1):
        print(m)
    d.join()
    print('daemon child exitcode:', d.exitcode)

    # non-daemonic child may start children (they inherit daemon=False)
    n = multiprocessing.Process(target=try_child, args=(q, 'normal child'))
    n.start()
    for m in collect(q, 2):
        print(m)
    n.join()
    print('normal child exitcode:', n.exitcode)
