"""Exit codes of children that end in different ways: return -> 0, an
uncaught exception -> 1, sys.exit(3) -> 3, sys.exit('msg') -> 1,
sys.exit() / sys.exit(None) -> 0, os._exit(7) -> 7, KeyboardInterrupt -> 1,
terminate() -> -15, kill() -> -9. Tracebacks/messages go to stderr, which
the harness does not compare."""
import multiprocessing
import os
import sys


def returns():
    return 'ignored'


def raises():
    raise ValueError('child failed')


def exit3():
    sys.exit(3)


def exit_msg():
    sys.exit('msg goes to stderr')


def exit_none():
    sys.exit()


def exit_explicit_none():
    sys.exit(None)


def exit_zero():
    sys.exit(0)


def os_exit7():
    os._exit(7)


def keyboard_interrupt():
    raise KeyboardInterrupt


def raise_system_exit_12():
    raise SystemExit(12)


def block(conn):
    conn.send('ready')
    conn.recv()


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    targets = [returns, raises, exit3, exit_msg, exit_none, exit_explicit_none,
               exit_zero, os_exit7, keyboard_interrupt, raise_system_exit_12]
    procs = [multiprocessing.Process(target=t) for t in targets]
    for p in procs:
        p.start()
    for t, p in zip(targets, procs):
        p.join()
        print('%s -> exitcode %s' % (t.__name__, p.exitcode))

    for how in ('terminate', 'kill'):
        a, b = multiprocessing.Pipe()
        p = multiprocessing.Process(target=block, args=(b,))
        p.start()
        a.recv()
        getattr(p, how)()
        p.join()
        print('%s() -> exitcode %s' % (how, p.exitcode))
