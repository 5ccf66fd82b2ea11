"""Lesson: children reporting back through one shared multiprocessing.Queue.
Two children each put one message; the parent joins them, then drains the
queue robustly with get_nowait() until queue.Empty (never trust empty() or
qsize() for control flow), and prints the messages sorted because the
children's order is not defined. Uses forkserver unless a start method is
given.

Usage: procpy queue_two_children.py [fork|spawn|forkserver]"""
import multiprocessing
import queue
import sys


def child(q, n):
    q.put('hello from child %d' % n)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1] if len(sys.argv) > 1 else 'forkserver')
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=child, args=(q, n)) for n in (1, 2)]
    for p in procs:
        p.start()
    # The messages are small, so the children can finish (and flush their
    # queue feeder) before anybody reads: joining first is safe here.
    for p in procs:
        p.join()
    messages = []
    while True:
        try:
            messages.append(q.get_nowait())
        except queue.Empty:
            break
    for m in sorted(messages):
        print(m)
    print('exitcodes:', [p.exitcode for p in procs])
