"""The descriptors a child costs its parent, over the Process object's life (CPython's
rules): the sentinel stays valid and ready after join() until close(); close() frees what
start() took, and so does dropping the Process object (joined, or reaped by
active_children()); retired Pool and ProcessPoolExecutor workers, terminated pools and
Managers give theirs back; a failed start leaves nothing behind."""
import gc
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import wait


def nfds():
    return len(os.listdir('/proc/self/fd'))


def noop():
    pass


def take(x):
    pass


def square(x):
    return x * x


def start_join():
    p = multiprocessing.Process(target=noop)
    p.start()
    p.join()
    return p


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    start_join().close()        # the fork server and resource tracker start here
    base = nfds()

    p = start_join()
    s = p.sentinel
    try:
        os.fstat(s)
        print('sentinel valid after join: True')
    except OSError as e:
        print('sentinel valid after join:', e)
    print('ready after join:', wait([s], timeout=10) == [s])
    print('still ready:', wait([s], timeout=0) == [s])
    print('exitcode:', p.exitcode)
    p.close()
    print('close() frees its descriptors:', nfds() - base)
    try:
        p.sentinel
    except ValueError as e:
        print('after close:', e)
    p.close()
    print('close() twice:', nfds() - base)
    del p

    p = start_join()
    del p
    print('dropping a joined Process frees its descriptors:', nfds() - base)

    for _ in range(10):
        p = start_join()
    del p
    print('10 joined and dropped:', nfds() - base)

    # Never joined: active_children() reaps it, then dropping it frees the rest.
    p = multiprocessing.Process(target=noop)
    p.start()
    wait([p.sentinel], timeout=10)
    # A fork or spawn child's sentinel fires as it exits, a moment before it can be reaped.
    while multiprocessing.active_children():
        time.sleep(0.01)
    print('reaped by active_children(): True')
    del p
    print('dropping a reaped Process frees its descriptors:', nfds() - base)

    # start() failing (an argument that cannot travel) costs nothing either.
    import threading
    lock = threading.Lock()
    for i in range(5):
        p = multiprocessing.Process(target=take, args=(lock,))
        try:
            p.start()
            p.join()
            if i == 0:
                print('a lock travels (fork)')
        except TypeError:
            pass
        del p
    if sys.argv[1] != 'fork':
        print('a lock cannot travel')
    print('failed starts:', nfds() - base)

    pool = multiprocessing.Pool(2, maxtasksperchild=1)
    print('pool results:', sum(pool.map(square, range(20), chunksize=1)))
    pool.close()
    pool.join()
    del pool
    gc.collect()
    print('Pool(2, maxtasksperchild=1) over 20 tasks, closed and dropped:', nfds() - base)

    pool = multiprocessing.Pool(2)
    print('pool results:', sum(pool.map(square, range(40))))
    pool.terminate()
    pool.join()
    del pool
    gc.collect()
    print('Pool(2) terminated and dropped:', nfds() - base)

    if sys.argv[1] != 'fork':
        with ProcessPoolExecutor(2, max_tasks_per_child=1) as ex:
            print('executor results:', sum(ex.map(square, range(10))))
        del ex
        gc.collect()
        print('ProcessPoolExecutor(max_tasks_per_child=1), shut down and dropped:',
              nfds() - base)

    for _ in range(3):
        with multiprocessing.Manager() as m:
            d = m.dict(a=1)
            d['b'] = 2
            got = sorted(d.items())
            del d
    del m
    gc.collect()
    print('manager:', got, 'after 3 managers:', nfds() - base)
