# threading.get_native_id() and Thread.native_id: the kernel's thread id, distinct per thread
# and per process, as CPython 3.11 has them on Linux (RustPython lacks them; _procpy_fixes).
import multiprocessing as mp
import sys
import threading


def report(q):
    t = threading.main_thread()
    q.put((t.native_id == threading.get_native_id(), t.native_id))


if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    print('has get_native_id:', hasattr(threading, 'get_native_id'))
    me = threading.get_native_id()
    print('main thread native_id is get_native_id():', threading.main_thread().native_id == me)
    seen = []
    t = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
    t.start()
    t.join()
    print('thread native_id matches what it saw:', t.native_id == seen[0])
    print('thread native_id differs from main:', t.native_id != me)
    q = mp.Queue()
    p = mp.Process(target=report, args=(q,))
    p.start()
    same, child_id = q.get()
    p.join()
    print('child main thread native_id consistent:', same)
    print('child native_id differs from parent:', child_id != me)
