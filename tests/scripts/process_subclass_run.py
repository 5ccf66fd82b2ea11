"""Process subclasses: overridden run(), custom __init__ attributes that
travel to the child (pickled under spawn/forkserver), changes made in the
child not visible in the parent, run() calling super().run(), run() raising."""
import multiprocessing
import sys


class Worker(multiprocessing.Process):
    def __init__(self, q, items, label='worker'):
        super().__init__(name='Worker-' + label)
        self.q = q
        self.items = items
        self.label = label
        self.counter = 0

    def run(self):
        self.counter += 100
        self.items.append('added in child')
        me = multiprocessing.current_process()
        self.q.put(('run', self.label, self.items, self.counter,
                    me is self, type(me).__name__, me.name))


class WrapsTarget(multiprocessing.Process):
    def run(self):
        self._q.put('before super().run()')
        super().run()
        self._q.put('after super().run()')

    def set_queue(self, q):
        self._q = q


class Failing(multiprocessing.Process):
    def run(self):
        raise RuntimeError('boom in run')


class ExitsWith(multiprocessing.Process):
    def __init__(self, code):
        super().__init__()
        self.code = code

    def run(self):
        sys.exit(self.code)


def target(q, x, y=0):
    q.put(('target', x, y))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    q = multiprocessing.Queue()

    w = Worker(q, [1, 2], label='a')
    print('name:', w.name, 'isinstance Process:', isinstance(w, multiprocessing.Process))
    w.start()
    print('child saw:', q.get(timeout=10))
    w.join()
    print('exitcode:', w.exitcode)
    print('parent copy unchanged:', w.items, w.counter)

    w = WrapsTarget(target=target, args=(q, 'x'), kwargs={'y': 2})
    w.set_queue(q)
    w.start()
    print([q.get(timeout=10) for _ in range(3)])
    w.join()
    print('exitcode:', w.exitcode)

    f = Failing()
    f.start()
    f.join()
    print('run() raising -> exitcode:', f.exitcode)

    e = ExitsWith(4)
    e.start()
    e.join()
    print('run() sys.exit(4) -> exitcode:', e.exitcode)

    workers = [Worker(q, [i], label=str(i)) for i in range(3)]
    for w in workers:
        w.start()
    got = sorted(q.get(timeout=10) for _ in workers)
    for w in workers:
        w.join()
    for g in got:
        print(g)
    print('names:', [w.name for w in workers])
