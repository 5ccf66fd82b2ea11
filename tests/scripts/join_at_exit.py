"""Interpreter exit with children still running: the main block ends without
joining. multiprocessing's exit handler first terminates daemonic children
(here one blocked forever) and then joins the non-daemonic ones (here one
that only proceeds after the parent's last action). The non-daemon child
sees the daemon's death as EOF on a pipe whose only writer was the daemon.
The script must exit 0 and not hang."""
import multiprocessing
import sys


def daemon_child(ready, w, never):
    ready.send('daemon ready')
    never.recv()          # nobody ever sends: blocked until terminated


def worker(ready, signal_q, r):
    ready.send('worker ready')
    msg = signal_q.get()
    print('worker: got', repr(msg), flush=True)
    try:
        r.recv()
    except EOFError:
        print('worker: daemon is gone (EOF on its pipe)', flush=True)
    print('worker: exiting', flush=True)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    r, w = multiprocessing.Pipe(duplex=False)
    never_r, never_w = multiprocessing.Pipe(duplex=False)
    ready_r, ready_w = multiprocessing.Pipe(duplex=False)
    signal_q = multiprocessing.Queue()

    d = multiprocessing.Process(target=daemon_child, args=(ready_w, w, never_r), daemon=True)
    d.start()
    w.close()             # the daemon now holds the only write end
    print('parent:', ready_r.recv(), flush=True)

    p = multiprocessing.Process(target=worker, args=(ready_w, signal_q, r))
    p.start()
    r.close()
    print('parent:', ready_r.recv(), flush=True)

    print('parent: main block ending without join()', flush=True)
    signal_q.put('bye')
