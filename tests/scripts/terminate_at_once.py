"""terminate() right after start() ends the child with SIGTERM (exit code -15), whatever
moment of its start the signal meets: under forkserver the child is forked from a server
that handles SIGTERM itself, and must not run the server's handler or lose the signal (a
child that kept running would sleep 30 s and exit 0)."""
import multiprocessing
import sys
import time


def sleeper():
    time.sleep(30)


if __name__ == '__main__':
    method = sys.argv[1] if len(sys.argv) > 1 else 'forkserver'
    multiprocessing.set_start_method(method)
    codes, slow = set(), 0
    for _ in range(20):
        p = multiprocessing.Process(target=sleeper)
        p.start()
        p.terminate()
        t0 = time.monotonic()
        p.join()
        slow += time.monotonic() - t0 > 15
        codes.add(p.exitcode)
    print('exit codes', sorted(codes))
    print('joins that waited for the sleep', slow)
