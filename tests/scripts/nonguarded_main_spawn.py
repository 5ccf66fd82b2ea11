"""Module-level code outside the __main__ guard. Under spawn every child
re-imports the main script as '__mp_main__', so the module-level print runs
again once per child. Under forkserver CPython 3.11 behaves the same way:
each forked child re-imports the main script as '__mp_main__' while
preparing (the server's own preload of __main__ is a no-op in 3.11 because
forkserver.py asks for a 'main_path' key that get_preparation_data never
provides). Under fork it runs only in the parent. The output therefore
intentionally differs between fork and spawn/forkserver (spawn and
forkserver give identical output). Children are started one at a time and
every print is flushed, so the order is deterministic."""
import multiprocessing
import sys

print('module level: __name__ =', __name__, flush=True)


def child(i):
    print('child %d runs target; module __name__ is %s' % (
        i, 'main' if __name__ == '__main__' else __name__), flush=True)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    print('start method:', sys.argv[1], flush=True)
    for i in range(2):
        print('parent: starting child', i, flush=True)
        p = multiprocessing.Process(target=child, args=(i,))
        p.start()
        p.join()
        print('parent: child %d exitcode %s' % (i, p.exitcode), flush=True)
    print('parent: done', flush=True)
