"""multiprocessing.dummy: the same API over threads (Process, Queue, Pipe, Lock, Event,
active_children, exitcode), so a program switches between threads and processes by import."""
import multiprocessing
import multiprocessing.dummy as dummy
import sys


def work(q, lock, i):
    with lock:
        q.put(i * i)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q, lock = dummy.Queue(), dummy.Lock()
    ts = [dummy.Process(target=work, args=(q, lock, i)) for i in range(4)]
    print('exitcode before start:', ts[0].exitcode)
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print('results:', sorted(q.get() for _ in range(4)))
    print('exitcodes:', [t.exitcode for t in ts], 'active:', dummy.active_children())
    a, b = dummy.Pipe()
    a.send('ping')
    print('pipe:', b.poll(), b.recv(), b.poll())
    ev = dummy.Event()
    t = dummy.Process(target=ev.set)
    t.start()
    print('event:', ev.wait(10))
    t.join()
    ns = dummy.Namespace(a=1, b='x')
    print(ns, dummy.Value('i', 3).value, list(dummy.Array('i', [1, 2])))
