# mpire: WorkerPool (its own workers over multiprocessing Process, queues, Events and Values)
# with map/imap_unordered/apply_async, keyword arguments, worker state, shared objects and a
# worker's exception. Run as: <interpreter> mpire_worker_pool.py <start-method>
import sys

from mpire import WorkerPool


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def count_calls(worker_state, x):
    worker_state["calls"] = worker_state.get("calls", 0) + 1
    return x


def scaled(shared, x):
    return shared["factor"] * x


def fails(x):
    if x == 4:
        raise ValueError(f"bad {x}")
    return x


if __name__ == "__main__":
    method = sys.argv[1]
    with WorkerPool(n_jobs=2, start_method=method) as pool:
        print(pool.map(square, range(10), progress_bar=False))
        print(pool.map(square, range(10), chunk_size=3, progress_bar=False))
        print(sorted(pool.imap_unordered(square, range(8), progress_bar=False)))
        print(pool.map(add, [(1, 2), (3, 4)], progress_bar=False))
        print(pool.map(add, [{"a": 1, "b": 5}, {"a": 2}], progress_bar=False))
        print(pool.apply_async(add, args=(3,), kwargs={"b": 4}).get())
    with WorkerPool(n_jobs=2, start_method=method, use_worker_state=True) as pool:
        print(sorted(pool.map(count_calls, range(6), progress_bar=False)))
    with WorkerPool(n_jobs=2, start_method=method, shared_objects={"factor": 3}) as pool:
        print(pool.map(scaled, range(5), progress_bar=False))
    with WorkerPool(n_jobs=2, start_method=method) as pool:
        try:
            pool.map(fails, range(8), progress_bar=False)
        except ValueError as e:
            print("ValueError", e)
