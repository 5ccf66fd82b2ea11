"""BaseManager subclasses with register(): a user class behind an AutoProxy and behind a
custom BaseProxy subclass, `exposed` refusal (RemoteError carrying the server's
AttributeError), method_to_typeid returning proxies, create_method=False, callable=None,
registries kept per subclass, user exceptions re-raised with their own type, an unencodable
result (RemoteError 'Unserializable message'), start(initializer, initargs), the server
process's name, connect() from a second manager object, Token and proxies in children,
the xmlrpclib serializer."""
import multiprocessing
import re
import sys
from multiprocessing.managers import BaseManager, BaseProxy, RemoteError, Token

from _check import attempt


def masked(text):
    return re.sub(r'0x[0-9a-f]+', '0x?', text)


def remote(label, fn):
    '''A RemoteError's text ends with the server's traceback: print its last line only.'''
    try:
        fn()
    except RemoteError as e:
        lines = str(e).strip().splitlines()
        print('%s: RemoteError, ruled: %s, last line: %s' % (label, lines[0] == '-' * 75, lines[-2]))


class CounterError(Exception):
    pass


class Counter(object):
    def __init__(self, start=0):
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n

    def get(self):
        return self.n

    def fail(self, msg):
        raise CounterError(msg)

    def unpicklable(self):
        import threading
        return threading.Lock()

    def child(self):
        return Counter(self.n * 10)

    def _private(self):
        return 'private'


class CounterProxy(BaseProxy):
    _exposed_ = ('incr', 'get', 'child')
    _method_to_typeid_ = {'child': 'Sub'}

    def incr(self, by=1):
        return self._callmethod('incr', (by,))

    def get(self):
        return self._callmethod('get')

    def child(self):
        return self._callmethod('child')


class MathsManager(BaseManager):
    pass


class OtherManager(BaseManager):
    pass


_state = {}


def set_state(value):
    _state['v'] = value


def get_state():
    return _state.get('v')


MathsManager.register('Counter', Counter, CounterProxy)
MathsManager.register('AutoCounter', Counter)
MathsManager.register('OnlyGet', Counter, exposed=('get',))
MathsManager.register('Wrap', callable=None)
MathsManager.register('Hidden', Counter, create_method=False)
# what Counter.child() returns is served as it is (no callable) behind a CounterProxy
MathsManager.register('Sub', None, CounterProxy, create_method=False)
MathsManager.register('state', get_state)
OtherManager.register('Other', Counter)


class XmlManager(BaseManager):
    pass


XmlManager.register('xlist', list, exposed=('append', '__len__', '__getitem__', 'pop'))


def use_in_child(counter, auto):
    counter.incr(5)
    auto.incr(7)


def main(method):
    ctx = multiprocessing.get_context(method)
    print('registries separate:', 'Counter' in MathsManager._registry,
          'Counter' in OtherManager._registry, 'Other' in MathsManager._registry,
          BaseManager._registry == {})
    print('creation methods:', hasattr(MathsManager, 'Counter'), hasattr(MathsManager, 'Hidden'),
          MathsManager.Counter.__name__)
    m = MathsManager(ctx=ctx)
    m.start(initializer=set_state, initargs=('initialized',))
    print('server process name:', re.sub(r'\d+', 'N', m._process.name))

    c = m.Counter(3)
    print('proxy repr:', masked(repr(c)))
    print('incr:', c.incr(), c.incr(by=10), c.get())
    print('str via __repr__ fallback:', masked(str(c)))
    sub = c.child()
    print('method_to_typeid:', type(sub).__name__, sub.get(), masked(str(sub)))

    auto = m.AutoCounter()
    print('auto repr:', masked(repr(auto)))
    print('auto exposed:', sorted(auto._exposed_))
    print('auto incr:', auto.incr(2))
    attempt('user exception', lambda: auto.fail('boom'))
    try:
        auto.fail('boom')
    except CounterError as e:
        print('caught own type:', type(e).__module__, type(e).__name__, e.args)
    remote('private not exposed', lambda: auto._callmethod('_private'))
    try:
        auto._callmethod('_private')
    except RemoteError as e:
        refusal = [x for x in str(e).splitlines() if x.startswith('AttributeError')][0]
        print('refusal:', refusal.split(' exposed=')[0])
    attempt('missing method', lambda: auto.nope())

    only = m.OnlyGet(4)
    print('only get:', only.get(), only._exposed_)
    try:
        only._callmethod('incr')
    except RemoteError as e:
        # one exposed name: the set's repr is fixed
        print('refused:', [x for x in str(e).splitlines() if x.startswith('AttributeError')])
    try:
        auto.unpicklable()
    except RemoteError as e:
        print('unserializable:', str(e).strip().splitlines()[1].split(':')[0])

    w = m.Wrap([1, 2, 3])
    print('wrap (callable=None):', w._getvalue(), masked(repr(w)))
    remote('wrap without argument', lambda: m.Wrap())
    remote('wrap with keyword', lambda: m.Wrap(x=1))
    remote('unknown typeid', lambda: m._create('Nope'))
    print('initializer ran in the server:', m.state()._getvalue())

    # the same server reached by a second manager object
    m2 = MathsManager(address=m.address, authkey=bytes(multiprocessing.current_process().authkey))
    m2.connect()
    c2 = m2.Counter(100)
    print('second manager:', c2.incr(), m2._state.value)

    # tokens and proxies in children
    t = c._token
    print('token:', type(t).__name__, t.typeid, t.id == c._id, t.address == m.address)
    print('token repr:', re.sub(r"id='[0-9a-f]+'", "id=?", re.sub(r"address=[^,]+", 'address=?', repr(t))))
    p = ctx.Process(target=use_in_child, args=(c, auto))
    p.start()
    p.join()
    print('after child:', p.exitcode, c.get(), auto.get())
    print('objects:', m._number_of_objects())
    del sub, w, only, c2
    print('objects after del:', m._number_of_objects())
    m.shutdown()
    print('exit code:', m._process.exitcode)
    try:
        c.get()
    except (OSError, EOFError):
        print('call after shutdown: the connection is gone')

    # the 'xmlrpclib' serializer: messages marshalled as XML-RPC
    with XmlManager(serializer='xmlrpclib', ctx=ctx) as xm:
        xl = xm.xlist([1, 'two'])
        xl.append({'three': 3.0})
        print('xmlrpclib:', len(xl), xl.__getitem__(1), xl.__getitem__(2), xl.pop(0))
    print('done')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'fork')
