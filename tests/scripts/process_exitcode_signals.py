"""Exit codes of children ended by signals: terminate() -> -SIGTERM,
kill() -> -SIGKILL, other signals -> -signum, a SIGTERM handler that calls
sys.exit, SIGINT -> KeyboardInterrupt -> 1, self-kill. Every child first
reports 'ready' (its handlers are installed) before the parent signals it."""
import multiprocessing
import os
import signal
import sys


def block(ready, never):
    ready.put('ready')
    never.get()


def block_with_term_handler(ready, never):
    def on_term(signum, frame):
        sys.exit(5)
    signal.signal(signal.SIGTERM, on_term)
    ready.put('ready')
    never.get()


def block_ignoring_term(ready, never):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.put('ready')
    never.get()


def kill_self(sig):
    os.kill(os.getpid(), sig)


def start_blocked(target, ready, never):
    p = multiprocessing.Process(target=target, args=(ready, never))
    p.start()
    assert ready.get(timeout=10) == 'ready'
    return p


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    ready = multiprocessing.Queue()
    never = multiprocessing.Queue()

    p = start_blocked(block, ready, never)
    p.terminate()
    p.join()
    print('terminate():', p.exitcode, p.exitcode == -signal.SIGTERM)

    p = start_blocked(block, ready, never)
    p.kill()
    p.join()
    print('kill():', p.exitcode, p.exitcode == -signal.SIGKILL)

    p = start_blocked(block, ready, never)
    os.kill(p.pid, signal.SIGUSR1)
    p.join()
    print('SIGUSR1 default action:', p.exitcode, p.exitcode == -signal.SIGUSR1)

    p = start_blocked(block, ready, never)
    os.kill(p.pid, signal.SIGINT)
    p.join()
    print('SIGINT (KeyboardInterrupt in child):', p.exitcode)

    p = start_blocked(block_with_term_handler, ready, never)
    p.terminate()
    p.join()
    print('SIGTERM handler calling sys.exit(5):', p.exitcode)

    p = start_blocked(block_ignoring_term, ready, never)
    p.terminate()
    p.join(0.2)
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
