# multiprocessing.dummy.connection: Pipe() between threads, over two queue.Queue objects.
__all__ = ['Client', 'Listener', 'Pipe']

from queue import Queue


class Connection(object):
    def __init__(self, inbox, outbox):
        self._in = inbox
        self._out = outbox
        self.send = self.send_bytes = outbox.put
        self.recv = self.recv_bytes = inbox.get

    def poll(self, timeout=0.0):
        if self._in.qsize() > 0:
            return True
        if timeout <= 0.0:
            return False
        with self._in.not_empty:
            self._in.not_empty.wait(timeout)
        return self._in.qsize() > 0

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


def Pipe(duplex=True):
    a, b = Queue(), Queue()
    return Connection(a, b), Connection(b, a)


def Listener(*args, **kwargs):
    raise NotImplementedError('multiprocessing.dummy.connection.Listener is not available in procpy yet')


def Client(*args, **kwargs):
    raise NotImplementedError('multiprocessing.dummy.connection.Client is not available in procpy yet')
