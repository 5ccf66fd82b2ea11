"""Exact CPython exception types and messages for misuse of Process objects:
start twice, join before start, close while running, use after close,
daemon/name setters, group argument, sentinel before start."""
import multiprocessing
import sys
from _check import attempt


def wait_for(conn):
    conn.recv()


def nothing():
    pass


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    p = multiprocessing.Process(target=nothing)
    attempt('join before start', p.join)
    attempt('sentinel before start', lambda: p.sentinel)
    attempt('is_alive before start', p.is_alive)
    attempt('close before start', p.close)
    attempt('start after close', p.start)
    attempt('name after close', lambda: p.name)

    p = multiprocessing.Process(target=nothing)
    p.start()
    attempt('start twice', p.start)
    attempt('set daemon after start', lambda: setattr(p, 'daemon', True))
    p.join()
    attempt('start after join', p.start)
    attempt('close after join', p.close)
    attempt('close twice', p.close)
    attempt('is_alive after close', p.is_alive)
    attempt('join after close', p.join)
    attempt('exitcode after close', lambda: p.exitcode)
    attempt('pid after close', lambda: p.pid)
    attempt('sentinel after close', lambda: p.sentinel)
    attempt('terminate after close', p.terminate)
    attempt('kill after close', p.kill)

    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=wait_for, args=(child_conn,))
    p.start()
    attempt('close while running', p.close)
    parent_conn.send('go')
    p.join()
    attempt('close after it finished', p.close)

    attempt('group argument', lambda: multiprocessing.Process(group=1))
    attempt('non-str name', lambda: setattr(multiprocessing.Process(), 'name', 5))
    attempt('Process(daemon=True).daemon', lambda: multiprocessing.Process(daemon=True).daemon)
    attempt('Process(name=...).name', lambda: multiprocessing.Process(name='n').name)
