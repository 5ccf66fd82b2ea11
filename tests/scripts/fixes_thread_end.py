# Threads nobody references once started, their arguments with __del__: freed on their own
# thread at its end, as in CPython (RustPython 0.5.0 freed them after the thread's frame slot was
# gone: a panic in a debug build). Run as: <interpreter> fixes_thread_end.py <start-method>
import _thread
import threading
import time

freed = []


class Noisy:
    def __init__(self, name):
        self.name = name

    def __del__(self):
        freed.append(self.name)


def wait_for(predicate):
    # A condition, not a duration: the loop ends when the threads are gone.
    while not predicate():
        time.sleep(0.01)


gate = threading.Event()


def blocked(noisy):
    gate.wait()


class Sub(threading.Thread):
    def __init__(self, name):
        super().__init__()
        self.noisy = Noisy(name)

    def run(self):
        gate.wait()


if __name__ == "__main__":
    # Threads nobody references once started: each is freed on its own thread.
    for i in range(5):
        threading.Thread(target=blocked, args=(Noisy(f"arg{i}"),)).start()
        Sub(f"sub{i}").start()
    for i in range(3):
        _thread.start_new_thread(blocked, (Noisy(f"raw{i}"),))
    gate.set()
    wait_for(lambda: threading.active_count() == 1 and len(freed) >= 13)
    # One more start lets go of anything still held.
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    print(sorted(freed))
    try:
        _thread.start_new_thread(42, ())
    except TypeError as e:
        print("TypeError", e)
    try:
        _thread.start_new_thread(print, [])
    except TypeError as e:
        print("TypeError", e)
