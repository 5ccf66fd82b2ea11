"""Pools used from inside themselves: callbacks that terminate the pool, a failed map call in a
`with` block, thread-pool callbacks that terminate, an unclosed pool's ResourceWarning, and
ProcessPoolExecutor workers that are plain (non-daemonic) processes able to start their own."""
import gc
import sys
import warnings
import multiprocessing as mp
from multiprocessing.pool import ThreadPool
from concurrent.futures import ProcessPoolExecutor


def sq(x):
    return x * x


def boom(x):
    raise ValueError(x)


def who(_):
    p = mp.current_process()
    return p.name.rsplit('-', 1)[0], p.daemon, type(p).__name__


def nested_pool(n):
    with mp.Pool(1) as p:
        return p.map(sq, range(n))


def nested_executor(n):
    with ProcessPoolExecutor(1) as ex:
        return list(ex.map(sq, range(n)))


def main(method):
    mp.set_start_method(method)

    # A callback that terminates its own pool keeps its result.
    p = mp.Pool(1)
    r = p.apply_async(sq, (3,), callback=lambda v: p.terminate())
    r.wait(30)
    print('callback terminate: get ->', r.get(1))
    p.join()

    p = mp.Pool(1)
    calls = []

    def on_error(e):
        calls.append(type(e).__name__)
        p.terminate()
    r = p.apply_async(boom, (3,), error_callback=on_error)
    r.wait(30)
    try:
        r.get(1)
    except Exception as e:
        print('error_callback terminate: get raised', type(e).__name__, e)
    print('error_callback calls:', calls)
    p.join()

    # A map call that fails on its arguments leaves the pool clean for __exit__.
    with mp.Pool(1) as p:
        try:
            p.map(abs, [1], chunksize='a')
        except TypeError as e:
            print('bad chunksize: TypeError')
    print('with block exited cleanly')

    # The same from a thread pool's callback (it runs in a pool thread).
    tp = ThreadPool(2)
    r = tp.apply_async(pow, (2, 3), callback=lambda v: tp.terminate())
    print('thread pool callback terminate:', r.wait(30), r.ready(), r.get(1))
    tp.join()

    # An unclosed running pool warns when it is collected.
    p = mp.Pool(1)
    p.map(abs, [1])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        del p
        gc.collect()
    print('collected running pool warns:', [x.category.__name__ for x in w],
          [str(x.message).split(' state=')[0] for x in w])

    # Executor workers are ordinary processes: not daemonic, named like any Process.
    with ProcessPoolExecutor(1) as ex:
        print('executor worker:', ex.submit(who, 0).result(30))
        for f in (nested_pool, nested_executor):
            print('%s in an executor task:' % f.__name__, ex.submit(f, 4).result(60))
    with mp.Pool(1) as p:
        print('pool worker:', p.apply(who, (0,)))


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
