"""multiprocessing.shared_memory.ShareableList: int/float/bool/str/bytes/None items, indexing
(negative too), assignment of every kind that fits a slot (the format follows), a str/bytes
longer than its slot → ValueError, index errors, unsupported types → KeyError, len, count,
index, .format, .shm, repr with the name masked, __reduce__ (by name), attaching by name
from a child (it sees the parent's values, the parent sees the child's writes), passing the
list as a Process argument and through a Queue, an empty list, shm.size as CPython's."""
import multiprocessing
import sys
from multiprocessing.shared_memory import ShareableList, SharedMemory
from _check import attempt

ITEMS = [1, 2.5, True, 'héllo', b'by\x00', None, 'x' * 8, -7, False, b'']


def show(label, sl):
    print(label, list(sl), sl.format)


def child_attach(name, q):
    sl = ShareableList(name=name)
    q.put(('child sees', list(sl), sl.format, len(sl)))
    sl[0] = 100
    sl[3] = 'child'
    sl[5] = 1.25
    sl.shm.close()


def child_arg(sl, q):
    q.put(('as argument', sl[-1], sl[1], sl.shm.name == q_name(sl)))
    sl[1] = -0.5
    sl.shm.close()


def q_name(sl):
    return ShareableList(name=sl.shm.name).shm.name


def child_queue(q_in, q_out):
    sl = q_in.get(timeout=30)
    q_out.put(('through a queue', type(sl).__name__, list(sl)))
    sl[2] = False
    sl.shm.close()


def fresh():
    return ShareableList(ITEMS)


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    sl = fresh()
    show('created:', sl)
    print('len:', len(sl), 'shm size:', sl.shm.size, type(sl.shm).__name__)
    print('repr:', repr(sl) == 'ShareableList(%r, name=%r)' % (list(sl), sl.shm.name))
    print('items:', sl[0], sl[-1], sl[-10], sl[3], sl[4], sl[5])
    print('count:', sl.count(2.5), sl.count('x'), sl.count(1), sl.count(None))
    print('index:', sl.index(-7), sl.index(None), sl.index(b''))
    attempt('index missing', lambda: sl.index(99))
    f, args = sl.__reduce__()
    print('reduce:', f.func is ShareableList, f.keywords == {'name': sl.shm.name}, args)
    print('generic alias:', ShareableList[int])

    # (Not an index below -len: CPython 3.11 wraps it once and then reads or writes a wrong
    # slot; and not a float, whose TypeError message is RustPython's list's.)
    for label, i in [('getitem past end', 10), ('getitem str', 'a'), ('getitem slice', slice(0, 2))]:
        attempt(label, lambda: sl[i])
    for label, i in [('setitem past end', 10), ('setitem str', 'a')]:
        def set_it():
            sl[i] = 1
        attempt(label, set_it)

    # One assignment per fresh list: each shows how the value and the format change.
    for pos, value in [(0, 'abcdefgh'), (0, 'abcdefghi'), (5, 3), (2, b'zz'), (1, None),
                       (0, None), (5, 'ab'), (3, 5), (3, 'abcdefgh'), (3, 'x' * 9), (6, 'abc'),
                       (6, b'q' * 16), (6, b'q' * 17), (0, 2.5), (1, True), (2, 7), (-1, b'end'),
                       (4, 'é' * 4), (4, 'é' * 5), (0, 2 ** 63 - 1), (0, -2 ** 63),
                       (6, [1]), (0, 1.5j), (7, 'tail\x00')]:
        other = fresh()

        def assign():
            other[pos] = value
            return other[pos], other.format
        attempt('set [%d] = %r' % (pos, value), assign)
        other.shm.close()
        other.shm.unlink()

    # A child attaches by name, sees our values, writes; we see its writes.
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=child_attach, args=(sl.shm.name, q))
    p.start()
    print(q.get(timeout=30))
    p.join()
    show('after the child:', sl)

    p = multiprocessing.Process(target=child_arg, args=(sl, q))
    p.start()
    print(q.get(timeout=30))
    p.join()
    print('float written by the child:', sl[1])

    q_in = multiprocessing.Queue()
    p = multiprocessing.Process(target=child_queue, args=(q_in, q))
    p.start()
    q_in.put(sl)
    print(q.get(timeout=30))
    p.join()
    print('bool written by the child:', sl[2])

    # Attaching in the same process.
    same = ShareableList(name=sl.shm.name)
    print('attached:', list(same) == list(same), len(same), same.format == sl.format)
    same[6] = 'shared'
    print('seen:', sl[6])
    same.shm.close()

    empty = ShareableList()
    print('empty:', list(empty), repr(empty.format), len(empty), empty.shm.size)
    attempt('empty[0]', lambda: empty[0])
    empty.shm.close()
    empty.shm.unlink()
    for label, seq in [('list item', [[1]]), ('int too big', [2 ** 63]), ('int subclass', [type('I', (int,), {})(1)])]:
        attempt(label, lambda: ShareableList(seq))
    for seq in [['é' * 5], ['😀' * 3], [1.0], [True, False], [''], [b'\x00\x00a\x00']]:
        x = ShareableList(seq)
        print('list', seq, '->', list(x), x.format, x.shm.size)
        x.shm.close()
        x.shm.unlink()
    attempt('name not a str', lambda: ShareableList([1], name=5))
    attempt('missing name', lambda: ShareableList(name='procpy_no_such_list_x'))
    named = ShareableList([1, 'two'], name='procpy_test_list_fixed')
    print('named:', repr(named))
    named.shm.close()
    named.shm.unlink()

    sl.shm.close()
    sl.shm.unlink()
    print('done')
