"""Start-method / context API: get_start_method, set_start_method twice ->
RuntimeError('context has already been set'), force=True, unknown method ->
ValueError, get_all_start_methods (sorted), get_context(m) objects and
their Process/Queue/Pipe/SimpleQueue/JoinableQueue, and which start method
a child of each context reports."""
import multiprocessing
import sys
from _check import attempt


def report(q, tag):
    q.put((tag, multiprocessing.get_start_method(),
           multiprocessing.current_process().name,
           multiprocessing.parent_process() is not None))


if __name__ == '__main__':
    multiprocessing.set_start_method(sys.argv[1])
    method = sys.argv[1]

    print('get_start_method() is argv[1]:', multiprocessing.get_start_method() == method)
    print('allow_none=True is argv[1]:', multiprocessing.get_start_method(allow_none=True) == method)
    print('get_all_start_methods (sorted):', sorted(multiprocessing.get_all_start_methods()))
    attempt('set_start_method again (same)', lambda: multiprocessing.set_start_method(method))
    attempt('set_start_method again (other)', lambda: multiprocessing.set_start_method('spawn'))
    attempt('set_start_method unknown', lambda: multiprocessing.set_start_method('bogus', force=True))
    print('still argv[1]:', multiprocessing.get_start_method() == method)
    attempt('get_context unknown', lambda: multiprocessing.get_context('bogus'))

    for m in ['spawn', 'fork', 'forkserver']:
        multiprocessing.set_start_method(m, force=True)
        print('force=True ->', multiprocessing.get_start_method(),
              '| get_context().get_start_method():', multiprocessing.get_context().get_start_method())
    multiprocessing.set_start_method(method, force=True)
    print('restored argv[1]:', multiprocessing.get_start_method() == method)

    q = multiprocessing.Queue()
    for m in sorted(multiprocessing.get_all_start_methods()):
        ctx = multiprocessing.get_context(m)
        print('context %s: get_start_method=%s same object twice=%s' % (
            m, ctx.get_start_method(), ctx is multiprocessing.get_context(m)))
        attempt('  ctx.set_start_method', lambda: ctx.set_start_method(m))
        # every primitive made from the context works with that context's children
        cq = ctx.Queue()
        p = ctx.Process(target=report, args=(cq, 'ctx-' + m))
        p.start()
        print('  child of ctx:', cq.get(timeout=10))
        p.join()
        print('  exitcode:', p.exitcode)
        a, b = ctx.Pipe()
        sq = ctx.SimpleQueue()
        jq = ctx.JoinableQueue()
        a.send(m)
        sq.put(m)
        jq.put(m)
        print('  Pipe/SimpleQueue/JoinableQueue:', b.recv(), sq.get(), jq.get(timeout=10))
        jq.task_done()
        jq.join()

    # the default context's Process uses the global start method
    p = multiprocessing.Process(target=report, args=(q, 'default'))
    p.start()
    tag, child_method, name, has_parent = q.get(timeout=10)
    p.join()
    print('default child: method is argv[1]:', child_method == method, name, has_parent)
    print('parent start method unchanged:', multiprocessing.get_start_method() == method)
