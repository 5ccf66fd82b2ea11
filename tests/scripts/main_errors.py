"""One-stop check of the exact CPython errors listed in the brief (each is
also covered in its own area file): process start twice / join before
start / close while running / use after close, queue.Empty and queue.Full,
JoinableQueue.task_done() too many times, recv on a closed connection,
recv after the peer closed, Pipe(duplex=False) flags, BufferTooShort."""
import multiprocessing
import queue
import sys


def wait_for(conn):
    conn.recv()


def attempt(label, fn):
    try:
        res = fn()
    except multiprocessing.BufferTooShort as e:
        print('%s: %s' % (label, type(e).__name__))
    except (queue.Empty, queue.Full) as e:
        print('%s: queue.%s' % (label, type(e).__name__))
    except Exception as e:
        print('%s: %s: %s' % (label, type(e).__name__, e))
    else:
        print('%s: ok %r' % (label, res))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    p = multiprocessing.Process(target=wait_for)
    attempt('join before start', p.join)

    a, b = multiprocessing.Pipe()
    p = multiprocessing.Process(target=wait_for, args=(b,))
    p.start()
    attempt('start twice', p.start)
    attempt('close while running', p.close)
    a.send('go')
    p.join()
    attempt('close after join', p.close)
    attempt('is_alive after close', p.is_alive)
    attempt('join after close', p.join)
    attempt('start after close', p.start)

    q = multiprocessing.Queue()
    attempt('Queue.get(timeout=0.01) on empty', lambda: q.get(timeout=0.01))
    q1 = multiprocessing.Queue(1)
    q1.put('x')
    attempt('Queue(1).put_nowait when full', lambda: q1.put_nowait('y'))

    jq = multiprocessing.JoinableQueue()
    jq.put(1)
    jq.get(timeout=10)
    jq.task_done()
    attempt('task_done() too many times', jq.task_done)

    a, b = multiprocessing.Pipe()
    a.close()
    attempt('recv on closed connection', a.recv)
    attempt('recv after peer closed', b.recv)

    r, w = multiprocessing.Pipe(duplex=False)
    print('Pipe(duplex=False): r.readable=%s r.writable=%s w.readable=%s w.writable=%s' % (
        r.readable, r.writable, w.readable, w.writable))
    w.send_bytes(b'0123456789')
    attempt('recv_bytes_into too-short buffer', lambda: r.recv_bytes_into(bytearray(3)))
