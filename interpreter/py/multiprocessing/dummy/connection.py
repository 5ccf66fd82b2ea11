# multiprocessing.dummy.connection: Pipe() and Listener/Client between threads, over queue.Queue objects.
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


families = [None]


class Listener(object):
    """A "listener" between threads: its address is the queue that clients put their ends on."""

    def __init__(self, address=None, family=None, backlog=1):
        self._backlog_queue = Queue(backlog)

    def accept(self):
        return Connection(*self._backlog_queue.get())

    def close(self):
        self._backlog_queue = None

    @property
    def address(self):
        return self._backlog_queue

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


def Client(address):
    """Connect to a Listener (whose address is its queue): the listener gets the mirror ends."""
    _in, _out = Queue(), Queue()
    address.put((_out, _in))
    return Connection(_in, _out)
