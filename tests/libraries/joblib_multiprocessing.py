# joblib's "multiprocessing" backend (a multiprocessing.Pool underneath) and its import-time
# probe of `_multiprocessing.SemLock(0, 0, 1, name=..., unlink=True)`.
# Run as: <interpreter> joblib_multiprocessing.py <start-method>
import sys
import multiprocessing

from joblib import Parallel, delayed, effective_n_jobs


def square(x):
    return x * x


def power(x, exponent=2):
    return x ** exponent


def fails(x):
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    import joblib._multiprocessing_helpers as helpers
    print("multiprocessing available:", helpers.mp is not None)
    print("effective_n_jobs:", effective_n_jobs(2))
    par = Parallel(n_jobs=2, backend="multiprocessing")
    print(par(delayed(square)(i) for i in range(10)))
    print(par(delayed(power)(i, exponent=3) for i in range(6)))
    print(Parallel(n_jobs=2, backend="multiprocessing", batch_size=3)(
        delayed(square)(i) for i in range(20)))
    # A worker's exception comes back with its type and message.
    try:
        par(delayed(fails)(i) for i in range(6))
    except ValueError as e:
        print("ValueError:", e)
    # One Parallel object reused as a context manager keeps its pool.
    with Parallel(n_jobs=2, backend="multiprocessing") as p:
        print(p(delayed(square)(i) for i in range(3)), p(delayed(power)(i) for i in range(3)))
