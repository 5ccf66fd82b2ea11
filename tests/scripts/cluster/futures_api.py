"""concurrent.futures.ProcessPoolExecutor as a script moving to a cluster uses it, printed
deterministically: run under python3, procpy and `procpy --cluster URL` by tests/all/cluster.rs;
the three stdouts must be identical."""
import concurrent.futures as cf
import time

import cluster_helper


def square(x):
    return x * x


def pair(a, b=1):
    return (a, b)


def fail(x):
    raise ValueError('failed', x)


def nap(x):
    time.sleep(0.2)
    return x


if __name__ == '__main__':
    with cf.ProcessPoolExecutor(max_workers=2) as ex:
        f = ex.submit(square, 6)
        print('submit:', f.result(timeout=60), f.done(), f.cancelled(), f.exception())
        print('submit kwargs:', ex.submit(pair, 1, b=2).result(timeout=60))
        print('map:', list(ex.map(square, range(10))))
        print('map chunksize=4:', list(ex.map(square, range(10), chunksize=4)))
        print('map two iterables:', list(ex.map(pair, [1, 2, 3], 'abc')))
        print('helper module:', list(ex.map(cluster_helper.shout, ['x', 'y'])))
        futs = [ex.submit(square, i) for i in range(10)]
        print('as_completed sorted:', sorted(f.result() for f in cf.as_completed(futs, timeout=60)))
        done, not_done = cf.wait(futs, timeout=60)
        print('wait ALL_COMPLETED:', len(done), len(not_done))
        bad = ex.submit(fail, 3)
        done, _ = cf.wait([bad], return_when=cf.FIRST_EXCEPTION, timeout=60)
        print('wait FIRST_EXCEPTION:', bad in done)
        e = bad.exception(timeout=60)
        print('exception:', type(e).__name__, e.args)
        print('  cause:', type(e.__cause__).__module__ + '.' + type(e.__cause__).__name__,
              'has traceback:', 'Traceback (most recent call last)' in str(e.__cause__),
              'names function:', 'fail' in str(e.__cause__))
        try:
            list(ex.map(fail, [1]))
        except ValueError as e:
            print('map raised:', e.args)
        got = []
        f = ex.submit(square, 12)
        f.add_done_callback(lambda fut: got.append(fut.result()))
        f.result(timeout=60)
        cf.wait([f], timeout=60)
        print('done callback:', got)
    try:
        ex.submit(square, 1)
    except RuntimeError as e:
        print('after shutdown:', e)

    ex = cf.ProcessPoolExecutor(max_workers=2)
    print('warm:', ex.submit(square, 2).result(timeout=60))
    futs = [ex.submit(nap, i) for i in range(40)]
    ex.shutdown(wait=True, cancel_futures=True)
    states = ['C' if f.cancelled() else 'D' for f in futs]
    first_cancelled = states.index('C') if 'C' in states else len(states)
    print('cancel_futures: some cancelled:', 'C' in states,
          'cancelled ones are a suffix:', all(s == 'C' for s in states[first_cancelled:]),
          'the others have results:',
          all(futs[i].result() == i for i in range(first_cancelled)))
