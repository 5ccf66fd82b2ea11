# parmap: map/starmap/map_async over a multiprocessing.Pool, with extra arguments.
# Run as: <interpreter> parmap_map.py <start-method>
import sys
import multiprocessing

import parmap


def add(x, y, z=0):
    return x + y + z


def fails(x, y):
    if x == 2:
        raise KeyError(x)
    return x


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    print(parmap.map(add, range(8), 10, z=1, pm_processes=2))
    print(parmap.starmap(add, [(1, 2), (3, 4), (5, 6)], 5, pm_processes=2))
    print(parmap.map(add, range(5), 1, pm_parallel=False))
    print(parmap.map_async(add, range(6), 2, pm_processes=2).get())
    with multiprocessing.Pool(2) as pool:
        print(parmap.map(add, range(4), 3, pm_pool=pool))
    try:
        parmap.map(fails, range(4), 0, pm_processes=2)
    except KeyError as e:
        print("KeyError", e)
