"""multiprocessing.connection.wait on Connections and Process sentinels:
timeouts returning [], exactly the released child's sentinel becomes ready
first, a sentinel stays ready, mixed Connection + sentinel lists, EOF makes a
Connection ready, the returned objects are the ones passed in."""
import multiprocessing
import sys
from multiprocessing.connection import wait


def wait_for_go(conn, tag):
    conn.recv()
    conn.close()


def talk_then_wait(conn):
    conn.send('hello from child')
    conn.recv()
    conn.close()


def idx(objs, ready):
    return sorted(objs.index(x) for x in ready)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    print('wait([], timeout=0):', wait([], timeout=0))
    print('wait([], timeout=0.01):', wait([], timeout=0.01))

    a, b = multiprocessing.Pipe()
    print('nothing to read:', wait([a], timeout=0.01))
    b.send('x')
    ready = wait([a, b], timeout=10)
    print('after send:', idx([a, b], ready), ready[0] is a)
    a.recv()
    b.close()
    print('after peer closed (EOF is readable):', wait([a], timeout=10) == [a])
    a.close()

    # three blocked children; release them one at a time
    n = 3
    conns, procs = [], []
    for i in range(n):
        parent_conn, child_conn = multiprocessing.Pipe()
        p = multiprocessing.Process(target=wait_for_go, args=(child_conn, i))
        p.start()
        child_conn.close()
        conns.append(parent_conn)
        procs.append(p)
    sentinels = [p.sentinel for p in procs]
    print('sentinels are ints:', all(isinstance(s, int) for s in sentinels))
    print('all blocked:', wait(sentinels, timeout=0.05))
    order = []
    for i in (1, 2, 0):
        conns[i].send('go')
        ready = wait([s for j, s in enumerate(sentinels) if j not in order], timeout=10)
        got = idx(sentinels, ready)
        print('released', i, '-> ready:', got)
        order.extend(got)
    for p in procs:
        p.join()
    print('exitcodes:', [p.exitcode for p in procs])
    # A joined sentinel becomes ready (EOF) once its writer closes; under
    # CPython's forkserver that close comes just after the exit status is
    # written, so wait for all three instead of sampling once.
    seen = set()
    while len(seen) < n:
        seen.update(idx(sentinels, wait(sentinels, timeout=10)))
    print('finished sentinels become ready:', sorted(seen))
    print('and stay ready:', idx(sentinels, wait(sentinels, timeout=0)))
    print('and again:', idx(sentinels, wait(sentinels)))

    # mixed Connection + sentinel
    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=talk_then_wait, args=(child_conn,))
    p.start()
    child_conn.close()
    objs = [parent_conn, p.sentinel]
    print('mixed, first ready:', idx(objs, wait(objs, timeout=10)))
    print('message:', parent_conn.recv())
    print('mixed, nothing pending:', wait(objs, timeout=0.05))
    parent_conn.send('go')
    p.join()
    # As above: under CPython's forkserver the sentinel turns ready (EOF) a moment after
    # join() has read the exit status, while the connection is at EOF already, so a single
    # mixed wait may report only the connection. Once the sentinel alone is ready, the mixed
    # wait must report both.
    print('sentinel ready after exit:', wait([p.sentinel], timeout=10) == [p.sentinel])
    print('mixed, after child exit:', idx(objs, wait(objs, timeout=10)))
    try:
        parent_conn.recv()
    except EOFError:
        print('connection at EOF')
    print('exitcode:', p.exitcode)
