"""An uncaught KeyboardInterrupt still finalizes the interpreter before the process dies of
SIGINT: atexit handlers run and non-daemonic children are joined (found by review: procpy
killed itself before atexit, leaving pools and children behind)."""
import atexit
import sys
import multiprocessing as mp


def child(conn):
    conn.recv()
    print('child finished', flush=True)


if __name__ == '__main__':
    ctx = mp.get_context(sys.argv[1] if len(sys.argv) > 1 else 'fork')
    a, b = ctx.Pipe()
    p = ctx.Process(target=child, args=(b,))
    p.start()

    def at_exit():
        print('atexit ran', flush=True)
        a.send('go')     # the child finishes only now; multiprocessing then joins it
    atexit.register(at_exit)
    print('raising', flush=True)
    raise KeyboardInterrupt
