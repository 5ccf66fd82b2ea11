# tqdm.contrib.concurrent: process_map (ProcessPoolExecutor.map underneath, sized with
# operator.length_hint(it, -1)) and thread_map; tqdm around Pool.imap.
# Run as: <interpreter> tqdm_concurrent.py <start-method>
import io
import sys
import multiprocessing

from tqdm import tqdm
from tqdm.contrib.concurrent import process_map, thread_map


def square(x):
    return x * x


def add(a, b):
    return a + b


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    print(process_map(square, range(10), max_workers=2, disable=True))
    print(process_map(add, range(5), range(10, 15), max_workers=2, chunksize=2, disable=True))
    # A generator has no length: tqdm asks length_hint(it, -1).
    print(process_map(square, (i for i in range(7)), max_workers=2, disable=True))
    print(thread_map(square, range(10), max_workers=2, disable=True))
    # The bar goes to a buffer; only its final count is printed (the rest is timing).
    bar_out = io.StringIO()
    with multiprocessing.Pool(2) as pool:
        got = list(tqdm(pool.imap(square, range(12)), total=12, file=bar_out, mininterval=0))
    print(got)
    print("bar reached 12/12:", "12/12" in bar_out.getvalue())
