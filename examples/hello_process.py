"""Lesson: the smallest multiprocessing program -- create a Process with a
module-level target, start() it, join() it. The child prints the greeting.

Usage: procpy hello_process.py [fork|spawn|forkserver]"""
import multiprocessing
import sys


def hello():
    print('Hello Process World', flush=True)


if __name__ == '__main__':
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1])
    p = multiprocessing.Process(target=hello)
    p.start()
    p.join()
    print('child exitcode:', p.exitcode)
