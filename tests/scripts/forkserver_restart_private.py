"""The fork server's socket is a filesystem path in a private directory (mode 0700, ours),
and a server that died is replaced by the next start (CPython 3.11's ensure_running checks
its pid). Under fork and spawn there is no server: the same children start and the same
lines are printed."""
import multiprocessing
import os
import signal
import stat
import sys
import time


def work(q, x):
    q.put(x * 2)


def run(x):
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=work, args=(q, x))
    p.start()
    r = q.get()
    p.join()
    return r, p.exitcode


def server_info():
    '''(pid, address) of this process's fork server: private names, CPython's or procpy's.'''
    from multiprocessing import forkserver
    fs = getattr(forkserver, '_forkserver', None)
    if fs is not None:
        return fs._forkserver_pid, fs._forkserver_address
    return forkserver._server[3], forkserver._server[1]


def wait_dead(pid):
    '''Until `pid` is a zombie (nobody has reaped it yet) or gone; a hang guard of 60 s.'''
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open('/proc/%d/stat' % pid) as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
        except OSError:
            return
        if state in ('Z', 'X'):
            return
        time.sleep(0.01)
    raise RuntimeError('the server did not die')


if __name__ == '__main__':
    method = sys.argv[1] if len(sys.argv) > 1 else 'forkserver'
    multiprocessing.set_start_method(method)
    print('first', run(1))
    if method == 'forkserver':
        pid, address = server_info()
        path = os.fsdecode(address)
        print('socket is a path', not path.startswith('\0') and stat.S_ISSOCK(os.stat(path).st_mode))
        st = os.stat(os.path.dirname(path))
        print('private directory', oct(st.st_mode & 0o777), st.st_uid == os.geteuid())
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        print('after the server died', run(2))
        print('a new server', server_info()[0] != pid)
    else:
        print('socket is a path', True)
        print('private directory', oct(0o700), True)
        print('after the server died', run(2))
        print('a new server', True)
    print('again', run(3))
