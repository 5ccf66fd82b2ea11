"""Exit codes of children ended by signals: terminate() -> -SIGTERM,
kill() -> -SIGKILL, other signals -> -signum, a SIGTERM handler that calls
sys.exit, SIGINT -> KeyboardInterrupt -> 1, self-kill. Every child first
reports 'ready' (its handlers are installed) before the parent signals it.
Each child gets its own Pipe: a child killed while holding a shared Queue's
internal lock would wedge that Queue for every later user."""
import multiprocessing
import os
import signal
import sys


def block(conn):
    conn.send('ready')
    conn.recv()


def block_with_term_handler(conn):
    def on_term(signum, frame):
        sys.exit(5)
    signal.signal(signal.SIGTERM, on_term)
    conn.send('ready')
    conn.recv()


def block_ignoring_term(conn):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send('ready')
    conn.recv()


def kill_self(sig):
    os.kill(os.getpid(), sig)


_keep = []


def start_blocked(target):
    parent_conn, child_conn = multiprocessing.Pipe()
    p = multiprocessing.Process(target=target, args=(child_conn,))
    p.start()
    if not parent_conn.poll(10):
        raise SystemExit('child never became ready')
    assert parent_conn.recv() == 'ready'
    _keep.append(parent_conn)  # keep it open so the child stays blocked
    return p


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])

    p = start_blocked(block)
    p.terminate()
    p.join()
    print('terminate():', p.exitcode, p.exitcode == -signal.SIGTERM)

    p = start_blocked(block)
    p.kill()
    p.join()
    print('kill():', p.exitcode, p.exitcode == -signal.SIGKILL)

    p = start_blocked(block)
    os.kill(p.pid, signal.SIGUSR1)
    p.join()
    print('SIGUSR1 default action:', p.exitcode, p.exitcode == -signal.SIGUSR1)

    p = start_blocked(block)
    os.kill(p.pid, signal.SIGINT)
    p.join()
    print('SIGINT (KeyboardInterrupt in child):', p.exitcode)

    p = start_blocked(block_with_term_handler)
    p.terminate()
    p.join()
    print('SIGTERM handler calling sys.exit(5):', p.exitcode)

    p = start_blocked(block_ignoring_term)
    p.terminate()
    p.join(0.05)
    print('SIGTERM ignored, still alive:', p.is_alive(), p.exitcode)
    p.kill()
    p.join()
    print('then kill():', p.exitcode)

    for sig in (signal.SIGKILL, signal.SIGTERM):
        p = multiprocessing.Process(target=kill_self, args=(sig,))
        p.start()
        p.join()
        print('self-kill with', sig.name + ':', p.exitcode, p.exitcode == -sig)

    # terminate()/kill() on an already finished child are harmless
    p = multiprocessing.Process()
    p.start()
    p.join()
    p.terminate()
    p.kill()
    print('terminate/kill after exit keep exitcode:', p.exitcode)
