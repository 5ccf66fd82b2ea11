# `_multiprocessing` as joblib and loky use it: SemLock(kind, value, maxvalue, name, unlink)
# positionally or by keyword (RustPython 0.5.0's took them positionally only), named
# semaphores opened again with SemLock._rebuild (here and in a child), sem_unlink, flags.
# Run as: <interpreter> fixes_semlock.py <start-method>
import _multiprocessing
import multiprocessing
import os
import sys
from _multiprocessing import SemLock, sem_unlink

RECURSIVE_MUTEX, SEMAPHORE = 0, 1


def release_by_name(name, maxvalue):
    sem = SemLock._rebuild(0, SEMAPHORE, maxvalue, name)
    sem.release()
    sem.release()


def attempt(label, f, *args, **kwargs):
    try:
        result = f(*args, **kwargs)
        print(label, "ok", result)
    except Exception as e:
        print(label, type(e).__name__)


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    print(sorted(n for n in dir(_multiprocessing) if not n.startswith("__")))
    print(sorted(_multiprocessing.flags.items()))
    print(SemLock.SEM_VALUE_MAX == 2 ** 31 - 1)
    base = f"/procpy-test-{os.getpid()}"

    # joblib's import-time probe.
    s = SemLock(0, 0, 1, name=base + "-probe", unlink=True)
    print("probe:", s.kind, s.maxvalue, s.name, s._get_value())
    attempt("probe name unlinked:", sem_unlink, base + "-probe")

    # All positional; all keywords.
    s = SemLock(SEMAPHORE, 2, 3, base + "-pos", True)
    print("positional:", s.kind, s.maxvalue, s._get_value(), s.acquire(), s._get_value())
    s = SemLock(kind=RECURSIVE_MUTEX, value=1, maxvalue=1, name=base + "-kw", unlink=True)
    print("keywords:", s.kind, s.acquire(), s.acquire(), s._count(), s._is_mine())
    s.release()
    s.release()
    print("released:", s._count(), s._is_mine(), s._get_value())

    # A named semaphore stays until sem_unlink; _rebuild opens it by name.
    name = base + "-named"
    sem = SemLock(SEMAPHORE, 0, 5, name, False)
    attempt("same name again:", SemLock, SEMAPHORE, 0, 5, name, False)
    again = SemLock._rebuild(0, SEMAPHORE, 5, name)
    print("rebuilt:", again.kind, again.maxvalue, again.name == name)
    again.release()
    print("shared value:", sem._get_value(), sem._is_zero())
    p = multiprocessing.Process(target=release_by_name, args=(name, 5))
    p.start()
    p.join()
    print("after the child:", p.exitcode, sem._get_value())
    print("acquire x3:", [sem.acquire(False) for _ in range(4)])
    sem_unlink(name)
    attempt("unlink twice:", sem_unlink, name)
    attempt("rebuild unlinked:", SemLock._rebuild, 0, SEMAPHORE, 5, name)
    print("still usable:", sem.release(), sem._get_value())

    attempt("bad kind:", SemLock, 7, 0, 1, base + "-bad", True)
    attempt("negative value:", SemLock, SEMAPHORE, -1, 1, base + "-bad", True)
    attempt("name None:", SemLock, SEMAPHORE, 0, 1, None, True)
    # sem_open refuses a name that is empty or more than one component after its slashes.
    for bad in ["", "/", "//", base + "/sub", base + "-x/"]:
        try:
            SemLock(SEMAPHORE, 0, 1, bad, True)
            print("bad name accepted:", bad.replace(base, "BASE"))
        except OSError as e:
            print("bad name:", repr(bad.replace(base, "BASE")), type(e).__name__, e)
        try:
            SemLock._rebuild(0, SEMAPHORE, 1, bad)
            print("bad name rebuilt:", bad.replace(base, "BASE"))
        except OSError as e:
            print("bad name rebuild:", repr(bad.replace(base, "BASE")), type(e).__name__, e)
