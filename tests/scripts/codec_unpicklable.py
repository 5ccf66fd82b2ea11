"""Unpicklable values (threading.Lock, a generator, an open file):
Connection.send and SimpleQueue.put pickle synchronously, so they raise in
the sender and nothing is written; the channel keeps working.
multiprocessing.Queue.put differs on purpose: CPython pickles in its feeder
thread (put() does not raise; the error goes to stderr and the item is
dropped), procpy encodes in put() and raises there (tests/all/beyond_cpython.rs
checks that). Either way the next good item still arrives, which is what this
script compares. Only type(e).__name__ is
printed: messages may differ between implementations."""
import multiprocessing
import sys
import threading


def gen():
    yield 1


def pipe_echo(conn):
    while True:
        msg = conn.recv()
        if msg == 'stop':
            break
        conn.send(('echo', msg))


def simple_echo(sq_in, sq_out):
    while True:
        msg = sq_in.get()
        if msg == 'stop':
            break
        sq_out.put(('echo', msg))


def queue_echo(q_in, q_out):
    while True:
        msg = q_in.get()
        if msg == 'stop':
            break
        q_out.put(('echo', msg))


def bad_values():
    f = open(__file__)
    return f, [('threading.Lock()', threading.Lock()),
               ('generator', gen()),
               ('open file', f),
               ('list holding a lock', [1, threading.Lock()])]


def try_send(label, send, value):
    try:
        send(value)
    except Exception as e:
        print('%s: raised %s' % (label, type(e).__name__))
    else:
        print('%s: did not raise' % label)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    f, bad = bad_values()

    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=pipe_echo, args=(child_conn,))
    p.start()
    for i, (label, value) in enumerate(bad):
        try_send('Pipe.send(%s)' % label, parent_conn.send, value)
        parent_conn.send('good %d' % i)
        print('  pipe still works:', parent_conn.recv())
    print('  nothing else pending:', parent_conn.poll(0.05))
    parent_conn.send('stop')
    p.join()
    print('pipe echo exitcode:', p.exitcode)

    sq_in = multiprocessing.SimpleQueue()
    sq_out = multiprocessing.SimpleQueue()
    p = multiprocessing.Process(target=simple_echo, args=(sq_in, sq_out))
    p.start()
    for i, (label, value) in enumerate(bad):
        try_send('SimpleQueue.put(%s)' % label, sq_in.put, value)
        sq_in.put('good %d' % i)
        print('  simple queue still works:', sq_out.get())
    sq_in.put('stop')
    p.join()
    print('simple queue echo exitcode:', p.exitcode)

    q_in = multiprocessing.Queue()
    q_out = multiprocessing.Queue()
    p = multiprocessing.Process(target=queue_echo, args=(q_in, q_out))
    p.start()
    for i, (label, value) in enumerate(bad):
        try:
            q_in.put(value)
        except Exception:
            pass
        q_in.put('good %d' % i)
        print('  queue delivers the next item:', q_out.get(timeout=10))
    q_in.put('stop')
    p.join()
    print('queue echo exitcode:', p.exitcode)
    try:
        print('  nothing else arrived:', q_out.get(timeout=0.05))
    except Exception as e:
        print('  nothing else arrived:', type(e).__name__)
    f.close()
