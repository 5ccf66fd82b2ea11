"""Lesson: passing positional and keyword arguments to a child process with
Process(target=..., args=..., kwargs=...). Arguments are pickled for spawn
and forkserver, inherited for fork; the target sees the same values.

Usage: procpy args_kwargs.py [fork|spawn|forkserver]"""
import multiprocessing
import sys


def target(a, b, myParam1=None):
    print('a =', a, flush=True)
    print('b =', b, flush=True)
    print('myParam1 =', myParam1, flush=True)


if __name__ == '__main__':
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1])
    p = multiprocessing.Process(target=target, args=(42, 43), kwargs={'myParam1': 44})
    p.start()
    p.join()
    print('child exitcode:', p.exitcode)
